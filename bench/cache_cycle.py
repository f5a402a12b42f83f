"""Cache engine: csessions.backends.cache vs django.contrib.sessions.backends.cache.

Starts a redis-server and a memcached on 127.0.0.1 (tests/cache_servers.py; no persistence) and
times, with the typical payload, interleaved rounds (common.measure: shuffled order per round,
medians over rounds, per-round ratio django/csessions):

  cycle   SessionStore(key); s["counter"] = s.get("counter", 0) + 1; s.save(); s.session_key
          (a request that modifies its session; the headline number)
  load    SessionStore(key); s["_auth_user_id"]
  create  SessionStore(); s["k"] = 1; s.save(); s.session_key   (a new visitor)

on LocMem, Redis (Django's RedisCache and django-redis) and memcached (PyMemcacheCache).
Both engines store the raw session dict, which the cache backend pickles; the differences are
round trips (csessions: create() is one add(), save() checks with has_key() instead of get())
and the C key generator. The cache servers run on the same machine, so a round trip here is
~20-50 us of loopback and client code; over a real network the round trips saved weigh more.

"value" section: why csessions stores raw dicts. Per cycle, the backend serializes the session
once (save) and deserializes it once or twice (load, and Django's save() re-reads it). Timed: the
pickle round trip of the dict (what both engines pay) against storing csessions' C-encoded bytes
instead (C JSON inside pickle), and the signed + compressed encode()/decode() of the db engine.

Usage: .venv/bin/python bench/cache_cycle.py [--quick] [--backends locmem,redis,...] [--json PATH]
"""

import argparse
import json
import pickle
import random
import sys
from pathlib import Path

import common
import engines
from common import call_batch, fmt_ns, fmt_ratio, measure, med, other_clock, rat, table

sys.path.insert(0, str(common.REPO / "tests"))
import cache_servers  # noqa: E402

BACKENDS = ("locmem", "redis", "django-redis", "memcached")
OPS = ("cycle", "load", "create")


def configure(locations):
    import django
    from django.conf import settings

    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
              "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "bench"}}
    if "redis" in locations:
        caches["redis"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                           "LOCATION": locations["redis"]}
        caches["django-redis"] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": locations["redis"]}
    if "memcached" in locations:
        caches["memcached"] = {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
                               "LOCATION": locations["memcached"]}
    settings.configure(
        SECRET_KEY=common.SECRET_KEY,
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions"],
        SESSION_SERIALIZER="django.core.signing.JSONSerializer",
        SESSION_COOKIE_AGE=1209600,
        CACHES=caches,
        LOGGING_CONFIG=None,
    )
    django.setup()


OP_FUNCS = {op: engines.OP_FUNCS[op] for op in OPS}  # the same operations as run.py's


def stores():
    from django.contrib.sessions.backends.cache import SessionStore as Dj

    from csessions.backends.cache import SessionStore as Cs

    return {"django": Dj, "csessions": Cs}


def seed(Store, payload):
    s = Store()
    s.update(payload)
    s.save()
    return s.session_key


def check(payload):
    """Each engine reads what the other wrote, and the entry is the raw dict."""
    from django.core.cache import caches

    from csessions.conf import setting

    problems = []
    st = stores()
    for side, other in (("django", "csessions"), ("csessions", "django")):
        key = seed(st[side], payload)
        if dict(st[other](key).items()) != payload:
            problems.append(f"{other} cannot read {side}'s session")
        raw = caches[setting("SESSION_CACHE_ALIAS")].get(st[side].cache_key_prefix + key)
        if raw != payload:
            problems.append(f"{side} did not store the raw dict")
    return problems


def run_backend(backend, payload, cfg, rng, ops, progress):
    from django.core.cache import caches
    from django.test.utils import override_settings

    out = []
    with override_settings(SESSION_CACHE_ALIAS=backend):
        caches[backend].clear()
        problems = check(payload)
        if problems:
            progress(f"{backend}: FAIL " + "; ".join(problems))
        for op in ops:
            contenders = {}
            for side, Store in stores().items():
                key = seed(Store, payload)
                contenders[side] = call_batch(common.bind(OP_FUNCS[op], Store, key))
            r = measure(contenders, cfg, rng=rng)
            r.update(backend=backend, op=op, problems=problems)
            out.append(r)
            c = r["contenders"]
            progress(f"{backend:12} {op:6} django {fmt_ns(med(c['django'])):>10}  csessions "
                     f"{fmt_ns(med(c['csessions'])):>10}  x{rat(r)['median']:.2f} "
                     f"(cpu clock x{rat(r, other_clock())['median']:.2f})")
        caches[backend].clear()
    return out


