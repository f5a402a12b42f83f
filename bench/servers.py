"""The stores the engine benchmark (engines.py) runs on, made on first use, all gone at the end.

``Stores`` is a context manager (an ExitStack): temporary directories, a SQLite file database,
and the real servers of the test suite (tests/pg_server.py: PostgreSQL; tests/cache_servers.py:
redis-server, memcached), each started the first time an engine asks for it and stopped when
the ``with`` block ends, on an error too (the servers also die with this process: they are
started with a parent-death signal). Django learns about them as extra aliases registered on
the live ``connections`` / ``caches`` handlers (``settings.configure`` ran long before a server
port was known), unregistered and closed before the servers stop.

Choices that keep the disk out of the numbers (it would add the same wait to both sides):
  * SQLite lives on tmpfs (/dev/shm) unless ``sqlite_dir`` says otherwise: on this machine's ext4
    a commit waits ~6 ms for fsync against ~0.4 ms of CPU work;
  * PostgreSQL runs with the tests' FAST_SETTINGS (fsync, synchronous_commit and
    full_page_writes off): a commit does not wait for the WAL to reach the disk.
The file engine's directory is in the default temporary directory, where Django's file engine
keeps sessions by default (neither engine fsyncs by default).
"""

import contextlib
import os
import shutil
import signal
import sys
import tempfile

import common

sys.path.insert(0, str(common.REPO / "tests"))
import cache_servers  # noqa: E402
import pg_server  # noqa: E402

SQLITE_ALIAS = "bench-sqlite"
PG_ALIAS = "bench-pg"
PG_DATABASE = "bench"

CACHE_BACKENDS = {
    "locmem": ("django.core.cache.backends.locmem.LocMemCache", None),
    "redis": ("django.core.cache.backends.redis.RedisCache", "redis"),
    "django-redis": ("django_redis.cache.RedisCache", "redis"),
    "memcached": ("django.core.cache.backends.memcached.PyMemcacheCache", "memcached"),
}


def default_sqlite_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Stores(contextlib.ExitStack):
    def __init__(self, sqlite_dir=None):
        super().__init__()
        self.sqlite_dir = sqlite_dir or default_sqlite_dir()
        self._made = {}
        self.described = {}  # what was started, for the report

    def __enter__(self):
        # A SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so the servers are stopped and
        # the directories removed.
        def interrupted(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupted)
        self.callback(signal.signal, signal.SIGTERM, previous)
        return super().__enter__()

    def _once(self, name, make):
        if name not in self._made:
            self._made[name] = make()
        return self._made[name]

    def tmpdir(self, name, parent=None):
        def make():
            path = tempfile.mkdtemp(prefix=f"csessions-bench-{name}-", dir=parent)
            self.callback(shutil.rmtree, path, ignore_errors=True)
            return path

        return self._once(("dir", name), make)

    # -- servers ------------------------------------------------------------------------------

    def postgres(self):
        def make():
            server = self.enter_context(pg_server.start_postgres(pg_server.FAST_SETTINGS))
            server.create_database(PG_DATABASE)
            self.described["postgresql"] = (f"127.0.0.1:{server.port} ({server.bin_dir}, "
                                            f"{', '.join(f'{k}={v}' for k, v in pg_server.FAST_SETTINGS.items())})")
            return server

        return self._once("postgres", make)

    def _cache_server(self, kind):
        def make():
            start = cache_servers.start_redis if kind == "redis" else cache_servers.start_memcached
            server = self.enter_context(start())
            self.described[kind] = server.location
            return server

        return self._once(kind, make)

    # -- Django aliases -----------------------------------------------------------------------

    def database(self, kind):
        """The alias of a database holding an empty django_session table: "sqlite" or "postgresql"."""
        def make():
            if kind == "sqlite":
                path = os.path.join(self.tmpdir("sqlite", self.sqlite_dir), "sessions.sqlite3")
                cfg = {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
                alias = SQLITE_ALIAS
                self.described["sqlite"] = path
            else:
                cfg = self.postgres().django_database(PG_DATABASE)
                alias = PG_ALIAS
            _register_database(alias, cfg)
            self.callback(_unregister_database, alias)
            from django.contrib.sessions.models import Session
            from django.db import connections

            with connections[alias].schema_editor() as editor:
                editor.create_model(Session)
            return alias

        return self._once(("db", kind), make)

    def cache(self, kind):
        """The alias of a cache of this kind (CACHE_BACKENDS), its server started if it has one."""
        def make():
            backend, server = CACHE_BACKENDS[kind]
            cfg = {"BACKEND": backend, "LOCATION": f"csessions-bench-{kind}"}
            if server:
                cfg["LOCATION"] = self._cache_server(server).location
            alias = f"bench-{kind}"
            _register_cache(alias, cfg)
            self.callback(_unregister_cache, alias)
            return alias

        return self._once(("cache", kind), make)


def _register_database(alias, cfg):
    from django.db import connections

    # ConnectionHandler.configure_settings fills in the defaults (AUTOCOMMIT, TIME_ZONE, ...).
    connections.settings[alias] = connections.configure_settings({"default": cfg})["default"]


def _unregister_database(alias):
    from django.db import connections

    conn = getattr(connections._connections, alias, None)
    if conn is not None:
        conn.close()
        delattr(connections._connections, alias)
    connections.settings.pop(alias, None)


def _register_cache(alias, cfg):
    from django.core.cache import caches

    caches.settings[alias] = cfg


def _unregister_cache(alias):
    from django.core.cache import caches

    cache = getattr(caches._connections, alias, None)
    if cache is not None:
        with contextlib.suppress(Exception):
            cache.close()
        delattr(caches._connections, alias)
    caches.settings.pop(alias, None)
