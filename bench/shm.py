"""csessions.backends.shm beside Django's cache engine on LocMem, in one interleaved run.

    .venv/bin/python bench/shm.py [--quick] [--payload typical] [--procs 2,4,8]

Contenders, on the reference payload (bench/data, or $CSESSIONS_BENCH_DATA):
  shm get / shm set     ShmStore.get / put(set) of the encoded session: the raw store
  shm file get / set    the same in file mode (CSESSIONS_SHM_PATH: a file in a temp dir)
  lmdb get / put        LMDB (py-lmdb) in a temp dir, the same key and encoded value: a get
                        in a read txn, one put per write txn as a session store does; the env
                        is opened sync=False (no fsync per commit, the durability class of the
                        file mode); a few fsynced puts are timed apart, after the rounds
  locmem get / set      Django's LocMem cache get / set of the session dict (what its cache
                        engine stores; LocMem pickles it)
  shm cycle             SessionStore(key); s["counter"] = s.get("counter", 0) + 1; s.save()
  locmem cycle          the same through django.contrib.sessions.backends.cache on LocMem

Method: R rounds; each round runs every contender for a batch of N calls, in an order shuffled
anew each round, timing each call with perf_counter_ns (so p99 is per call; the ~40 ns of
timer overhead is included, not subtracted). Reported: median and p99 over all calls, and the
median over rounds of the per-round ratio LocMem/shm for the cycle.

With --procs, the shm cycle again in 2, 4, 8 processes at once (one segment, distinct keys),
each timing its own calls: median and p99 of all of them.
"""

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time

import common
import servers

try:
    import lmdb
except ImportError:
    sys.exit("bench/shm.py needs LMDB's Python binding to compare with: pip install lmdb "
             "(.venv/bin/pip install lmdb)")

common.setup_django()

from django.conf import settings  # noqa: E402
from django.contrib.sessions.backends import cache as dj_cache  # noqa: E402
from django.contrib.sessions.backends import file as dj_file  # noqa: E402
from django.core.cache import caches  # noqa: E402

from csessions import _core  # noqa: E402
from csessions.backends import shm  # noqa: E402


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def fmt(ns):
    return f"{ns / 1000:.2f} us"


def timed(fn, n, out):
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        fn()
        out.append(pc() - t0)


def lmdb_env(tmp, sync):
    return lmdb.open(os.path.join(tmp, f"lmdb-{'sync' if sync else 'nosync'}"),
                     map_size=256 * 1024 * 1024, sync=sync, metasync=sync)


def lmdb_fsync_put(tmp, key, value, n):
    """Median and p99 of n durable LMDB puts (fsync per commit): too slow to interleave."""
    env = lmdb_env(tmp, True)
    try:
        out = []
        timed(lambda: lmdb_put(env, key, value), n, out)
    finally:
        env.close()
    return statistics.median(out), percentile(out, 0.99)


def lmdb_put(env, key, value):
    with env.begin(write=True) as txn:
        txn.put(key, value)


def lmdb_get(env, key):
    with env.begin() as txn:
        return txn.get(key)


