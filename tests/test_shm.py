"""csessions.backends.shm and the C store under it (csessions._core.ShmStore).

Every test gets its own segment (pid + random in the name) and removes it afterwards. The
segment layout these tests poke at is the one documented in src/shm.h.
"""

import asyncio
import datetime
import hashlib
import io
import json
import os
import random
import secrets
import signal
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.management import call_command
from django.test import override_settings

from csessions import _core, signing
from csessions.backends import shm
from csessions.serializers import JSONSerializer
from csessions.management.commands.csessions_shm import Command

SALT = "django.contrib.sessions.SessionStore"
DATA = Path(__file__).resolve().parent.parent / "bench" / "data"
HEADER = struct.Struct("=8sIIQIIIIQQQ")  # magic .. arenas_off of shm_header
SET, ADD, REPLACE = 0, 1, 2
MIB = 1024 * 1024


def unique_name():
    return f"csessions-test-{os.getpid()}-{secrets.token_hex(6)}"


@pytest.fixture
def name():
    n = unique_name()
    yield n
    _core.shm_unlink(n)


@pytest.fixture
def engine(name):
    """SESSION_ENGINE settings pointing at a fresh 2 MiB segment."""
    with override_settings(CSESSIONS_SHM_NAME=name, CSESSIONS_SHM_SIZE=2 * MIB):
        yield shm
        for handle in list(shm._stores.values()):
            if handle.name == "/" + name:
                handle.close()


def key(i):
    return f"{i:032d}"


def geometry(name):
    with open(f"/dev/shm/{name}", "rb") as f:
        fields = HEADER.unpack(f.read(HEADER.size))
    names = ("magic version header_bytes total_size nstripes nbuckets arena_size top_order "
             "stripes_off buckets_off arenas_off").split()
    return dict(zip(names, fields))


def pwrite(name, offset, data):
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ the C store


def test_create_then_attach(name):
    a = _core.ShmStore(name, MIB)
    assert a.created and a.name == "/" + name and a.size == MIB
    st = os.stat(f"/dev/shm/{name}")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    now = int(time.time())
    assert a.put(key(1), "v1", now + 60, now, ADD)
    b = _core.ShmStore(name, 8 * MIB)  # exists: attached with its own size
    assert not b.created and b.size == MIB
    assert b.get(key(1), now) == "v1"
    assert a.stats()["inserts"] == 1
    a.close()
    assert b.get(key(1), now) == "v1"
    with pytest.raises(ValueError, match="closed"):
        a.get(key(1), now)
    b.close()


def test_attach_only_when_asked(name):
    with pytest.raises(FileNotFoundError):
        _core.ShmStore(name, MIB, create=False)
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("bad", ["", "/", "a/b", "x" * 201, "..", "a\0b"])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        _core.ShmStore(bad, MIB)


def test_too_small(name):
    with pytest.raises(ValueError, match="too small"):
        _core.ShmStore(name, 64 * 1024)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_add_set_replace_delete(name):
    s = _core.ShmStore(name, MIB)
    now = int(time.time())
    assert not s.put(key(1), "a", now + 60, now, REPLACE)
    assert s.get(key(1), now) is None
    assert s.put(key(1), "a", now + 60, now, ADD)
    assert not s.put(key(1), "b", now + 60, now, ADD)
    assert s.get(key(1), now) == "a"
    assert s.put(key(1), b"b" * 5000, now + 60, now, REPLACE)
    assert s.get(key(1), now) == "b" * 5000
    assert s.put(key(1), "c", now + 60, now, SET)
    assert s.contains(key(1), now) and s.get(key(1), now) == "c"
    assert s.delete(key(1), now) and not s.delete(key(1), now)
    assert not s.contains(key(1), now)
    stats = s.stats()
    assert (stats["inserts"], stats["updates"], stats["deletes"], stats["entries"]) == (1, 2, 1, 0)
    assert stats["hits"] == 3 and stats["misses"] == 1 and stats["bytes_used"] == 0
    assert s.check() == {"entries": 0}
    with pytest.raises(TypeError):
        s.put(key(1), 12, now, now, SET)
    with pytest.raises(TypeError):
        s.get("caf\u00e9" * 10, now)
    with pytest.raises(ValueError):
        s.get("k" * 256, now)
    with pytest.raises(ValueError):
        s.put(key(1), "v", now, now, 3)


