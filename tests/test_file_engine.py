"""csessions.backends.file.SessionStore against Django's file engine.

Files written by either engine load in the other; the exclusive create, the atomic replace and
the key checks behave as Django's; beyond Django, nothing is ever opened through a symlink,
odd files are empty sessions, failed writes leave nothing behind, and clear_expired() judges
exactly as Django's does (checked on identical copies of mixed directories) while also removing
stale temp files. Two processes hammering one directory never leave a corrupt file.
"""

import asyncio
import concurrent.futures
import datetime
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import zlib

import pytest
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.file import SessionStore as DjStore
from django.contrib.sessions.exceptions import InvalidSessionKey
from django.core import management, signing
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from csessions import _core
from csessions.backends import file as cfile
from csessions.backends.file import SessionStore as CsStore

PREFIX = "sessionid"
AGE = 1209600  # SESSION_COOKIE_AGE's default


def forget_storage_path():
    """Both engines cache the storage path on their class (Django's tests delete it too)."""
    for cls in (CsStore, DjStore):
        if "_storage_path" in vars(cls):
            delattr(cls, "_storage_path")


@pytest.fixture
def store_dir(tmp_path):
    d = tmp_path / "sessions"
    d.mkdir()
    with override_settings(SESSION_FILE_PATH=str(d)):
        forget_storage_path()
        yield d
    forget_storage_path()


def path_of(d, key):
    return d / (PREFIX + key)


def files(d):
    return sorted(os.listdir(d))


def new_session(cls, data, **kw):
    s = cls()
    s.update(data)
    s.save(**kw)
    return s


def set_mtime(path, t):
    os.utime(path, (t, t), follow_symlinks=False)


# ---------------------------------------------------------------------------- Django parity


def test_fresh_store_has_djangos_attributes(store_dir):
    mine, theirs = CsStore("k" * 32), DjStore("k" * 32)
    assert vars(mine) == vars(theirs)
    assert type(mine).__qualname__ == "SessionStore"
    assert mine.key_salt == theirs.key_salt == "django.contrib.sessions.SessionStore"


def test_cross_reading_both_ways(store_dir):
    data = {"user": "42", "cart": [1, 2.5, None, True, "é"], "big": "x" * 500}
    mine = new_session(CsStore, data)
    assert files(store_dir) == [PREFIX + mine.session_key]
    assert DjStore(mine.session_key).load() == data
    # Same bytes as Django's encode() (same second), so the formats are truly the same.
    content = path_of(store_dir, mine.session_key).read_text("ascii")
    assert DjStore().decode(content) == data

    theirs = new_session(DjStore, {"from": "django"})
    loaded = CsStore(theirs.session_key)
    assert dict(loaded.items()) == {"from": "django"}
    loaded["more"] = 1
    loaded.save()
    assert DjStore(theirs.session_key).load() == {"from": "django", "more": 1}
    assert files(store_dir) == sorted(PREFIX + k for k in (mine.session_key, theirs.session_key))


def test_load_and_expiry_match_django(store_dir):
    s = new_session(CsStore, {"a": 1})
    s.set_expiry(-10)  # int expiry in the past: load() deletes and starts a new session
    s.save()
    for cls in (CsStore, DjStore):
        shutil.copy2(path_of(store_dir, s.session_key), path_of(store_dir, "c" * 32))
        other = cls("c" * 32)
        assert other.load() == {}
        assert not path_of(store_dir, "c" * 32).exists()
        assert other.session_key is not None and other.session_key != "c" * 32
        other.delete()

    old = new_session(CsStore, {"a": 1})  # no custom expiry: mtime + SESSION_COOKIE_AGE
    set_mtime(path_of(store_dir, old.session_key), time.time() - AGE - 10)
    assert CsStore(old.session_key).load() == {}
    assert not path_of(store_dir, old.session_key).exists()

    kept = new_session(CsStore, {"a": 1})
    kept.set_expiry(3600)  # a positive int never expires on load, as in Django
    kept.save()
    set_mtime(path_of(store_dir, kept.session_key), 1)
    assert CsStore(kept.session_key).load() == {"a": 1, "_session_expiry": 3600}


def test_create_error_and_update_error(store_dir):
    s = new_session(CsStore, {"a": 1})
    dup = CsStore(s.session_key)
    dup._session_cache = {"b": 2}
    with pytest.raises(CreateError):
        dup.save(must_create=True)
    assert CsStore(s.session_key).load() == {"a": 1}

    gone = CsStore(s.session_key)
    gone._session_cache = {"c": 3}
    s.delete()
    with pytest.raises(UpdateError):
        gone.save()
    assert files(store_dir) == []  # no resurrection, no temp file


def test_create_retries_on_collision(store_dir, monkeypatch):
    taken = new_session(CsStore, {"a": 1}).session_key
    keys = iter([taken, "f" * 32])
    monkeypatch.setattr(_core, "new_session_key", lambda: next(keys))
    s = CsStore()
    s.create()
    assert s.session_key == "f" * 32


@pytest.mark.parametrize("key", ["../x", "/", "\\", "..", ".", "A" * 32, "abc/../../etc/passwd",
                                 "abcdefgh\\x", "abcdefgh.", "abcdefghé", "abcdefgh\x00"])
def test_invalid_keys_raise_before_any_path(store_dir, key):
    s = CsStore()
    for call in (s._key_to_file, s.exists, s.delete):
        with pytest.raises(InvalidSessionKey):
            call(key)
    if len(key) >= 8:  # a valid-length key reaches load(): an empty session, key dropped
        s = CsStore(key)
        assert s.load() == {} and s.session_key is None
    assert files(store_dir) == []