def contenders(payload, tmp, stores):
    handle = shm.store()
    filed = _core.ShmStore("csessions-bench-file", shm.DEFAULT_SIZE,
                           path=os.path.join(tmp, "sessions.shm"))
    env = lmdb_env(tmp, False)
    cache = caches["default"]
    key = "k" * 32
    now = int(time.time())
    encoded = shm.SessionStore()._pack(payload)  # what the engine stores (bytes)
    handle.put(key, encoded, now + 3600, now, 0)
    filed.put(key, encoded, now + 3600, now, 0)
    lkey, lvalue = key.encode(), encoded
    lmdb_put(env, lkey, lvalue)
    # The store hands values out as latin-1 str (one byte per code point).
    assert lmdb_get(env, lkey) == lvalue and filed.get(key, now) == encoded.decode("latin-1")
    cache.set("bench-raw", payload, 3600)

    s = shm.SessionStore()
    s.update(payload)
    s.save()
    shm_key = s.session_key
    d = dj_cache.SessionStore()
    d.update(payload)
    d.save()
    dj_key = d.session_key

    def shm_cycle():
        s = shm.SessionStore(shm_key)
        s["counter"] = s.get("counter", 0) + 1
        s.save()

    def locmem_cycle():
        s = dj_cache.SessionStore(dj_key)
        s["counter"] = s.get("counter", 0) + 1
        s.save()

    redis_alias = stores.cache("redis")

    class RedisStore(dj_cache.SessionStore):  # Django's cache engine on a real redis-server
        def __init__(self, session_key=None):
            super().__init__(session_key)
            self._cache = caches[redis_alias]

    settings.SESSION_FILE_PATH = stores.tmpdir("files", parent=tempfile.gettempdir())
    cycles = {"redis cycle": RedisStore, "django file cycle": dj_file.SessionStore}
    keys = {}
    for label, Store in cycles.items():
        x = Store()
        x.update(payload)
        x.save()
        keys[label] = x.session_key
        assert Store(x.session_key)[common_key(payload)] == payload[common_key(payload)]

    def slow_cycle(label):
        Store, k = cycles[label], keys[label]

        def cycle():
            s = Store(k)
            s["counter"] = s.get("counter", 0) + 1
            s.save()

        return cycle

    return {
        "shm get": lambda: handle.get(key, now),
        "shm set": lambda: handle.put(key, encoded, now + 3600, now, 0),
        "shm file get": lambda: filed.get(key, now),
        "shm file set": lambda: filed.put(key, encoded, now + 3600, now, 0),
        "lmdb get": lambda: lmdb_get(env, lkey),
        "lmdb put": lambda: lmdb_put(env, lkey, lvalue),
        "locmem get": lambda: cache.get("bench-raw"),
        "locmem set": lambda: cache.set("bench-raw", payload, 3600),
        "shm cycle": shm_cycle,
        "locmem cycle": locmem_cycle,
        "redis cycle": slow_cycle("redis cycle"),
        "django file cycle": slow_cycle("django file cycle"),
    }


SLOW = {"redis cycle": 20, "django file cycle": 20}  # contenders timed on n // this calls


def common_key(payload):
    return next(iter(payload))


