"""Session engines, csessions vs Django on the same store, driven the way SessionMiddleware and
the views drive them.

Operations (each call starts from the cookie's session key, as a request does):
  load       SessionStore(key); s["_auth_user_id"]          (the auth middleware's first access)
  cycle      load + s["counter"] = s.get("counter", 0) + 1 + s.save(); s.session_key
             (a request that modifies the session; the response sets the cookie)
  create     SessionStore(); s["k"] = 1; s.save(); s.session_key   (a new visitor)
  cycle_key  SessionStore(key); s.cycle_key(); s.session_key        (login)
  delete     SessionStore(key); s.delete()                          (what flush()/logout calls)

Engines are rows of ENGINES, each csessions engine beside its Django twin on one store: the
signed cookie; file (one temporary directory); db and cached_db on SQLite and on PostgreSQL
(cached_db's cache: LocMem); cache on LocMem, Django's RedisCache, django-redis and
PyMemcacheCache; and shm, which has no twin, beside Django's cache engine on LocMem and on Redis
(the ratio is then django-cache-engine / shm). Stores and servers come from servers.Stores,
started for the selected engines only and stopped at the end. On server-side stores,
cycle_key() and delete() use their session up (``consumes_key``): every call gets a freshly
seeded key, made before the batch's clock starts (common.call_batch's ``fresh``).

Clock: engines whose store is a server (``server=True``) are reported on wall time, since the
server's share of the work is not in this thread's CPU time; the others (cookie, file, SQLite,
LocMem, shm) do all their work in this thread, the kernel's file and SQLite I/O included, so
they follow the report clock (run.py --clock, check.py's CPU clock).

Codec share (``codec_callables``): the codec part of a cycle alone, each side on what it stores:
decode(stored) + encode(dict) of the engine's SessionStore (file, db, cached_db), signing
loads + dumps with the cookie salt (signed cookies), shm's own _unpack + _pack (what it keeps in
its segment). Cache engines store the raw dict and the cache backend pickles it on both sides:
n/a. For shm, Django's side is that pickle round trip.

The signed-cookie engine keeps the whole session in the cookie, so payloads whose cookie (name +
value) exceeds the 4096 bytes browsers store are skipped and reported: a browser would drop the
cookie (and csessions raises SessionCookieTooLarge on save by default). That is ``huge``.
``parity_ops``: ops where both sides run the same Django code (signed-cookie delete() never
decodes the cookie; db and cached_db delete() are Django's): their ratio is ~1 by construction.
"""

import contextlib
import fnmatch
import importlib
import os
import pickle
import sys

import common
import servers
from common import (call_batch, fmt_ns, fmt_ratio, headline_clock, measure, med, other_clock,
                    rat, table)

OPS = ("load", "cycle", "create", "cycle_key", "delete")
PROBE_KEY = "_auth_user_id"  # present in every reference payload
CONSUMED = ("cycle_key", "delete")  # what uses a server-side session up
FAMILIES = {"cookie": "Signed cookie", "file": "File", "db": "Database (db, cached_db)",
            "cache": "Cache", "shm": "Shared memory (shm) beside Django's cache engine"}
CODEC_NA = "n/a (pickle on both sides)"


class Engine:
    def __init__(self, name, django_module, csessions_module, *, family, label=None,
                 prepare=None, server=False, codec="store", skip=None, check=None,
                 consumes_key=CONSUMED, parity_ops=(), ops=OPS):
        self.name = name  # what --engines selects (shell patterns)
        self.label = label or name
        self.family = family
        self.modules = {"django": django_module, "csessions": csessions_module}
        self.prepare = prepare  # prepare(stores) -> settings to override while measuring
        self.clock = "wall" if server else None  # common.headline_clock
        self.codec = codec  # "store", "signing", "shm" or None (n/a): codec_callables
        self.skip = skip  # skip(payload) -> reason string or None
        self.check = check  # check(engine, payload) -> problems; default check_engine
        self.consumes_key = set(consumes_key)
        self.parity_ops = set(parity_ops)  # both sides run identical code: ratio ~1 expected
        self.ops = ops

    def stores(self):
        return {side: importlib.import_module(mod).SessionStore for side, mod in self.modules.items()}


def seed_session(store_cls, payload):
    """Stores ``payload`` as a new session; returns its key (for cookies: the cookie)."""
    s = store_cls()
    s.update(payload)
    s.save()
    return s.session_key


# --- signed_cookies -------------------------------------------------------------------------


