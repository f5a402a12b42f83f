"""Scale: how each session store's cost grows with the number of sessions and their size.

    .venv/bin/python bench/scale.py [--quick] [--out bench/results] [--stores shm,sqlite,...]

Stores (every server is private: tests/pg_server.py, tests/cache_servers.py; every file,
database and segment lives in a temporary place removed at the end, also on error or Ctrl-C):

  shm      csessions.backends.shm, one 2 GiB segment of its own (no Django twin)
  locmem   the cache engine on Django's LocMemCache, csessions and Django
  redis    the cache engine on Django's RedisCache (redis-server), csessions and Django
  memcached  the cache engine on Django's PyMemcacheCache (memcached, 2 GiB), csessions and Django
  sqlite   the db engine on SQLite (a file in the temporary directory), csessions and Django
  pg       the db engine on PostgreSQL (fsync off: the disk's noise is not what is measured)
  file     the file engine, csessions and Django

1. Number of sessions N = 1e3 .. 1e6 (1e3, 1e4 with --quick; Django's clear_expired() on
   files stops at 1e5, see DJANGO_FILE_CLEAR_MAX_N). Per store and N: the store is emptied and filled with N sessions of the
   ``typical`` payload, 10% of them expired, by bulk store-level writes of what the engine
   itself stores (encode() for db and file; for shm the value of one session saved through
   the engine, read back raw; the pickled dict the cache backend keeps for the cache engine): one INSERT ... SELECT over generated keys for the
   databases, a pipeline for Redis, the backend's dicts for LocMem, ShmStore.put, hard links
   to a few template files. Then, after checking that each engine loads the stored payload back (and an expired
   key as empty), ``SessionStore(key).load()`` is timed per call on random live keys (median
   and p99; the engines of one store interleaved in chunks, common.sample_calls), and
   ``clear_expired()`` of each engine (the expired 10% written again before the second one;
   afterwards exactly the live sessions must be left). The cache engines' clear_expired() is
   Django's no-op (the cache expires entries itself): timed, but not charted.
2. Payload size: per store, 1,000 sessions of each payload (small .. huge), then the cycle
   ``s = SessionStore(key); s["counter"] = s.get("counter", 0) + 1; s.save()`` on random keys
   of one payload; every (engine, payload) pair of a store interleaved in one common.measure()
   (shuffled rounds, median of per-call time, median of per-round ratios Django/csessions).
3. shm: flatness of the lookup (median at the largest N / median at 1e3, for the raw
   ``ShmStore.get`` and for ``SessionStore.load``, against the 1.2x bar), beside its floor (one
   dependent read at a random place in as much memory as the sessions take, memory_chase, timed
   in the same interleaved rounds: what any store pays at least to read a session), and memory per session
   beyond the payload from ``stats()``: the fixed part (entry header + the key's index slot) and
   the actual one (bytes_used + index, minus the value bytes: key, header, buddy rounding).

One settings object serves every store: a database router sends the session model to the
database under test (the same router call for both engines), SESSION_CACHE_ALIAS picks the
cache. Writes bench/results/scale.json, scale.md and scale_sessions.png,
scale_clear_expired.png, scale_payload.png (log-log, one line per store and engine).
"""

import argparse
import itertools
import json
import os
import pickle
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import common
from common import fmt_ns, fmt_ratio, table

sys.path.insert(0, str(common.REPO / "tests"))
import cache_servers  # noqa: E402
import pg_server  # noqa: E402

LEVELS = (1_000, 10_000, 100_000, 1_000_000)
QUICK_LEVELS = (1_000, 10_000)
# Django's clear_expired() over a million files (it decodes every one in Python) takes ~150 s
# here, too much of the 15-minute budget; the trend is clear by 1e5. csessions' runs at 1e6.
DJANGO_FILE_CLEAR_MAX_N = 100_000
LINKS_PER_FILE = 60_000  # ext4 allows 65,000 names for one inode
EXPIRED_SHARE = 0.10
PAYLOAD_N = 1_000
SHM_SIZE = 2 << 30  # room for 1e6 typical sessions (1 KiB blocks) with no eviction
AGE = 1_209_600  # SESSION_COOKIE_AGE in common.setup_django
FLAT_BAR = 1.2
SHM_BLOCK = 1024  # the block a typical session takes in the segment (shm_memory() reports it)
FIXED_BAR = 64
KEY_DIGITS = 31  # keys are "a" (live) or "e" (expired) + 31 digits: 32 chars of [a-z0-9]
STORE_NAMES = ("shm", "locmem", "redis", "memcached", "sqlite", "pg", "file")
LABELS = {"shm": "shm", "locmem": "LocMem", "redis": "Redis", "memcached": "memcached",
          "sqlite": "SQLite", "pg": "PostgreSQL", "file": "file"}
COLORS = {"shm": "tab:red", "locmem": "tab:orange", "redis": "tab:purple", "memcached": "tab:pink",
          "sqlite": "tab:blue", "pg": "tab:green", "file": "tab:brown"}
CACHE_STORES = ("locmem", "redis", "memcached")  # clear_expired() is Django's no-op there
MEMCACHED_MB = 2048  # 1e6 typical sessions take ~1 GiB of its slabs
SHM_GET = "csessions (raw ShmStore.get)"


def live_key(i, letter="a"):
    return f"{letter}{i:0{KEY_DIGITS}d}"


def expired_key(i):
    return f"e{i:0{KEY_DIGITS}d}"


def keys(n_live, n_expired, letter="a"):
    return [live_key(i, letter) for i in range(n_live)] + [expired_key(i) for i in range(n_expired)]