def interleaved(fns, rounds, n, rng):
    samples = {name: [] for name in fns}
    per_round = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        timed(fn, max(1, n // SLOW.get(name, 1)), [])
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            batch = []
            timed(fns[name], max(1, n // SLOW.get(name, 1)), batch)
            samples[name] += batch
            per_round[name].append(statistics.median(batch))
    return samples, per_round


def multi(procs, iterations, payload):
    """The shm cycle in `procs` processes at once; (median, p99) over all their calls."""
    readers = []
    for p in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            s = shm.SessionStore()
            s.update(payload)
            s.save()
            k = s.session_key
            out = []

            def cycle():
                s = shm.SessionStore(k)
                s["counter"] = s.get("counter", 0) + 1
                s.save()

            timed(cycle, iterations // 10, [])
            timed(cycle, iterations, out)
            os.write(w, ",".join(map(str, out)).encode())
            os._exit(0)
        os.close(w)
        readers.append((pid, r))
    everything = []
    for pid, r in readers:
        chunks = []
        while True:
            b = os.read(r, 1 << 20)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        os.waitpid(pid, 0)
        everything += [int(x) for x in b"".join(chunks).decode().split(",") if x]
    return statistics.median(everything), percentile(everything, 0.99)


# Issue #4's bars: (label, measured value key, limit, "max" or "min")
BARS = [
    ("cycle median <= 5 us", "shm cycle median", 5000, "max"),
    ("cycle >= 6x Django's cache engine on LocMem", "locmem/shm", 6, "min"),
    ("cycle >= 20x Django's cache engine on Redis", "redis/shm", 20, "min"),
    ("cycle >= 50x Django's file engine", "file/shm", 50, "min"),
    ("raw get median <= 1 us", "shm get median", 1000, "max"),
    ("raw set median <= 2 us", "shm set median", 2000, "max"),
    ("p99 <= 20 us with 2, 4 and 8 processes", "worst multi p99", 20000, "max"),
]


def fmt_bar(key, v):
    return f"{v:.1f}x" if "/" in key else fmt(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--payload", default="typical", choices=common.PAYLOAD_NAMES)
    ap.add_argument("--procs", default="2,4,8", help="'' to skip the multi-process part")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write shm.md and shm.json there")
    a = ap.parse_args(argv)
    payload = common.load_payloads([a.payload])[a.payload]
    name = f"csessions-bench-{os.getpid()}-{secrets.token_hex(4)}"
    settings.CSESSIONS_SHM_NAME = name
    rounds, n = (10, 500) if a.quick else (30, 2000)
    rng = random.Random(a.seed)
    tmp = tempfile.TemporaryDirectory(prefix="csessions-bench-")
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    try:
        with servers.Stores() as stores:
            env = common.environment()
            common.print_environment(env)
            say(f"\npayload {a.payload} ({common.compact_size(payload)} B of JSON), {rounds} rounds "
                f"x {n} calls per contender (redis and file cycles: {n // 20}), interleaved\n")
            samples, per_round = interleaved(contenders(payload, tmp.name, stores), rounds, n, rng)
        rows = [(name_, fmt(statistics.median(xs)), fmt(percentile(xs, 0.99)))
                for name_, xs in samples.items()]
        med, p99 = lmdb_fsync_put(tmp.name, b"k" * 32, shm.SessionStore()._pack(payload),
                                  20 if a.quick else 100)
        rows.append(("lmdb put, fsync (apart)", fmt(med), fmt(p99)))
        say(common.table(["contender", "median", "p99"], rows))
        measured = {"shm cycle median": statistics.median(samples["shm cycle"]),
                    "shm get median": statistics.median(samples["shm get"]),
                    "shm set median": statistics.median(samples["shm set"])}
        for other, label in (("locmem cycle", "locmem/shm"), ("redis cycle", "redis/shm"),
                             ("django file cycle", "file/shm")):
            ratios = [o / c for o, c in zip(per_round[other], per_round["shm cycle"])]
            measured[label] = statistics.median(ratios)
            say(f"cycle: {other} / shm cycle = {measured[label]:.2f}x (median of per-round "
                f"ratios; min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
        if a.procs:
            say("\nshm cycle, processes at once (one segment, 2 cores):")
            rows, worst = [], 0
            for p in [int(x) for x in a.procs.split(",")]:
                med, p99 = multi(p, 2000 if a.quick else 20000, payload)
                worst = max(worst, p99)
                rows.append((str(p), fmt(med), fmt(p99)))
            measured["worst multi p99"] = worst
            say(common.table(["processes", "median", "p99"], rows))
        say("\nIssue #4's bars (typical payload, this run):\n")
        bar_rows = []
        for label, key, limit, kind in BARS:
            if key not in measured:
                continue
            v = measured[key]
            ok = v <= limit if kind == "max" else v >= limit
            bar_rows.append((label, fmt_bar(key, v), "met" if ok else "**not met**"))
        say(common.table(["bar", "measured", "verdict"], bar_rows))
        say(f"\nstore counters: {shm.stats()}")
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "shm.md"), "w") as f:
                f.write("# csessions.backends.shm (bench/shm.py)\n\n```\n" + "\n".join(lines)
                        + "\n```\n")
            with open(os.path.join(a.out, "shm.json"), "w") as f:
                json.dump({"environment": env, "measured": measured,
                           "medians_ns": {k: statistics.median(v) for k, v in samples.items()},
                           "p99_ns": {k: percentile(v, 0.99) for k, v in samples.items()}},
                          f, indent=1, default=str)
    finally:
        shm.store().close()
        _core.shm_unlink(name)
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(common.cli(main))