def test_put_packed_and_get_unpacked(name):
    """The engine's one-call save and load: put() of pack()'s bytes and get() + unpack(); where
    the engine must store something else, put_packed stores nothing and says why."""
    s = _core.ShmStore(name, 2 * MIB)
    now = int(time.time())
    d = {"cart": [{"sku": "A1", "qty": 2, "price": 9.99}], "name": "Zoë 😀", "n": None}
    assert s.put_packed(key(1), d, now + 60, now, REPLACE, 1000) is False
    assert s.put_packed(key(1), d, now + 60, now, ADD, 1000) is True
    assert s.put_packed(key(1), d, now + 60, now, ADD, 1000) is False
    assert s.get(key(1), now) == _core.pack(d).decode("latin-1")  # the same bytes as put()
    assert s.get_unpacked(key(1), now) == d
    assert s.get_unpacked(key(2), now) is None
    assert s.get_unpacked(key(1), now + 60) is None  # expired
    assert s.put_packed(key(1), d, now + 60, now, SET, 1000) is True
    packed = _core.pack(d)
    before = s.stats()
    for unpackable in ({1: "int key"}, {"big": 2**70}, {"s": {1, 2}}, {"lone": "\ud800"}, [1], "s"):
        assert s.put_packed(key(1), unpackable, now + 60, now, SET, 1000) is None
    big = {"x": "y" * 2000}
    assert s.put_packed(key(1), big, now + 60, now, SET, 1000) == _core.pack(big)  # > limit
    huge = {"x": "y" * s.max_entry}
    assert s.put_packed(key(1), huge, now + 60, now, SET, 10**9) == _core.pack(huge)
    assert s.stats() == before  # none of those answers touched the store
    assert s.get_unpacked(key(1), now) == d
    assert s.put_packed(key(1), d, now + 60, now, SET, len(packed)) is True  # == limit
    for other in (b"{json}", b"s-other serializer", b"o\x01\x00\x00\x00A\x01", b"", b"y\x78\x9c",
                  packed + b"trailing", packed[:-1]):
        s.put(key(3), other, now + 60, now, SET)  # not a packed dict, or a malformed one
        assert s.get_unpacked(key(3), now) == other.decode("latin-1")
    with pytest.raises(TypeError):
        s.put_packed("caf\u00e9" * 10, d, now + 60, now, SET, 1000)
    with pytest.raises(ValueError):
        s.put_packed("k" * 256, d, now + 60, now, SET, 1000)
    with pytest.raises(ValueError):
        s.get_unpacked("k" * 256, now)
    assert s.check() == {"entries": 2}


def test_expiry_on_read(name):
    s = _core.ShmStore(name, MIB)
    now = 1_800_000_000
    s.put(key(1), "v", now + 10, now, SET)
    assert s.get(key(1), now + 9) == "v"
    assert s.get(key(1), now + 10) is None  # expires_at <= now: gone
    assert s.stats()["expirations"] == 1 and s.stats()["entries"] == 0
    s.put(key(2), "v", now + 10, now, SET)
    assert not s.put(key(2), "w", now + 20, now + 10, REPLACE)  # an expired entry is no entry
    assert s.put(key(2), "w", now + 20, now + 10, ADD)
    assert s.check() == {"entries": 1}


def test_times_are_the_callers_whole_seconds(name):
    # The store has no clock of its own (a faked time.time() must reach every operation);
    # a float time is floored, as time.time() gives them.
    s = _core.ShmStore(name, MIB)
    for args in [(key(1), "v", None, 0, SET), (key(1), "v", 10, None, SET),
                 (key(1), "v", 10, 0, None), (key(1), "v", 10, 0, 0.0)]:
        with pytest.raises(TypeError):
            s.put(*args)
    for bad in (float("nan"), float("inf"), -1e19):
        with pytest.raises(ValueError, match="time out of range"):
            s.get(key(1), bad)
    with pytest.raises(TypeError):
        s.get(key(1), None)
    assert s.stats()["entries"] == 0
    assert s.put(key(1), "v", 100.9, 0.5, SET)  # expires 100
    assert s.get(key(1), 99.99) == "v" and s.get(key(1), 100.0) is None