class Router:
    """Sends every model to ``alias``: the database under test, for both engines alike."""

    alias = "default"

    def db_for_read(self, model, **hints):
        return self.alias

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, **hints):
        return True


ROUTER = Router()


# ------------------------------------------------------------------------------------ stores


class Store:
    """One session store: ``engines`` {side: SessionStore class}; ``fill`` writes n_live live
    and n_expired expired sessions of a payload (keys live_key(i, letter)/expired_key(i),
    i = 0..n-1) straight into the store; ``count`` says how many it holds."""

    name = ""
    clears = True  # False: clear_expired() is a no-op (the cache expires entries itself)
    expires_lazily = False  # True: count() may still include expired sessions not yet reclaimed
    clear_max_n = {}  # side -> largest N whose clear_expired() is timed (default: every N)

    def engines(self):
        raise NotImplementedError

    def activate(self):
        pass

    def reset(self):
        raise NotImplementedError

    def fill(self, payload, n_live, n_expired, letter="a"):
        raise NotImplementedError

    def count(self):
        raise NotImplementedError

    def close(self):
        pass


def _engine_pair(module):
    import importlib

    return {"csessions": importlib.import_module(f"csessions.backends.{module}").SessionStore,
            "django": importlib.import_module(f"django.contrib.sessions.backends.{module}").SessionStore}


class ShmStore(Store):
    name = "shm"

    def __init__(self):
        from django.conf import settings

        from csessions.backends import shm

        self.shm = shm
        self.segment = f"csessions-bench-scale-{os.getpid()}-{secrets.token_hex(4)}"
        self.segments = []  # every name used, for close()
        settings.CSESSIONS_SHM_SIZE = SHM_SIZE
        self.use(self.segment)

    def use(self, name):
        """Points the engine at segment ``name``, as a settings change does."""
        from django.conf import settings
        from django.core.signals import setting_changed

        if getattr(settings, "CSESSIONS_SHM_NAME", None) != name:
            settings.CSESSIONS_SHM_NAME = name
            setting_changed.send(sender=type(settings), setting="CSESSIONS_SHM_NAME", value=name,
                                 enter=True)
        if name not in self.segments:
            self.segments.append(name)

    def engines(self):
        return {"csessions": self.shm.SessionStore}

    def handle(self):
        return self.shm.store()

    def reset(self):
        self.shm.recreate()

    def stored_value(self, payload):
        """The bytes the engine stores for ``payload`` (its format is the engine's own
        business): one session saved through the engine, read back raw, then deleted."""
        s = self.shm.SessionStore()
        s.update(payload)
        s.save()
        now = int(time.time())
        value = self.handle().get(s.session_key, now)
        self.handle().delete(s.session_key, now)
        return value if isinstance(value, bytes) else value.encode("latin-1")

    def fill(self, payload, n_live, n_expired, letter="a"):
        value = self.stored_value(payload)
        put = self.handle().put
        now = int(time.time())
        # The writes' own incremental sweep reclaims what is expired at the `now` they are
        # given: an hour in the past keeps the expired tenth for clear_expired().
        then = now - 3600
        stored = sum(put(live_key(i, letter), value, now + AGE, then, 0) for i in range(n_live))
        stored += sum(put(expired_key(i), value, now - 60, then, 0) for i in range(n_expired))
        if stored != n_live + n_expired:
            raise common.BenchError(f"shm: {n_live + n_expired - stored} puts failed")

    def count(self):
        return self.handle().stats()["entries"]

    def close(self):
        from csessions import _core

        for name in self.segments:
            self.use(name)
            self.handle().close()
            _core.shm_unlink(name)


class CacheStore(Store):
    clears = False

    def __init__(self, alias):
        self.alias = alias

    def cache(self):
        from django.core.cache import caches

        return caches[self.alias]

    def engines(self):
        return _engine_pair("cache")

    def activate(self):
        from django.conf import settings

        settings.SESSION_CACHE_ALIAS = self.alias

    def reset(self):
        self.cache().clear()


class LocMemStore(CacheStore):
    name = "locmem"

    def fill(self, payload, n_live, n_expired, letter="a"):
        from django.contrib.sessions.backends.cache import KEY_PREFIX

        cache = self.cache()
        blob = pickle.dumps(payload, cache.pickle_protocol)  # what LocMemCache.set() stores
        make = cache.make_key
        ks = [make(KEY_PREFIX + k) for k in keys(n_live, n_expired, letter)]
        now = time.time()
        with cache._lock:
            cache._cache.update(dict.fromkeys(ks, blob))
            cache._expire_info.update(dict.fromkeys(ks[:n_live], now + AGE))
            cache._expire_info.update(dict.fromkeys(ks[n_live:], now - 60))

    def count(self):
        return len(self.cache()._cache)


# Redis writes the keys itself: a million SETs through a client pipeline take ~15 s here.
FILL_LUA = f"""
for i = tonumber(ARGV[4]), tonumber(ARGV[5]) - 1 do
  redis.call('SET', ARGV[1] .. string.format('%0{KEY_DIGITS}d', i), ARGV[2], 'PX', ARGV[3])
end
"""