def _cookie_skip(payload):
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    size = len(common.COOKIE_NAME) + len(seed_session(SessionStore, payload))
    if size > common.COOKIE_LIMIT:
        return (f"cookie would be {size} bytes (name + value) > {common.COOKIE_LIMIT}: "
                "browsers drop it, csessions raises SessionCookieTooLarge")
    return None


# --- stores: the settings each engine runs under (servers.Stores makes them) ----------------


class Route:
    """A database router sending the session model to one alias."""

    def __init__(self, alias):
        self.alias = alias

    def db_for_read(self, model, **hints):
        return self.alias

    db_for_write = db_for_read


def _file(stores):
    from django.contrib.sessions.backends import file as dj_file

    from csessions.backends import file as cs_file

    for cls in (dj_file.SessionStore, cs_file.SessionStore):  # both cache the path on the class
        if "_storage_path" in cls.__dict__:
            delattr(cls, "_storage_path")
    return {"SESSION_FILE_PATH": stores.tmpdir("file")}


def _db(kind):
    return lambda stores: {"DATABASE_ROUTERS": [Route(stores.database(kind))],
                           "SESSION_CACHE_ALIAS": stores.cache("locmem")}


def _cache(kind):
    return lambda stores: {"SESSION_CACHE_ALIAS": stores.cache(kind)}


def _shm(kind):
    def prepare(stores):
        from csessions import _core

        name = f"csessions-bench-{os.getpid()}"

        def unlink():
            with contextlib.suppress(OSError):  # both shm rows share it: the second finds none
                _core.shm_unlink(name)

        stores.callback(unlink)
        return {"SESSION_CACHE_ALIAS": stores.cache(kind), "CSESSIONS_SHM_NAME": name}

    return prepare


def check_shm(engine, payload):
    """shm has no twin to cross-read with: each side must read its own sessions back, freshly
    seeded and after a save."""
    problems = []
    for side, Store in engine.stores().items():
        key = seed_session(Store, payload)
        s = Store(key)
        if dict(s.items()) != payload:
            problems.append(f"{side} cannot read its own session back")
        s["counter"] = 1
        s.save()
        if Store(key).get("counter") != 1 or Store(key).get(PROBE_KEY) != payload[PROBE_KEY]:
            problems.append(f"{side} cannot read its own saved session")
    return problems


ENGINES = [
    Engine("signed_cookies", "django.contrib.sessions.backends.signed_cookies",
           "csessions.backends.signed_cookies", family="cookie", codec="signing",
           skip=_cookie_skip, consumes_key=(), parity_ops=("delete",)),
    Engine("file", "django.contrib.sessions.backends.file", "csessions.backends.file",
           family="file", prepare=_file),
]
for _kind, _tag, _server in (("sqlite", "sqlite", False), ("postgresql", "pg", True)):
    for _eng in ("db", "cached_db"):
        ENGINES.append(Engine(
            f"{_eng}-{_tag}", f"django.contrib.sessions.backends.{_eng}",
            f"csessions.backends.{_eng}", family="db", label=f"{_eng}[{_kind}]",
            prepare=_db(_kind), server=_server, parity_ops=("delete",)))
for _kind in servers.CACHE_BACKENDS:
    ENGINES.append(Engine(
        f"cache-{_kind}", "django.contrib.sessions.backends.cache", "csessions.backends.cache",
        family="cache", label=f"cache[{_kind}]", prepare=_cache(_kind),
        server=servers.CACHE_BACKENDS[_kind][1] is not None, codec=None))
for _kind in ("locmem", "redis"):
    ENGINES.append(Engine(
        f"shm-{_kind}", "django.contrib.sessions.backends.cache", "csessions.backends.shm",
        family="shm", label=f"shm vs cache[{_kind}]", prepare=_shm(_kind),
        server=_kind != "locmem", codec="shm", check=check_shm))
ENGINE_NAMES = [e.name for e in ENGINES]


def select(patterns):
    """Engines whose name matches one of the comma-separated shell patterns ("all": every one)."""
    pats = ["*" if p == "all" else p for p in patterns.split(",") if p]
    for p in pats:
        if not any(fnmatch.fnmatchcase(n, p) for n in ENGINE_NAMES):
            raise common.BenchError(f"no engine matches {p!r}; engines: {', '.join(ENGINE_NAMES)}")
    return [e for e in ENGINES if any(fnmatch.fnmatchcase(e.name, p) for p in pats)]


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