def test_incremental_sweep_reclaims_expired(name):
    s = _core.ShmStore(name, 256 * 1024)  # one stripe
    stats = s.stats()
    assert stats["stripes"] == 1
    now = 1_800_000_000
    for i in range(100):
        s.put(key(i), "x" * 100, now + 1, now, SET)
    assert s.stats()["entries"] == 100
    # Each write visits 2 buckets: one lap of the table reclaims everything expired, without
    # anyone reading the expired keys.
    for i in range(stats["buckets"] // 2):
        s.put(key(1000), "y", now + 100, now + 5, SET)
    st = s.stats()
    assert st["expirations"] == 100 and st["entries"] == 1
    assert s.sweep(now + 1000) == 1 and s.stats()["entries"] == 0
    assert s.check() == {"entries": 0}


def test_full_store_evicts_lru(name):
    s = _core.ShmStore(name, 256 * 1024)
    now = int(time.time())
    value = "v" * 900  # 1 KiB blocks
    for i in range(1000):
        assert s.put(key(i), value, now + 600, now, SET)
        if i % 10 == 0:
            assert s.get(key(0), now) == value  # kept hot: never the least recently used
    st = s.stats()
    assert st["evictions"] > 700 and st["bytes_used"] <= st["arena_bytes"]
    assert st["inserts"] - st["evictions"] == st["entries"] == s.check()["entries"]
    assert s.get(key(0), now) == value
    assert s.get(key(999), now) == value and s.get(key(1), now) is None


def _fill_until_full(s, value, now):
    """Puts key(0), key(1), ... until the first eviction; the keys that are live then."""
    i = 0
    while s.stats()["evictions"] == 0:
        assert s.put(key(i), value, now + 600, now, SET)
        i += 1
    return [k for k in map(key, range(i)) if s.contains(k, now)]


def test_a_read_session_gets_a_second_chance(name):
    # Reads mark entries instead of moving them (src/shm.c, lru_touch): eviction then moves a
    # marked tail entry to the head and evicts the least recently used unmarked one.
    s = _core.ShmStore(name, 256 * 1024)
    now = int(time.time())
    value = "v" * 900  # 1 KiB blocks
    live = _fill_until_full(s, value, now)
    read, unread = live[::3], [k for k in live if k not in live[::3]]
    for k in read:
        assert s.get(k, now) == value
    before = s.stats()["evictions"]
    for i in range(len(unread) // 2):
        assert s.put(f"new{i:029d}", value, now + 600, now, SET)
    evicted = s.stats()["evictions"] - before
    assert 0 < evicted <= len(unread) // 2
    assert all(s.contains(k, now) for k in read)
    gone = [k for k in unread if not s.contains(k, now)]
    assert gone == unread[:len(gone)] and len(gone) == evicted  # oldest first
    assert s.check()["entries"] == s.stats()["entries"]


def test_a_store_where_every_session_was_read_still_takes_a_put(name):
    s = _core.ShmStore(name, 256 * 1024)
    now = int(time.time())
    value = "v" * 900
    live = _fill_until_full(s, value, now)
    for k in live:
        s.get(k, now)
    before = s.stats()
    assert s.put("x" * 32, value, now + 600, now, SET)
    after = s.stats()
    assert after["evictions"] == before["evictions"] + 1
    assert after["entries"] == before["entries"] == s.check()["entries"]
    assert s.get("x" * 32, now) == value


def test_expired_go_before_lru(name):
    s = _core.ShmStore(name, 256 * 1024)
    now = 1_800_000_000
    value = "v" * 900
    n = 0
    while s.stats()["bytes_free"] >= 1024:
        s.put(key(n), value, now + (1 if n % 2 else 600), now, SET)
        n += 1
    for i in range(0, n, 2):  # the long-lived ones are now the most recently used
        s.get(key(i), now)
    s.put(key(10**6), value, now + 600, now + 5, SET)
    st = s.stats()
    assert st["evictions"] == 0 and st["expirations"] >= 1
    assert all(s.get(key(i), now + 5) == value for i in range(0, n, 2))


def test_value_too_large_raises_and_disturbs_nothing(name):
    s = _core.ShmStore(name, 2 * MIB)
    now = int(time.time())
    s.put(key(1), "keep", now + 60, now, SET)
    before = s.stats()
    limit = s.max_entry - s.entry_overhead - 32
    assert s.put(key(2), "x" * limit, now + 60, now, SET)
    with pytest.raises(ValueError, match="larger than the largest"):
        s.put(key(3), "x" * (limit + 1), now + 60, now, SET)
    assert s.get(key(1), now) == "keep" and s.get(key(3), now) is None
    assert s.stats()["inserts"] == before["inserts"] + 1


def test_huge_payload_fits_default_size(name):
    s = _core.ShmStore(name, 64 * MIB)
    assert s.stats()["stripes"] == 64 and s.max_entry == 256 * 1024
    now = int(time.time())
    huge = json.loads((DATA / "session-huge.json").read_text())
    value = signing.dumps(huge, salt=SALT, compress=False)  # the worst case: incompressible
    assert s.put(key(1), value, now + 60, now, ADD)
    assert signing.loads(s.get(key(1), now), salt=SALT) == huge


def read_header(name):
    with open(f"/dev/shm/{name}", "rb") as f:
        return f.read(4096)


@pytest.mark.parametrize(
    "offset, data, message",
    [
        (0, b"NOTCSESS", "bad magic"),
        (8, struct.pack("=I", 99), "layout version"),
        (24, struct.pack("=I", 3), "checksum"),  # nstripes
        (64 + 16 + 8, b"\xff" * 4, "checksum"),  # a byte of the hash key
    ],
)
def test_header_validated_on_attach(name, offset, data, message):
    _core.ShmStore(name, MIB).close()
    pwrite(name, offset, data)
    with pytest.raises(_core.ShmError, match=message) as info:
        _core.ShmStore(name, MIB)
    assert name in str(info.value) and "recreate" in str(info.value)


CHECKSUM_AT = 104  # offsetof(shm_header, checksum): BLAKE2b-256 of the bytes before it


@pytest.mark.parametrize("field, value", [
    ("buckets_off", 2**64 - 4096),  # offset + length wraps past 2**64 to a small number
    ("stripes_off", 2**64 - 64),
    ("buckets_off", MIB),  # inside the file, but its buckets run past the arenas' start
    ("arenas_off", 2 * MIB),  # past the end of the file
])
def test_header_with_a_valid_checksum_and_impossible_offsets_refused(name, field, value):
    # A checksum without a key proves nothing against a header written on purpose: the
    # geometry itself must keep every region inside the file (before: the buckets pointer
    # could land before the mapping, and the next put wrote there).
    _core.ShmStore(name, MIB).close()
    head = bytearray(read_header(name))
    g = geometry(name)
    g[field] = value
    HEADER.pack_into(head, 0, *g.values())
    head[CHECKSUM_AT:CHECKSUM_AT + 32] = hashlib.blake2b(head[:CHECKSUM_AT], digest_size=32).digest()
    pwrite(name, 0, bytes(head[:CHECKSUM_AT + 32]))
    with pytest.raises(_core.ShmError, match="impossible geometry"):
        _core.ShmStore(name, MIB)


def test_an_untouched_header_rewritten_with_its_checksum_still_attaches(name):
    # The test above rewrites headers its way: the same way with nothing changed must attach.
    _core.ShmStore(name, MIB).close()
    head = bytearray(read_header(name))
    HEADER.pack_into(head, 0, *geometry(name).values())
    head[CHECKSUM_AT:CHECKSUM_AT + 32] = hashlib.blake2b(head[:CHECKSUM_AT], digest_size=32).digest()
    pwrite(name, 0, bytes(head[:CHECKSUM_AT + 32]))
    s = _core.ShmStore(name, MIB)
    assert s.put(key(1), "v", 2**40, 0, SET) and s.get(key(1), 0) == "v"
    s.close()


def test_wrong_mode_refused(name):
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    _core.shm_unlink(name)
    _core.ShmStore(name, MIB).close()
    os.chmod(f"/dev/shm/{name}", 0o640)
    with pytest.raises(_core.ShmError, match="group or others") as info:
        _core.ShmStore(name, MIB)
    assert name in str(info.value)
    os.chmod(f"/dev/shm/{name}", 0o600)
    _core.ShmStore(name, MIB).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the segment away")
def test_wrong_owner_refused(name):
    _core.ShmStore(name, MIB).close()
    os.chown(f"/dev/shm/{name}", 4242, -1)
    with pytest.raises(_core.ShmError, match="another user"):
        _core.ShmStore(name, MIB)


def test_not_a_segment_refused(name):
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"\0" * 100)
    os.chmod(f"/dev/shm/{name}", 0o600)
    with pytest.raises(_core.ShmError, match="empty"):
        _core.ShmStore(name, MIB)


def test_garbage_in_the_segment(name):
    """Garbage written over everything but the header and the mutexes: every operation still
    answers (a session reads as missing, or as data that fails its signature), the stripes
    repair themselves (counted), and the store is fully consistent and usable afterwards."""
    s = _core.ShmStore(name, 2 * MIB)
    g = geometry(name)
    now = int(time.time())
    payload = {"user": 1}
    for i in range(300):
        s.put(key(i), signing.dumps({"i": i}, salt=SALT), now + 600, now, SET)
    rng = random.Random(1234)
    stripe_bytes = 320  # sizeof(shm_stripe): 288 bytes of fields, 64-byte aligned
    for _ in range(400):
        region = rng.choice(["stripe", "bucket", "arena", "arena"])
        size = rng.choice([1, 4, 8, 40])
        if region == "stripe":  # within the stripe, past its 40-byte mutex
            si = rng.randrange(g["nstripes"])
            off = g["stripes_off"] + si * stripe_bytes + 40 + rng.randrange(288 - 40 - size)
        elif region == "bucket":
            off = g["buckets_off"] + 4 * rng.randrange(g["nstripes"] * g["nbuckets"])
        else:
            off = g["arenas_off"] + rng.randrange(g["nstripes"] * g["arena_size"] - size)
        pwrite(name, off, rng.randbytes(size))
    good = bad = missing = 0
    for i in range(300):
        raw = s.get(key(i), now)
        if raw is None:
            missing += 1
            continue
        try:
            assert signing.loads(raw, salt=SALT) == {"i": i}
            good += 1
        except signing.BadSignature:
            bad += 1
    assert good > 200
    for i in range(300, 1300):  # and it keeps working
        s.put(key(i), signing.dumps(payload, salt=SALT), now + 600, now, SET)
        s.get(key(rng.randrange(i)), now)
        if i % 3 == 0:
            s.delete(key(rng.randrange(i)), now)
    assert s.stats()["repairs"] >= 1
    assert s.check()["entries"] == s.stats()["entries"]


@pytest.mark.parametrize("fill", [b"\xff", b"\x00", b"\x5a"])
def test_garbage_over_a_lock(name, fill):
    """The documented limit: garbage over a stripe's mutex makes that stripe fail with
    ShmError or TimeoutError (bounded by lock_timeout); no crash, other stripes work."""
    s = _core.ShmStore(name, MIB, lock_timeout=0.2)
    g = geometry(name)
    now = int(time.time())
    for i in range(64):
        s.put(key(i), "v", now + 60, now, SET)
    pwrite(name, g["stripes_off"], fill * 40)  # stripe 0's mutex
    outcomes = set()
    for i in range(64):
        try:
            outcomes.add(s.get(key(i), now))
        except (_core.ShmError, TimeoutError) as exc:
            assert name in str(exc)
            outcomes.add(type(exc).__name__)
    assert "v" in outcomes  # the other stripes


def test_fork_shares_the_store(name):
    s = _core.ShmStore(name, MIB)
    now = int(time.time())
    pid = os.fork()
    if pid == 0:  # child: the inherited mapping works
        code = 0 if s.put(key(7), "from child", now + 60, now, ADD) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.get(key(7), now) == "from child"


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("replace", [False, True])
def test_owner_died_mid_put(name, stage, replace):
    """A process dies holding the stripe lock (1), with its new entry half written (2), or
    just after publishing it (3): the next locker repairs the stripe, and every other entry,
    and the key itself (old or new value, whole), stay readable."""
    s = _core.ShmStore(name, 256 * 1024, lock_timeout=2.0)
    now = int(time.time())
    for i in range(50):
        s.put(key(i), f"value-{i}-" + "x" * i * 10, now + 600, now, SET)
    k = key(3) if replace else key(999)
    new = "new-" + "y" * 3000
    pid = os.fork()
    if pid == 0:
        s._put_and_die(k, new, now + 600, now, SET, stage)
        os._exit(7)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = s.get(k, now)  # would time out if the lock were not recovered
    old = f"value-3-" + "x" * 30 if replace else None
    assert got == (new if stage == 3 else old)
    for i in range(50):
        if key(i) != k:
            assert s.get(key(i), now) == f"value-{i}-" + "x" * i * 10
    st = s.stats()
    assert st["lock_recoveries"] == 1
    assert s.check()["entries"] == st["entries"] == 50 + (stage == 3 and not replace)


def test_counters_add_up(name):
    s = _core.ShmStore(name, 256 * 1024)
    rng = random.Random(5)
    now = 1_800_000_000
    gets = 0
    for _ in range(5000):
        k = key(rng.randrange(400))
        op = rng.random()
        if op < 0.4:
            s.put(k, "v" * rng.choice([100, 600, 3000, 9000]), now + rng.randrange(1, 30), now,
                  rng.randrange(3))
        elif op < 0.8:
            s.get(k, now)
            gets += 1
        elif op < 0.9:
            s.delete(k, now)
        else:
            now += 1
    st = s.stats()
    assert st["hits"] + st["misses"] == gets
    assert st["evictions"] > 0 and st["expirations"] > 0
    assert st["inserts"] - st["deletes"] - st["evictions"] - st["expirations"] - st["discarded"] \
        == st["entries"] == s.check()["entries"]
    assert st["bytes_used"] + st["bytes_free"] == st["arena_bytes"]


def _stopped_lock_holder(s, now):
    """The pid of a child stopped (SIGSTOP) in a put to key(1), holding its stripe's lock."""
    pid = os.fork()
    if pid == 0:
        s._put_and_die(key(1), "v", now + 60, now, SET, 4)  # stops holding the lock
        os._exit(0)
    os.waitpid(pid, os.WUNTRACED)  # until it has stopped
    return pid


def test_stopped_holder_times_out_then_killed_holder_recovers(name):
    s = _core.ShmStore(name, 256 * 1024, lock_timeout=0.3)
    now = int(time.time())
    pid = _stopped_lock_holder(s, now)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=name):
            s.get(key(1), now)
        assert 0.25 < time.monotonic() - started < 3
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert s.get(key(1), now) is None  # the lock was recovered, the half-done put dropped
    assert s.stats()["lock_recoveries"] == 1 and s.check() == {"entries": 0}


