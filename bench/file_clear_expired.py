"""clear_expired() of the file engine (what ``manage.py clearsessions`` runs), csessions vs Django.

    .venv/bin/python bench/file_clear_expired.py              # 100,000 session files
    .venv/bin/python bench/file_clear_expired.py --n 20000 --rounds 3

A directory of N session files is written once, in a temp directory (``--dir``), with the
``typical`` reference payload, the way the engines write it (``encode()``), each with its own
key, its own user (``_auth_user_id``, ``_auth_user_hash``: no two files alike) and an mtime of
its own:

  70%  the payload as is: ``_session_expiry`` = 1209600 (an int: never expires, as in Django),
       mtime anywhere in the last 28 days
  20%  no custom expiry, mtime within the last 14 days minus an hour: alive (SESSION_COOKIE_AGE)
   5%  no custom expiry, mtime 14 days and an hour to 28 days ago: expired
   5%  an ISO-date ``_session_expiry`` in the past (``set_expiry(datetime)``), fresh mtime: expired

so 10% are expired. Each round copies it (``copy2``: same content and mtimes) once per
contender, then times, on its own copy, Django's ``SessionStore.clear_expired()``, csessions'
with its default threads, and csessions' with one thread, in a shuffled order. Both sides see a
warm page cache (the copy has just written every file). Afterwards every copy must hold exactly
the same file names, the alive ones (checked before any time is reported; exit status 1
otherwise). Reported: wall time and process CPU time per contender (CPU counts all threads), the
median over rounds, and Django / csessions per round on each clock. The machine's load average
is printed: the threaded run can only go as fast as the idle cores allow, and on a busy machine
the CPU-time ratio of the one-thread run is the steadier figure.
"""

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import common

EXPIRED_SHARE = 0.10


def build_directory(path, n, payload, rng, now):
    """Writes the N files; returns the set of names that must survive."""
    from csessions import _core, signing

    salt = "django.contrib.sessions.SessionStore"  # SessionStore.key_salt, Django's and ours
    day = 86400
    alive = set()
    for i in range(n):
        # Every session its own: another user, so other bytes to inflate and parse.
        data = dict(payload)
        data["_auth_user_id"] = str(i)
        data["_auth_user_hash"] = hashlib.sha256(b"%d" % i).hexdigest()
        r = rng.random()
        if r < 0.70:
            mtime, keep = now - rng.uniform(0, 28 * day), True
        elif r < 0.90:
            del data["_session_expiry"]
            mtime, keep = now - rng.uniform(0, 14 * day - 3600), True
        elif r < 0.95:
            del data["_session_expiry"]
            mtime, keep = now - rng.uniform(14 * day + 3600, 28 * day), False
        else:
            expiry = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
                seconds=rng.uniform(3600, 7 * day))
            data["_session_expiry"] = expiry.isoformat()  # what set_expiry(datetime) stores
            mtime, keep = now - rng.uniform(0, day), False
        # Byte for byte what both engines' encode() writes (tests/test_signing.py).
        content = signing.dumps(data, salt=salt, compress=True)
        name = "sessionid" + _core.new_session_key()
        fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        os.utime(os.path.join(path, name), (mtime, mtime))
        if keep:
            alive.add(name)
    return alive


def clear(store_cls, path, threads=None):
    """Runs store_cls.clear_expired() on path; returns (wall s, CPU s)."""
    from django.test import override_settings

    with override_settings(SESSION_FILE_PATH=path):
        for cls in store_cls.__mro__:  # both engines cache the path on their class
            if "_storage_path" in vars(cls):
                delattr(cls, "_storage_path")
        saved = vars(store_cls).get("sweep_threads", None)
        if threads is not None:
            store_cls.sweep_threads = threads
        try:
            w0, c0 = time.perf_counter(), time.process_time()
            store_cls.clear_expired()
            return time.perf_counter() - w0, time.process_time() - c0
        finally:
            if threads is not None:
                store_cls.sweep_threads = saved
            delattr(store_cls, "_storage_path")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="session files (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (default %(default)s)")
    ap.add_argument("--dir", default=None, help="where to put the directories (default: TMPDIR)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args(argv)
    if a.n < 10 or a.rounds < 1:
        raise common.BenchError("--n must be >= 10 and --rounds >= 1")

    common.setup_django()
    common.import_csessions()
    from django.contrib.sessions.backends.file import SessionStore as DjStore

    from csessions.backends.file import SessionStore as CsStore
    from csessions.backends.file import default_sweep_threads

    payload = common.load_payloads(["typical"])["typical"]
    common.print_environment(common.environment())
    threads = CsStore.sweep_threads or default_sweep_threads()
    contenders = {
        "django": lambda p: clear(DjStore, p),
        f"csessions ({threads} threads)": lambda p: clear(CsStore, p),
        "csessions (1 thread)": lambda p: clear(CsStore, p, threads=1),
    }
    rng = random.Random(a.seed)
    base = tempfile.mkdtemp(prefix="csessions-bench-file-", dir=a.dir)
    failures = []
    samples = {name: [] for name in contenders}
    try:
        master = os.path.join(base, "master")
        os.mkdir(master)
        t0 = time.perf_counter()
        alive = build_directory(master, a.n, payload, rng, time.time())
        print(f"\n{a.n} session files ({a.n - len(alive)} expired, {len(alive)} alive) written in "
              f"{time.perf_counter() - t0:.1f}s to {master}")
        for rnd in range(a.rounds):
            order = list(contenders)
            rng.shuffle(order)
            for name in order:
                copy = os.path.join(base, "copy")
                shutil.copytree(master, copy)
                wall, cpu = contenders[name](copy)
                left = set(os.listdir(copy))
                shutil.rmtree(copy)
                if left != alive:
                    failures.append(f"round {rnd + 1}, {name}: {len(left - alive)} expired files "
                                    f"left, {len(alive - left)} alive files removed")
                samples[name].append((wall, cpu))
                print(f"  round {rnd + 1}: {name:<26} wall {wall:7.3f}s  CPU {cpu:7.3f}s  "
                      f"load avg {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if failures:
        print("\nFAILED: the engines do not leave the same files:")
        for f in failures:
            print("  " + f)
        return 1
    print(f"\nclear_expired() on {a.n} files, {a.rounds} round(s), median; every run left exactly "
          f"the {len(alive)} alive files")
    dj = samples["django"]
    results = {"n": a.n, "expired": a.n - len(alive), "rounds": a.rounds, "contenders": {}}
    rows = []
    for name, xs in samples.items():
        wall = statistics.median(w for w, _ in xs)
        cpu = statistics.median(c for _, c in xs)
        ratio = statistics.median(d[0] / x[0] for d, x in zip(dj, xs))
        cpu_ratio = statistics.median(d[1] / x[1] for d, x in zip(dj, xs))
        results["contenders"][name] = {"wall_s": wall, "cpu_s": cpu, "django_over_this": ratio,
                                       "django_over_this_cpu": cpu_ratio, "samples": xs}
        rows.append([name, f"{wall:.3f} s", f"{wall / a.n * 1e6:.1f} us", f"{cpu:.3f} s",
                     "1.0x" if name == "django" else f"{ratio:.1f}x",
                     "1.0x" if name == "django" else f"{cpu_ratio:.1f}x"])
    print(common.table(["contender", "wall", "per file", "CPU (all threads)", "django / this (wall)",
                        "django / this (CPU)"], rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(common.cli(main))