def make_callable(engine, op, Store, payload):
    """A batch runner (common.call_batch) for one side."""
    fn = OP_FUNCS[op]
    if op in engine.consumes_key:
        return call_batch(common.bind(fn, Store), fresh=common.bind(seed_session, Store, payload))
    return call_batch(common.bind(fn, Store, seed_session(Store, payload)))


def check_engine(engine, payload):
    """Both sides must read each other's sessions on the same store (cookies: signed with the
    same key), freshly seeded and after a save."""
    stores = engine.stores()
    problems = []
    keys = {side: seed_session(Store, payload) for side, Store in stores.items()}
    other = {"django": "csessions", "csessions": "django"}
    for side, Store in stores.items():  # each side reads the other's session as stored...
        if dict(Store(keys[other[side]]).items()) != payload:
            problems.append(f"{side} cannot read {other[side]}'s session back")
    for side, Store in stores.items():  # ... and as it saved it
        s = Store(keys[side])
        s["counter"] = 1
        s.save()
        t = stores[other[side]](s.session_key)
        if t.get("counter") != 1 or t.get(PROBE_KEY) != payload[PROBE_KEY]:
            problems.append(f"{other[side]} cannot read {side}'s saved session")
    return problems


# --- codec share ----------------------------------------------------------------------------


def _store_codec(decode, encode, stored, payload):
    decode(stored)
    return encode(payload)


def _signing_codec(signing, cookie, payload):
    """What the signed-cookie engine's load() and save() do with the cookie."""
    from django.core.signing import JSONSerializer

    salt = common.SESSION_SALT
    signing.loads(cookie, salt=salt, serializer=JSONSerializer, max_age=common.SESSION_AGE)
    return signing.dumps(payload, compress=True, salt=salt, serializer=JSONSerializer)


def _pickle_codec(payload):
    return pickle.loads(pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))


def codec_callables(engine, payload):
    """{side: zero-argument callable}: the codec part of one cycle, each side on what it stores
    (checked to give the payload back); None when it is the cache backend's pickle on both."""
    if engine.codec is None:
        return None
    out = {}
    for side, Store in engine.stores().items():
        s = Store()
        if engine.codec == "signing":
            signing = importlib.import_module(f"{'django.core' if side == 'django' else 'csessions'}.signing")
            cookie = signing.dumps(payload, compress=True, salt=common.SESSION_SALT)
            fn = common.bind(_signing_codec, signing, cookie, payload)
            back = signing.loads(cookie, salt=common.SESSION_SALT)
        elif engine.codec == "shm" and side == "django":  # the cache backend's pickle
            fn = common.bind(_pickle_codec, payload)
            back = fn()
        else:
            decode, encode = s.decode, s.encode
            if engine.codec == "shm":
                # What shm keeps in its segment is not encode()'s signed format but its private
                # _pack(); the store hands the value back to _unpack() as a latin-1 str.
                decode, encode = s._unpack, lambda d: s._pack(d).decode("latin-1")
            stored = encode(payload)
            fn = common.bind(_store_codec, decode, encode, stored, payload)
            back = decode(stored)
        if back != payload:
            raise AssertionError(f"{engine.label} {side}: the codec does not give the payload back")
        out[side] = fn
    return out


# --- the run --------------------------------------------------------------------------------


def run(payloads, cfg, rng, engines=None, ops=OPS, payload_ops=OPS, sqlite_dir=None,
        codec=True, progress=None):
    """Measures ``ops`` on the typical payload (common.BAR_PAYLOAD) and those also in
    ``payload_ops`` on every payload, for each engine (default: all of ENGINES), plus (``codec``)
    the codec share of the cycle. Servers are started as needed and stopped before returning."""
    common.import_csessions()
    from django.test.utils import override_settings

    say = progress or (lambda s: None)
    out = {"timings": [], "codec": [], "skipped": [], "correctness": [], "stores": {},
           "plan": {"ops": list(ops), "payload_ops": list(payload_ops),
                    "typical": common.BAR_PAYLOAD}}
    with servers.Stores(sqlite_dir) as stores:
        for engine in ENGINES if engines is None else engines:
            try:
                overrides = engine.prepare(stores) if engine.prepare else {}
            except (servers.pg_server.PostgresError, servers.cache_servers.ServerError) as e:
                out["skipped"].append({"engine": engine.name, "payload": "all",
                                       "reason": f"store not available: {e}"})
                say(f"engine {engine.label}: SKIPPED, store not available: {e}")
                continue
            with override_settings(**overrides):
                _run_engine(engine, payloads, cfg, rng, ops, payload_ops, codec, out, say)
        out["stores"] = dict(stores.described)
    return out


