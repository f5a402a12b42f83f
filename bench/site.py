"""A whole site: the example project under gunicorn, driven by wrk, one engine at a time.

Each engine serves `/counter` (reads and writes a visit counter in the session) from the
example project under gunicorn with 2 workers (one per core); wrk on loopback keeps each
connection's session cookie (bench/wrk_cookie.lua), so every request loads and saves a real
session. `/nosession` on the same server is the ceiling: the same tiny view without a session.
Between the two, the floor: `/counter` on an engine that stores nothing (bench/nostore_session.py),
so Django's middleware and SessionBase run in full but the store costs nothing; an engine's own
cost is its distance from that row.
Engines are run in rounds, in a shuffled order each round, and the medians over rounds are
reported, so drift on a shared machine hits every engine alike.

Every engine that a multi-process server can use, each beside its Django twin on the same
store: signed cookies; files; db on SQLite and on PostgreSQL; cached_db on PostgreSQL + Redis;
cache on Redis and on memcached; and csessions' shared-memory engine. (A LocMem cache is per
process: its sessions would split between the two workers.) PostgreSQL, Redis and memcached
are started on loopback by this script (tests/pg_server.py, tests/cache_servers.py) and
stopped at the end; the example site reads the database and cache from SITE_DATABASE and
SITE_CACHE.

Usage: .venv/bin/python bench/site.py [--rounds 3] [--seconds 3] [--out bench/results]
Needs gunicorn (pip) and wrk (Debian package `wrk`); `make bench` installs both.
"""

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_cookie.lua"

sys.path.insert(0, str(REPO / "tests"))
from cache_servers import start_memcached, start_redis  # noqa: E402
from pg_server import FAST_SETTINGS, start_postgres  # noqa: E402

CEILING = "no session (ceiling)"
FLOOR = "session, no store (floor)"
# (label, engine module without its package, store, path); each engine runs as Django's
# (django.contrib.sessions.backends.<engine>) and as csessions' (csessions.backends.<engine>).
STORES = ("none", "sqlite", "postgresql", "postgresql+redis", "redis", "memcached")
CANDIDATES = [
    (CEILING, "signed_cookies", "none", "/nosession"),
    (FLOOR, "nostore_session", "none", "/counter"),
    ("signed_cookies", "signed_cookies", "none", "/counter"),
    ("file", "file", "none", "/counter"),
    ("db [SQLite]", "db", "sqlite", "/counter"),
    ("db [PostgreSQL]", "db", "postgresql", "/counter"),
    ("cached_db [PostgreSQL + Redis]", "cached_db", "postgresql+redis", "/counter"),
    ("cache [Redis]", "cache", "redis", "/counter"),
    ("cache [memcached]", "cache", "memcached", "/counter"),
    ("shm", "shm", "none", "/counter"),  # csessions only: it has no Django twin
]


def configurations():
    """(label, SESSION_ENGINE, store, path) for every run, Django's twin before csessions'."""
    for label, engine, store, path in CANDIDATES:
        if label == CEILING:
            yield label, f"django.contrib.sessions.backends.{engine}", store, path
            continue
        if label == FLOOR:
            yield label, engine, store, path  # bench/ is on the site's PYTHONPATH
            continue
        if engine != "shm":
            yield f"django {label}", f"django.contrib.sessions.backends.{engine}", store, path
        yield f"csessions {label}", f"csessions.backends.{engine}", store, path