def _close_while_a_thread_waits(name):
    """Exit status 0 if close() by one thread, while another waits for a stripe lock without
    the GIL, leaves the waiter an error instead of a mapping pulled from under it."""
    import threading

    s = _core.ShmStore(name, 256 * 1024, lock_timeout=5.0)
    now = int(time.time())
    holder = _stopped_lock_holder(s, now)
    outcome = []

    def waiter():
        try:
            s.get(key(1), now)
            outcome.append("got it")
        except ValueError as e:
            outcome.append(str(e))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)  # the waiter is in the lock wait by now
    s.close()
    assert s.closed
    os.kill(holder, signal.SIGKILL)  # the waiter gets the lock (owner died), then sees closed
    os.waitpid(holder, 0)
    t.join(10)
    assert outcome and "closed while waiting" in outcome[0], outcome
    with pytest.raises(ValueError, match="closed"):
        s.get(key(1), now)
    return 0


def test_close_while_another_thread_waits_for_a_lock(name):
    pid = os.fork()
    if pid == 0:  # in a child: the old code crashed the process here
        code = 1
        try:
            code = _close_while_a_thread_waits(name)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # and the segment is still whole for everyone else
    s = _core.ShmStore(name, 256 * 1024)
    assert s.check() == {"entries": 0} and s.put(key(2), "w", 2**40, 0, SET)
    s.close()


