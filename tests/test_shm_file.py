"""The file-backed mode of the shared-memory store: ``_core.ShmStore(name, size, path=...)``.

A reboot is simulated by rewriting the boot id recorded in the file's header (with the file
closed): to the store, that is a file written in another boot. A crash of the machine is
simulated by building a file from pages of two moments of a live store, as a partial write-back
would leave it. The layout these tests poke at is the one documented in src/shm.h.
"""

import hashlib
import os
import random
import secrets
import shutil
import signal
import stat
import struct
import time
import uuid

import pytest

from csessions import _core

MIB = 1024 * 1024
PAGE = 4096
SET, ADD, REPLACE = 0, 1, 2
HEADER = struct.Struct("=8sIIQIIIIQQQ")  # magic .. arenas_off of shm_header
READY_OFF = 136  # shm_header.ready: after the 32-byte checksum that ends at 136
with open("/proc/sys/kernel/random/boot_id", "rb") as _f:
    BOOT_ID = _f.read().strip()


def key(i):
    return f"{i:032d}"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "sessions.shm"


def open_store(path, size=MIB, **kw):
    return _core.ShmStore("csessions-file-test", size, path=str(path), **kw)


def geometry(path):
    with open(path, "rb") as f:
        fields = HEADER.unpack(f.read(HEADER.size))
    names = ("magic version header_bytes total_size nstripes nbuckets arena_size top_order "
             "stripes_off buckets_off arenas_off").split()
    return dict(zip(names, fields))


def pwrite(path, offset, data):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def simulate_reboot(path):
    """Makes the file look written in another boot (the store must be closed everywhere)."""
    with open(path, "rb") as f:
        header = f.read(PAGE)
    assert header.count(BOOT_ID) == 1, "the header records the boot id exactly once"
    other = str(uuid.uuid4()).encode()
    pwrite(path, header.index(BOOT_ID), other)


def value(k, version, size):
    """A value that proves its own wholeness: its digest covers everything before it."""
    body = f"{k}:{version}:" + secrets.token_hex(size // 2)
    return body + ":" + hashlib.sha256(body.encode()).hexdigest()


def whole(v):
    body, _, digest = v.rpartition(":")
    return hashlib.sha256(body.encode()).hexdigest() == digest


def counters_add_up(s):
    st = s.stats()
    entries = s.check()["entries"]
    assert st["entries"] == entries
    assert (st["inserts"] - st["deletes"] - st["evictions"] - st["expirations"]
            - st["discarded"]) == entries
    assert st["bytes_used"] + st["bytes_free"] == st["arena_bytes"]
    return st


# ------------------------------------------------------------------------------ basics


def test_created_0600_and_reopened(path):
    old = os.umask(0)
    try:
        s = open_store(path)
    finally:
        os.umask(old)
    assert s.created and s.path == str(path) and s.size == MIB and s.entry_overhead == 48
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert st.st_size == MIB and st.st_blocks * 512 >= MIB  # allocated, not sparse
    assert not os.path.exists("/dev/shm/csessions-file-test")
    now = int(time.time())
    values = {key(i): value(key(i), 0, 600) for i in range(200)}
    for k, v in values.items():
        assert s.put(k, v, now + 600, now, ADD)
    s.close()
    again = open_store(path, 8 * MIB)  # exists: keeps its own size and its sessions
    assert not again.created and again.size == MIB
    assert all(again.get(k, now) == v for k, v in values.items())
    st = counters_add_up(again)
    assert st["reboots"] == 0 and st["discarded"] == 0 and st["inserts"] == 200
    again.close()


def test_two_handles_share_the_file(path):
    a = open_store(path)
    b = open_store(path)
    now = int(time.time())
    a.put(key(1), "from a", now + 60, now, SET)
    assert b.get(key(1), now) == "from a"
    assert not b.created
    a.close()
    b.close()


READY_AT = 136  # offsetof(shm_header, ready), right after the checksum


@pytest.mark.parametrize("garbage", ["ready", "boot id"])
def test_a_file_in_use_is_never_remade_under_its_users(path, garbage):
    # `ready` and the boot id lie outside the header's checksum; garbage in them must not
    # make the next opener (a worker restarting) wipe or re-lock a file others are using.
    s = open_store(path)
    now = int(time.time())
    s.put(key(1), "kept", now + 600, now, SET)
    if garbage == "ready":
        pwrite(path, READY_AT, b"\0\0\0\0")
    else:
        simulate_reboot(path)
    started = time.monotonic()
    with pytest.raises(_core.ShmError, match="other processes have it mapped"):
        open_store(path)
    assert time.monotonic() - started < 10
    assert s.get(key(1), now) == "kept" and counters_add_up(s)["entries"] == 1
    s.close()
    # Once no one has it mapped, the next opener may make it again (ready) or verify it.
    s = open_store(path)
    assert s.get(key(1), now) == (None if garbage == "ready" else "kept")
    assert s.created == (garbage == "ready")
    s.close()


def test_attach_only_when_asked(path):
    with pytest.raises(FileNotFoundError):
        open_store(path, create=False)
    assert not path.exists()
    path.touch(mode=0o600)
    with pytest.raises(_core.ShmError, match="empty"):
        open_store(path, create=False)


def test_wrong_mode_refused(path):
    open_store(path).close()
    for mode in (0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(_core.ShmError, match="group or others") as info:
            open_store(path)
        assert str(path) in str(info.value)
    os.chmod(path, 0o600)
    open_store(path).close()


def test_wrong_owner_refused(path):
    assert os.geteuid() == 0, "these tests run as root (to give the file away)"
    open_store(path).close()
    os.chown(path, 4242, -1)
    with pytest.raises(_core.ShmError, match="another user") as info:
        open_store(path)
    assert str(path) in str(info.value)
    os.chown(path, 0, -1)
    open_store(path).close()


def test_symlink_and_non_files_refused(path, tmp_path):
    open_store(path).close()
    link = tmp_path / "link.shm"
    link.symlink_to(path)
    with pytest.raises(_core.ShmError, match="symbolic link") as info:
        open_store(link)
    assert str(link) in str(info.value)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(_core.ShmError, match="not a regular file"):
        open_store(fifo)
    with pytest.raises(ValueError):
        _core.ShmStore("x", MIB, path="")
    with pytest.raises(ValueError):
        _core.ShmStore("x", MIB, path="a\0b")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\0" * 100 + b"x", "too short"),
        (os.urandom(3 * PAGE), "bad magic"),
        (b"CSESSHM\0" + os.urandom(PAGE), "bad magic"),  # not ready and not ours: kept
    ],
)
def test_garbage_file_refused_and_left_alone(path, content, message):
    path.write_bytes(content)
    os.chmod(path, 0o600)
    if content.startswith(b"CSESSHM\0"):  # magic ours but ready set: garbage header
        content = content[:READY_OFF] + struct.pack("=I", 0x52454459) + content[READY_OFF + 4:]
        message = "layout version|checksum|memory layout"
        path.write_bytes(content)
    with pytest.raises(_core.ShmError, match=message) as info:
        open_store(path)
    assert str(path) in str(info.value) and "recreate" in str(info.value)
    assert path.read_bytes() == content