def _run_engine(engine, payloads, cfg, rng, ops, payload_ops, codec, out, say):
    stores = engine.stores()
    tag = {"engine": engine.name, "label": engine.label, "family": engine.family}
    for pname, payload in payloads.items():
        reason = engine.skip(payload) if engine.skip else None
        if reason:
            out["skipped"].append({**tag, "payload": pname, "reason": reason})
            say(f"engine {engine.label} {pname}: skipped, {reason}")
            continue
        problems = (engine.check or check_engine)(engine, payload)
        out["correctness"].append({**tag, "payload": pname, "ok": not problems,
                                   "problems": problems})
        if problems:
            say(f"engine {engine.label} {pname}: FAIL " + "; ".join(problems))
        for op in ops:
            if op not in engine.ops or (pname != common.BAR_PAYLOAD and op not in payload_ops):
                continue
            contenders = {side: make_callable(engine, op, Store, payload)
                          for side, Store in stores.items()}
            r = measure(contenders, cfg, rng=rng)
            r.update(tag, payload=pname, op=op, parity=op in engine.parity_ops)
            if engine.clock:
                r["clock"] = engine.clock
            out["timings"].append(r)
            c, clk = r["contenders"], headline_clock(r)
            say(f"engine {engine.label:24} {op:9} {pname:7} django {fmt_ns(med(c['django'], clk)):>10}  "
                f"csessions {fmt_ns(med(c['csessions'], clk)):>10}  x{rat(r)['median']:.2f} {clk}"
                f" (x{rat(r, other_clock(clk))['median']:.2f} {other_clock(clk)})")
        if codec and "cycle" in ops:
            fns = codec_callables(engine, payload)
            if fns is None:
                out["codec"].append({**tag, "payload": pname, "na": CODEC_NA})
                continue
            r = measure({side: call_batch(fn) for side, fn in fns.items()}, cfg, rng=rng)
            r.update(tag, payload=pname, op="codec")
            out["codec"].append(r)
            say(f"engine {engine.label:24} {'codec':9} {pname:7} django "
                f"{fmt_ns(med(r['contenders']['django'])):>10}  csessions "
                f"{fmt_ns(med(r['contenders']['csessions'])):>10}  x{rat(r)['median']:.2f}")


# --- reports --------------------------------------------------------------------------------


def merge(a, b):
    """Two run() results as one."""
    out = {k: (a[k] + b[k] if isinstance(a[k], list) else a[k]) for k in a}
    out["stores"] = {**a["stores"], **b["stores"]}
    return out


def _codec_index(res):
    return {(c["engine"], c["payload"]): c for c in res.get("codec", ())}


def _codec_cells(r, codec):
    """Codec time per side (its share of that side's cycle) and django/csessions, cycle rows."""
    c = codec.get((r["engine"], r["payload"])) if r["op"] == "cycle" else None
    if c is None:
        return ["", "", ""]
    if "na" in c:
        return [c["na"], "", ""]
    cells = []
    for side in ("django", "csessions"):
        t = med(c["contenders"][side])
        share = t / med(r["contenders"][side], headline_clock(r))
        cells.append(f"{fmt_ns(t)} ({share:.0%})")
    return cells + [fmt_ratio(rat(c)["median"])]


def engine_headers():
    return ["engine", "payload", "op", "clock", "django median", "csessions median",
            "speed-up (IQR)", "speed-up, other clock", "django p99", "csessions p99",
            "codec django (% of cycle)", "codec csessions", "codec share ratio"]


def _order(r):
    """Typical payload first, then the payloads in their order; engines and ops in table order."""
    pay = [common.BAR_PAYLOAD] + [p for p in common.PAYLOAD_NAMES if p != common.BAR_PAYLOAD]
    return pay.index(r["payload"]), ENGINE_NAMES.index(r["engine"]), OPS.index(r["op"])


def engine_rows(res, family=None):
    codec = _codec_index(res)
    rows = []
    for r in sorted(res["timings"], key=_order):
        if family and r.get("family", "cookie") != family:
            continue
        clk = headline_clock(r)
        d, c, q = r["contenders"]["django"], r["contenders"]["csessions"], rat(r)
        o = rat(r, other_clock(clk))
        rows.append([r.get("label", r["engine"]), r["payload"], r["op"] + (" ‡" if r.get("parity") else ""),
                     clk, fmt_ns(med(d, clk)), fmt_ns(med(c, clk)),
                     f"{fmt_ratio(q['median'])} ({q['q1']:.2f}-{q['q3']:.2f})",
                     fmt_ratio(o["median"]) if o else "-",
                     fmt_ns(d.get("p99")), fmt_ns(c.get("p99"))] + _codec_cells(r, codec))
    return rows


