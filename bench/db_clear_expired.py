"""clear_expired() on a PostgreSQL table with 1,000,000 expired sessions, while requests go on.

    .venv/bin/python bench/db_clear_expired.py                      # ~3 min here
    .venv/bin/python bench/db_clear_expired.py --rows 100000 --django-rows 100000   # quick look

Starts its own PostgreSQL server (tests/pg_server.py: Debian's binaries, a fresh data directory
in a temporary directory, 127.0.0.1, a free port; durable settings unless --fast), creates
``django_session`` with Django's migration, and inserts the expired rows with one
``generate_series`` INSERT (expiry dates ascending with the physical order, as a table written
over time has them), then ``--live`` live sessions, then VACUUM ANALYZE. Every row holds the
``typical`` reference payload, encoded by the engine. A CHECKPOINT follows each fill, so that
the fill's checkpoint does not run during the clear (its fsyncs stall every commit).

Then, each run in a fresh process (so its peak RSS is its own), while a request process keeps
loading a random live session, changing it and saving it (csessions' db engine, as a request
with ``SessionMiddleware`` does), from 2 s before the clear to 1 s after it:

1. ``csessions.backends.db.SessionStore.clear_expired()`` with a post_delete receiver connected
   (it does not matter to it): batches of ``--batch`` rows.
2. Django's ``clear_expired()`` with a post_delete receiver connected (an audit log, a cache
   invalidation...): Django then loads every expired row as a model instance and sends
   pre_delete/post_delete for each, all in one transaction. On ``--django-rows`` rows (all of
   them by default; the table is refilled to that many expired rows first).
3. Django's ``clear_expired()`` with no receiver (its fast path: one DELETE statement), on
   ``--django-rows`` rows.

Reported per run: total time, rows deleted, peak RSS of the clearing process (and its growth
over the same process just before the call), the longest single transaction (measured by the
server: a monitor polls pg_stat_activity every 10 ms for the clearing connection's xact_start;
for csessions also each batch timed by the client), and the latency (median, p99, max) of the
request process's load+save before and during the clear.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import pg_server  # noqa: E402  (tests/pg_server.py: starts and stops the server)

APP_NAME = "csessions-bench-clear"  # application_name of the clearing connection
PAYLOAD = REPO / "bench" / "data" / "session-typical.json"


# ----------------------------------------------------------------------------- child roles


def configure(database, application_name="csessions-bench"):
    import django
    from django.conf import settings

    database = dict(database, OPTIONS={"application_name": application_name})
    settings.configure(
        SECRET_KEY="csessions-bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions"],
        DATABASES={"default": database},
        SESSION_ENGINE="csessions.backends.db",
        LOGGING_CONFIG=None,
    )
    django.setup()


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def role_clear(args):
    configure(json.loads(args.database), APP_NAME)
    from django.contrib.sessions.models import Session
    from django.db import connection
    from django.db.models.signals import post_delete

    if args.engine == "csessions":
        from csessions.backends.db import SessionStore as Base
    else:
        from django.contrib.sessions.backends.db import SessionStore as Base

    batch_seconds = []

    class SessionStore(Base):  # times each batch (csessions): one transaction each
        @classmethod
        def _delete_expired_batch(cls, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._delete_expired_batch(*a, **kw)
            finally:
                batch_seconds.append(time.perf_counter() - t)

    SessionStore.__qualname__ = "SessionStore"
    if args.receiver:
        seen = [0]

        def audit(sender, instance, **kwargs):
            seen[0] += 1

        post_delete.connect(audit, sender=Session, weak=False)
    from django.conf import settings

    settings.CSESSIONS_CLEAR_BATCH = args.batch
    connection.ensure_connection()  # no query: the monitor would count it as a transaction
    before_kib = peak_rss_kib()
    started = time.time()
    t = time.perf_counter()
    result = SessionStore.clear_expired()
    seconds = time.perf_counter() - t
    ended = time.time()
    print(json.dumps({
        "engine": args.engine, "receiver": args.receiver,
        "returned": result, "seconds": seconds, "started": started, "ended": ended,
        "rss_before_kib": before_kib, "peak_rss_kib": peak_rss_kib(),
        "receiver_calls": seen[0] if args.receiver else None,
        "batches": len(batch_seconds),
        "batch_max_s": max(batch_seconds) if batch_seconds else None,
        "batch_median_s": statistics.median(batch_seconds) if batch_seconds else None,
    }))


def role_live(args):
    configure(json.loads(args.database))
    import random

    from csessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    from django.utils import timezone

    keys = list(Session.objects.filter(expire_date__gt=timezone.now()).values_list("pk", flat=True))
    rnd = random.Random(1)
    ops = []  # (wall-clock start, seconds)
    ready = Path(args.stop + ".ready")
    ready.touch()
    while not os.path.exists(args.stop):
        key = rnd.choice(keys)
        start_wall, t = time.time(), time.perf_counter()
        s = SessionStore(key)
        s["counter"] = s.get("counter", 0) + 1
        s.save()
        ops.append((start_wall, time.perf_counter() - t))
    with open(args.out, "w") as f:
        json.dump({"ops": ops, "keys": len(keys)}, f)


# ----------------------------------------------------------------------------- orchestration


def child(role, database, *extra):
    return [sys.executable, os.path.abspath(__file__), "--role", role, "--database", json.dumps(database), *extra]


class TransactionMonitor(threading.Thread):
    """Polls pg_stat_activity for the clearing connection: the longest transaction it saw."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.conn = server.connect(autocommit=True)
        self.stop = threading.Event()
        self.longest = {}  # xact_start -> longest age seen

    def run(self):
        while not self.stop.is_set():
            for xact_start, age in self.conn.execute(
                "SELECT xact_start, extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity "
                "WHERE application_name = %s AND xact_start IS NOT NULL", [APP_NAME]
            ).fetchall():
                self.longest[xact_start] = max(self.longest.get(xact_start, 0.0), float(age))
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        self.join()
        self.conn.close()
        return max(self.longest.values(), default=0.0), len(self.longest)


