"""csessions.backends.cache.SessionStore against Django's cache engine, on real caches.

Backends: LocMem, Django's RedisCache and django-redis against a real redis-server, and
PyMemcacheCache against a real memcached (both started by cache_servers.py for the session; a
missing server binary fails these tests, naming the Debian package).

* Differential scenarios: the same operations (create/save/load/delete/cycle_key/exists/flush,
  UpdateError, CreateError, expiry) run with Django's engine, with csessions', and with the two
  mixed (each reading and writing what the other wrote), sync and async: every observation
  (results, exceptions, flags, the raw cache entry) must be identical.
* Expiry: the cache entry's TTL is the session's expiry age, as with Django.
* What csessions changes: one round trip per create(), has_key() instead of get() in save(),
  fail-fast create() on a cache that does not store, one log record per failing operation.
* Cache down (server stopped or hung mid-test, small client timeouts): load is an empty session,
  create fails, nothing takes longer than a few client timeouts, one warning per operation.
* Two processes hammering the same and different sessions on Redis and memcached: only
  UpdateError/CreateError, never a corrupted or lost session.
"""

import asyncio
import contextlib
import datetime
import decimal
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import types
import uuid
from unittest import mock

import pytest
from django.contrib.sessions.backends import cache as dj_cache
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.cache import InvalidCacheBackendError, caches
from django.test import override_settings

from cache_servers import memcached_server, redis_server, start_memcached, start_redis  # noqa: F401
import csessions
from csessions.backends import cache as cs_cache

DjStore = dj_cache.SessionStore
CsStore = cs_cache.SessionStore
KEY_PREFIX = dj_cache.KEY_PREFIX
ALIAS = "sessions"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where this process imports csessions from (the checkout, or the sanitizer build): the
# concurrency test's workers import the same.
CSESSIONS_PATH = os.path.dirname(os.path.dirname(os.path.abspath(csessions.__file__)))
TYPICAL = os.path.join(os.environ.get("CSESSIONS_BENCH_DATA") or os.path.join(REPO, "..", "shared", "data"),
                       "session-typical.json")
KEY_RE = re.compile(r"^[a-z0-9]{32}$")

KINDS = ["locmem", "redis", "django_redis", "pymemcache"]


# ------------------------------------------------------------------------------------------
# Cache configuration
# ------------------------------------------------------------------------------------------


def cache_config(kind, server=None, timeout=2.0, ignore=False):
    if kind == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": f"csessions-{uuid.uuid4().hex}"}
    if kind == "redis":
        assert not ignore, "Django's RedisCache has no option to swallow errors"
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.location,
                "OPTIONS": {"socket_timeout": timeout, "socket_connect_timeout": timeout}}
    if kind == "django_redis":
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.location,
                "OPTIONS": {"SOCKET_TIMEOUT": timeout, "SOCKET_CONNECT_TIMEOUT": timeout,
                            "IGNORE_EXCEPTIONS": ignore}}
    if kind == "pymemcache":
        return {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
                "LOCATION": server.location,
                "OPTIONS": {"connect_timeout": timeout, "timeout": timeout, "ignore_exc": ignore}}
    raise AssertionError(kind)


def disconnect(cache):
    """Closes a cache handle's sockets (Django's RedisCache.close() keeps its pool open)."""
    cache.close()
    client = vars(cache).get("_cache")  # Django's RedisCacheClient (not created if absent)
    for pool in getattr(client, "_pools", {}).values():
        pool.disconnect()
    dr = getattr(cache, "_client", None)  # django-redis
    for redis_client in getattr(dr, "_clients", None) or ():
        if redis_client is not None:
            redis_client.connection_pool.disconnect()


@contextlib.contextmanager
def using_cache(config):
    """SESSION_CACHE_ALIAS = "sessions" configured as ``config``; yields its handle. Handles
    are per thread (django.core.cache.caches); override_settings(CACHES=...) drops them, and
    the sockets of every handle this thread opened are closed on the way out."""
    with override_settings(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, ALIAS: config},
        SESSION_CACHE_ALIAS=ALIAS,
    ):
        try:
            yield caches[ALIAS]
        finally:
            for handle in caches.all(initialized_only=True):
                disconnect(handle)


class Backend:
    def __init__(self, kind, cache, server):
        self.kind, self.cache, self.server = kind, cache, server

    def raw(self, session_key):
        return self.cache.get(KEY_PREFIX + session_key)

    def ttl(self, session_key):
        """Seconds the cache will keep the entry (None: no entry)."""
        key = KEY_PREFIX + session_key
        made = self.cache.make_key(key)
        if self.kind == "locmem":
            expiry = self.cache._expire_info.get(made)
            return None if expiry is None else expiry - time.time()
        if self.kind == "django_redis":
            return self.cache.ttl(key) if self.cache.has_key(key) else None
        if self.kind == "redis":
            ttl = self.cache._cache.get_client(made).ttl(made)
            return None if ttl == -2 else ttl
        # memcached: the meta get command reports the remaining TTL ("HD t<seconds>").
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=2) as s:
            s.sendall(f"mg {made} t\r\n".encode())
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += s.recv(100)
        reply = reply.decode().split()
        return None if reply[0] == "EN" else int(reply[1][1:])


@pytest.fixture(params=KINDS)
def backend(request):
    kind = request.param
    server = None
    if kind != "locmem":
        server = request.getfixturevalue("memcached_server" if kind == "pymemcache" else "redis_server")
    with using_cache(cache_config(kind, server)) as cache:
        cache.clear()
        yield Backend(kind, cache, server)


