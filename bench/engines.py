"""Session engines, csessions vs Django, driven the way SessionMiddleware and the views drive them.

Operations (each call starts from the cookie's session key, as a request does):
  load       SessionStore(key); s["_auth_user_id"]          (the auth middleware's first access)
  cycle      load + s["counter"] = s.get("counter", 0) + 1 + s.save(); s.session_key
             (a request that modifies the session; the response sets the cookie)
  create     SessionStore(); s["k"] = 1; s.save(); s.session_key   (a new visitor)
  cycle_key  SessionStore(key); s.cycle_key(); s.session_key        (login)
  delete     SessionStore(key); s.delete()                          (what flush()/logout calls)

Engines are rows of ENGINES; adding file, db, cache, cached_db or shm later means adding an
``Engine`` with its two module paths, a ``prepare`` hook for settings/tables/directories, and a
``seed`` that puts a payload into the store and returns its session key. Server-side engines
whose cycle_key/delete consume the key list those ops in ``consumes_key``: they then get a fresh
seeded key per call from a pool built before timing (``key_pool``).

The signed-cookie engine keeps the whole session in the cookie, so payloads whose cookie (name +
value) exceeds the 4096 bytes browsers store are skipped and reported: a browser would drop the
cookie (and csessions raises SessionCookieTooLarge on save by default). That is ``huge``.
For signed cookies, ``delete`` never decodes the cookie: both sides run the same Django code,
and its ratio is ~1 by construction (``parity_ops``).
"""

import importlib
import random
import sys

import common
from common import call_batch, fmt_ns, fmt_ratio, measure, med, other_clock, rat, table

OPS = ("load", "cycle", "create", "cycle_key", "delete")
PROBE_KEY = "_auth_user_id"  # present in every reference payload


class Engine:
    def __init__(self, name, django_module, csessions_module, *, seed, prepare=None, skip=None,
                 consumes_key=(), parity_ops=(), ops=OPS):
        self.name = name
        self.modules = {"django": django_module, "csessions": csessions_module}
        self.seed = seed  # seed(store_cls, payload) -> session key
        self.prepare = prepare  # prepare() -> None: settings, tables, directories
        self.skip = skip  # skip(payload) -> reason string or None
        self.consumes_key = set(consumes_key)
        self.parity_ops = set(parity_ops)  # both sides run identical code: ratio ~1 expected
        self.ops = ops

    def stores(self):
        return {side: importlib.import_module(mod).SessionStore for side, mod in self.modules.items()}


# --- signed_cookies -------------------------------------------------------------------------


def _cookie_seed(store_cls, payload):
    s = store_cls()
    s.update(payload)
    s.save()
    return s.session_key


def _cookie_skip(payload):
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    size = len(common.COOKIE_NAME) + len(_cookie_seed(SessionStore, payload))
    if size > common.COOKIE_LIMIT:
        return (f"cookie would be {size} bytes (name + value) > {common.COOKIE_LIMIT}: "
                "browsers drop it, csessions raises SessionCookieTooLarge")
    return None


ENGINES = [
    Engine(
        "signed_cookies",
        "django.contrib.sessions.backends.signed_cookies",
        "csessions.backends.signed_cookies",
        seed=_cookie_seed,
        skip=_cookie_skip,
        parity_ops=("delete",),
    ),
    # Later: Engine("file", "django.contrib.sessions.backends.file", "csessions.backends.file",
    #               seed=..., prepare=..., consumes_key=("cycle_key", "delete")), db, cache, ...
]


# --- operations -----------------------------------------------------------------------------


def op_load(Store, key):
    s = Store(key)
    return s[PROBE_KEY]


def op_cycle(Store, key):
    s = Store(key)
    s["counter"] = s.get("counter", 0) + 1
    s.save()
    return s.session_key


def op_create(Store, key=None):
    s = Store()
    s["k"] = 1
    s.save()
    return s.session_key


def op_cycle_key(Store, key):
    s = Store(key)
    s.cycle_key()
    return s.session_key


def op_delete(Store, key):
    s = Store(key)
    s.delete()


OP_FUNCS = {"load": op_load, "cycle": op_cycle, "create": op_create,
            "cycle_key": op_cycle_key, "delete": op_delete}


def key_pool(engine, Store, payload, size):
    """Fresh keys for ops that consume theirs (server-side cycle_key/delete)."""
    return iter([engine.seed(Store, payload) for _ in range(size)])