PARITY_NOTE = ("‡ both sides run the same Django code for this op (signed_cookies delete() never "
               "touches the cookie; db and cached_db delete() are Django's): ~1x expected.")
CODEC_NOTE = (
    "*Codec* (cycle rows): the codec part of a cycle alone, each side on what it stores: "
    "`decode(stored)` + `encode(dict)` of the engine's SessionStore (file, db, cached_db; "
    "cached_db's cycle reads the dict from its cache, so only its encode is on the cycle's "
    "path), `signing.loads` + `dumps` with the cookie salt (signed cookies); its share of that "
    "side's cycle in brackets (a share above 100% means the cycle does less than a full "
    "decode + encode); *codec share ratio* = django codec / csessions codec. Cache engines "
    f"store the raw dict and the cache backend pickles it on both sides: {CODEC_NA}. shm rows: "
    "shm's side is `_unpack` + `_pack` (what it keeps in its segment), Django's side is the "
    "cache backend's pickle round trip (`pickle.loads(pickle.dumps(dict))`). *clock*: "
    "wall for engines whose store is a server (its work is not in this thread's CPU time), "
    "else the report clock (all the work is in this thread).")


def plan_note(res):
    p = res["plan"]
    if set(p["payload_ops"]) >= set(p["ops"]):
        return f"Ops measured on every payload: {', '.join(p['ops'])}."
    return (f"Ops measured on every payload: {', '.join(p['payload_ops']) or 'none'}; on the "
            f"{p['typical']} payload only (to keep the run short): "
            + ", ".join(o for o in p["ops"] if o not in p["payload_ops"]) + ".")


def report(res, heading="###"):
    """Markdown: one table per store family, then notes, skips and the stores used."""
    out = [plan_note(res)]
    fams = [f for f in FAMILIES if any(r.get("family") == f for r in res["timings"])]
    for f in fams:
        out += [f"\n{heading} {FAMILIES[f]}\n", table(engine_headers(), engine_rows(res, f))]
    out += ["", PARITY_NOTE, "", CODEC_NOTE]
    for s in res["skipped"]:
        out.append(f"\nNot measured: {s.get('label', s['engine'])} with {s['payload']}: {s['reason']}.")
    if res.get("stores"):
        out.append("\nStores: " + "; ".join(f"{k} {v}" for k, v in res["stores"].items()) + ".")
    return "\n".join(out)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--payloads", default=",".join(common.PAYLOAD_NAMES))
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = common.Config.quick(seed=a.seed) if a.quick else common.Config(seed=a.seed)
    payloads = common.load_payloads(a.payloads.split(","))
    common.print_environment(common.environment())
    import random

    res = run(payloads, cfg, random.Random(a.seed), select(a.engines),
              payload_ops=payload_ops(a), sqlite_dir=a.sqlite_dir,
              progress=lambda s: print(s, flush=True))
    print()
    print(report(res))
    return 0 if all(c["ok"] for c in res["correctness"]) else 1


def add_arguments(ap, default="all"):
    """The engine switches of engines.py and run.py."""
    ap.add_argument("--engines", default=default,
                    help="comma-separated engine names or shell patterns, or 'all' (default: "
                         f"{default}): {', '.join(ENGINE_NAMES)}")
    ap.add_argument("--engine-payload-ops", default=None,
                    help="ops measured on every payload (the rest on the typical payload only); "
                         f"default: {','.join(PAYLOAD_OPS)}, {','.join(QUICK_PAYLOAD_OPS)} with "
                         "--quick; 'all' for every op")
    ap.add_argument("--sqlite-dir", default=None,
                    help="directory of the SQLite database (default /dev/shm: no fsync wait)")


# Ops measured on every payload (the rest on the typical one only): all of them in a full run
# (~2.5 of run.py's ~4 minutes here); --quick keeps the cycle, the bar.
PAYLOAD_OPS = OPS
QUICK_PAYLOAD_OPS = ("cycle",)


def payload_ops(a):
    if a.engine_payload_ops is not None:
        return OPS if a.engine_payload_ops == "all" else tuple(
            o for o in a.engine_payload_ops.split(",") if o)
    return QUICK_PAYLOAD_OPS if a.quick else PAYLOAD_OPS


if __name__ == "__main__":
    sys.exit(common.cli(main))