# ------------------------------------------------------------------------------ the engine


def test_engine_lifecycle(engine):
    store = engine.SessionStore()
    store["cart"] = [1, 2, 3]
    store.save()
    k = store.session_key
    assert len(k) == 32
    again = engine.SessionStore(k)
    assert again["cart"] == [1, 2, 3] and again.exists(k)
    raw = engine.store().get(k, int(time.time()))
    # packed (src/pack.h), unsigned: see shm's docstring
    assert raw == _core.pack({"cart": [1, 2, 3]}).decode("latin-1") and raw[0] == "o"
    again["cart"] = [4]
    again.save()
    assert engine.SessionStore(k)["cart"] == [4]
    again.delete()
    assert not again.exists(k)
    with pytest.raises(UpdateError):
        store.save()  # deleted meanwhile: not resurrected
    missing = engine.SessionStore("nosuchkey" * 3)
    assert missing.load() == {} and missing.session_key is None


def test_engine_create_collision(engine):
    a = engine.SessionStore()
    a.create()
    b = engine.SessionStore(a.session_key)
    with pytest.raises(CreateError):
        b.save(must_create=True)


def test_engine_odd_keys(engine):
    for k in ["caf\u00e9" * 8, "k" * 300]:
        s = engine.SessionStore(k)
        assert s.load() == {} and not s.exists(k)
        s.delete(k)
        s = engine.SessionStore(k)
        s._session_cache = {"a": 1}
        with pytest.raises(UpdateError):
            s.save()


def test_engine_expiry(engine):
    s = engine.SessionStore()
    s["a"] = 1
    s.set_expiry(-10)
    s.save()
    assert engine.SessionStore(s.session_key).load() == {}
    s2 = engine.SessionStore()
    s2["a"] = 1
    s2.set_expiry(100)
    s2.create()
    s2.save()
    t = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: t + 99)
        assert engine.SessionStore(s2.session_key)["a"] == 1
        mp.setattr(time, "time", lambda: t + 101)  # as freezegun does: every operation sees it
        assert engine.SessionStore(s2.session_key).load() == {}
        assert not engine.SessionStore(s2.session_key).exists(s2.session_key)
        engine.SessionStore.clear_expired()


@pytest.mark.parametrize("expiry", [None, 0, 300, -10, datetime.timedelta(seconds=500)])
@pytest.mark.parametrize("own_age", ["no", "subclass", "patched"])
def test_engine_stores_djangos_expiry_age(engine, expiry, own_age):
    # save() computes the age itself for the common cases; the store's expiry must be what
    # get_expiry_age() says, a subclass's own or a patched one included.
    class Store(engine.SessionStore):
        if own_age == "subclass":
            def get_expiry_age(self, **kwargs):
                return 77

    s = Store()
    s["a"] = 1
    if expiry is not None:
        s.set_expiry(expiry)
    now = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: now)
        if own_age == "patched":
            mp.setattr(Store, "get_expiry_age", lambda self, **kwargs: 77)
        s.save()
        age = s.get_expiry_age()
    assert age == (77 if own_age != "no" else {None: 1209600, 0: 1209600}.get(expiry, age))
    handle = engine.store()
    assert handle.contains(s.session_key, int(now) + age - 2)
    assert not handle.contains(s.session_key, int(now) + age + 2)