def latency(ops, start, end):
    sample = sorted(s for t, s in ops if start <= t <= end)
    if not sample:
        return None
    return {"n": len(sample), "median_ms": 1e3 * statistics.median(sample),
            "p99_ms": 1e3 * sample[min(len(sample) - 1, int(0.99 * len(sample)))], "max_ms": 1e3 * sample[-1]}


def fill(conn, rows, encoded, live=0):
    """``rows`` expired rows (expiry ascending with insertion order), then ``live`` live ones."""
    t = time.perf_counter()
    conn.execute(
        "INSERT INTO django_session (session_key, session_data, expire_date) "
        "SELECT 'x' || md5(i::text), %s, now() - interval '1 hour' - (%s - i) * interval '1 second' "
        "FROM generate_series(1, %s) AS i", [encoded, rows, rows])
    if live:
        conn.execute(
            "INSERT INTO django_session (session_key, session_data, expire_date) "
            "SELECT 'live' || md5(i::text), %s, now() + interval '14 days' FROM generate_series(1, %s) AS i",
            [encoded, live])
    conn.execute("VACUUM ANALYZE django_session")
    # The fill's own checkpoint must not be running during the clear: its fsyncs stall every
    # commit (on this kind of disk, by up to a second), whoever commits.
    conn.execute("CHECKPOINT")
    return time.perf_counter() - t