@pytest.fixture
def locmem():
    with using_cache(cache_config("locmem")) as cache:
        yield Backend("locmem", cache, None)


@pytest.fixture
def cs_log(caplog):
    """Records of the "csessions" logger (all levels)."""
    caplog.set_level(logging.DEBUG, logger="csessions")

    class Log:
        def records(self, level=logging.WARNING):
            return [r for r in caplog.records if r.name == "csessions" and r.levelno >= level]

        def clear(self):
            caplog.clear()

    return Log()


def typical():
    """The reference typical session (bench/README.md), or one like it if not checked out."""
    try:
        with open(TYPICAL, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {"_auth_user_id": "42", "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
                "_auth_user_hash": "1e7b" * 16,
                "cart": [{"sku": f"A{i:03}", "qty": i % 4 + 1, "price": i * 1.5 + 0.99} for i in range(8)],
                "_session_expiry": 1209600}


# ------------------------------------------------------------------------------------------
# Differential scenarios: the same steps with Django's engine, csessions', and both mixed
# ------------------------------------------------------------------------------------------


class Run:
    """Executes steps against stores named "a", "b", "c"; ``engines`` maps a name to its class.
    Session keys are recorded symbolically ("K1", "K2", ...) in order of appearance, so runs
    with different random keys compare equal."""

    def __init__(self, engines, backend):
        self.engines, self.backend = engines, backend
        self.stores, self.keys, self.symbols, self.out = {}, {}, {}, []

    def sym(self, key):
        if key is None:
            return None
        assert isinstance(key, str)
        if key not in self.symbols:
            self.symbols[key] = f"K{len(self.symbols) + 1}" if KEY_RE.match(key) else f"literal:{key}"
        return self.symbols[key]

    def state(self, s):
        return {"key": self.sym(s.session_key), "modified": s.modified, "accessed": s.accessed,
                "is_empty": s.is_empty()}

    def key(self, ref):
        return None if ref is None else self.keys[ref]

    def do(self, step):
        op, name, *args = step
        s = self.stores.get(name)
        if op == "new":
            self.stores[name] = self.engines[name](*(self.key(a) if a in self.keys else a for a in args))
            return None
        if op == "remember":
            self.keys[args[0]] = s.session_key
            return self.sym(s.session_key)
        if op == "state":
            return self.state(s)
        if op == "raw":
            return self.backend.raw(self.keys[name])
        if op == "set":
            s[args[0]] = args[1]
            return None
        if op == "items":
            return dict(s.items())
        if op == "save":
            return s.save(*args)
        if op == "create":
            return s.create()
        if op == "load":
            return s.load()
        if op == "exists":
            return s.exists(self.key(args[0]))
        if op == "delete":
            return s.delete(self.key(args[0]) if args else None)
        if op == "cycle_key":
            return s.cycle_key()
        if op == "flush":
            return s.flush()
        if op == "set_expiry":
            return s.set_expiry(args[0])
        if op == "expiry_age":
            return s.get_expiry_age()
        if op == "cache_key":
            return s.cache_key.startswith(KEY_PREFIX) and self.sym(s.cache_key[len(KEY_PREFIX):])
        raise AssertionError(op)

    async def ado(self, step):
        op, name, *args = step
        s = self.stores.get(name)
        if op == "set":
            return await s.aset(args[0], args[1])
        if op == "items":
            return dict(await s.aitems())
        if op == "save":
            return await s.asave(*args)
        if op == "create":
            return await s.acreate()
        if op == "load":
            return await s.aload()
        if op == "exists":
            return await s.aexists(self.key(args[0]))
        if op == "delete":
            return await s.adelete(self.key(args[0]) if args else None)
        if op == "cycle_key":
            return await s.acycle_key()
        if op == "flush":
            return await s.aflush()
        if op == "set_expiry":
            return await s.aset_expiry(args[0])
        if op == "expiry_age":
            return await s.aget_expiry_age()
        if op == "cache_key":
            key = await s.acache_key()
            return key.startswith(KEY_PREFIX) and self.sym(key[len(KEY_PREFIX):])
        return self.do(step)  # no I/O: "new", "remember", "state", "raw"

    def record(self, step, fn):
        try:
            self.out.append((step, "ok", fn()))
        except Exception as e:
            self.out.append((step, "raised", type(e).__name__))

    def run(self, steps):
        for step in steps:
            self.record(step, lambda: self.do(step))
        return self.out

    async def arun(self, steps):
        for step in steps:
            try:
                self.out.append((step, "ok", await self.ado(step)))
            except Exception as e:
                self.out.append((step, "raised", type(e).__name__))
        return self.out


NON_JSON = {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "tags": {"a", "b"}, "pair": (1, 2),
            "blob": b"\x00\xff", "price": decimal.Decimal("9.99")}

SCENARIOS = {
    "lifecycle": [
        ("new", "a"), ("state", "a"), ("set", "a", "x", 1), ("set", "a", "cart", [1, 2, 3]),
        ("save", "a"), ("remember", "a", "A"), ("state", "a"), ("raw", "A"),
        ("new", "b", "A"), ("items", "b"), ("state", "b"), ("set", "b", "y", {"n": [1, 2]}), ("save", "b"),
        ("raw", "A"), ("exists", "a", "A"), ("new", "c", "A"), ("items", "c"),
        ("delete", "b", "A"), ("exists", "a", "A"), ("raw", "A"),
        ("new", "c", "A"), ("items", "c"), ("state", "c"),
    ],
    "create_empty": [
        ("new", "a"), ("create", "a"), ("remember", "a", "A"), ("state", "a"), ("raw", "A"),
        ("new", "b", "A"), ("exists", "b", "A"), ("items", "b"),
        ("create", "a"), ("remember", "a", "B"), ("state", "a"), ("exists", "b", "A"), ("raw", "B"),
        ("save", "a"), ("raw", "B"),
    ],
    "non_json_values": [
        ("new", "a"), *[("set", "a", k, v) for k, v in NON_JSON.items()], ("save", "a"),
        ("remember", "a", "A"), ("raw", "A"), ("new", "b", "A"), ("items", "b"),
    ],
    "cycle_key": [
        ("new", "a"), ("set", "a", "k", "v"), ("save", "a"), ("remember", "a", "A"),
        ("new", "b", "A"), ("cycle_key", "b"), ("remember", "b", "B"), ("state", "b"),
        ("exists", "a", "A"), ("exists", "a", "B"), ("raw", "A"), ("raw", "B"), ("items", "b"),
        ("set", "b", "k2", 2), ("save", "b"), ("new", "c", "B"), ("items", "c"),
        ("new", "c"), ("cycle_key", "c"), ("remember", "c", "C"), ("state", "c"), ("raw", "C"),
    ],
    "flush": [
        ("new", "a"), ("set", "a", "k", "v"), ("save", "a"), ("remember", "a", "A"),
        ("new", "b", "A"), ("flush", "b"), ("state", "b"), ("exists", "a", "A"), ("raw", "A"),
        ("new", "c", "A"), ("items", "c"), ("state", "c"),
        ("new", "c"), ("flush", "c"), ("state", "c"),
    ],
    "update_error_after_delete": [
        ("new", "a"), ("set", "a", "v", 1), ("save", "a"), ("remember", "a", "A"),
        ("new", "b", "A"), ("delete", "b"), ("set", "a", "v", 2), ("save", "a"), ("raw", "A"),
        ("state", "a"), ("new", "c", "A"), ("items", "c"), ("state", "c"),
    ],
    "create_error": [
        ("new", "a"), ("set", "a", "v", 1), ("save", "a"), ("remember", "a", "A"),
        ("new", "b", "A"), ("set", "b", "v", 2), ("save", "b", True), ("raw", "A"),
        ("new", "c"), ("save", "c", True), ("state", "c"),
    ],
    "unknown_and_invalid_keys": [
        ("new", "a", "notstoredinanycache0123456789abc"), ("items", "a"), ("state", "a"),
        ("set", "a", "x", 1), ("save", "a"), ("remember", "a", "A"), ("state", "a"), ("raw", "A"),
        ("new", "b", "1"), ("state", "b"), ("set", "b", "x", 1), ("save", "b"), ("state", "b"),
        ("new", "c", "notstoredinanycache0123456789abd"), ("save", "c"), ("state", "c"),
        ("new", "c", "notstoredinanycache0123456789abe"), ("delete", "c"), ("exists", "c", None),
        ("new", "c"), ("delete", "c"), ("state", "c"),
        ("new", "c"), ("cache_key", "c"), ("remember", "c", "C"), ("save", "c"), ("raw", "C"),
    ],
    "expiry": [
        ("new", "a"), ("set", "a", "x", 1), ("set_expiry", "a", 300), ("save", "a"),
        ("remember", "a", "A"), ("expiry_age", "a"), ("new", "b", "A"), ("items", "b"),
        ("expiry_age", "b"), ("set_expiry", "b", 0), ("save", "b"), ("new", "c", "A"), ("items", "c"),
        ("expiry_age", "c"),
    ],
    "actual_expiry": [  # Django's test_actual_expiry, with an int so the stored value is stable
        ("new", "a"), ("set", "a", "x", 1), ("set_expiry", "a", -10), ("save", "a"),
        ("remember", "a", "A"), ("raw", "A"), ("new", "b", "A"), ("items", "b"), ("state", "b"),
        ("new", "c"), ("set", "c", "x", 1), ("save", "c"), ("remember", "c", "C"),
        ("set_expiry", "c", -10), ("save", "c"), ("raw", "C"), ("new", "b", "C"), ("items", "b"),
    ],
}

MIXES = {
    "django": {"a": DjStore, "b": DjStore, "c": DjStore},
    "csessions": {"a": CsStore, "b": CsStore, "c": CsStore},
    "mixed-django-first": {"a": DjStore, "b": CsStore, "c": DjStore},
    "mixed-csessions-first": {"a": CsStore, "b": DjStore, "c": CsStore},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_behaviour_as_django_sync_and_async(backend, scenario):
    steps = SCENARIOS[scenario]
    reference = Run(MIXES["django"], backend).run(steps)
    for mix, engines in MIXES.items():
        got = Run(engines, backend).run(steps)
        assert got == reference, f"{mix} (sync) differs from Django's engine"
        got = asyncio.run(Run(engines, backend).arun(steps))
        assert got == reference, f"{mix} (async) differs from Django's engine (sync)"
    # The scenarios do what they say (so the comparison is not vacuous).
    outcomes = {(step[0], result, value if result == "raised" else None) for step, result, value in reference}
    if scenario == "update_error_after_delete":
        assert ("save", "raised", UpdateError.__name__) in outcomes
    if scenario == "create_error":
        assert ("save", "raised", CreateError.__name__) in outcomes
    if scenario in ("lifecycle", "non_json_values"):
        assert ("save", "ok", None) in outcomes and not any(result == "raised" for _, result, _ in outcomes)


def test_typical_session_read_both_ways(backend):
    data = typical()
    for writer, reader in ((DjStore, CsStore), (CsStore, DjStore)):
        s = writer()
        s.update(data)
        s.save()
        assert backend.raw(s.session_key) == data  # the raw dict, exactly as Django stores it
        r = reader(s.session_key)
        assert dict(r.items()) == data
        r["cart"].append({"sku": "NEW", "qty": 1, "price": 1.0})
        r.save()
        back = writer(s.session_key)
        assert back["cart"][-1]["sku"] == "NEW"
        back.delete()
        assert reader(s.session_key).load() == {}


# ------------------------------------------------------------------------------------------
# The class itself
# ------------------------------------------------------------------------------------------


def test_is_a_subclass_of_djangos_engine_with_its_keys(locmem):
    assert CsStore.__qualname__ == "SessionStore"
    assert issubclass(CsStore, DjStore)
    assert cs_cache.KEY_PREFIX == KEY_PREFIX and CsStore.cache_key_prefix == DjStore.cache_key_prefix
    mine, theirs = CsStore("k" * 32), DjStore("k" * 32)
    assert vars(mine) == vars(theirs)
    assert mine.key_salt == theirs.key_salt
    assert mine.cache_key == theirs.cache_key == KEY_PREFIX + "k" * 32
    assert mine._cache is caches[ALIAS]


def test_cache_alias_read_at_construction(locmem):
    with override_settings(SESSION_CACHE_ALIAS="default"):
        s = CsStore()
        s["x"] = 1
        s.save()
        assert caches["default"].get(s.cache_key) == {"x": 1}
        assert locmem.raw(s.session_key) is None
    with override_settings(SESSION_CACHE_ALIAS="nope"):
        with pytest.raises(InvalidCacheBackendError):
            DjStore()
        with pytest.raises(InvalidCacheBackendError):
            CsStore()


def test_new_keys_are_32_chars_from_c(locmem):
    s = CsStore()
    s.create()
    assert KEY_RE.match(s.session_key)
    keys = {CsStore()._get_new_session_key() for _ in range(1000)}
    assert len(keys) == 1000 and all(KEY_RE.match(k) for k in keys)


class Spy:
    """Counts the cache calls a store makes (wraps the handle's methods)."""

    METHODS = ("get", "add", "set", "has_key", "delete", "aget", "aadd", "aset", "ahas_key", "adelete")

    def __init__(self, cache):
        self.calls = []
        self._patches = []
        for name in self.METHODS:
            original = getattr(cache, name)

            def wrapper(_cache, *args, _name=name, _orig=original, **kwargs):
                self.calls.append(_name)
                return _orig(*args, **kwargs)

            # A bound method, as Django 6.1's BaseCache.ahas_key() looks at has_key.__func__.
            self._patches.append(mock.patch.object(cache, name, types.MethodType(wrapper, cache)))

    def __enter__(self):
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self._patches:
            p.stop()


def test_round_trips(locmem):
    """create(): one add() (Django: has_key + add); save(): has_key + set (Django: get + set)."""
    with Spy(locmem.cache) as spy:
        s = CsStore()
        s.create()
    assert spy.calls == ["add"]
    with Spy(locmem.cache) as spy:
        s = DjStore()
        s.create()
    assert spy.calls == ["has_key", "add"]
    key = s.session_key
    with Spy(locmem.cache) as spy:
        s = CsStore(key)
        s["x"] = 1
        s.save()
    assert spy.calls == ["get", "has_key", "set"]
    with Spy(locmem.cache) as spy:
        s = DjStore(key)
        s["x"] = 2
        s.save()
    assert spy.calls == ["get", "get", "set"]

    async def async_ops():
        with Spy(locmem.cache) as spy:
            s = CsStore()
            await s.acreate()
            await s.aset("x", 1)
            await s.asave()
            assert await CsStore().aexists(s.session_key)
        # LocMem's async methods call its sync ones, and BaseCache.ahas_key() calls aget()
        # (Django 5.2) or has_key() (6.1): count the async entry points but aget().
        return [c for c in spy.calls if c in ("aadd", "aset", "ahas_key", "adelete")]

    assert asyncio.run(async_ops()) == ["aadd", "ahas_key", "aset", "ahas_key"]


def server_counts(backend):
    """Commands the cache server has executed so far, by kind."""
    if backend.kind == "pymemcache":
        with socket.create_connection(("127.0.0.1", backend.server.port), timeout=2) as s:
            s.sendall(b"stats\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                reply += s.recv(65536)
        stats = dict(line.split()[1:3] for line in reply.decode().splitlines() if line.startswith("STAT "))
        # cmd_set counts every storage command (set, add, replace).
        return {"read": int(stats["cmd_get"]), "write": int(stats["cmd_set"]),
                "delete": int(stats["delete_hits"]) + int(stats["delete_misses"])}
    import redis

    client = redis.Redis.from_url(backend.server.location)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    calls = {name[len("cmdstat_"):]: v["calls"] for name, v in info.items()}
    return {"read": calls.get("get", 0) + calls.get("exists", 0), "write": calls.get("set", 0),
            "delete": calls.get("del", 0)}


def count_commands(backend, fn):
    before = server_counts(backend)
    fn()
    after = server_counts(backend)
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.mark.parametrize("kind", ["redis", "django_redis", "pymemcache"])
def test_commands_sent_to_the_server(kind, request):
    """What each engine asks of a real server: csessions' create() is one write (an add),
    its save() of a loaded session one atomic write (SET XX / replace), with no read."""
    server = request.getfixturevalue("memcached_server" if kind == "pymemcache" else "redis_server")
    with using_cache(cache_config(kind, server)) as cache:
        backend = Backend(kind, cache, server)
        for engine, create, cycle in (
            (DjStore, {"read": 1, "write": 1}, {"read": 2, "write": 1}),
            (CsStore, {"write": 1}, {"read": 1, "write": 1}),
        ):
            s = engine()
            assert count_commands(backend, s.create) == create, engine
            key = s.session_key

            def request_cycle():
                t = engine(key)
                t["n"] = t.get("n", 0) + 1
                t.save()

            assert count_commands(backend, request_cycle) == cycle, engine
            assert backend.raw(key) == {"n": 1}


@pytest.mark.parametrize("kind", ["redis", "django_redis", "pymemcache"])
def test_no_window_for_a_concurrent_delete(kind, request):
    """Django's save() reads, then writes: a logout (delete) landing in between is undone, the
    session resurrected. csessions' save() is a single "only if present" command."""
    server = request.getfixturevalue("memcached_server" if kind == "pymemcache" else "redis_server")
    with using_cache(cache_config(kind, server)) as cache:
        backend = Backend(kind, cache, server)
        for engine in (DjStore, CsStore):
            s = engine()
            s["user"] = 1
            s.save()
            s = engine(s.session_key)
            s["user"]  # loaded by the request

            def check_then_concurrent_delete(method):
                def wrapper(key, *args, **kwargs):
                    result = method(key, *args, **kwargs)
                    cache.delete(key)  # another request logs the user out right now
                    return result
                return wrapper

            with mock.patch.object(cache, "get", check_then_concurrent_delete(cache.get)), \
                    mock.patch.object(cache, "has_key", check_then_concurrent_delete(cache.has_key)):
                s["cart"] = [1]
                if engine is DjStore:
                    s.save()
                    assert backend.raw(s.session_key) == {"user": 1, "cart": [1]}  # resurrected
                else:
                    s.save()  # no check to interleave with: stored while it still exists
                    assert backend.raw(s.session_key) == {"user": 1, "cart": [1]}
                    cache.delete(KEY_PREFIX + s.session_key)  # the logout, now
                    s["cart"] = [1, 2]
                    with pytest.raises(UpdateError):
                        s.save()
                    assert backend.raw(s.session_key) is None


def test_atomic_update_only_for_known_exact_classes(redis_server, memcached_server):
    from django.core.cache.backends.redis import RedisCache

    class MyRedisCache(RedisCache):
        pass

    my_redis = {"BACKEND": f"{__name__}.MyRedisCache", "LOCATION": redis_server.location}
    herd = dict(cache_config("django_redis", redis_server))
    herd["OPTIONS"] = {**herd["OPTIONS"], "CLIENT_CLASS": "django_redis.client.HerdClient"}
    cases = [
        (cache_config("redis", redis_server), cs_cache._update_redis),
        (cache_config("django_redis", redis_server), cs_cache._update_django_redis),
        (cache_config("pymemcache", memcached_server), cs_cache._update_pymemcache),
        (cache_config("locmem"), None),
        (herd, None),  # HerdClient.set() drops xx
    ]
    for config, expected in cases:
        with using_cache(config) as cache:
            assert cs_cache.atomic_updater(cache) is expected, config
    globals()["MyRedisCache"] = MyRedisCache
    try:
        with using_cache(my_redis) as cache:
            assert cs_cache.atomic_updater(cache) is None  # a subclass may have changed set()
            s = CsStore()
            s["x"] = 1
            s.save()
            t = CsStore(s.session_key)
            t["x"] = 2
            CsStore(s.session_key).delete()
            with pytest.raises(UpdateError):
                t.save()
    finally:
        del globals()["MyRedisCache"]


# ------------------------------------------------------------------------------------------
# CreateError semantics and the fail-fast create()
# ------------------------------------------------------------------------------------------


def test_collisions_are_retried_like_django(locmem):
    taken = CsStore()
    taken["owner"] = "first"
    taken.save()
    with pytest.raises(CreateError):
        CsStore(taken.session_key).save(must_create=True)
    # 15 collisions (more than UNSTORED_TRIES): a key the cache holds is a real collision, and
    # create() goes on with fresh keys, as Django's does.
    keys = iter([taken.session_key] * 15)
    original = CsStore._get_new_session_key

    def next_key(self):
        return next(keys, None) or original(self)

    with mock.patch.object(CsStore, "_get_new_session_key", next_key), Spy(locmem.cache) as spy:
        s = CsStore()
        s["owner"] = "second"
        s.save()
    assert spy.calls.count("add") == 16
    assert s.session_key != taken.session_key
    assert locmem.raw(taken.session_key) == {"owner": "first"}
    assert locmem.raw(s.session_key) == {"owner": "second"}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_create_on_a_cache_that_stores_nothing_fails_fast(locmem, cs_log, asynchronous):
    """add() returns False and nothing is stored: Django retries 10,000 times; csessions stops
    after UNSTORED_TRIES with Django's RuntimeError and one warning."""
    engines = [(CsStore, cs_cache.UNSTORED_TRIES)]
    if not asynchronous:  # Django's async create() takes seconds for its 10,000 thread hops
        engines.insert(0, (DjStore, 10000))
    for engine, max_adds in engines:
        cs_log.clear()
        with mock.patch.object(locmem.cache, "add", return_value=False) as add:
            with pytest.raises(RuntimeError) as err:
                if asynchronous:
                    asyncio.run(engine().acreate())
                else:
                    engine().create()
        assert str(err.value) == cs_cache.CREATE_FAILED == (
            "Unable to create a new session key. It is likely that the cache is unavailable.")
        assert add.call_count == max_adds
    warnings = cs_log.records()
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "create()" in message and "RuntimeError" in message and "not storing" in message


def test_slow_unstored_create_is_not_retried(locmem, cs_log):
    """Each try costs the client's timeout when the server hangs: no retry past 0.1 s."""

    def slow_add(*args, **kwargs):
        time.sleep(0.15)
        return False

    with mock.patch.object(locmem.cache, "add", side_effect=slow_add) as add:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="^Unable to create a new session key"):
            s = CsStore()
            s["x"] = 1
            s.save()
    assert add.call_count == 1
    assert time.monotonic() - started < 1.0
    assert len(cs_log.records()) == 1 and "save()" in cs_log.records()[0].getMessage()


def test_errors_raised_by_the_cache_propagate_unchanged(locmem, cs_log):
    """A cache that raises: the same exception as Django's engine, at once, logged once."""
    boom = ConnectionError("cache is down")
    for op in ("create", "save", "delete", "exists", "cycle_key", "load"):
        for engine in (DjStore, CsStore):
            cs_log.clear()
            with mock.patch.multiple(locmem.cache, add=mock.DEFAULT, get=mock.DEFAULT, set=mock.DEFAULT,
                                     has_key=mock.DEFAULT, delete=mock.DEFAULT) as mocks:
                for m in mocks.values():
                    m.side_effect = boom
                s = engine("x" * 32)
                s._session_cache = {"k": 1}
                call = {"create": s.create, "save": s.save, "delete": s.delete, "cycle_key": s.cycle_key,
                        "exists": lambda: s.exists("x" * 32), "load": s.load}[op]
                if op == "load":
                    assert call() == {} and s.session_key is None
                else:
                    with pytest.raises(ConnectionError) as err:
                        call()
                    assert err.value is boom
            expected = 0 if engine is DjStore else 1
            assert len(cs_log.records()) == expected, (op, engine, cs_log.records())


def test_invalid_cache_key_is_only_logged_at_debug(memcached_server, cs_log):
    with using_cache(cache_config("pymemcache", memcached_server)):
        s = CsStore("x" * 300)  # memcached refuses keys over 250 bytes: a junk cookie
        assert s.load() == {} and s.session_key is None
        assert cs_log.records(logging.WARNING) == []
        debug = cs_log.records(logging.DEBUG)
        assert len(debug) == 1 and "InvalidCacheKey" in debug[0].getMessage()
        assert DjStore("x" * 300).load() == {}


# ------------------------------------------------------------------------------------------
# Expiry: the entry's timeout is the session's expiry age
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expiry", [None, 300, 0, "in-2-minutes", 10 ** 6])
def test_cache_timeout_is_the_expiry_age(backend, expiry):
    ttls = {}
    for engine in (DjStore, CsStore):
        s = engine()
        s["x"] = 1
        if expiry == "in-2-minutes":
            s.set_expiry(datetime.timedelta(minutes=2))
        elif expiry is not None:
            s.set_expiry(expiry)
        s.save()
        age = s.get_expiry_age()
        ttls[engine] = backend.ttl(s.session_key)
        assert ttls[engine] is not None
        assert age - 2 <= ttls[engine] <= age + 1, (engine, age, ttls[engine])
        # Saving again (an update) resets the timeout to the expiry age.
        s.set_expiry(60)
        s.save()
        assert 58 <= backend.ttl(s.session_key) <= 61
    assert abs(ttls[DjStore] - ttls[CsStore]) <= 2


def test_expired_entry_is_gone(redis_server):
    """One real wait, on a backend with sub-second expiry (the TTL tests cover the others)."""
    with using_cache(cache_config("redis", redis_server)):
        keys = {}
        for engine in (DjStore, CsStore):
            s = engine()
            s["x"] = 1
            s.set_expiry(1)
            s.save()
            assert engine(s.session_key).load() == {"x": 1, "_session_expiry": 1}
            keys[engine] = s.session_key
        time.sleep(1.05)
        for key in keys.values():
            assert CsStore(key).load() == {} and DjStore(key).load() == {}


# ------------------------------------------------------------------------------------------
# Cache down: server stopped or hung mid-test, small client timeouts
# ------------------------------------------------------------------------------------------

T = 0.1  # client socket timeouts (connect and read) in the cache-down tests
BOUND = 5 * T + 1.0  # no operation may take longer (Django's create() can take hours here)

DOWN_CLIENTS = {
    # name: (kind, ignore errors)
    "redis": ("redis", False),
    "django_redis": ("django_redis", False),
    "django_redis-ignore_exceptions": ("django_redis", True),
    "pymemcache": ("pymemcache", False),
    "pymemcache-ignore_exc": ("pymemcache", True),
}


def client_errors():
    import django_redis.exceptions
    import pymemcache.exceptions
    import redis.exceptions

    return (redis.exceptions.RedisError, django_redis.exceptions.ConnectionInterrupted,
            pymemcache.exceptions.MemcacheError, OSError)


@pytest.mark.parametrize("mode", ["stopped", "hung"])
@pytest.mark.parametrize("client", DOWN_CLIENTS)
def test_cache_down(client, mode, cs_log):
    kind, ignore = DOWN_CLIENTS[client]
    starter = start_memcached if kind == "pymemcache" else start_redis
    errors = client_errors()
    with starter() as server, using_cache(cache_config(kind, server, timeout=T, ignore=ignore)):
        s = CsStore()
        s["x"] = 1
        s.save()
        key = s.session_key
        loaded = CsStore(key)
        assert loaded["x"] == 1
        cycled = CsStore(key)
        assert cycled["x"] == 1

        if mode == "stopped":
            server.stop()  # connections are refused from now on
        else:
            server.pause()  # SIGSTOP: connections are accepted, nothing ever answers

        def check(label, fn):
            """Runs fn; returns ("ok", value) or ("raised", exc), checking time and logging."""
            cs_log.clear()
            started = time.monotonic()
            try:
                result = ("ok", fn())
            except Exception as e:
                result = ("raised", e)
            elapsed = time.monotonic() - started
            assert elapsed < BOUND, f"{label} took {elapsed:.2f}s with {T}s client timeouts"
            warnings = cs_log.records()
            assert len(warnings) <= 1, f"{label}: {len(warnings)} warnings"
            if result[0] == "raised":
                exc = result[1]
                assert isinstance(exc, (*errors, RuntimeError, UpdateError)), f"{label}: {exc!r}"
                if isinstance(exc, RuntimeError) and not isinstance(exc, errors):
                    assert str(exc) == cs_cache.CREATE_FAILED
                if not isinstance(exc, UpdateError):
                    assert len(warnings) == 1, f"{label} raised {exc!r} without a warning"
                    assert label.split(" ")[0] + "()" in warnings[0].getMessage()
            return result

        # load: an empty session, the key dropped (Django's behaviour).
        s = CsStore(key)
        assert check("load", lambda: dict(s.items())) == ("ok", {})
        assert s.session_key is None
        if kind != "pymemcache" and not ignore:
            assert len(cs_log.records()) == 1  # pymemcache may answer from its failed-server state
        # create, and saving a new session: fail (with the client's error or Django's RuntimeError).
        assert check("create", lambda: CsStore().create())[0] == "raised"
        new = CsStore()
        new["y"] = 2
        assert check("save new", new.save)[0] == "raised"
        # saving the loaded session: the client's error, or UpdateError if the client says the
        # entry is gone (as Django's engine: the middleware turns it into SessionInterrupted).
        loaded["x"] = 2
        assert check("save loaded", loaded.save)[0] == "raised"
        # cycle_key (login): create() fails first.
        assert check("create (cycle_key)", cycled.cycle_key)[0] == "raised"
        # delete / exists: the client's error, or nothing if the client swallows it.
        outcome, value = check("delete", lambda: CsStore(key).delete())
        assert outcome == "raised" or value is None
        outcome, value = check("exists", lambda: CsStore().exists(key))
        assert outcome == "raised" or value is False
        # async twins
        a = CsStore(key)
        assert check("aload", lambda: asyncio.run(a.aload())) == ("ok", {})
        assert check("acreate", lambda: asyncio.run(CsStore().acreate()))[0] == "raised"
        if ignore:  # the client swallowed every error: nothing for csessions to log but create()
            assert isinstance(check("create", lambda: CsStore().create())[1], RuntimeError)


@pytest.mark.parametrize("client", ["redis", "django_redis"])
def test_cache_down_raises_what_django_raises(client, cs_log):
    """With a client that raises, Django's engine fails at once: csessions raises the same."""
    kind, ignore = DOWN_CLIENTS[client]
    with start_redis() as server, using_cache(cache_config(kind, server, timeout=T)):
        s = DjStore()
        s.save()
        key = s.session_key
        server.stop()
        ops = {
            "load": lambda S: S(key).load(),
            "create": lambda S: S().create(),
            "save": lambda S: S().save(),
            "delete": lambda S: S(key).delete(),
            "exists": lambda S: S().exists(key),
            "acreate": lambda S: asyncio.run(S().acreate()),
            "aload": lambda S: asyncio.run(S(key).aload()),
        }
        for name, op in ops.items():
            results = []
            for engine in (DjStore, CsStore):
                try:
                    results.append(("ok", op(engine)))
                except Exception as e:
                    results.append(("raised", type(e)))
            assert results[0] == results[1], name


# ------------------------------------------------------------------------------------------
# Two processes on the same and different sessions
# ------------------------------------------------------------------------------------------

WORKER = r'''
import hashlib, json, random, sys, time, traceback
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["path"])
import django
from django.conf import settings
settings.configure(SECRET_KEY="concurrency", USE_TZ=True, INSTALLED_APPS=["django.contrib.sessions"],
                   CACHES={"default": cfg["cache"]}, LOGGING_CONFIG=None)
django.setup()
from django.contrib.sessions.backends.base import CreateError, UpdateError
if cfg["engine"] == "csessions":
    from csessions.backends.cache import SessionStore
else:
    from django.contrib.sessions.backends.cache import SessionStore

w, rng = cfg["worker"], random.Random(cfg["seed"])
stats, problems, own, gone = {}, [], {}, []

def digest(d):
    return hashlib.sha256(json.dumps([d["w"], d["i"], d["blob"], d["nums"]]).encode()).hexdigest()

def payload(i):
    d = {"w": w, "i": i, "blob": "x" * rng.randrange(0, 3000), "nums": list(range(rng.randrange(50)))}
    d["digest"] = digest(d)
    return d

def consistent(d):
    return d == {} or (sorted(d) == ["blob", "digest", "i", "nums", "w"] and d["digest"] == digest(d))

def count(name):
    stats[name] = stats.get(name, 0) + 1

def problem(msg):
    if len(problems) < 20:
        problems.append(msg)

def op_create_own(i):
    s = SessionStore(); s.update(payload(i)); s.save(); own[s.session_key] = dict(s.items())

def op_check_own(i):
    k = rng.choice(list(own))
    d = dict(SessionStore(k).items())
    if d != own[k]:
        problem(f"own session {k} holds {str(d)[:120]} instead of what this worker saved")

def op_update_own(i):
    k = rng.choice(list(own))
    s = SessionStore(k)
    if not consistent(dict(s.items())):
        problem(f"own session {k} corrupted")
    s.update(payload(i)); s.save(); own[k] = dict(s.items())

def op_cycle_own(i):
    k = rng.choice(list(own))
    s = SessionStore(k); s.cycle_key()
    own[s.session_key] = own.pop(k); gone.append(k)

def op_delete_own(i):
    k = rng.choice(list(own))
    SessionStore(k).delete(); own.pop(k); gone.append(k)

def op_read_shared(i):
    k = rng.choice(cfg["shared"])
    s = SessionStore(k); d = dict(s.items())
    if not consistent(d):
        problem(f"shared session {k} corrupted: {str(d)[:120]}")
    if d == {} and s.session_key is not None:
        problem("empty load kept the key")

def op_write_shared(i):
    k = rng.choice(cfg["shared"])
    s = SessionStore(k); d = dict(s.items())
    if not consistent(d):
        problem(f"shared session {k} corrupted: {str(d)[:120]}")
    if d == {}:  # deleted by someone: recreate it under its key; the other may have been first
        s = SessionStore(k); s.update(payload(i))
        try:
            s.save(must_create=True); count("recreated")
        except CreateError:
            count("CreateError")
        return
    s.update(payload(i))
    try:
        s.save(); count("updated")
    except UpdateError:  # deleted between our load and save: no resurrection
        count("UpdateError")

def op_delete_shared(i):
    SessionStore(rng.choice(cfg["shared"])).delete()

ops = [(op_create_own, 2), (op_check_own, 3), (op_update_own, 3), (op_cycle_own, 1), (op_delete_own, 1),
       (op_read_shared, 4), (op_write_shared, 5), (op_delete_shared, 1)]
choices = [f for f, n in ops for _ in range(n)]
print("ready", flush=True)
sys.stdin.readline()
deadline, i = time.monotonic() + cfg["seconds"], 0
while time.monotonic() < deadline:
    i += 1
    op = rng.choice(choices)
    if op is not op_create_own and op.__name__.endswith("_own") and len(own) < 3:
        op = op_create_own
    try:
        op(i)
        count(op.__name__)
    except Exception:
        problem(f"{op.__name__}: {traceback.format_exc()}")
for k, d in own.items():
    if dict(SessionStore(k).items()) != d:
        problem(f"own session {k} lost or changed at the end")
for k in gone[-50:]:
    if SessionStore(k).load() != {}:
        problem(f"deleted/cycled session {k} still loads")
print(json.dumps({"stats": stats, "problems": problems, "own": {k: d["digest"] for k, d in own.items()}}))
'''


@pytest.mark.parametrize("engines", [("csessions", "csessions"), ("csessions", "django")], ids="-".join)
@pytest.mark.parametrize("kind", ["redis", "pymemcache"])
def test_two_processes(kind, engines, request):
    server = request.getfixturevalue("memcached_server" if kind == "pymemcache" else "redis_server")
    config = cache_config(kind, server)
    with using_cache(config):
        shared = []
        for n in range(4):
            s = CsStore()
            s.update({"w": -1, "i": n, "blob": "", "nums": []})
            s["digest"] = hashlib.sha256(json.dumps([-1, n, "", []]).encode()).hexdigest()
            s.save()
            shared.append(s.session_key)
        procs = []
        for worker, engine in enumerate(engines):
            cfg = {"path": CSESSIONS_PATH, "cache": config, "engine": engine, "worker": worker,
                   "seed": worker, "shared": shared, "seconds": 0.8}
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        try:
            for p in procs:
                line = p.stdout.readline()
                assert line.strip() == "ready", p.communicate()[1]
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            outputs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        results = []
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, err
            assert err == "", err  # no warning from the csessions logger either
            results.append(json.loads(out))
        for r in results:
            assert r["problems"] == []
            assert sum(r["stats"].values()) > 100, r["stats"]
        # What each worker left is intact, read by the csessions engine of this process.
        for r in results:
            for key, dig in r["own"].items():
                assert CsStore(key).load()["digest"] == dig
        for key in shared:
            d = CsStore(key).load()
            assert d == {} or d["digest"] == hashlib.sha256(
                json.dumps([d["w"], d["i"], d["blob"], d["nums"]]).encode()).hexdigest()


def _recording(base):
    class Store(base):
        __qualname__ = "SessionStore"

        def __init__(self, session_key=None):
            super().__init__(session_key)
            self.calls = []

        def save(self, must_create=False):
            self.calls.append(("save", must_create))
            return super().save(must_create)

        def create(self):
            self.calls.append("create")
            return super().create()

        def exists(self, session_key):
            self.calls.append("exists")
            return super().exists(session_key)

        async def asave(self, must_create=False):
            self.calls.append(("asave", must_create))
            return await super().asave(must_create)

        async def acreate(self):
            self.calls.append("acreate")
            return await super().acreate()

        async def aexists(self, session_key):
            self.calls.append("aexists")
            return await super().aexists(session_key)

    return Store


def test_a_subclass_public_methods_are_called_as_djangos_are():
    # Django's create() calls save() and exists(), its save() calls create(): a subclass that
    # overrides them (metrics, auditing) sees the same calls, sync and async.
    def sync_run(store):
        s = store()
        s["a"] = 1
        s.save()
        s.cycle_key()
        return s.calls

    async def async_run(store):
        s = store()
        await s.aset("a", 1)
        await s.asave()
        await s.acycle_key()
        return s.calls

    mine, theirs = _recording(cs_cache.SessionStore), _recording(dj_cache.SessionStore)
    assert sync_run(mine) == sync_run(theirs)
    assert "exists" in sync_run(mine)
    assert asyncio.run(async_run(mine)) == asyncio.run(async_run(theirs))