def test_engine_save_goes_through_a_subclass_get_session(engine):
    class Filtered(engine.SessionStore):
        def _get_session(self, no_load=False):
            session = super()._get_session(no_load)
            session.pop("secret", None)
            return session

    s = Filtered()
    s["a"] = 1
    s.save()
    s["secret"] = 2  # loaded now: only _get_session can keep it out of the store
    s.save()
    assert engine.SessionStore(s.session_key).load() == {"a": 1}


def test_engine_save_uses_a_subclass_own_session_key(engine):
    saved = engine.SessionStore()
    saved["n"] = 1
    saved.save()

    class Announced(engine.SessionStore):
        __qualname__ = "SessionStore"
        session_key = property(lambda self: saved.session_key)

    s = Announced()
    s["n"] = 2
    s.save()  # SessionBase's save() goes by session_key: an update of saved's session
    assert engine.SessionStore(saved.session_key)["n"] == 2


def test_engine_create_asks_a_subclass_for_keys(engine, monkeypatch):
    """create() draws keys in C and lets the atomic add() detect a collision, but a class
    (or a patch) with its own _get_new_session_key or exists() is asked, as Django's create()
    asks it; a key the store can never hold is an error at once, not 10,000 retries."""
    taken = engine.SessionStore()
    taken.create()
    asked = []

    class OwnKeys(engine.SessionStore):
        __qualname__ = "SessionStore"

        def _get_new_session_key(self):
            return f"own{len(asked):029d}"

    class OwnExists(engine.SessionStore):
        __qualname__ = "SessionStore"

        def exists(self, session_key):
            asked.append(session_key)
            return session_key == taken.session_key or super().exists(session_key)

    class Deeper(OwnExists):
        __qualname__ = "SessionStore"

    s = OwnKeys()
    s["a"] = 1
    s.save()
    assert s.session_key == "own" + "0" * 29 and engine.SessionStore(s.session_key)["a"] == 1
    for cls in (OwnExists, Deeper):
        del asked[:]
        s = cls()
        s.create()
        assert asked == [s.session_key] and engine.SessionStore().exists(s.session_key)
    # The first key drawn is taken (exists() says so): Django's loop draws another.
    drawn = iter([taken.session_key, "fresh" + "0" * 27])
    monkeypatch.setattr(engine._core, "new_session_key", lambda: next(drawn))
    del asked[:]
    s = OwnExists()
    s.create()
    assert s.session_key == "fresh" + "0" * 27 and asked == [taken.session_key, s.session_key]
    # A patch after import is followed too: this plain class now asks the patched exists().
    monkeypatch.setattr(engine._core, "new_session_key", lambda: "patched" + "0" * 25)
    monkeypatch.setattr(engine.SessionStore, "exists", lambda self, k: asked.append(k) or False)
    del asked[:]
    engine.SessionStore().create()
    assert asked == ["patched" + "0" * 25]
    monkeypatch.undo()
    for bad, error in (("caf\u00e9" * 8, TypeError), ("k" * 300, ValueError)):
        class Unstorable(engine.SessionStore):
            __qualname__ = "SessionStore"

            def _get_new_session_key(self, bad=bad):
                asked.append(bad)
                return bad

        del asked[:]
        with pytest.raises(error, match="ShmStore"):
            Unstorable().create()
        assert len(asked) == 1  # not retried


def test_engine_async_twins_call_a_subclass_hooks(engine):
    """The async methods run csessions' own sync code in the event loop; a subclass's own sync
    method runs in a thread (it may use the ORM), as SessionBase runs it; acreate() follows
    Django's engines (_aget_new_session_key, then asave) once a class has its own hooks."""
    calls = []

    class Hooked(engine.SessionStore):
        __qualname__ = "SessionStore"

        async def _aget_new_session_key(self):
            calls.append("key")
            return await super()._aget_new_session_key()

        async def asave(self, must_create=False):
            calls.append(("asave", must_create))
            return await super().asave(must_create)

    class SyncOwn(engine.SessionStore):
        __qualname__ = "SessionStore"

        def exists(self, session_key):
            calls.append(("exists", threading.get_ident()))
            return super().exists(session_key)

        def load(self):
            calls.append(("load", threading.get_ident()))
            return super().load()

    async def go():
        loop_thread = threading.get_ident()
        s = Hooked()
        await s.aset("a", 1)
        await s.acreate()
        assert calls == ["key", ("asave", True)] and s.modified
        assert engine.SessionStore(s.session_key)["a"] == 1
        plain = engine.SessionStore()
        await plain.acreate()
        assert await engine.SessionStore().aexists(plain.session_key)  # saved, empty
        del calls[:]
        own = SyncOwn()
        await own.acreate()  # Django's loop: aexists -> the subclass's exists, in a thread
        assert await SyncOwn(own.session_key).aload() == {}
        assert [c[0] for c in calls] == ["exists", "load"]
        assert all(thread != loop_thread for _, thread in calls)

    asyncio.run(go())