def run_values(payload, cfg, rng):
    """The value codec alone: what the cache backend does to a session on a cycle."""
    from csessions import _core, signing

    hp = pickle.HIGHEST_PROTOCOL
    salt = "django.contrib.sessions.SessionStore"

    def pickled_dict():
        return pickle.loads(pickle.dumps(payload, hp))

    def c_json_in_pickle():
        return _core.json_loads(pickle.loads(pickle.dumps(_core.json_dumps(payload), hp)))

    def c_signed_in_pickle():
        return signing.loads(pickle.loads(pickle.dumps(
            signing.dumps(payload, salt=salt, compress=True), hp)), salt=salt)

    assert pickled_dict() == c_json_in_pickle() == c_signed_in_pickle() == payload
    contenders = {"django": call_batch(pickled_dict), "csessions": call_batch(c_json_in_pickle),
                  "signed": call_batch(c_signed_in_pickle)}
    r = measure(contenders, cfg, rng=rng)
    sizes = {"pickled dict": len(pickle.dumps(payload, hp)),
             "pickled C JSON": len(pickle.dumps(_core.json_dumps(payload), hp)),
             "pickled signed+zlib": len(pickle.dumps(signing.dumps(payload, salt=salt, compress=True), hp))}
    return r, sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", metavar="PATH", help="also write every measurement here")
    a = ap.parse_args(argv)
    backends = a.backends.split(",")
    ops = a.ops.split(",")
    for b in backends:
        if b not in BACKENDS:
            raise common.BenchError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    cfg = common.Config.quick(seed=a.seed) if a.quick else common.Config(seed=a.seed)
    rng = random.Random(a.seed)
    payload = common.load_payloads(["typical"])["typical"]

    with cache_servers.start_redis() as redis, cache_servers.start_memcached() as memcached:
        configure({"redis": redis.location, "memcached": memcached.location})
        common.import_csessions()
        env = common.environment()
        common.print_environment(env)
        print(f"Servers   redis-server 127.0.0.1:{redis.port}, memcached 127.0.0.1:{memcached.port}\n")
        results = []
        for backend in backends:
            results += run_backend(backend, payload, cfg, rng, ops, lambda s: print(s, flush=True))
        values, sizes = run_values(payload, cfg, rng)

    print()
    rows = []
    for r in results:
        d, c, q = r["contenders"]["django"], r["contenders"]["csessions"], rat(r)
        rows.append([r["backend"], r["op"], fmt_ns(med(d)), fmt_ns(med(c)),
                     f"{fmt_ratio(q['median'])} ({q['q1']:.2f}-{q['q3']:.2f})",
                     fmt_ratio(rat(r, other_clock())["median"]), fmt_ns(d.get("p99")), fmt_ns(c.get("p99"))])
    print(table(["backend", "op", "django median", "csessions median",
                 f"speed-up (IQR) [{common.REPORT_CLOCK}]", f"speed-up [{other_clock()}]",
                 "django p99", "csessions p99"], rows))

    vc = values["contenders"]
    base = med(vc["django"])
    print("\nValue stored per session (typical payload), serialize + deserialize once, median:")
    print(table(["stored value", "time", "vs pickled dict", "bytes"], [
        ["raw dict (pickled by the backend; both engines)", fmt_ns(base), "1.00x", sizes["pickled dict"]],
        ["C JSON bytes (pickled by the backend)", fmt_ns(med(vc["csessions"])),
         fmt_ratio(base / med(vc["csessions"])), sizes["pickled C JSON"]],
        ["C signed + zlib encode() (pickled by the backend)", fmt_ns(med(vc["signed"])),
         fmt_ratio(base / med(vc["signed"])), sizes["pickled signed+zlib"]],
    ]))
    problems = [p for r in results for p in r["problems"]]
    if a.json:
        Path(a.json).write_text(json.dumps({"environment": env, "config": cfg.as_dict(),
                                            "timings": results, "values": values, "sizes": sizes},
                                           indent=1, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(common.cli(main))