def test_invalid_key_in_save_raises(store_dir):
    s = CsStore("abcdefgh/x")
    s._session_cache = {"a": 1}
    with pytest.raises(InvalidSessionKey):
        s.save()
    assert files(store_dir) == []


def test_storage_path_checked_and_cached(store_dir, tmp_path):
    assert CsStore().storage_path == str(store_dir)
    assert vars(CsStore)["_storage_path"] == str(store_dir)
    forget_storage_path()
    DjStore._storage_path = "/where/djangos/engine/cached/its/path"  # not inherited
    assert CsStore().storage_path == str(store_dir)
    forget_storage_path()
    with override_settings(SESSION_FILE_PATH=str(tmp_path / "missing")):
        with pytest.raises(ImproperlyConfigured):
            CsStore()


def test_pathlib_storage_path(store_dir):
    forget_storage_path()
    with override_settings(SESSION_FILE_PATH=store_dir):
        s = new_session(CsStore, {"a": 1})
        assert CsStore(s.session_key).load() == {"a": 1}
        CsStore.clear_expired()
        assert files(store_dir) == [PREFIX + s.session_key]


def test_cookie_name_is_the_prefix(store_dir):
    with override_settings(SESSION_COOKIE_NAME="mysess"):
        s = new_session(CsStore, {"a": 1})
        assert files(store_dir) == ["mysess" + s.session_key]
        assert DjStore(s.session_key).load() == {"a": 1}


def test_async_methods(store_dir):
    async def scenario():
        s = CsStore()
        await s.aset("a", 1)
        await s.asave()
        key = s.session_key
        assert await s.aexists(key)
        assert await CsStore(key).aload() == {"a": 1}
        t = CsStore()
        await t.acreate()
        assert await t.aexists(t.session_key)
        await t.adelete()
        assert not await t.aexists(t.session_key)
        set_mtime(path_of(store_dir, key), 1)
        await CsStore.aclear_expired()
        assert not await s.aexists(key)

    asyncio.run(scenario())
    assert files(store_dir) == []


def test_flush_and_cycle_key(store_dir):
    s = new_session(CsStore, {"a": 1})
    old = s.session_key
    s.cycle_key()
    assert s.session_key != old and files(store_dir) == [PREFIX + s.session_key]
    assert CsStore(s.session_key).load() == {"a": 1}
    s.flush()
    assert s.session_key is None and files(store_dir) == []


# ---------------------------------------------------------------------------- O_NOFOLLOW & co


def test_symlink_at_session_path_is_not_followed(store_dir, tmp_path):
    target = tmp_path / "target"
    victim = new_session(DjStore, {"secret": "data"})  # a valid session elsewhere
    shutil.move(path_of(store_dir, victim.session_key), target)
    before = target.read_bytes()
    key = "s" * 32
    os.symlink(target, path_of(store_dir, key))

    s = CsStore(key)
    assert s.load() == {} and s.session_key is None  # Django would follow the link
    assert CsStore().exists(key)  # the name is taken: a new key must not collide with it

    s = CsStore(key)
    s._session_cache = {"new": 1}
    with pytest.raises(CreateError):
        s.save(must_create=True)
    s.save()  # replaces the link itself
    assert target.read_bytes() == before
    assert not os.path.islink(path_of(store_dir, key))
    assert CsStore(key).load() == {"new": 1}


def test_dangling_symlink_counts_as_existing(store_dir, tmp_path):
    os.symlink(tmp_path / "nowhere", path_of(store_dir, "d" * 32))
    assert CsStore().exists("d" * 32)
    s = CsStore("d" * 32)
    s._session_cache = {"a": 1}
    with pytest.raises(CreateError):
        s.save(must_create=True)
    assert not (tmp_path / "nowhere").exists()


def test_fifo_and_directory_at_session_path(store_dir):
    os.mkfifo(path_of(store_dir, "f" * 32))  # Django's open() would block for ever
    os.mkdir(path_of(store_dir, "e" * 32))
    good = new_session(CsStore, {"ok": 1})
    for key in ("f" * 32, "e" * 32):
        s = CsStore(key)
        assert s.load() == {} and s.session_key is None
    CsStore.clear_expired()
    assert CsStore(good.session_key).load() == {"ok": 1}
    assert len(files(store_dir)) == 3