class Stores:
    """The servers and databases the engines need, started once for the whole run."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        pg = self._stack.enter_context(start_postgres(FAST_SETTINGS))
        pg.create_database("site")
        redis = self._stack.enter_context(start_redis())
        memcached = self._stack.enter_context(start_memcached())
        sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(self.tmp / "site.sqlite3")}
        postgresql = pg.django_database("site", CONN_MAX_AGE=600)  # no connect per request
        redis_cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                       "LOCATION": redis.location}
        self.env = {
            "none": {},
            "sqlite": {"SITE_DATABASE": json.dumps(sqlite)},
            "postgresql": {"SITE_DATABASE": json.dumps(postgresql)},
            "postgresql+redis": {"SITE_DATABASE": json.dumps(postgresql),
                                 "SITE_CACHE": json.dumps(redis_cache)},
            "redis": {"SITE_CACHE": json.dumps(redis_cache)},
            "memcached": {"SITE_CACHE": json.dumps({
                "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
                "LOCATION": memcached.location})},
        }
        for store in ("sqlite", "postgresql"):  # the django_session table
            subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0", "sessions"],
                           cwd=REPO / "example", env=self.site_env(store), check=True)
        return self

    def site_env(self, store, engine=None):
        pythonpath = os.pathsep.join([str(REPO), str(REPO / "bench")])
        env = dict(os.environ, DJANGO_DEBUG="0", TMPDIR=str(self.tmp), PYTHONPATH=pythonpath,
                   **self.env[store])  # file engines write to TMPDIR
        if engine:
            env["CSESSIONS_ENGINE"] = engine
        return env

    def __exit__(self, *exc):
        self._stack.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start listening")


def start_server(env):
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [str(gunicorn), "--chdir", str(REPO / "example"), "site_example.wsgi", "-w", "2",
         "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
    except Exception:
        proc.kill()
        raise
    return proc, port


def run_wrk(port, path, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA),
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed responses on {path}:\n{out}")
    return {"rps": rps, "p50_ms": to_ms(lat["50"]), "p99_ms": to_ms(lat["99"])}


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def check_counter(port):
    """Correctness first: the counter must count, i.e. the session really is loaded and saved."""
    import http.cookiejar
    import urllib.request

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    seen = [opener.open(f"http://127.0.0.1:{port}/counter").read().decode().strip()
            for _ in range(3)]
    if seen != ["1", "2", "3"]:
        raise RuntimeError(f"/counter returned {seen}, expected 1, 2, 3")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args(argv)
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            sys.exit(f"bench/site.py needs {tool}: apt-get install {tool}")
    if not (Path(sys.executable).parent / "gunicorn").exists():
        sys.exit(f"bench/site.py needs gunicorn: {sys.executable} -m pip install gunicorn")

    engines = list(configurations())
    samples = {label: [] for label, _, _, _ in engines}
    with tempfile.TemporaryDirectory() as tmp, Stores(tmp) as stores:
        for r in range(a.rounds):
            for label, engine, store, path in random.sample(engines, len(engines)):
                proc, port = start_server(stores.site_env(store, engine))
                try:
                    if path == "/counter" and label != FLOOR:
                        check_counter(port)
                    samples[label].append(run_wrk(port, path, a.seconds, a.connections))
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
                print(f"round {r + 1}: {label}: {samples[label][-1]}", flush=True)

    rows = []
    ceiling = statistics.median(s["rps"] for s in samples[engines[0][0]])
    for label, engine, store, path in engines:
        s = samples[label]
        rps = statistics.median(x["rps"] for x in s)
        rows.append({"label": label, "engine": engine, "store": store, "path": path, "rps": rps,
                     "rps_spread": [min(x["rps"] for x in s), max(x["rps"] for x in s)],
                     "p50_ms": statistics.median(x["p50_ms"] for x in s),
                     "p99_ms": statistics.median(x["p99_ms"] for x in s),
                     "of_ceiling": rps / ceiling})
    md = ["| engine | requests/s (min-max) | of ceiling | p50 | p99 |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lo, hi = row["rps_spread"]
        md.append(f"| {row['label']} | {row['rps']:.0f} ({lo:.0f}-{hi:.0f}) | "
                  f"{row['of_ceiling']:.0%} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms |")
    shm = next((r for r in rows if r["label"] == "csessions shm"), None)
    floor = next(r for r in rows if r["label"] == FLOOR)
    md.append("")
    md.append(f"Django's session machinery alone (middleware, SessionBase, the cookie; no store) "
              f"serves {floor['of_ceiling']:.1%} of the ceiling.")
    if shm:
        md.append(f"Bar (issue #5): csessions shm within 5% of the no-session ceiling: "
                  f"{shm['of_ceiling']:.1%} of it, **{'met' if shm['of_ceiling'] >= 0.95 else 'not met'}**; "
                  f"{shm['rps'] / floor['rps']:.1%} of the no-store floor.")
    table = "\n".join(md)
    print(table)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"rounds": a.rounds, "seconds": a.seconds, "connections": a.connections,
                "workers": 2, "python": sys.version.split()[0]}
    (out / "site.json").write_text(json.dumps({"settings": settings, "rows": rows,
                                               "samples": samples}, indent=2))
    (out / "site.md").write_text(
        "# Whole site: example project, gunicorn (2 workers), wrk on loopback\n\n"
        f"{a.rounds} rounds x {a.seconds} s per engine, {a.connections} connections, "
        "engines shuffled each round; medians over rounds.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