def make_callable(engine, op, Store, payload):
    fn = OP_FUNCS[op]
    key = engine.seed(Store, payload)
    if op in engine.consumes_key:  # pragma: no cover - no such engine yet
        keys = key_pool(engine, Store, payload, 200_000)
        return lambda: fn(Store, next(keys))
    return common.bind(fn, Store, key)


def check_engine(engine, payload):
    """Both sides must agree on what the ops produce (cookies are signed with the same key)."""
    stores = engine.stores()
    problems = []
    keys = {side: engine.seed(Store, payload) for side, Store in stores.items()}
    for side, Store in stores.items():
        other = "django" if side == "csessions" else "csessions"
        s = Store(keys[other])  # each side reads the other's cookie
        if dict(s.items()) != payload:
            problems.append(f"{side} cannot read {other}'s session back")
        s = Store(keys[side])
        s["counter"] = 1
        s.save()
        t = stores[other](s.session_key)
        if t.get("counter") != 1 or t.get(PROBE_KEY) != payload[PROBE_KEY]:
            problems.append(f"{other} cannot read {side}'s saved session")
    return problems


def run(payloads, cfg, rng, engines=None, ops=OPS, progress=None):
    common.import_csessions()
    out = {"timings": [], "skipped": [], "correctness": []}
    for engine in engines or ENGINES:
        if engine.prepare:
            engine.prepare()
        stores = engine.stores()
        for pname, payload in payloads.items():
            reason = engine.skip(payload) if engine.skip else None
            if reason:
                out["skipped"].append({"engine": engine.name, "payload": pname, "reason": reason})
                if progress:
                    progress(f"engine {engine.name} {pname}: skipped, {reason}")
                continue
            problems = check_engine(engine, payload)
            out["correctness"].append({"engine": engine.name, "payload": pname,
                                       "ok": not problems, "problems": problems})
            if problems and progress:
                progress(f"engine {engine.name} {pname}: FAIL " + "; ".join(problems))
            for op in ops:
                if op not in engine.ops:
                    continue
                contenders = {side: call_batch(make_callable(engine, op, Store, payload))
                              for side, Store in stores.items()}
                r = measure(contenders, cfg, rng=rng)
                r.update(engine=engine.name, payload=pname, op=op,
                         parity=op in engine.parity_ops)
                out["timings"].append(r)
                if progress:
                    c = r["contenders"]
                    progress(f"engine {engine.name} {op:9} {pname:7} django "
                             f"{fmt_ns(c['django']['median']):>10}  csessions "
                             f"{fmt_ns(c['csessions']['median']):>10}  x{r['ratio']['median']:.2f}"
                             f" (cpu clock x{r['ratio_cpu']['median']:.2f})")
    return out


def engine_headers():
    return ["engine", "payload", "op", "django median", "csessions median",
            f"speed-up (IQR) [{common.REPORT_CLOCK}]", f"speed-up [{other_clock()}]",
            "django p99", "csessions p99"]


def engine_rows(timings, payload=None):
    rows = []
    for r in timings:
        if payload and r["payload"] != payload:
            continue
        d, c, q = r["contenders"]["django"], r["contenders"]["csessions"], rat(r)
        o = rat(r, other_clock())
        note = " ‡" if r.get("parity") else ""
        rows.append([r["engine"], r["payload"], r["op"] + note, fmt_ns(med(d)),
                     fmt_ns(med(c)), f"{fmt_ratio(q['median'])} ({q['q1']:.2f}-{q['q3']:.2f})",
                     fmt_ratio(o["median"]) if o else "-",
                     fmt_ns(d.get("p99")), fmt_ns(c.get("p99"))])
    return rows


PARITY_NOTE = ("‡ signed_cookies delete() never touches the cookie: both sides run the same "
               "Django code, ~1x expected.")


def main(argv=None):
    cfg, payloads, rng = common.standalone(__doc__, argv)
    res = run(payloads, cfg, rng, progress=lambda s: print(s, flush=True))
    print()
    print(table(engine_headers(), engine_rows(res["timings"])))
    print(PARITY_NOTE)
    for s in res["skipped"]:
        print(f"skipped: {s['engine']} {s['payload']}: {s['reason']}")
    return 0 if all(c["ok"] for c in res["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(common.cli(main))