def test_file_read_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    os.symlink(tmp_path / "f", tmp_path / "l")
    assert _core.file_read(tmp_path / "f")[0] == b"abc"
    with pytest.raises(OSError):
        _core.file_read(tmp_path / "l")
    with pytest.raises(IsADirectoryError):
        _core.file_read(tmp_path)
    with pytest.raises(FileNotFoundError):
        _core.file_read(str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        _core.file_read("a\x00b")


def test_modes_are_0600(store_dir):
    old = os.umask(0o022)
    try:
        s = new_session(CsStore, {"a": 1})
        p = path_of(store_dir, s.session_key)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        s["b"] = 2
        s.save()
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    finally:
        os.umask(old)


def test_durable_mode(store_dir):
    with override_settings(CSESSIONS_FILE_FSYNC=True):
        s = new_session(CsStore, {"a": 1})
        s["b"] = 2
        s.save()
        assert CsStore(s.session_key).load() == {"a": 1, "b": 2}
        s.delete()
    assert files(store_dir) == []


def test_durable_mode_follows_setting_changes():
    # An unset setting's default is cached in LazySettings' own cache; Django's invalidation
    # of that cache must still reach durable().
    from django.conf import settings

    from csessions.backends.file import durable

    assert durable() is False
    assert durable() is False  # the cached default
    with override_settings(CSESSIONS_FILE_FSYNC=True):
        assert durable() is True
    assert durable() is False
    settings.CSESSIONS_FILE_FSYNC = True
    try:
        assert durable() is True
    finally:
        del settings.CSESSIONS_FILE_FSYNC
    assert durable() is False


def _run_traced(strace_args, script, *argv):
    return subprocess.Popen(
        ["strace", "-f", *strace_args, sys.executable, "-c", script, *map(str, argv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONDONTWRITEBYTECODE="1"),
    )


def test_durable_mode_fsyncs_file_and_directory(tmp_path):
    script = (
        "import sys; from csessions import _core; p = sys.argv[1]; flag = sys.argv[2] == '1';"
        "_core.file_save(p, b'x', True, flag); _core.file_save(p, b'y', False, flag);"
        "_core.file_unlink(p, flag)"
    )
    counts = {}
    for flag in ("0", "1"):
        proc = _run_traced(["-e", "trace=fsync"], script, tmp_path / "s", flag)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        counts[flag] = err.count("fsync(")
    # two saves: file + directory each; the unlink: the directory
    assert counts == {"0": 0, "1": 5}


def test_save_swaps_names_instead_of_renaming_over(tmp_path):
    # A rename over an existing file makes ext4 start writing the new file at once (most of
    # a save's time); the save swaps the names and unlinks the old content instead.
    script = (
        "import sys; from csessions import _core; p = sys.argv[1];"
        "_core.file_save(p, b'x', True, False); _core.file_save(p, b'y', False, False)"
    )
    proc = _run_traced(["-e", "trace=rename,renameat,renameat2"], script, tmp_path / "s")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    swaps = [line for line in err.splitlines() if "RENAME_EXCHANGE" in line]
    assert len(swaps) == 2 and all("= 0" in line for line in swaps), err
    assert "rename(" not in err and "renameat(" not in err
    assert os.listdir(tmp_path) == ["s"] and (tmp_path / "s").read_bytes() == b"y"


@pytest.mark.parametrize("must_create", [False, True])
def test_save_of_a_session_deleted_mid_write(tmp_path, must_create):
    # The child's write(2) is held for a second: the session is deleted while the save
    # writes its temp file. Django's engine, which checks first and renames last, brings
    # the deleted session back; this one's swap finds it gone: UpdateError. An exclusive
    # create whose own placeholder was deleted still lands, as in Django (the key is its).
    p = tmp_path / "s"
    if not must_create:
        _core.file_save(p, b"x", True, False)
    script = (
        "import sys; from csessions import _core\n"
        f"try:\n    _core.file_save(sys.argv[1], b'y', {must_create}, False)\n"
        "except FileNotFoundError:\n    print('update error')\n"
    )
    proc = _run_traced(["-o", os.devnull, "-e", "trace=write", "-e", "inject=write:delay_enter=1000000:when=1"],
                       script, p)
    deadline = time.monotonic() + 30
    while not any("_out_" in name for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.001)
    os.unlink(p)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    if must_create:
        assert out == "" and os.listdir(tmp_path) == ["s"] and p.read_bytes() == b"y"
    else:
        assert out == "update error\n" and os.listdir(tmp_path) == []


def test_save_over_a_directory_fails_and_keeps_it(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "inside").write_bytes(b"kept")
    assert _core.file_save(d, b"x", False, False) == errno.EISDIR
    assert os.listdir(tmp_path) == ["s"] and (d / "inside").read_bytes() == b"kept"


# ---------------------------------------------------------------------------- odd files


def _foreign_values():
    payload = {"a": 1}
    other_key = signing.dumps(payload, key="another-secret", salt="django.contrib.sessions.SessionStore",
                              compress=True)
    other_salt = signing.dumps(payload, salt="django.contrib.sessions.backends.signed_cookies")
    good = DjStore().encode({"x": "y" * 300})
    return {
        "garbage": b"garbage",
        "colons": b"bad:encoded:value",
        "truncated": good[: len(good) // 2].encode(),
        "truncated_sig": good[:-1].encode(),
        "non_ascii": good.encode()[:10] + "é".encode("utf-8") + good.encode()[10:],
        "latin1": b"\xff\xfe" * 40,
        "binary": bytes(range(256)),
        "other_key": other_key.encode(),
        "other_salt": other_salt.encode(),
        "newline": good.encode() + b"\n",
    }


ODD_KINDS = ["garbage", "colons", "truncated", "truncated_sig", "non_ascii", "latin1", "binary",
             "other_key", "other_salt", "newline"]
NON_ASCII = {"non_ascii", "latin1", "binary"}


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_files_are_empty_sessions(store_dir, kind, caplog):
    content = _foreign_values()[kind]
    good = new_session(CsStore, {"ok": True})
    key = "o" * 32
    path_of(store_dir, key).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        s = CsStore(key)
        assert s.load() == {}
    assert s.session_key == key  # as Django: a corrupt file is an empty session under its key
    if kind in NON_ASCII:  # Django raises UnicodeDecodeError out of load() for these
        with pytest.raises(UnicodeDecodeError):
            DjStore(key).load()
    else:
        d = DjStore(key)
        assert d.load() == {} and d.session_key == key
    if kind in NON_ASCII or kind in ("garbage", "colons", "other_key", "truncated_sig"):
        assert "Session data corrupted" in caplog.text
    assert path_of(store_dir, key).read_bytes() == content  # untouched by load
    assert CsStore(good.session_key).load() == {"ok": True}
    s["new"] = 1  # the next save replaces the bad file
    s.save()
    assert CsStore(key).load() == {"new": 1}


def test_empty_placeholder_keeps_key(store_dir):
    path_of(store_dir, "p" * 32).write_bytes(b"")
    set_mtime(path_of(store_dir, "p" * 32), 1)
    s = CsStore("p" * 32)
    assert s.load() == {} and s.session_key == "p" * 32
    CsStore.clear_expired()  # Django never expires a placeholder either
    assert files(store_dir) == [PREFIX + "p" * 32]


def test_failed_write_leaves_nothing_behind(store_dir, caplog):
    # The session's name fits NAME_MAX (255) but its temp file's name does not.
    with override_settings(SESSION_COOKIE_NAME="n" * 215):
        s = CsStore()
        s["a"] = 1
        with caplog.at_level(logging.WARNING, logger="csessions"):
            s.save()  # create(): the placeholder is made, the write fails
        assert files(store_dir) == []
        assert "Could not save session file" in caplog.text

        name = "n" * 215 + "k" * 32
        (store_dir / name).write_text(DjStore().encode({"old": 1}))
        t = CsStore("k" * 32)
        t["b"] = 2
        t.save()
        assert files(store_dir) == [name]
        assert CsStore("k" * 32).load() == {"old": 1}


def test_unencodable_session_leaves_no_placeholder(store_dir):
    s = CsStore()
    s["a"] = {1, 2}
    with pytest.raises(TypeError):
        s.save()
    assert files(store_dir) == []


def test_file_save_errors(tmp_path):
    p = tmp_path / "s"
    with pytest.raises(FileNotFoundError):
        _core.file_save(p, b"x", False, False)
    assert _core.file_save(p, b"x", True, False) == 0
    with pytest.raises(FileExistsError):
        _core.file_save(p, b"y", True, False)
    assert _core.file_save(str(p), b"y", False, False) == 0
    assert _core.file_read(p)[0] == b"y"
    with pytest.raises(TypeError):
        _core.file_save(p, "str", False, False)
    with pytest.raises(FileNotFoundError):
        _core.file_save(tmp_path / "no" / "s", b"x", True, False)
    _core.file_unlink(p, False)
    with pytest.raises(FileNotFoundError):
        _core.file_unlink(p, False)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- clear_expired

# Module level runs in the concurrency test's children too, before settings exist there.
NOW = time.time()
UTC_NOW = datetime.datetime.now(datetime.timezone.utc)  # USE_TZ=True (conftest)
ISO_PAST = (UTC_NOW - datetime.timedelta(days=1)).isoformat()
ISO_FUTURE = (UTC_NOW + datetime.timedelta(days=30)).isoformat()

# expiry value stored in the session (absent when None)
# ISO strings stand for the ISO dates of the current USE_TZ (aware or naive), see iso_dates().
EXPIRIES = [None, 3600, -3600, 0, 0.0, -0.5, 7.5, True, False, "", "past", "future",
            2**70, -(2**70), 1e300]
# mtimes: fresh, old, and within the C side's margin on either side of the cutoff
MTIMES = {
    "fresh": NOW - 60,
    "old": NOW - AGE - 10 * 86400,
    "near_expired": NOW - AGE - 3600,
    "near_alive": NOW - AGE + 3600,
}


# JSON texts only a signer with the key writes, each a corner of json.loads' semantics.
RAW_JSON = [
    '{"_session_expiry": -1, "u": "1", "_session_expiry": %s}',  # the last duplicate wins
    '{"_session_expiry": %s, "_session_expiry": -1}',
    '{"\\u005fsession_expiry": %s}',  # an escaped key is the same key
    '{"a": {"_session_expiry": -1}, "_session_expiry": %s}',  # nested: not the session's
    '{"a": {"_session_expiry": -1}, "b": [%s]}',
    '{"a": "caf\xe9", "_session_expiry": %s}',  # latin-1 byte: json.loads' path
    '{"_session_expiry": %s, "n": NaN}',
    ' {"_session_expiry" : %s } ',
    '{"_session_expiry": %s, "x": {"_session_expiry": "2000-01-01T00:00:00+00:00"}}',
    '{"a": "x\x01y", "_session_expiry": %s}',  # a raw control character: json.loads refuses
    '{"_session_expiry": %s} x',  # extra data
    '{"_session_expiry": %s}{}',
    '{"_session_expiry": %s,}',
    '{"_session_expiry": %s "a": 1}',
]
RAW_EXPIRIES = ["-5", "5", "0", "null", "true", "false", "-0.0", "1e400", "-1e400", "NaN",
                "Infinity", "-Infinity", '""', '"past"', '"future"',
                "18446744073709551615", "-9223372036854775808", "[]", "{}", "1.", "-.5", "01",
                "1e", "+1", ".5", "-", "1e-400", "0e9", "-0", "tru", "nul"]


def sign_raw_json(text, compress):
    """What encode() would write if the serializer had produced `text`."""
    data = text.encode("latin-1")
    if compress:
        data = zlib.compress(data)
    payload = ("." if compress else "") + signing.b64_encode(data).decode()
    return signing.TimestampSigner(salt="django.contrib.sessions.SessionStore").sign(payload)


def iso_dates():
    """{"past": a day ago, "future": in 30 days} as set_expiry() stores them (USE_TZ's kind)."""
    now = timezone.now()
    return {"past": (now - datetime.timedelta(days=1)).isoformat(),
            "future": (now + datetime.timedelta(days=30)).isoformat()}


def _write_mixed_dir(d, rng, n, secret_fallback=False):
    """n session files of every kind the sweep distinguishes, plus strays."""
    small, big = {"u": "1"}, {"u": "1", "cart": ["item-%d" % i for i in range(60)]}
    iso = iso_dates()
    for i in range(n):
        r = rng.random()
        if r < 0.15:
            text = rng.choice(RAW_JSON) % rng.choice(RAW_EXPIRIES)
            text = text.replace('"past"', '"%s"' % iso["past"]).replace('"future"', '"%s"' % iso["future"])
            content = sign_raw_json(text, rng.random() < 0.5)
        else:
            data = dict(rng.choice([small, big]))
            expiry = rng.choice(EXPIRIES)
            expiry = iso.get(expiry, expiry) if isinstance(expiry, str) else expiry
            if expiry is not None:
                data["_session_expiry"] = expiry
            if secret_fallback and rng.random() < 0.3:
                with override_settings(SECRET_KEY="old-secret"):
                    content = DjStore().encode(data)
            else:
                content = DjStore().encode(data)
        r = rng.random()
        if r < 0.05:
            content = "garbage:" + content[:20]
        elif r < 0.08:
            content = ""
        key = "%032x" % rng.getrandbits(128)
        p = path_of(d, key)
        p.write_text(content, "latin-1")
        set_mtime(p, rng.choice(list(MTIMES.values())))
    # strays Django's clear_expired ignores (and so must we)
    (d / "unrelated").write_text("x")
    (d / (PREFIX + "short")).write_text("x")
    (d / (PREFIX + "UPPERCASEKEY000000000000000000000")).write_text("x")
    os.mkdir(d / (PREFIX + "z" * 32))
    set_mtime(d / "unrelated", 1)


def _temp_files(d, key, stale):
    names = [PREFIX + key + "_out_" + "abc_12de", PREFIX + key + "_out_xk3h9_a0z1"]
    for name in names:
        (d / name).write_text("partial")
        set_mtime(d / name, NOW - (7200 if stale else 60))
    return names


def _run_both(d, tmp_path, threads=None, **settings_kw):
    """Django's clear_expired on a copy of d, ours on d; returns both file sets."""
    copy = tmp_path / "django-copy"
    shutil.copytree(d, copy, symlinks=True)
    with override_settings(SESSION_FILE_PATH=str(copy), **settings_kw):
        forget_storage_path()
        DjStore.clear_expired()
    with override_settings(SESSION_FILE_PATH=str(d), **settings_kw):
        forget_storage_path()
        with pytest.MonkeyPatch.context() as mp:
            if threads:
                mp.setattr(CsStore, "sweep_threads", threads)
            CsStore.clear_expired()
    forget_storage_path()
    return set(os.listdir(copy)), set(os.listdir(d))


@pytest.fixture
def asked(monkeypatch):
    """The statuses the sweep put to Python, counted."""
    counts = {}
    sweep = _core.file_sweep

    def counting_sweep(*args):
        ask = args[7]

        def counting_ask(name, mtime, status, value):
            counts[status] = counts.get(status, 0) + 1
            return ask(name, mtime, status, value)

        return sweep(*args[:7], counting_ask, *args[8:])

    monkeypatch.setattr(_core, "file_sweep", counting_sweep)
    return counts


@pytest.mark.parametrize("use_tz", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("seed", range(2))
def test_clear_expired_judges_as_django(store_dir, tmp_path, seed, threads, use_tz, asked):
    with override_settings(USE_TZ=use_tz):
        _write_mixed_dir(store_dir, random.Random(seed), 300)
    theirs, mine = _run_both(store_dir, tmp_path, threads=threads, USE_TZ=use_tz)
    assert mine == theirs
    assert 30 < len(mine) < 290  # both kinds present
    # Every way to Python was taken, and many files never got there. With USE_TZ the C side
    # decides every mtime more than 2 s from the cutoff, without it only those 2 days away.
    statuses = {cfile.SWEEP_STRING, cfile.SWEEP_CORRUPT, cfile.SWEEP_OTHER}
    assert set(asked) == (statuses if use_tz else statuses | {cfile.SWEEP_MTIME})
    assert sum(asked.values()) < (120 if use_tz else 200)


def test_clear_expired_raw_json_as_django(store_dir, tmp_path, asked):
    # Every template with every expiry, compressed or not, each at a fresh and an old mtime.
    iso = iso_dates()
    n = 0
    for t, template in enumerate(RAW_JSON):
        for e, expiry in enumerate(RAW_EXPIRIES):
            text = template % expiry
            text = text.replace('"past"', '"%s"' % iso["past"]).replace('"future"', '"%s"' % iso["future"])
            if _django_would_raise(text):
                continue
            n += 1
            for compress in (False, True):
                content = sign_raw_json(text, compress)
                for mtime in ("fresh", "old"):
                    p = path_of(store_dir, "%08d%08d%08d%08d" % (t, e, compress, mtime == "old"))
                    p.write_text(content)
                    set_mtime(p, MTIMES[mtime])
    assert n > 300
    theirs, mine = _run_both(store_dir, tmp_path)
    assert mine == theirs
    assert sum(asked.values()) < 4 * n


def _random_json(rng, depth=0):
    """A JSON-ish text: mostly valid, with the corners json.loads and the sweep's scanner see."""
    def ws():
        return rng.choice(["", "", "", " ", "\n", "\t ", "\r\n"])

    def number():
        return rng.choice(["0", "-0", "0.0", "-0.0", "1", "-1", "7.25", "-3.5", "10", "1e3", "-1e3",
                           "1E-400", "-2e+2", "0e0", "1e400", "123456789012345678901234567890",
                           "-98765432109876543210", "0.000001", "-0.0000", "1." + "0" * 70 + "1"])

    def string():
        return rng.choice(['""', '"x"', '"a\\"b"', '"\\u00e9"', '"\\ud800"', '"tab\\t"',
                           '"%s"' % iso_dates()["past"], '"%s"' % iso_dates()["future"],
                           '"2020-01-01"', '"not a date"'])

    def value(d):
        r = rng.random()
        if d < 3 and r < 0.15:
            return "[" + ws() + ("," + ws()).join(value(d + 1) for _ in range(rng.randint(0, 3))) + "]"
        if d < 3 and r < 0.3:
            return obj(d + 1)
        if r < 0.6:
            return number()
        if r < 0.85:
            return string()
        return rng.choice(["true", "false", "null", "NaN", "Infinity", "-Infinity"])

    def key(d):
        return rng.choice(['"_session_expiry"', '"_session_expiry"', '"\\u005fsession_expiry"',
                           '"_session_expiry "', '"a"', '"b\\n"', '"_session_expir"'])

    def obj(d):
        members = [key(d) + ws() + ":" + ws() + value(d) for _ in range(rng.randint(0, 4))]
        return "{" + ws() + ("," + ws()).join(members) + ws() + "}"

    text = ws() + obj(0) + ws()
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # and some damage
        i = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.4:
            text = text[:i] + text[i + 1:]
        elif op < 0.8:
            text = text[:i] + rng.choice('{}[]",:0-.eE+ \\u\x01x') + text[i:]
        else:
            text = text[:i] + text[i:i + 5] + text[i:]
    return text


def _django_would_raise(text):
    """Whether Django's load() raises on a validly signed `text` (non-dict, odd expiry)."""
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return False  # decode() gives {}
    if not isinstance(v, dict):
        return True
    e = v.get("_session_expiry")
    if not e or not isinstance(e, (str, list, dict)):
        return False
    try:
        DjStore().get_expiry_age(expiry=e) <= 0
    except Exception:
        return True
    return False


@pytest.mark.parametrize("seed", range(4))
def test_clear_expired_json_corners_as_django(store_dir, tmp_path, seed, asked):
    rng = random.Random(seed)
    texts = set()
    while len(texts) < 250:
        text = _random_json(rng)
        if not _django_would_raise(text):
            texts.add(text)
    for i, text in enumerate(sorted(texts)):
        content = sign_raw_json(text, compress=i % 2 == 0)
        for j, mtime in enumerate((MTIMES["fresh"], MTIMES["old"])):
            p = path_of(store_dir, "%030d%02d" % (i, j))
            p.write_text(content)
            set_mtime(p, mtime)
    theirs, mine = _run_both(store_dir, tmp_path)
    assert mine == theirs
    assert sum(asked.values()) < 2 * len(texts)  # the C side judged some of them


def test_clear_expired_with_fallback_keys(store_dir, tmp_path):
    _write_mixed_dir(store_dir, random.Random(7), 200, secret_fallback=True)
    theirs, mine = _run_both(store_dir, tmp_path, SECRET_KEY_FALLBACKS=["old-secret"])
    assert mine == theirs
    # and without the fallback, those files are corrupt: judged by mtime alone, as Django
    shutil.rmtree(store_dir)
    store_dir.mkdir()
    _write_mixed_dir(store_dir, random.Random(7), 200, secret_fallback=True)
    theirs, mine = _run_both(store_dir, tmp_path / "again")
    assert mine == theirs


@pytest.mark.parametrize("use_tz", [True, False])
def test_clear_expired_timezones(store_dir, tmp_path, use_tz):
    with override_settings(USE_TZ=use_tz):
        iso_past = (timezone.now() - datetime.timedelta(days=1)).isoformat()
        iso_future = (timezone.now() + datetime.timedelta(days=1)).isoformat()
        now = time.time()
        mtimes = dict(MTIMES, just_expired=now - AGE - 10, just_alive=now - AGE + 10)
        for i, (expiry, mtime) in enumerate([(None, "near_expired"), (None, "near_alive"),
                                             (iso_past, "fresh"), (iso_future, "old"),
                                             (None, "old"), (None, "fresh"),
                                             (None, "just_expired"), (None, "just_alive")]):
            data = {"a": 1} if expiry is None else {"a": 1, "_session_expiry": expiry}
            p = path_of(store_dir, "%032d" % i)
            p.write_text(DjStore().encode(data))
            set_mtime(p, mtimes[mtime])
    theirs, mine = _run_both(store_dir, tmp_path, USE_TZ=use_tz)
    assert mine == theirs == {PREFIX + "%032d" % i for i in (1, 3, 5, 7)}


def test_clear_expired_custom_serializer(store_dir, tmp_path):
    _write_mixed_dir(store_dir, random.Random(3), 100)
    # Not one of the C serializers: every file goes through Django's own load().
    theirs, mine = _run_both(store_dir, tmp_path,
                             SESSION_SERIALIZER="test_file_engine.OtherJSONSerializer")
    assert mine == theirs


class OtherJSONSerializer(signing.JSONSerializer):
    pass


def test_clear_expired_subclass_overrides(store_dir):
    class Store(CsStore):
        def get_expiry_age(self, **kwargs):
            return -1  # everything has expired

    for i in range(5):
        p = path_of(store_dir, "%032d" % i)
        p.write_text(DjStore().encode({"_session_expiry": 3600}))
    Store.clear_expired()
    assert files(store_dir) == []


def test_clear_expired_calls_a_subclass_delete(store_dir):
    deleted = []

    class Store(CsStore):
        __qualname__ = "SessionStore"  # key_salt comes from it: reads Django's sessions

        def delete(self, session_key=None):
            deleted.append(session_key or self.session_key)
            super().delete(session_key)

    for i in range(3):
        path_of(store_dir, "%032d" % i).write_text(DjStore().encode({"_session_expiry": -10}))
    Store.clear_expired()
    assert sorted(deleted) == ["%032d" % i for i in range(3)] and files(store_dir) == []


def test_subclass_hooks_with_djangos_signatures(store_dir):
    # Django calls _expiry_date(session_data) and _last_modification(); a subclass written
    # for Django's engine overrides them with those signatures and must keep working.
    seen = []

    class OwnModification(CsStore):
        __qualname__ = "SessionStore"  # key_salt comes from it: reads csessions' sessions

        def _last_modification(self):
            seen.append("last_modification")
            return super()._last_modification()

    class OwnExpiry(CsStore):
        __qualname__ = "SessionStore"

        def _expiry_date(self, session_data):
            seen.append("expiry_date")
            return super()._expiry_date(session_data)

    for store in (OwnModification, OwnExpiry):
        s = new_session(CsStore, {"a": 1})
        assert store(s.session_key).load() == {"a": 1}
    assert seen == ["last_modification", "expiry_date"]


def test_clear_expired_weird_expiry_fails_as_django(store_dir, tmp_path):
    p = path_of(store_dir, "w" * 32)
    p.write_text(DjStore().encode({"_session_expiry": [1]}))
    for cls in (DjStore, CsStore):
        forget_storage_path()
        with pytest.raises(TypeError):
            cls.clear_expired()


def test_clear_expired_temp_files(store_dir):
    live = new_session(CsStore, {"a": 1})
    stale = _temp_files(store_dir, live.session_key, stale=True)
    fresh = _temp_files(store_dir, "b" * 32, stale=False)
    # A temp file as Django's mkstemp names it.
    dj_temp = PREFIX + "c" * 32 + "_out_" + "q1_z9a8b"
    (store_dir / dj_temp).write_text("x")
    set_mtime(store_dir / dj_temp, NOW - 4000)
    not_temp = [PREFIX + "d" * 32 + "_out_", PREFIX + "_out_abc", PREFIX + "e" * 32 + "_out_AB"]
    for name in not_temp:
        (store_dir / name).write_text("x")
        set_mtime(store_dir / name, 1)
    os.symlink("/etc/passwd", store_dir / (PREFIX + "f" * 32 + "_out_abc"))
    assert all((store_dir / n).exists() for n in stale)
    CsStore.clear_expired()
    assert set(files(store_dir)) == {PREFIX + live.session_key, *fresh, *not_temp,
                                     PREFIX + "f" * 32 + "_out_abc"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CsStore, "temp_file_grace", 10)
        CsStore.clear_expired()
    assert set(files(store_dir)) == {PREFIX + live.session_key, *not_temp,
                                     PREFIX + "f" * 32 + "_out_abc"}


def test_clear_expired_leaves_a_file_replaced_meanwhile(store_dir):
    # The sweep removes a file only if it is still the one it judged: a session saved
    # between the verdict and the unlink survives. Simulated with the callback, which runs
    # between the two: it replaces the file, then answers "expired".
    key = "r" * 32
    p = path_of(store_dir, key)
    p.write_text(DjStore().encode({"_session_expiry": ISO_PAST}))

    def ask(name, mtime, status, value):
        assert (name, status, value) == (PREFIX + key, cfile.SWEEP_STRING, ISO_PAST)
        s = CsStore(key)
        s._session_cache = {"fresh": 1}
        s.save()
        return True

    keys = [hashlib.sha256(b"django.contrib.sessions.SessionStoresigner"
                           + settings.SECRET_KEY.encode()).digest()]
    assert _core.file_sweep(str(store_dir), PREFIX.encode(), keys, b"_session_expiry",
                            0.0, 0.0, 0.0, ask, 1) == (0, 0)
    assert CsStore(key).load() == {"fresh": 1}


def test_clear_expired_logs_corrupt_files(store_dir, caplog):
    path_of(store_dir, "g" * 32).write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        CsStore.clear_expired()
    assert "Session data corrupted" in caplog.text
    assert files(store_dir) == [PREFIX + "g" * 32]  # fresh mtime: kept, as Django


def test_clear_expired_non_ascii_file(store_dir):
    p = path_of(store_dir, "h" * 32)
    p.write_bytes("é".encode())
    CsStore.clear_expired()  # Django's raises UnicodeDecodeError here
    assert files(store_dir) == [PREFIX + "h" * 32]
    set_mtime(p, 1)
    CsStore.clear_expired()
    assert files(store_dir) == []


def test_clear_expired_huge_file(store_dir, tmp_path):
    # Over 64 MiB the sweep does not read a file itself: Django's procedure does.
    p = path_of(store_dir, "b" * 32)
    with open(p, "wb") as f:
        f.truncate((64 << 20) + 1)
    set_mtime(p, MTIMES["old"])
    shutil.copy2(p, path_of(store_dir, "c" * 32))  # and one fresh
    set_mtime(path_of(store_dir, "c" * 32), MTIMES["fresh"])
    theirs, mine = _run_both(store_dir, tmp_path)
    assert mine == theirs == {PREFIX + "c" * 32}


def test_file_sweep_arguments(tmp_path):
    ok = (str(tmp_path), b"p", None, b"f", 0.0, 0.0, 0.0, lambda *a: False, 1)
    assert _core.file_sweep(*ok) == (0, 0)
    with pytest.raises(TypeError):
        _core.file_sweep(*ok[:8])
    for i, bad in [(1, "p"), (3, "f"), (7, None), (2, ["k"]), (2, 5)]:
        args = list(ok)
        args[i] = bad
        with pytest.raises(TypeError):
            _core.file_sweep(*args)
    for bad in (0, 1000):
        with pytest.raises(ValueError):
            _core.file_sweep(*ok[:8], bad)
    with pytest.raises(FileNotFoundError):
        _core.file_sweep(str(tmp_path / "missing"), *ok[1:])


def test_file_sweep_callback_error_stops_it(store_dir):
    for i in range(3):
        path_of(store_dir, "%032d" % i).write_text("garbage")

    def ask(*args):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        _core.file_sweep(str(store_dir), PREFIX.encode(), [], b"x", 0.0, 0.0, 0.0, ask, 2)
    assert len(files(store_dir)) == 3


def test_clearsessions_command(store_dir):
    alive = new_session(CsStore, {"a": 1})
    gone = new_session(CsStore, {"a": 1})
    gone.set_expiry(-1)
    gone.save()
    stale = _temp_files(store_dir, alive.session_key, stale=True)
    with override_settings(SESSION_ENGINE="csessions.backends.file"):
        management.call_command("clearsessions")
    assert files(store_dir) == [PREFIX + alive.session_key]
    assert not any((store_dir / n).exists() for n in stale)


# ---------------------------------------------------------------------------- concurrency

SHARED_KEYS = ["shared%026d" % i for i in range(3)]


def _value(wid, i):
    digest = hashlib.sha256(f"{wid}:{i}".encode()).hexdigest()
    return {"w": wid, "i": i, "check": digest, "pad": digest * (i % 40)}


def _is_whole_value(d):
    return (isinstance(d, dict) and set(d) == {"w", "i", "check", "pad"}
            and d == _value(d["w"], d["i"]))


def _hammer(directory, ready, secret, wid, seconds):
    """One writer process: creates, saves, loads and deletes shared and own sessions for
    `seconds`, starting when both writers are ready (a file each in `ready`)."""
    if not settings.configured:
        import django

        settings.configure(SECRET_KEY=secret, USE_TZ=True, SESSION_FILE_PATH=directory,
                           INSTALLED_APPS=["django.contrib.sessions"], LOGGING_CONFIG=None)
        django.setup()
    from csessions.backends.file import SessionStore

    open(os.path.join(ready, str(wid)), "w").close()
    give_up = time.monotonic() + 120
    while len(os.listdir(ready)) < 2 and time.monotonic() < give_up:
        time.sleep(0.001)
    rng = random.Random(wid)
    counts = {"CreateError": 0, "UpdateError": 0, "ok": 0}
    unexpected = []
    own = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        key = rng.choice(SHARED_KEYS + own[-3:] + [None])
        op = rng.choice(["create", "save", "save", "load", "delete", "cycle"])
        try:
            s = SessionStore(key)
            if op == "create":
                s._session_cache = _value(wid, i)
                s.save(must_create=True)  # key None: a fresh one
                own.append(s.session_key)
            elif op == "save" and key is not None:
                s._session_cache = _value(wid, i)
                s.save()
            elif op == "load":
                d = s.load()
                if d != {} and not _is_whole_value(d):
                    unexpected.append(f"load of {key} gave a mix: {str(d)[:100]}")
            elif op == "delete":
                s.delete(key)
            elif op == "cycle" and key is not None:
                s._session_cache = _value(wid, i)
                s.cycle_key()
                own.append(s.session_key)
            counts["ok"] += 1
        except (CreateError, UpdateError) as e:
            counts[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - reported to the parent
            unexpected.append(f"{op} {key}: {type(e).__name__}: {e}")
    return counts, unexpected


def test_two_processes_never_leave_a_corrupt_file(store_dir, tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        jobs = [pool.submit(_hammer, str(store_dir), str(ready), settings.SECRET_KEY, wid, 1.5)
                for wid in (1, 2)]
        results = [job.result(timeout=300) for job in jobs]
    for counts, unexpected in results:
        assert unexpected == []
        assert counts["ok"] > 100
    assert sum(c["CreateError"] + c["UpdateError"] for c, _ in results) > 10  # they did collide
    names = files(store_dir)
    assert names and not any("_out_" in n for n in names)  # no temp file left behind
    for name in names:
        key = name[len(PREFIX):]
        assert _is_whole_value(CsStore(key).load()), name
        assert _is_whole_value(DjStore(key).load()), name


# ---------------------------------------------------------------------------- leaks


def test_no_leaks(store_dir, monkeypatch):
    import gc
    import tracemalloc

    # The corrupt file is logged at each sweep, and pytest keeps every record.
    monkeypatch.setattr(logging.getLogger("django.security.SuspiciousSession"), "disabled", True)
    garbage = path_of(store_dir, "g" * 32)
    garbage.write_text("garbage")
    iso = DjStore().encode({"_session_expiry": iso_dates()["future"]})
    path_of(store_dir, "i" * 32).write_text(iso)

    def ops():
        s = new_session(CsStore, {"a": 1})
        p = os.path.join(str(store_dir), PREFIX + s.session_key)  # pathlib interns each part
        _core.file_read(p)
        for call, exc in ((lambda: _core.file_read(str(p) + "x"), FileNotFoundError),
                          (lambda: _core.file_save(p, b"x", True, False), FileExistsError),
                          (lambda: _core.file_sweep(str(p), b"s", [b"k"], b"f", 0.0, 0.0, 0.0,
                                                    print, 2), NotADirectoryError)):
            with pytest.raises(exc):
                call()
        _core.file_save(p, b"x", False, False)
        CsStore.clear_expired()
        _core.file_unlink(p, False)

    tracemalloc.start()  # it sees PyMem_Raw too: the C side's buffers
    try:
        for _ in range(50):
            ops()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            ops()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 8 * 1024