def test_bad_header_refused_even_after_a_reboot(path):
    open_store(path).close()
    pristine = path.read_bytes()[:PAGE]
    damage = [(0, b"NOTCSESS", "bad magic"), (8, struct.pack("=I", 1), "layout version"),
              (24, struct.pack("=I", 3), "checksum"), (88, b"\xff" * 4, "checksum")]
    for offset, data, message in damage:  # 24: nstripes; 88: a byte of the hash key
        pwrite(path, 0, pristine)
        pwrite(path, offset, data)
        with pytest.raises(_core.ShmError, match=message):
            open_store(path)
        simulate_reboot(path)  # a reboot does not make a bad header acceptable
        with pytest.raises(_core.ShmError, match=message):
            open_store(path)


def test_truncated_file_refused(path):
    open_store(path).close()
    os.truncate(path, MIB // 2)
    with pytest.raises(_core.ShmError, match="size other than its header"):
        open_store(path)


def test_creator_died_midway_is_redone(path):
    s = open_store(path)
    now = int(time.time())
    s.put(key(1), "v", now + 60, now, SET)
    s.close()
    pwrite(path, READY_OFF, b"\0\0\0\0")  # as if its creator died before finishing
    again = open_store(path)
    assert again.created and again.get(key(1), now) is None
    counters_add_up(again)
    again.close()
    with open(path, "wb"):  # empty: its creator died before sizing it
        pass
    again = open_store(path)
    assert again.created and again.size == MIB
    again.close()


# ------------------------------------------------------------------------------ reboots


def test_reboot_drops_a_corrupt_entry_and_keeps_the_rest(path):
    s = open_store(path)
    now = int(time.time())
    values = {key(i): value(key(i), 0, 600) for i in range(300)}
    for k, v in values.items():
        s.put(k, v, now + 600, now, SET)
    victim = key(123)
    s.close()
    data = path.read_bytes()
    at = data.index(values[victim].encode()) + 300
    assert data.count(values[victim].encode()) == 1
    pwrite(path, at, b"#")  # one byte of the value, as a torn write-back would leave it

    same_boot = open_store(path)  # no reboot: not verified on attach, but check() sees it
    with pytest.raises(_core.ShmError, match="checksum"):
        same_boot.check()
    same_boot.close()

    simulate_reboot(path)
    s = open_store(path)
    assert not s.created
    assert s.get(victim, now) is None
    for k, v in values.items():
        if k != victim:
            assert s.get(k, now) == v
    st = counters_add_up(s)
    assert st["discarded"] == 1 and st["entries"] == 299 and st["reboots"] == 1
    assert st["inserts"] == 300 and st["repairs"] == 0 and st["lock_recoveries"] == 0
    s.close()
    s = open_store(path)  # the same boot again: nothing more to verify
    assert s.stats()["reboots"] == 1 and s.stats()["discarded"] == 1
    s.close()


def test_torn_multi_page_entry_never_served(path):
    """An entry spanning pages, of which one reached the disk and another did not."""
    s = open_store(path, 2 * MIB)
    now = int(time.time())
    old = value(key(7), 0, 20000)
    s.put(key(7), old, now + 600, now, SET)
    for i in range(50):
        s.put(key(100 + i), value(key(100 + i), 0, 500), now + 600, now, SET)
    before = path.read_bytes()  # the disk as it was before the next write
    new = value(key(7), 1, 20000)
    s.put(key(7), new, now + 600, now, SET)
    assert s.get(key(7), now) == new
    s.close()
    after = path.read_bytes()
    start = after.index(new.encode())
    page = (start + 10000) // PAGE * PAGE  # a page in the middle of the new value
    assert after[page:page + PAGE] != before[page:page + PAGE]
    pwrite(path, page, before[page:page + PAGE])
    simulate_reboot(path)
    s = open_store(path, 2 * MIB)
    got = s.get(key(7), now)
    assert got is None, "a torn entry was served"
    st = counters_add_up(s)
    assert st["discarded"] == 1
    assert all(whole(s.get(key(100 + i), now)) for i in range(50))
    s.close()


def test_reboot_reinitialises_a_lock_held_in_the_previous_boot(path, tmp_path):
    """A worker stopped holding a stripe lock when the machine went down: in the file, that
    mutex names a thread of the old boot. The first attach of the new boot makes it anew."""
    s = open_store(path, lock_timeout=0.2)
    now = int(time.time())
    for i in range(64):
        s.put(key(i), f"v{i}", now + 600, now, SET)
    pid = os.fork()
    if pid == 0:
        try:
            s._put_and_die(key(5), "never", now + 600, now, SET, 4)  # stops holding the lock
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    frozen = tmp_path / "frozen.shm"  # the disk as the crash left it: the lock held
    shutil.copyfile(path, frozen)
    os.chmod(frozen, 0o600)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    s.close()

    stuck = open_store(frozen, lock_timeout=0.2)  # same boot: the lock is really held
    with pytest.raises(TimeoutError):
        stuck.get(key(5), now)
    stuck.close()

    simulate_reboot(frozen)
    s = open_store(frozen, lock_timeout=0.2)
    assert all(s.get(key(i), now) == f"v{i}" for i in range(64))
    st = counters_add_up(s)
    assert st["reboots"] == 1 and st["discarded"] == 0 and st["lock_recoveries"] == 0
    s.close()


def test_garbage_over_locks_cleared_by_reboot(path):
    s = open_store(path, lock_timeout=0.2)
    g = geometry(path)
    now = int(time.time())
    for i in range(64):
        s.put(key(i), "v", now + 600, now, SET)
    s.close()
    for si in range(g["nstripes"]):
        pwrite(path, g["stripes_off"] + si * 320, b"\xff" * 40)  # every stripe's mutex
    simulate_reboot(path)
    s = open_store(path, lock_timeout=0.2)
    assert all(s.get(key(i), now) == "v" for i in range(64))
    counters_add_up(s)
    s.close()


def test_many_workers_attach_after_a_reboot_verified_once(path):
    s = open_store(path, 4 * MIB)
    now = int(time.time())
    values = {key(i): value(key(i), 0, 1000) for i in range(500)}
    for k, v in values.items():
        s.put(k, v, now + 600, now, SET)
    s.close()
    simulate_reboot(path)
    go_r, go_w = os.pipe()
    children = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(go_w)
                os.read(go_r, 1)  # all start at once
                h = open_store(path, 4 * MIB)
                code = 0 if all(h.get(k, now) == v for k, v in values.items()) else 2
            finally:
                os._exit(code)
        children.append(pid)
    os.close(go_r)
    os.write(go_w, b"x" * 6)
    os.close(go_w)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    s = open_store(path, 4 * MIB)
    st = counters_add_up(s)
    assert st["reboots"] == 1 and st["discarded"] == 0 and st["entries"] == 500
    s.close()


def test_reboot_drops_a_stale_twin(path):
    """Pages from different moments can leave a key twice in its chain (an old block still
    linked by a stale `next`). Only the first is kept: a delete must not bring the other back."""
    s = open_store(path)
    now = int(time.time())
    k = key(42)
    v = value(k, 0, 300)
    s.put(k, v, now + 600, now, SET)
    s.close()
    g = geometry(path)
    data = path.read_bytes()
    block = data.index(v.encode()) - 48 - len(k)  # shm_entry (48 bytes), key, value
    order = data[block + 4]
    size = 1 << order
    stripe = (block - g["arenas_off"]) // g["arena_size"]
    arena = g["arenas_off"] + stripe * g["arena_size"]
    twin = arena + g["arena_size"] - size  # the stripe's last block: free in a near-empty store
    assert data[twin:twin + 4] in (b"FREE", b"\0\0\0\0")
    next_of_first = data[block + 16:block + 20]
    pwrite(path, twin, data[block:block + size])  # the same entry, whole (its checksum holds)
    pwrite(path, twin + 16, next_of_first)
    pwrite(path, block + 16, struct.pack("=I", twin - arena))  # the first now leads to it

    same_boot = open_store(path)
    with pytest.raises(_core.ShmError, match="twice"):
        same_boot.check()
    same_boot.close()
    simulate_reboot(path)
    s = open_store(path)
    assert s.get(k, now) == v
    st = counters_add_up(s)
    assert st["entries"] == 1
    assert s.delete(k, now) and s.get(k, now) is None
    s.close()


@pytest.mark.parametrize("seed", range(6))
def test_crash_mid_traffic_pages_from_two_moments(path, tmp_path, seed):
    """The machine crashed: each page (or 512-byte sector) of the file is as it was at one of
    two moments of a live store. After the reboot, every session read is one that was written
    whole for that key, the store is consistent, its counters add up and it keeps working."""
    rng = random.Random(seed)
    s = open_store(path, MIB)
    now = int(time.time())
    history = {}  # key -> every value ever written

    def traffic(n):
        for _ in range(n):
            k = key(rng.randrange(250))
            op = rng.random()
            if op < 0.75:
                v = value(k, rng.randrange(1 << 30), rng.choice([100, 600, 3000, 9000]))
                history.setdefault(k, set()).add(v)
                s.put(k, v, now + 600, now, SET)
            elif op < 0.9:
                s.delete(k, now)
            else:
                s.get(k, now)

    traffic(600)
    first = path.read_bytes()
    traffic(400)
    second = path.read_bytes()
    s.close()
    unit = rng.choice([512, PAGE])
    mixed = bytearray(second)
    for off in range(0, len(mixed), unit):
        if rng.random() < 0.5:
            mixed[off:off + unit] = first[off:off + unit]
    mixed[:PAGE] = second[:PAGE]  # the header: written once, at creation
    crashed = tmp_path / "crashed.shm"
    crashed.write_bytes(bytes(mixed))
    os.chmod(crashed, 0o600)
    simulate_reboot(crashed)
    s = open_store(crashed, MIB)
    served = 0
    for k in {key(i) for i in range(250)}:
        got = s.get(k, now)
        if got is not None:
            assert got in history.get(k, ()), f"seed {seed}: {k} served a value never written"
            assert whole(got)
            served += 1
    st = counters_add_up(s)
    assert st["reboots"] == 1 and served > 0
    for i in range(300):  # and it keeps working
        k = key(rng.randrange(400))
        v = value(k, i, rng.choice([100, 600, 3000]))
        assert s.put(k, v, now + 600, now, SET)
        assert s.get(k, now) == v
    counters_add_up(s)
    s.close()


def test_expired_entries_stay_expired_after_a_reboot(path):
    s = open_store(path)
    now = 1_800_000_000
    s.put(key(1), "short", now + 10, now, SET)
    s.put(key(2), "long", now + 1000, now, SET)
    s.close()
    simulate_reboot(path)
    s = open_store(path)
    assert s.get(key(1), now + 20) is None and s.get(key(2), now + 20) == "long"
    assert s.stats()["expirations"] == 1
    s.close()


def test_shm_mode_has_no_path():
    name = f"csessions-test-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        s = _core.ShmStore(name, MIB)
        assert s.path is None and s.entry_overhead == 48 and s.stats()["reboots"] == 0
        s.close()
    finally:
        _core.shm_unlink(name)