class RedisStore(CacheStore):
    name = "redis"
    expires_lazily = True

    def client(self):
        return self.cache()._cache.get_client(None, write=True)

    def fill(self, payload, n_live, n_expired, letter="a"):
        from django.contrib.sessions.backends.cache import KEY_PREFIX

        cache = self.cache()
        blob = cache._cache._serializer.dumps(payload)  # what RedisCache.set() stores
        prefix = cache.make_key(KEY_PREFIX)  # + session key: the key Django's engine uses
        assert prefix + live_key(0) == cache.make_key(KEY_PREFIX + live_key(0))
        client = self.client()
        # Expired: a 1 ms TTL, gone (lazily, or by Redis' active expiry) when read.
        for first, n, ttl in ((letter, n_live, AGE * 1000), ("e", n_expired, 1)):
            for start in range(0, n, 100_000):  # short scripts: Redis serves nothing meanwhile
                client.eval(FILL_LUA, 0, prefix + first, blob, ttl, start, min(n, start + 100_000))
        # The 1 ms TTLs must have run out before check_loads() reads one: right after a small
        # fill, the last expired keys can still be younger than that.
        time.sleep(0.005)

    def count(self):
        return self.client().dbsize()


class MemcachedStore(CacheStore):
    name = "memcached"
    expires_lazily = True

    def client(self):
        return self.cache()._cache  # pymemcache's HashClient, with Django's pickle serde

    def fill(self, payload, n_live, n_expired, letter="a"):
        from django.contrib.sessions.backends.cache import KEY_PREFIX

        cache = self.cache()
        prefix = cache.make_key(KEY_PREFIX)
        assert prefix + live_key(0) == cache.make_key(KEY_PREFIX + live_key(0))
        client = self.client()
        # What PyMemcacheCache.set() stores (its serde's pickle and flags), pickled once.
        blob, flags = next(iter(client.clients.values())).serde.serialize(prefix, payload)
        host, port = self.cache()._servers[0].rsplit(":", 1)
        # Raw "set ... noreply" commands on one socket (pymemcache's set_many takes ~55 s for a
        # million here), then a version round trip: memcached answers in order, so every set has
        # been applied when the version arrives. Expired: an absolute expiry time in the past
        # (memcached reads an exptime over 30 days as a Unix time), gone when read, as on Redis.
        with socket.create_connection((host, int(port))) as sock:
            for make, n, ttl in ((lambda i: live_key(i, letter), n_live, AGE),
                                 (expired_key, n_expired, int(time.time()) - 60)):
                tail = f" {flags} {ttl} {len(blob)} noreply\r\n".encode()
                for start in range(0, n, 10_000):
                    sock.sendall(b"".join(
                        b"set " + (prefix + make(i)).encode() + tail + blob + b"\r\n"
                        for i in range(start, min(n, start + 10_000))))
            sock.sendall(b"version\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise common.BenchError("memcached closed the connection during the fill")
                reply += chunk
            if not reply.startswith(b"VERSION"):
                raise common.BenchError(f"memcached refused the fill: {reply[:200]!r}")

    # flush_all leaves memcached's item count as it was (items go lazily), so a level starts
    # in a fresh key namespace instead: the cache's version, which both engines' keys carry.
    base = 0

    def items(self):
        return sum(int(st[b"curr_items"]) for st in
                   (c.stats() for c in self.client().clients.values()))

    def reset(self):
        self.cache().version += 1
        self.base = self.items()

    def count(self):
        return self.items() - self.base


class DbStore(Store):
    def __init__(self, name, alias):
        self.name, self.alias = name, alias

    def engines(self):
        return _engine_pair("db")

    def activate(self):
        ROUTER.alias = self.alias

    def execute(self, sql, params=()):
        from django.db import connections

        with connections[self.alias].cursor() as c:
            c.execute(sql, params)
            return c.fetchone() if c.description else None

    def reset(self):
        # TRUNCATE: PostgreSQL's DELETE would write a new version of each of a million rows.
        self.execute("TRUNCATE django_session" if self.name == "pg" else "DELETE FROM django_session")

    def fill(self, payload, n_live, n_expired, letter="a"):
        from django.db import connections

        from csessions.backends.db import SessionStore

        ops = connections[self.alias].ops
        value = SessionStore().encode(payload)
        now = datetime.now(timezone.utc)
        for prefix, n, expiry in ((letter, n_live, now + timedelta(seconds=AGE)),
                                  ("e", n_expired, now - timedelta(hours=1))):
            if n:
                self.insert(prefix, n, value, ops.adapt_datetimefield_value(expiry))
        if self.name == "pg":
            self.execute("ANALYZE django_session")

    def insert(self, prefix, n, value, expiry):
        if self.name == "pg":
            self.execute(
                "INSERT INTO django_session (session_key, session_data, expire_date) "
                f"SELECT %s || lpad(i::text, {KEY_DIGITS}, '0'), %s, %s "
                "FROM generate_series(0, %s) AS i", [prefix, value, expiry, n - 1])
        else:
            self.execute(
                "INSERT INTO django_session (session_key, session_data, expire_date) "
                "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < %s) "
                "SELECT %s || printf(%s, i), %s, %s FROM c",
                [n, prefix, f"%0{KEY_DIGITS}d", value, expiry])

    def count(self):
        return self.execute("SELECT count(*) FROM django_session")[0]


class FileStore(Store):
    name = "file"
    clear_max_n = {"django": DJANGO_FILE_CLEAR_MAX_N}

    def __init__(self, tmp):
        from django.conf import settings

        self.dir = os.path.join(tmp, "files")
        self.templates = os.path.join(tmp, "file-templates")
        os.mkdir(self.dir)
        os.mkdir(self.templates)
        settings.SESSION_FILE_PATH = self.dir

    def engines(self):
        return _engine_pair("file")

    def reset(self):
        for entry in os.scandir(self.dir):
            os.unlink(entry.path)

    def fill(self, payload, n_live, n_expired, letter="a"):
        from csessions.backends.file import SessionStore

        prefix = os.path.join(self.dir, common.COOKIE_NAME)
        live = SessionStore().encode(payload).encode()
        # Expired by Django's rule for files: no custom expiry, mtime older than the cookie age
        # (the typical payload's own _session_expiry is an int, which never expires a file).
        stale = SessionStore().encode({k: v for k, v in payload.items() if k != "_session_expiry"}).encode()
        old = time.time() - 2 * AGE
        # Hard links to a few template files: a link is one metadata write where a new file
        # is three system calls and a data block (a million files: ~25 s instead of ~100 s).
        # Every engine reads a link as the file it is; the expired ones share the old mtime.
        template = None
        for i in range(n_live + n_expired):
            expired = i >= n_live
            j = i - n_live if expired else i
            if j % LINKS_PER_FILE == 0:
                template = os.path.join(self.templates, f"{letter}{int(expired)}-{j}")
                with open(template, "xb") as f:
                    f.write(stale if expired else live)
                os.chmod(template, 0o600)
                if expired:
                    os.utime(template, (old, old))
            os.link(template, prefix + (expired_key(j) if expired else live_key(j, letter)))
        for entry in os.scandir(self.templates):
            os.unlink(entry.path)  # the links keep the contents

    def count(self):
        return len(os.listdir(self.dir))


# ------------------------------------------------------------------------------------ set-up


def configure(tmp, pg, redis, memcached):
    """Settings beyond common.setup_django's. django.setup() has already read DATABASES (and
    may have read the rest): the handlers re-read them, as Django's setting_changed receivers
    do for CACHES, before any connection is opened."""
    from asgiref.local import Local
    from django.conf import settings
    from django.core.cache import caches
    from django.db import connections, router

    settings.DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                      "NAME": os.path.join(tmp, "sessions.sqlite3")}}
    if pg:
        settings.DATABASES["pg"] = pg.django_database(pg.create_database("scale"))
    settings.DATABASE_ROUTERS = [ROUTER]
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "scale-locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                         "LOCATION": "scale", "OPTIONS": {"MAX_ENTRIES": 10 * LEVELS[-1]}},
    }
    if redis:
        settings.CACHES["scale-redis"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                          "LOCATION": redis.location}
    if memcached:
        settings.CACHES["scale-memcached"] = {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": memcached.location}
    for handler in (connections, caches):  # what django.test.signals does for CACHES
        handler.settings = handler.configure_settings(None)
        handler._connections = Local(handler.thread_critical)
    router.__dict__.pop("routers", None)


def make_stores(names, tmp, pg):
    from django.core.management import call_command

    make = {"shm": ShmStore, "locmem": lambda: LocMemStore("scale-locmem"),
            "redis": lambda: RedisStore("scale-redis"),
            "memcached": lambda: MemcachedStore("scale-memcached"), "sqlite": lambda: DbStore("sqlite", "default"),
            "pg": lambda: DbStore("pg", "pg"), "file": lambda: FileStore(tmp)}
    out = [make[name]() for name in names]
    for alias in ["default"] + (["pg"] if pg else []):
        call_command("migrate", "sessions", database=alias, verbosity=0)
    return out


def check_loads(store, payload, n_live, n_expired, rng, letter="a"):
    """Before any timing: each engine loads the payload stored under live keys, and an expired
    key as an empty session (not for files: loading an expired file deletes it)."""
    problems = []
    for side, cls in store.engines().items():
        for i in rng.sample(range(n_live), min(3, n_live)):
            got = cls(live_key(i, letter)).load()
            if got != payload:
                problems.append(f"{side}: load({live_key(i, letter)}) is not the stored payload "
                                f"({len(got)} keys)")
        if n_expired and store.name != "file":
            got = cls(expired_key(0)).load()
            if got:
                problems.append(f"{side}: the expired session {expired_key(0)} loads as {len(got)} keys")
    if problems:
        raise common.BenchError(f"{store.name}: " + "; ".join(problems))


def expect_count(store, want, when):
    got = store.count()
    ok = want * (1 - EXPIRED_SHARE) <= got <= want if store.expires_lazily else got == want
    if not ok:
        raise common.BenchError(f"{store.name}: {got} sessions stored {when}, expected {want}")


# ------------------------------------------------------------------------------------ timing


def per_call_ns(fn, n=20):
    fn()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def time_loads(store, n_live, rng, mode):
    """{contender: {p50, p99, samples}}: SessionStore(key).load() on random live keys."""
    contenders = {}
    for side, cls in store.engines().items():
        it = itertools.cycle([live_key(rng.randrange(n_live)) for _ in range(mode["samples"])])
        contenders[side] = common.call_batch(lambda cls=cls, it=it: cls(next(it)).load())
    if store.name == "shm":
        get, now = store.handle().get, int(time.time())
        it = itertools.cycle([live_key(rng.randrange(n_live)) for _ in range(mode["samples"])])
        contenders[SHM_GET] = common.call_batch(lambda: get(next(it), now))
    est = {n: per_call_ns(c.fn) for n, c in contenders.items()}
    return common.sample_calls(contenders, est, mode["budget_ms"] * 1e6, mode["samples"], rng)


def time_clear(store, payload, n_live, n_expired):
    """{side: seconds} of clear_expired(), each starting from the same N sessions; None for a
    side not timed at this N (Store.clear_max_n)."""
    out = {}
    cleared = False  # the expired sessions are gone once a side's clear_expired() has run
    for side, cls in store.engines().items():
        if n_live + n_expired > store.clear_max_n.get(side, n_live + n_expired):
            out[side] = None
            continue
        if cleared and store.clears:
            store.fill(payload, 0, n_expired)
        expect_count(store, n_live + n_expired, f"before {side}'s clear_expired()")
        t0 = time.perf_counter()
        cls.clear_expired()
        out[side] = time.perf_counter() - t0
        cleared = True
        if store.clears:
            expect_count(store, n_live, f"after {side}'s clear_expired()")
    return out


def shm_memory(stats, n):
    """Bytes per session beyond the value, from ShmStore.stats() with n sessions stored."""
    from csessions.backends import shm

    header = shm.store().entry_overhead
    index = 4  # one uint32 bucket head: the slot a key's chain hangs from
    entries = stats["entries"]
    key = KEY_DIGITS + 1
    index_actual = 4 * stats["buckets"] / entries  # the bucket array is sized for the segment
    return {
        "entries": entries, "expected_entries": n, "key_bytes": key, "entry_header": header,
        "index_slot": index, "fixed": header + index, "fixed_with_key": header + index + key,
        "value_per_session": stats["value_bytes"] / entries,
        "block_per_session": stats["bytes_used"] / entries,
        "index_per_session": index_actual,
        "actual": (stats["bytes_used"] - stats["value_bytes"]) / entries + index_actual,
        "actual_without_key": (stats["bytes_used"] - stats["value_bytes"]) / entries - key + index_actual,
        "stats": stats,
    }


def run_levels(stores, levels, payload, rng, mode, flat_cfg, log):
    """Part 1: {store: {N: {...}}}."""
    results = {}
    for store in stores:
        started = time.perf_counter()
        store.activate()
        results[store.name] = {}
        for n in levels:
            n_expired = int(n * EXPIRED_SHARE)
            n_live = n - n_expired
            store.reset()
            t0 = time.perf_counter()
            store.fill(payload, n_live, n_expired)
            fill_s = time.perf_counter() - t0
            expect_count(store, n, "after the fill")
            check_loads(store, payload, n_live, n_expired, rng)
            if store.count() == n - 1:  # the check's load of an expired key reclaimed it
                store.fill(payload, 0, 1)
            r = {"n": n, "live": n_live, "expired": n_expired, "fill_s": fill_s}
            if store.name == "shm":
                r["memory"] = shm_memory(store.handle().stats(), n)
            r["load"] = time_loads(store, n_live, rng, mode)
            if store.name == "shm" and n == max(levels) and n > LEVELS[0]:
                r["flatness"] = shm_flatness(store, payload, n, n_live, rng, flat_cfg)
            r["clear_s"] = time_clear(store, payload, n_live, n_expired)
            results[store.name][n] = r
            log(f"  {LABELS[store.name]:<10} N={n:>9,}  fill {fill_s:6.2f} s  load " + ", ".join(
                f"{side} {fmt_ns(v['p50'])}" for side, v in r["load"].items()) + "  clear " + ", ".join(
                f"{side} {'not run' if v is None else fmt_ns(v * 1e9)}"
                for side, v in r["clear_s"].items()))
        store.reset()
        log(f"  {LABELS[store.name]:<10} {time.perf_counter() - started:.0f} s in all")
    return results


def cycle(cls, it):
    s = cls(next(it))
    s["counter"] = s.get("counter", 0) + 1
    s.save()


def run_payloads(stores, payloads, rng, cfg, log):
    """Part 2: {payload: {store: {"contenders": {side: stats}, "ratio": stats}}}. Per store,
    PAYLOAD_N sessions of every payload (each under its own key letter) and one interleaved
    measure() of all the (engine, payload) cycles, so that a busy spell of the machine hits
    every payload alike, not just the one being timed."""
    results = {pname: {} for pname in payloads}
    for store in stores:
        store.activate()
        store.reset()
        contenders = {}
        for pname, payload in payloads.items():
            letter = pname[0]
            store.fill(payload, PAYLOAD_N, 0, letter)
            check_loads(store, payload, PAYLOAD_N, 0, rng, letter)
            for side, cls in store.engines().items():
                it = itertools.cycle([live_key(rng.randrange(PAYLOAD_N), letter) for _ in range(4096)])
                contenders[side, pname] = common.call_batch(lambda cls=cls, it=it: cycle(cls, it))
        r = common.measure({f"{side} {pname}": c for (side, pname), c in contenders.items()}, cfg, rng=rng)
        store.reset()
        for pname in payloads:
            got = {side: r["contenders"][f"{side} {pname}"] for side in store.engines()}
            if "django" in got:
                per_round = [d / c for d, c in zip(got["django"]["per_round"], got["csessions"]["per_round"])]
                results[pname][store.name] = {"contenders": got, "ratio": common.summarize(per_round)}
            else:
                results[pname][store.name] = {"contenders": got}
            log(f"  {LABELS[store.name]:<10} {pname:<8} cycle " + ", ".join(
                f"{side} {fmt_ns(c['median'])}" for side, c in got.items()))
    return results


# ------------------------------------------------------------------------------------ report


def contender_label(store, side):
    if side == SHM_GET:
        return "shm raw get"
    return f"{'csessions' if side == 'csessions' else 'Django'} {LABELS[store]}"


def shm_flatness(store, payload, n, n_live, rng, cfg):
    """Lookups in a store of LEVELS[0] sessions and in the current one (N sessions), timed
    interleaved (common.measure), so that both see the same machine: a second segment of the
    same size beside the first, the engine pointed at one or the other before each batch.
    {op: {"small": stats, "big": stats, "ratio": per-round big/small stats}}."""
    big, small = store.segment, store.segment + "-ref"
    n_small = LEVELS[0]
    n_small_expired = int(n_small * EXPIRED_SHARE)
    store.use(small)
    store.fill(payload, n_small - n_small_expired, n_small_expired)
    check_loads(store, payload, n_small - n_small_expired, 0, rng)
    now = int(time.time())
    runs = {}
    for label, name, live in (("small", small, n_small - n_small_expired), ("big", big, n_live)):
        store.use(name)
        handle, cls = store.handle(), store.shm.SessionStore
        load_keys = itertools.cycle([live_key(rng.randrange(live)) for _ in range(100_000)])
        get_keys = itertools.cycle([live_key(rng.randrange(live)) for _ in range(100_000)])
        for op, fn in (("load", lambda cls=cls, it=load_keys: cls(next(it)).load()),
                       ("get", lambda h=handle, it=get_keys: h.get(next(it), now))):
            batch = common.call_batch(fn)
            runs[f"{op} {label}"] = lambda n, name=name, batch=batch: (store.use(name), batch(n))[1]
    for label, sessions in (("small", n_small), ("big", n)):
        runs[f"read {label}"] = common.call_batch(memory_chase(sessions, rng))
    r = common.measure(runs, cfg, rng=rng)
    store.use(big)
    out = {}
    for op in ("load", "get", "read"):
        lo, hi = r["contenders"][f"{op} small"], r["contenders"][f"{op} big"]
        ratios = [b / s for b, s in zip(hi["per_round"], lo["per_round"])]
        out[op] = {"small": lo, "big": hi, "ratio": common.summarize(ratios), "from": n_small,
                   "to": n}
    return out


def memory_chase(sessions, rng):
    """One dependent read at a random place in as much memory as `sessions` typical sessions
    take in the segment (a 1 KiB block each, placed like them): p = a[p] over a random cycle
    through one word per block. What any lookup of a random session among them pays at least
    once, since it must read the session's bytes; the Python loop around it costs the same at
    both sizes."""
    words_per_block = SHM_BLOCK // 8
    a = memoryview(bytearray(sessions * SHM_BLOCK)).cast("Q")
    order = list(range(sessions))
    rng.shuffle(order)
    for i, b in enumerate(order):
        a[b * words_per_block] = order[(i + 1) % sessions] * words_per_block
    state = [0]

    def step():
        state[0] = a[state[0]]
    return step


def flatness(levels):
    """shm: median at the largest N over the median at the smallest, per contender."""
    ns = sorted(levels)
    if len(ns) < 2:
        return {}
    lo, hi = levels[ns[0]]["load"], levels[ns[-1]]["load"]
    return {side: {"from": ns[0], "to": ns[-1], "ratio": hi[side]["p50"] / lo[side]["p50"],
                   "ok": hi[side]["p50"] / lo[side]["p50"] <= FLAT_BAR} for side in lo}


def report(res):
    levels_all = res["config"]["levels"]
    out = []
    p = out.append
    e = res["environment"]
    p("# Scale: session stores against the number and the size of sessions\n")
    p(f"`{res['command']}`: {res['seconds']:.0f} s. Python {e['python']}, Django {e['django']}, "
      f"{e['cpu']} x{e['cpu_count']}, load average at start "
      f"{' '.join(f'{x:.2f}' for x in e['loadavg_at_start'] or ())}. "
      f"PostgreSQL {res.get('postgresql') or '-'} (fsync off), Redis {res.get('redis') or '-'}.\n")
    if res["skipped"]:
        p("Not measured: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()) + "\n")
    lv = res["levels"]
    p("## Load: `SessionStore(key).load()` on random live keys, median (p99)\n")
    p(f"N sessions of the typical payload, {EXPIRED_SHARE:.0%} of them expired (the files: hard "
      "links to a few template files, each read as the file it is).\n")
    rows = []
    for store, by_n in lv.items():
        sides = next(iter(by_n.values()))["load"] if by_n else {}
        for side in sides:
            rows.append([contender_label(store, side)] + [
                f"{fmt_ns(by_n[n]['load'][side]['p50'])} ({fmt_ns(by_n[n]['load'][side]['p99'])})"
                if n in by_n else "not run" for n in levels_all])
    p(table(["store"] + [f"N={n:,}" for n in levels_all], rows) + "\n")
    p(f"## clear_expired() with {EXPIRED_SHARE:.0%} expired\n")
    p("Wall time of one call; the cache engines' clear_expired() is Django's no-op (the cache "
      "expires entries itself). shm sweeps every bucket of its 2 GiB segment whatever N is.\n")
    rows = []
    for store, by_n in lv.items():
        sides = next(iter(by_n.values()))["clear_s"] if by_n else {}
        for side in sides:
            cells = []
            for n in levels_all:
                if n not in by_n:
                    cells.append("not run")
                    continue
                s = by_n[n]["clear_s"][side]
                if s is None:
                    cells.append("not run (~150 s here: over the time budget)")
                    continue
                cells.append(fmt_ns(s * 1e9) + (" (no-op)" if store in CACHE_STORES else ""))
            rows.append([contender_label(store, side)] + cells)
    p(table(["store"] + [f"N={n:,}" for n in levels_all], rows) + "\n")
    p("Fill time (bulk, store-level writes; not a session engine's cost):\n")
    p(table(["store"] + [f"N={n:,}" for n in levels_all],
            [[LABELS[s]] + [f"{by_n[n]['fill_s']:.2f} s" if n in by_n else "-" for n in levels_all]
             for s, by_n in lv.items()]) + "\n")
    if "shm" in lv and lv["shm"]:
        p("## shm: lookup flatness and memory\n")
        rows = []
        inter = res.get("shm_flatness_interleaved") or {}
        names = {"load": "SessionStore(key).load()", "get": "raw ShmStore.get()",
                 "read": "one random read in as much memory (memory_chase), a Python call around it"}
        for op, v in inter.items():
            ratio = v["ratio"]["median"]
            rows.append([f"{names[op]}, interleaved", f"{fmt_ns(v['small']['median'])} -> {fmt_ns(v['big']['median'])}",
                         f"{ratio:.2f}x (IQR {v['ratio']['q1']:.2f}-{v['ratio']['q3']:.2f})",
                         "(floor)" if op == "read" else "met" if ratio <= FLAT_BAR else "MISSED"])
        for side, v in res["shm_flatness"].items():
            lv_ = lv["shm"]
            rows.append([f"{contender_label('shm', side)}, levels one after the other",
                         f"{fmt_ns(lv_[v['from']]['load'][side]['p50'])} -> "
                         f"{fmt_ns(lv_[v['to']]['load'][side]['p50'])}", f"{v['ratio']:.2f}x", "(info)"])
        n_lo, n_hi = min(lv["shm"]), max(lv["shm"])
        p(f"Lookup time with {n_hi:,} sessions stored over the time with {n_lo:,}. The bar is judged "
          f"on the interleaved measurement: a second segment of the same size holding {n_lo:,} "
          "sessions, both timed in shuffled rounds (common.measure, median of per-round ratios); "
          "the level table above times each N at another moment.\n")
        p(table(["lookup", f"median {n_lo:,} -> {n_hi:,}", "ratio", f"bar <= {FLAT_BAR}x"], rows) + "\n")
        if "read" in inter and "get" in inter:
            read, get = inter["read"], inter["get"]
            extra = read["big"]["median"] - read["small"]["median"]
            allowed = (FLAT_BAR - 1) * get["small"]["median"]
            p(f"The floor: a get must read the session's own bytes, and among {n_hi:,} sessions "
              f"({n_hi * SHM_BLOCK / 2**30:.2f} GiB of blocks) one read at a random place costs "
              f"{fmt_ns(extra)} more than among {n_lo:,} ({fmt_ns(read['small']['median'])} -> "
              f"{fmt_ns(read['big']['median'])} with the Python call around it), while the bar "
              f"allows the raw get {fmt_ns(allowed)} more ({FLAT_BAR - 1:.0%} of "
              f"{fmt_ns(get['small']['median'])}): "
              + ("no store could meet it on this machine." if extra > allowed else
                 "within reach on this machine.") + "\n")
        m = res["shm_memory"]
        p(f"With {m['entries']:,} typical sessions stored (value {m['value_per_session']:.0f} B each, "
          f"key {m['key_bytes']} B):\n")
        p(table(["bytes per session beyond the value", "bytes", f"bar <= {FIXED_BAR}"], [
            ["fixed: entry header + index slot", f"{m['fixed']}", "met" if m["fixed"] <= FIXED_BAR else "MISSED"],
            ["fixed + the key itself", f"{m['fixed_with_key']}", ""],
            ["actual: block (buddy rounding) + key + header + bucket array share",
             f"{m['actual']:.0f}", ""],
            ["actual without the key", f"{m['actual_without_key']:.0f}", ""],
        ]) + "\n")
        st = m["stats"]
        p("`stats()` after the fill: " + ", ".join(f"{k} {st[k]:,}" for k in (
            "entries", "value_bytes", "bytes_used", "bytes_free", "buckets", "stripes", "size",
            "evictions") if k in st) + ".\n")
        p(f"Blocks average {m['block_per_session']:.0f} B per session (powers of two from 256 B); "
          f"the bucket array is sized for the segment (one 4-byte slot per 512 B of arena), "
          f"{m['index_per_session']:.1f} B per session at this N.\n")
    p("## Cycle (load + modify + save) per payload\n")
    p(f"{PAYLOAD_N:,} sessions of each payload in the store, random keys of one payload per "
      "contender; all payloads and engines of a store interleaved. Median wall time per cycle; "
      "the ratio is the median of per-round ratios.\n")
    pl = res["payloads"]
    sizes = res["payload_bytes"]
    rows = []
    stores = list(next(iter(pl.values()))) if pl else []
    for store in stores:
        for side in ("csessions", "django"):
            if side not in pl[next(iter(pl))][store]["contenders"]:
                continue
            rows.append([contender_label(store, side)] + [
                fmt_ns(pl[pn][store]["contenders"][side]["median"]) for pn in pl])
        if "ratio" in pl[next(iter(pl))][store]:
            rows.append([f"  Django / csessions, {LABELS[store]}"] + [
                fmt_ratio(pl[pn][store]["ratio"]["median"]) for pn in pl])
    p(table(["store"] + [f"{pn} ({sizes[pn]:,} B)" for pn in pl], rows) + "\n")
    return "\n".join(out)


def charts(res, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts (.venv/bin/pip install matplotlib)")
        return []
    written = []

    def style(store, side):
        return dict(color=COLORS[store], marker="o", ms=4,
                    linestyle="-" if side == "csessions" else (":" if side == SHM_GET else "--"))

    def save(fig, ax, name, title, xlabel, ylabel):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), handlelength=3.5)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    lv = res["levels"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for store, by_n in lv.items():
        ns = sorted(by_n)
        for side in (by_n[ns[0]]["load"] if ns else {}):
            stop = f" (to {ns[-1]:,})" if ns[-1] < res["config"]["levels"][-1] else ""
            ax.plot(ns, [by_n[n]["load"][side]["p50"] / 1e3 for n in ns],
                    label=contender_label(store, side) + stop, **style(store, side))
    save(fig, ax, "scale_sessions.png", "SessionStore(key).load(), random live keys, median",
         "sessions stored (10% expired)", "µs per load")

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for store, by_n in lv.items():
        ns = sorted(by_n)
        if store in CACHE_STORES or not ns:
            continue  # Django's no-op: nothing to chart on a log axis
        for side in by_n[ns[0]]["clear_s"]:
            timed = [n for n in ns if by_n[n]["clear_s"][side] is not None]
            stop = f" (to {timed[-1]:,})" if timed[-1] < res["config"]["levels"][-1] else ""
            ax.plot(timed, [by_n[n]["clear_s"][side] * 1e3 for n in timed],
                    label=contender_label(store, side) + stop, **style(store, side))
    save(fig, ax, "scale_clear_expired.png",
         "clear_expired() with 10% expired (cache engines: no-op, not shown)",
         "sessions stored", "ms per call")

    pl = res["payloads"]
    if pl:
        fig, ax = plt.subplots(figsize=(10, 5.5))
        sizes = [res["payload_bytes"][pn] for pn in pl]
        for store in next(iter(pl.values())):
            for side in pl[next(iter(pl))][store]["contenders"]:
                ax.plot(sizes, [pl[pn][store]["contenders"][side]["median"] / 1e3 for pn in pl],
                        label=contender_label(store, side), **style(store, side))
        save(fig, ax, "scale_payload.png",
             f"load + modify + save, {PAYLOAD_N:,} sessions of each payload stored, median",
             "payload (bytes of JSON)", "µs per cycle")
    return written


# ------------------------------------------------------------------------------------ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"N up to {QUICK_LEVELS[-1]:,}, fewer samples")
    ap.add_argument("--out", default=str(common.BENCH_DIR / "results"))
    ap.add_argument("--stores", default=",".join(STORE_NAMES))
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    names = [s for s in a.stores.split(",") if s]
    unknown = set(names) - set(STORE_NAMES)
    if unknown:
        raise common.BenchError(f"unknown stores {sorted(unknown)}; choose from {', '.join(STORE_NAMES)}")
    started = time.perf_counter()
    levels = QUICK_LEVELS if a.quick else LEVELS
    mode = ({"samples": 600, "budget_ms": 60} if a.quick else {"samples": 4000, "budget_ms": 400})
    cfg = common.Config(rounds=7 if a.quick else 21, target_ms=1.0 if a.quick else 2.0, p99=False,
                        seed=a.seed)
    rng = random.Random(a.seed)
    payloads = common.load_payloads()
    common.import_csessions()
    env = common.environment()
    common.print_environment(env)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Ctrl-C and SIGTERM unwind through the finally blocks: servers, segment, files go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="csessions-bench-scale-")
    servers, stores, skipped = [], [], {}
    res = {"command": " ".join(["bench/scale.py"] + (argv if argv is not None else sys.argv[1:])),
           "environment": env, "skipped": skipped,
           "config": {"levels": list(levels), "expired_share": EXPIRED_SHARE, "payload_n": PAYLOAD_N,
                      "shm_size": SHM_SIZE, "django_file_clear_max_n": DJANGO_FILE_CLEAR_MAX_N,
                      "load_sampling": mode,
                      "cycle_timing": cfg.as_dict(), "stores": names}}
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        pg = redis = memcached = None
        if "pg" in names:
            try:
                pg = pg_server.start_postgres(pg_server.FAST_SETTINGS)
                servers.append(pg)
                res["postgresql"] = pg.connect().execute("SHOW server_version").fetchone()[0]
            except pg_server.PostgresError as exc:
                skipped["pg"] = str(exc).splitlines()[0]
        if "redis" in names:
            try:
                ctx = cache_servers.start_redis()
                redis = ctx.__enter__()
                servers.append(ctx)
            except cache_servers.ServerError as exc:
                skipped["redis"] = str(exc)
        if "memcached" in names:
            try:
                ctx = cache_servers.start_memcached(MEMCACHED_MB)
                memcached = ctx.__enter__()
                servers.append(ctx)
            except cache_servers.ServerError as exc:
                skipped["memcached"] = str(exc)
        names = [n for n in names if n not in skipped]
        configure(tmp, pg, redis, memcached)
        stores = make_stores(names, tmp, pg)
        if redis:
            res["redis"] = stores[names.index("redis")].client().info("server")["redis_version"]
        for name, why in skipped.items():
            log(f"NOT MEASURED: {name}: {why}")

        log(f"\n[1/2] cycle per payload, {PAYLOAD_N:,} sessions of each payload per store")
        res["payload_bytes"] = {pn: common.compact_size(p) for pn, p in payloads.items()}
        res["payloads"] = run_payloads(stores, payloads, rng, cfg, log)
        log(f"\n[2/2] number of sessions: {', '.join(f'{n:,}' for n in levels)}")
        flat_cfg = common.Config(rounds=15 if a.quick else 41, target_ms=0.5 if a.quick else 2.0,
                                 p99=False, seed=a.seed)
        res["levels"] = run_levels(stores, levels, payloads["typical"], rng, mode, flat_cfg, log)
    finally:
        for store in stores:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print(f"cleanup of {store.name}: {exc}", file=sys.stderr)
        for s in reversed(servers):
            s.__exit__(None, None, None) if hasattr(s, "__exit__") else s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    if "shm" in res["levels"]:
        by_n = res["levels"]["shm"]
        res["shm_flatness"] = flatness(by_n)
        res["shm_flatness_interleaved"] = by_n[max(by_n)].get("flatness")
        res["shm_memory"] = by_n[max(by_n)]["memory"]
    res["seconds"] = time.perf_counter() - started
    md = report(res)
    print("\n" + md)
    with open(out_dir / "scale.json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(out_dir / "scale.md", "w") as f:
        f.write(md)
    for path in charts(res, out_dir):
        print(f"wrote {path}")
    print(f"wrote {out_dir / 'scale.json'}, {out_dir / 'scale.md'} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(common.cli(main))