def test_engine_asave_awaits_a_subclass_async_hooks(engine):
    """Django's engines await _aget_session() and aget_expiry_age() in asave(), and so a
    subclass's async-only versions of them; so does this one, in create and in update, each
    in place of its sync twin unless the subclass has only the sync one."""

    class AsyncExpiry(engine.SessionStore):
        __qualname__ = "SessionStore"

        async def aget_expiry_age(self, **kwargs):
            return 5

    class AsyncData(engine.SessionStore):
        __qualname__ = "SessionStore"

        async def _aget_session(self, no_load=False):
            data = await super()._aget_session(no_load)
            data["stamped"] = True
            return data

    async def go():
        handle = engine.store()
        for new in (True, False):
            s = AsyncExpiry()
            if not new:
                s.save()  # a key first, with the default age
            await s.aset("a", 1)
            await s.asave()  # no key: acreate() -> asave(must_create=True); else an update
            now = time.time()
            assert handle.contains(s.session_key, now)
            assert not handle.contains(s.session_key, now + 10), "the subclass's 5 s were ignored"
            plain = engine.SessionStore()
            await plain.aset("a", 1)
            await plain.asave()
            assert handle.contains(plain.session_key, time.time() + 10)  # the default age
        d = AsyncData()
        await d.aset("a", 1)
        await d.asave()
        await d.aset("a", 2)
        await d.asave()
        assert engine.SessionStore(d.session_key).load() == {"a": 2, "stamped": True}
        # A sync twin without its async one still counts, whatever other async hook a
        # subclass has (here one that changes nothing).
        m = SyncExpiryAsyncLoad()
        await m.aset("a", 1)
        await m.asave()
        now = time.time()
        assert handle.contains(m.session_key, now) and not handle.contains(m.session_key, now + 90)
        # A subclass's own save() is what asave() runs; then its async hooks are not asked.
        o = OwnSave()
        await o.aset("a", 1)
        await o.asave()
        assert o.saved and handle.contains(o.session_key, time.time() + 10)

    class SyncExpiryAsyncLoad(engine.SessionStore):
        __qualname__ = "SessionStore"

        def get_expiry_age(self, **kwargs):
            return 60

        async def aload(self):
            return await super().aload()

    class OwnSave(AsyncExpiry):
        __qualname__ = "SessionStore"
        saved = False

        def save(self, must_create=False):
            self.saved = True
            return super().save(must_create)

    asyncio.run(go())


def test_engine_own_code_runs_in_the_loop_and_a_subclass_in_a_thread(engine, monkeypatch):
    threaded = []
    real = engine.sync_to_async
    monkeypatch.setattr(engine, "sync_to_async",
                        lambda fn: threaded.append(getattr(fn, "__name__", fn)) or real(fn))
    lookups = []
    engine.store()  # opened: from here on only exists() asks store() for it
    real_store = engine.store
    monkeypatch.setattr(engine, "store", lambda: lookups.append(1) or real_store())

    class OwnDelete(engine.SessionStore):
        __qualname__ = "SessionStore"

        def delete(self, session_key=None):
            return super().delete(session_key)

        @classmethod
        def clear_expired(cls):
            return super().clear_expired()

    class OwnExpiry(engine.SessionStore):
        __qualname__ = "SessionStore"

        def get_expiry_age(self, **kwargs):
            return 60

    async def go():
        s = engine.SessionStore()
        await s.aset("a", 1)
        await s.asave()  # no key: acreate(), ours, without a lookup before the atomic add()
        assert not lookups
        await s.aset("a", 2)
        await s.asave()
        assert (await engine.SessionStore(s.session_key).aload())["a"] == 2
        await s.adelete()
        await engine.SessionStore.aclear_expired()
        assert threaded == []  # all of it csessions' own: in the loop, no thread
        d = OwnDelete()
        await d.acreate()  # delete is not among create's calls: still in the loop
        assert threaded == []
        await d.adelete()
        await OwnDelete.aclear_expired()
        assert threaded == ["delete", "clear_expired"]
        del threaded[:]
        e = OwnExpiry()
        await e.aset("a", 1)
        await e.asave()  # save() asks the subclass's get_expiry_age: acreate's loop, a thread
        assert threaded == ["save"]

    asyncio.run(go())
    asked = []
    s = engine.SessionStore()
    s.exists = lambda k: asked.append(k) or False  # a patch of one instance is followed too
    s.create()
    assert asked == [s.session_key]


def test_engine_clear_expired(engine):
    for age in (-5, -5, 300):
        s = engine.SessionStore()
        s.set_expiry(age)
        s["x"] = 1
        s.save()
    assert engine.stats()["entries"] == 3
    engine.SessionStore.clear_expired()
    assert engine.stats()["entries"] == 1 and engine.stats()["expirations"] == 2


def test_engine_too_large(engine):
    s = engine.SessionStore()
    s["small"] = 1
    s.save()
    before = engine.stats()
    s["big"] = secrets.token_hex(200_000)  # incompressible, ~530 KB encoded
    with pytest.raises(shm.SessionTooLarge, match="accepts per session") as info:
        s.save()
    assert isinstance(info.value, ValueError)
    assert engine.SessionStore(s.session_key).load() == {"small": 1}
    assert engine.stats()["inserts"] == before["inserts"]


@pytest.mark.parametrize("value", [b"", b"{not json", b"z\x78garbage", b"y\x78\x9c", b"?what", b"\xff" * 9,
                                   b"o\x01\x00\x00\x00A\x01", "eyJ1c2VyIjoyfQ:1vb66i:forged"])
def test_engine_undecodable_value_is_empty_session(engine, caplog, value):
    s = engine.SessionStore()
    s["user"] = 1
    s.save()
    other = engine.SessionStore()
    other["user"] = 2
    other.save()
    now = int(time.time())
    engine.store().put(s.session_key, value, now + 60, now, SET)
    assert engine.SessionStore(s.session_key).load() == {}
    assert "Session data corrupted" in caplog.text
    assert engine.SessionStore(other.session_key)["user"] == 2  # nothing else disturbed


