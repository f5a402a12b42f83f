"""A whole site: the example project under gunicorn, driven by wrk, one engine at a time.

Each engine serves `/counter` (reads and writes a visit counter in the session) from the
example project under gunicorn with 2 workers (one per core); wrk on loopback keeps each
connection's session cookie (bench/wrk_cookie.lua), so every request loads and saves a real
session. `/nosession` on the same server is the ceiling: the same tiny view without a session.
Engines are run in rounds, in a shuffled order each round, and the medians over rounds are
reported, so drift on a shared machine hits every engine alike.

Only engines that a multi-process server can use are measured: a LocMem cache is per process,
so its sessions would split between the two workers.

Usage: .venv/bin/python bench/site.py [--rounds 3] [--seconds 5] [--out bench/results]
Needs gunicorn (pip) and wrk (Debian package `wrk`); `make bench` installs both.
"""

import argparse
import importlib.util
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

# (label, SESSION_ENGINE, path): csessions engines are listed only once importable.
CANDIDATES = [
    ("no session (ceiling)", "django.contrib.sessions.backends.signed_cookies", "/nosession"),
    ("django signed_cookies", "django.contrib.sessions.backends.signed_cookies", "/counter"),
    ("csessions signed_cookies", "csessions.backends.signed_cookies", "/counter"),
    ("django file", "django.contrib.sessions.backends.file", "/counter"),
    ("csessions file", "csessions.backends.file", "/counter"),
    ("csessions shm", "csessions.backends.shm", "/counter"),
]


def available(engine):
    sys.path.insert(0, str(REPO))
    try:
        return importlib.util.find_spec(engine) is not None
    finally:
        sys.path.pop(0)


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


def start_server(engine, tmp):
    port = free_port()
    env = dict(os.environ, CSESSIONS_ENGINE=engine, DJANGO_DEBUG="0",
               TMPDIR=str(tmp), PYTHONPATH=str(REPO))  # file engines write there
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
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args(argv)
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            sys.exit(f"bench/site.py needs {tool}: apt-get install {tool}")
    if not (Path(sys.executable).parent / "gunicorn").exists():
        sys.exit(f"bench/site.py needs gunicorn: {sys.executable} -m pip install gunicorn")

    engines = [c for c in CANDIDATES if available(c[1])]
    samples = {label: [] for label, _, _ in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for label, engine, path in random.sample(engines, len(engines)):
                proc, port = start_server(engine, tmp)
                try:
                    if path == "/counter":
                        check_counter(port)
                    samples[label].append(run_wrk(port, path, a.seconds, a.connections))
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
                print(f"round {r + 1}: {label}: {samples[label][-1]}", flush=True)

    rows = []
    ceiling = statistics.median(s["rps"] for s in samples[engines[0][0]])
    for label, engine, path in engines:
        s = samples[label]
        rps = statistics.median(x["rps"] for x in s)
        rows.append({"label": label, "engine": engine, "path": path, "rps": rps,
                     "rps_spread": [min(x["rps"] for x in s), max(x["rps"] for x in s)],
                     "p50_ms": statistics.median(x["p50_ms"] for x in s),
                     "p99_ms": statistics.median(x["p99_ms"] for x in s),
                     "of_ceiling": rps / ceiling})
    md = ["| engine | requests/s (min-max) | of ceiling | p50 | p99 |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lo, hi = row["rps_spread"]
        md.append(f"| {row['label']} | {row['rps']:.0f} ({lo:.0f}-{hi:.0f}) | "
                  f"{row['of_ceiling']:.0%} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms |")
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