def run_clear(server, database, engine, receiver, batch, tmp, label, tag):
    stop = os.path.join(tmp, f"stop-{tag}")
    out = os.path.join(tmp, f"live-{tag}.json")
    live = subprocess.Popen(child("live", database, "--stop", stop, "--out", out))
    while not os.path.exists(stop + ".ready"):
        if live.poll() is not None:
            raise SystemExit(f"the request process died (exit status {live.returncode})")
        time.sleep(0.05)
    time.sleep(2.0)  # baseline latency, before the clear
    monitor = TransactionMonitor(server)
    monitor.start()
    extra = ["--engine", engine, "--batch", str(batch)] + (["--receiver"] if receiver else [])
    proc = subprocess.run(child("clear", database, *extra), capture_output=True, text=True)
    longest_xact, transactions = monitor.finish()
    time.sleep(1.0)
    Path(stop).touch()
    live.wait(60)
    if proc.returncode != 0:
        raise SystemExit(f"clear ({label}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out) as f:
        ops = json.load(f)["ops"]
    result["label"] = label
    result["server_longest_transaction_s"] = longest_xact
    result["server_transactions_seen"] = transactions
    result["live_before"] = latency(ops, ops[0][0] if ops else 0, result["started"])
    result["live_during"] = latency(ops, result["started"], result["ended"])
    return result


def report(r):
    mib = lambda kib: kib / 1024  # noqa: E731
    lines = [
        f"## {r['label']}",
        f"  rows deleted           {r['expired_before']:>12,}   (returned: {r['returned']})",
        f"  total time             {r['seconds']:>12.2f} s",
        f"  peak RSS               {mib(r['peak_rss_kib']):>12.1f} MiB   "
        f"(+{mib(r['peak_rss_kib'] - r['rss_before_kib']):.1f} MiB over the process before the call)",
        f"  longest transaction    {r['server_longest_transaction_s']:>12.3f} s   (server-side, pg_stat_activity every 10 ms)",
    ]
    if r["batches"] and r["batch_max_s"] is not None and r["engine"] == "csessions":
        lines.append(f"  batches                {r['batches']:>12,}   (client-timed transaction: median "
                     f"{1e3 * r['batch_median_s']:.1f} ms, max {1e3 * r['batch_max_s']:.1f} ms)")
    if r["receiver_calls"] is not None:
        lines.append(f"  post_delete calls      {r['receiver_calls']:>12,}")
    for name in ("live_before", "live_during"):
        v = r[name]
        when = "before the clear" if name == "live_before" else "during the clear"
        lines.append(f"  request load+save {when}: " + (
            "no request finished in that window" if not v else
            f"n={v['n']:,}  median {v['median_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms  max {v['max_ms']:.2f} ms"))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired rows (default: %(default)s)")
    parser.add_argument("--live", type=int, default=2_000, help="live sessions (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=10_000, help="CSESSIONS_CLEAR_BATCH (default: %(default)s)")
    parser.add_argument("--django-rows", type=int, default=None,
                        help="expired rows for Django's runs (default: --rows)")
    parser.add_argument("--no-django", action="store_true", help="only csessions' run")
    parser.add_argument("--fast", action="store_true", help="fsync=off etc. (default: durable server)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clear":
        return role_clear(args)
    if args.role == "live":
        return role_live(args)

    django_rows = args.django_rows or args.rows
    tmp = tempfile.mkdtemp(prefix="csessions-bench-db-")
    print(f"starting PostgreSQL ({'fast' if args.fast else 'durable'} settings) ...", flush=True)
    with pg_server.start_postgres(pg_server.FAST_SETTINGS if args.fast else None) as server:
        database = server.django_database(server.create_database("bench"))
        configure(database)
        from django.core.management import call_command

        from csessions.backends.db import SessionStore

        call_command("migrate", "sessions", verbosity=0)
        version = server.connect().execute("SHOW server_version").fetchone()[0]
        with open(PAYLOAD) as f:
            encoded = SessionStore().encode(json.load(f))
        print(f"PostgreSQL {version} on 127.0.0.1:{server.port}; row payload: typical "
              f"({len(encoded)} bytes encoded); {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        results = []
        with server.connect("bench", autocommit=True) as conn:
            seconds = fill(conn, args.rows, encoded, live=args.live)
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('django_session'))").fetchone()[0]
            print(f"inserted {args.rows:,} expired + {args.live:,} live rows in {seconds:.1f} s "
                  f"(table + indexes: {size})\n", flush=True)
            runs = [("csessions", True, args.rows,
                     f"csessions clear_expired(), {args.rows:,} expired rows, post_delete receiver connected, "
                     f"batch {args.batch:,}")]
            if not args.no_django:
                runs += [
                    ("django", True, django_rows,
                     f"Django clear_expired(), {django_rows:,} expired rows, post_delete receiver connected"),
                    ("django", False, django_rows,
                     f"Django clear_expired(), {django_rows:,} expired rows, no receiver (one DELETE)"),
                ]
            for i, (engine, receiver, rows, label) in enumerate(runs):
                if i:  # refill: the previous run emptied the table of expired rows
                    conn.execute("VACUUM django_session")
                    fill(conn, rows, encoded)
                expired = conn.execute("SELECT count(*) FROM django_session WHERE expire_date < now()").fetchone()[0]
                r = run_clear(server, database, engine, receiver, args.batch, tmp, label, i)
                r["expired_before"] = expired
                left = conn.execute("SELECT count(*) FROM django_session WHERE expire_date < now()").fetchone()[0]
                live = conn.execute("SELECT count(*) FROM django_session WHERE expire_date >= now()").fetchone()[0]
                r["expired_left"], r["live_left"] = left, live
                r["loadavg_after"] = os.getloadavg()
                results.append(r)
                print(report(r) + f"\n  after: {left:,} expired rows left, {live:,} live rows\n", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "postgresql": version, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
