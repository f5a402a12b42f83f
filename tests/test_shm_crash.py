"""The shared-memory store under 8 processes doing random create/load/save/delete/expire against
a small segment (so eviction happens), while workers are SIGKILLed at random moments and others
die on purpose in the middle of a write, holding a stripe lock.

Afterwards: nobody deadlocked (every wait is bounded), every session read by anyone decodes, and
its content is one some writer wrote in full (its payload carries its own digest), the store
passes its full consistency check and its counters add up.
"""

import hashlib
import os
import random
import secrets
import signal
import time

import pytest
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.test import override_settings

from csessions import _core
from csessions.backends import shm

WORKERS = 8
DURATION = 2.5 if os.environ.get("CSESSIONS_SANITIZED") != "1" else 3.0
MIN_KILLS = 6  # the run goes on past DURATION until this many workers were killed
POOL = [f"{i:032d}" for i in range(300)]


def value_for(rng, wid, i):
    pad = rng.randbytes(rng.choice([60, 300, 1500, 6000])).hex()  # incompressible
    return {"w": wid, "i": i, "pad": pad, "h": hashlib.sha256(pad.encode()).hexdigest()}


def verify(raw):
    """Raises unless raw is a whole session some writer wrote."""
    # A torn or mixed value fails to decode or to match its own hash.
    data = shm.unpack_value(raw, None)
    assert set(data) - {"_session_expiry"} == {"w", "i", "pad", "h"}, data
    assert hashlib.sha256(data["pad"].encode()).hexdigest() == data["h"]


def worker(wid, seed, stop, failures):
    rng = random.Random(seed)
    handle = shm.store()  # inherited from the parent: the mapping survives fork
    i = 0
    give_up = time.time() + 120  # in case the parent died
    while not stop.exists() and time.time() < give_up:
        i += 1
        k = rng.choice(POOL)
        now = int(time.time())
        op = rng.random()
        try:
            if op < 0.35:
                raw = handle.get(k, now)
                if raw is not None:
                    verify(raw)
            elif op < 0.65:
                s = shm.SessionStore(k)
                s._session_cache = value_for(rng, wid, i)
                try:
                    s.save(must_create=rng.random() < 0.3)
                except (CreateError, UpdateError):
                    pass
            elif op < 0.75:
                shm.SessionStore(k).delete()
            elif op < 0.85:  # expires within a second or two
                s = shm.SessionStore(k)
                s._session_cache = value_for(rng, wid, i)
                s.set_expiry(rng.choice([1, 2]))
                try:
                    s.save(must_create=rng.random() < 0.5)
                except (CreateError, UpdateError):
                    pass
            elif op < 0.995:
                assert shm.SessionStore(k).exists(k) in (True, False)
            else:  # die in the middle of a write, holding the lock
                value = shm.SessionStore()._pack(value_for(rng, wid, i))
                handle._put_and_die(k, value, now + 60, now, 0, rng.choice([1, 2, 3]))
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the parent
            with open(failures, "a") as f:
                f.write(f"worker {wid} op {op:.3f} key {k}: {type(exc).__name__}: {exc}\n")
            os._exit(3)


def spawn(wid, seed, stop, failures):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            worker(wid, seed, stop, failures)
        except BaseException:  # noqa: BLE001
            code = 4
        os._exit(code)
    return pid


@pytest.fixture
def segment(tmp_path):
    name = f"csessions-crash-{os.getpid()}-{secrets.token_hex(6)}"
    with override_settings(CSESSIONS_SHM_NAME=name, CSESSIONS_SHM_SIZE=512 * 1024,
                           CSESSIONS_SHM_LOCK_TIMEOUT=5.0):
        try:
            yield shm.store(), tmp_path / "failures.txt"
        finally:
            shm.store().close()
            _core.shm_unlink(name)


def test_many_processes_with_kills(segment):
    handle, failures = segment
    rng = random.Random()
    seed0 = rng.randrange(1 << 30)
    # Time alone would not do: on a loaded machine, or under ASan (whose fork and exit are
    # slow), a few seconds can hold only a handful of kills.
    deadline = time.time() + DURATION
    stop = failures.with_name("stop")
    live = {}  # pid -> worker id
    for wid in range(WORKERS):
        live[spawn(wid, seed0 + wid, stop, failures)] = wid
    kills = spawned = 0
    bad_exits = []
    while time.time() < deadline or kills < MIN_KILLS:
        time.sleep(rng.uniform(0.02, 0.12))
        victim = rng.choice(list(live))
        os.kill(victim, signal.SIGKILL)
        kills += 1
        for pid in list(live):  # reap the victim and whoever ended on its own
            done, status = os.waitpid(pid, os.WNOHANG if pid != victim else 0)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if code not in (0, -signal.SIGKILL):
                    bad_exits.append(code)
                wid = live.pop(pid)
                spawned += 1
                live[spawn(wid, seed0 + 1000 * spawned + wid, stop, failures)] = wid
    stop.touch()
    # Bounded wait: a worker stuck on a lock would fail with TimeoutError within 5 s.
    limit = time.monotonic() + 15
    while live and time.monotonic() < limit:
        for pid in list(live):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if code not in (0, -signal.SIGKILL):
                    bad_exits.append(code)
                live.pop(pid)
        time.sleep(0.01)
    for pid in live:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    report = failures.read_text() if failures.exists() else ""
    assert not live, f"workers still running 15 s after the deadline (deadlock?): {report}"
    assert not bad_exits and not report, f"seed {seed0}: exits {bad_exits}\n{report}"
    assert kills >= MIN_KILLS

    now = int(time.time())
    for k in POOL:
        raw = handle.get(k, now)
        if raw is not None:
            verify(raw)
    stats = handle.stats()
    entries = handle.check()["entries"]  # every invariant of every stripe
    assert stats["entries"] == entries
    assert (stats["inserts"] - stats["deletes"] - stats["evictions"] - stats["expirations"]
            - stats["discarded"]) == entries
    assert stats["evictions"] > 0, stats
    assert stats["lock_recoveries"] > 0, stats
    assert stats["bytes_used"] + stats["bytes_free"] == stats["arena_bytes"]
    assert stats["hits"] > 0 and stats["misses"] > 0
    print(f"kills {kills}, respawned {spawned}, stats {stats}")