@pytest.mark.parametrize("data, tag", [
    ({"cart": [{"sku": "A1", "qty": 2, "price": 9.99}], "name": "Zoë 😀", "n": None}, "o"),
    ({"t": (1, 2.5), "n": None}, "o"),  # read back as a list, as JSON gives it
    ({3: "int key"}, "{"),
    ({"big": 2**70}, "{"),
    ({"lone": "\ud800"}, "{"),
    ({"long": "é😀" * shm.COMPRESS_ABOVE}, "y"),
    ({"long": "é😀" * shm.COMPRESS_ABOVE, 1: 2}, "z"),
])
def test_engine_values_round_trip(engine, data, tag):
    """What loads is what JSONSerializer's dumps + loads give, whichever form is stored."""
    s = engine.SessionStore()
    s.update(data)
    s.save()
    raw = engine.store().get(s.session_key, int(time.time()))
    assert raw[0] == tag
    expected = JSONSerializer().loads(JSONSerializer().dumps(data))
    assert engine.SessionStore(s.session_key).load() == expected
    if tag in "yz":  # the quick deflate's stream; what zlib wrote (csessions before it) loads too
        compressed = raw[1:].encode("latin-1")
        assert _core.inflate_quick(compressed) is not None
        now = int(time.time())
        engine.store().put(s.session_key, tag.encode() + zlib.compress(_core.inflate(compressed), 1),
                           now + 60, now, SET)
        assert engine.SessionStore(s.session_key).load() == expected


def test_engine_other_serializer(engine):
    with override_settings(SESSION_SERIALIZER="test_signing.ReprSerializer"):
        s = engine.SessionStore()
        s["t"] = (1, 2)
        s.save()
        assert engine.store().get(s.session_key, int(time.time())) == "s{'t': (1, 2)}"
        assert engine.SessionStore(s.session_key)["t"] == (1, 2)


def test_engine_async(engine):
    async def go():
        s = engine.SessionStore()
        await s.aset("a", 1)
        await s.asave()
        k = s.session_key
        assert await s.aexists(k)
        t = engine.SessionStore(k)
        assert await t.aget("a") == 1
        await t.acycle_key()
        assert not await t.aexists(k) and await t.aexists(t.session_key)
        await t.adelete()
        with pytest.raises(UpdateError):
            await t.asave()
        await engine.SessionStore.aclear_expired()

    asyncio.run(go())


def test_default_name_is_per_project():
    a = shm.default_name()
    with override_settings(ROOT_URLCONF="other.urls"):
        b = shm.default_name()
    assert a != b and a.startswith(f"csessions-{os.geteuid()}-")


def test_settings_changes_are_followed(engine, name):
    first = engine.store()
    other = unique_name()
    try:
        with override_settings(CSESSIONS_SHM_NAME=other):
            assert engine.store().name == "/" + other
            engine.store().close()
        assert engine.store() is first
    finally:
        _core.shm_unlink(other)


def test_engine_prefetches_the_key_it_is_given(engine, name, monkeypatch):
    """SessionStore(key) asks the open store of the current settings to fetch the key's
    bucket ahead of load(): only with a key, never an error, and nothing in the store moves."""
    assert engine.SessionStore._cs_prefetch == []  # no store opened under these settings yet
    store = engine.store()
    assert engine.SessionStore._cs_prefetch == [store.prefetch]
    before = store.stats()
    for k in (key(1), "caf\u00e9" * 8, "k" * 300, b"b" * 32, 42, None):
        assert store.prefetch(k) is None
    assert store.stats() == before
    asked = []
    monkeypatch.setattr(engine.SessionStore, "_cs_prefetch", [asked.append])
    for k in (key(1), None, "", "caf\u00e9" * 8):
        engine.SessionStore(k)
    assert asked == [key(1), "caf\u00e9" * 8]
    monkeypatch.undo()
    for k in ("caf\u00e9" * 8, "k" * 300, b"b" * 32, "short"):  # through the real hook
        assert engine.SessionStore(k).load() == {}
    assert store.stats()["hits"] == before["hits"]
    fresh = engine.recreate()
    assert fresh is not store and engine.SessionStore._cs_prefetch == [fresh.prefetch]
    from csessions.backends import cache, cached_db, db, file, signed_cookies

    for other_engine in (cache, cached_db, db, file, signed_cookies):
        assert not other_engine.SessionStore._cs_prefetch
    other = unique_name()
    try:
        with override_settings(CSESSIONS_SHM_NAME=other):
            assert engine.SessionStore._cs_prefetch == []  # the old store's is dropped
            assert [engine.store().prefetch] == engine.SessionStore._cs_prefetch
            engine.store().close()
            assert engine.store().prefetch(key(1)) is None  # closed: still no error
    finally:
        _core.shm_unlink(other)


def test_management_command(engine, name):
    s = engine.SessionStore()
    s["a"] = 1
    s.save()
    out = io.StringIO()
    call_command(Command(), "stats", stdout=out)
    assert "entries" in out.getvalue() and name in out.getvalue()
    out = io.StringIO()
    call_command(Command(), "stats", "--json", stdout=out)
    assert json.loads(out.getvalue())["entries"] == 1
    out = io.StringIO()
    call_command(Command(), "check", stdout=out)
    assert "consistent" in out.getvalue()
    call_command(Command(), "recreate", stdout=io.StringIO())
    assert engine.stats()["entries"] == 0
    assert engine.SessionStore(s.session_key).load() == {}
