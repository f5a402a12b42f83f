"""A session store in one shared-memory segment, used directly by every worker process of a host.

    SESSION_ENGINE = "csessions.backends.shm"

No server to run, no network hop, and sessions survive restarts of the web server (the segment
outlives its processes; not a reboot). The store itself is C (``csessions._core.ShmStore``,
design in ``src/shm.h``): a hash table split in stripes, each under its own process-shared
robust mutex, so workers touching different sessions do not contend, and a worker killed while
holding a lock neither deadlocks the store nor corrupts it. Encoding and decoding happen here,
outside any lock.

Settings:

* ``CSESSIONS_SHM_NAME``: the segment's name (``/dev/shm/<name>``). The default is derived from
  the project (the settings module, ``BASE_DIR``, ``ROOT_URLCONF``) and the user id, so two sites
  on one host never share a segment. Under Django's test runner the default name gets a
  ``-test-<pid>`` suffix and that segment is removed at exit, as Django does with test
  databases: test runs never see production sessions nor leave segments behind.
* ``CSESSIONS_SHM_SIZE``: bytes, default 64 MiB. The segment is sized when it is created and
  never grows; a segment that already exists keeps its size (``manage.py csessions_shm
  recreate`` makes a new one).
* ``CSESSIONS_SHM_PATH``: a file on a local disk to hold the store instead of ``/dev/shm``,
  so sessions also survive a reboot (design and limits in ``src/shm.h``). Under Django's test
  runner the path gets the same ``-test-<pid>`` suffix and the file is removed at exit.
* ``CSESSIONS_SHM_LOCK_TIMEOUT``: seconds a worker waits for a stripe lock before raising
  ``TimeoutError`` (default 5; a lock is normally held for a microsecond).

What is stored is the session, unsigned, as Django's cache engine stores it. With the JSON
serializer: csessions' packed binary form (``src/pack.h``: tag ``o``; no parsing, so loading
takes about half the time of JSON) for every session that a JSON round trip would give back
unchanged, which is what JSONSerializer gives back, so nothing differs; otherwise (a tuple, a
non-str key, a big int, ...), the JSON text (``{...}``). Above ``COMPRESS_ABOVE`` bytes either
is compressed by the C core's quick deflate (``y`` + packed, ``z`` + JSON; a zlib stream, see
``src/deflate_quick.h``: on the 93 KB reference session 3.5x faster than zlib's fastest level
and inflated ~2.5x faster, for 16.9 KB instead of 15.0 KB, the same 32 KiB block). With any other
serializer: ``s`` + its output. Signing (HMAC-SHA256 under ``SECRET_KEY``, as the db and file engines do) was the
first design and was dropped: it cost ~4 us of a ~17 us request and protected nothing.
The segment is 0600 and refused unless it is the site user's own, so only processes of that
user can write into it, and any of those can read ``SECRET_KEY`` (the settings, the workers'
environment and memory) and sign whatever it likes. Against corruption (a bug, a crash, a
torn page) the store itself validates every entry, and a value that does not decode is an
empty session, logged as corrupted, as Django does. ``encode()``/``decode()`` stay Django's
signed format, for code that calls them.

Beyond Django's cache engine, which this engine is held to by Django's own tests:

* Nothing is dropped silently: hits, misses, evictions, expirations, lock recoveries and bytes
  used are counted in the segment (``stats()``, ``manage.py csessions_shm stats``).
* A session larger than the store accepts raises ``SessionTooLarge`` (a ``ValueError``) from
  ``save()``, and nothing else in the store is disturbed.
* ``clear_expired()`` (``manage.py clearsessions``) really removes the expired sessions, though
  the store also reclaims them by itself as it is used.
"""

import atexit
import hashlib
import logging
import os
import time
from types import MethodType

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.core.signals import setting_changed

from csessions import _core
from csessions.backends.base import CSessionMixin
from csessions.signing import C_SERIALIZERS

DEFAULT_SIZE = 64 * 1024 * 1024
DEFAULT_LOCK_TIMEOUT = 5.0
# Values longer than this are compressed (see the module docstring). zlib costs more than the
# rest of a request; below this size memory is cheaper (a 64 MiB store holds ~64k typical
# sessions; a 32 KiB session takes a 32 KiB block, 1/2048 of it).
COMPRESS_ABOVE = 32768
# put() modes of ShmStore.
_SET, _ADD, _REPLACE = 0, 1, 2
# Django's create(): how many key collisions it tolerates, and its message.
CREATE_TRIES = 10000
CREATE_FAILED = "Unable to create a new session key. It is likely that the cache is unavailable."

ShmError = _core.ShmError


class SessionTooLarge(ValueError):
    """The encoded session does not fit in the largest entry the shared-memory store holds."""

    def __init__(self, size, limit, name):
        self.size, self.limit, self.name = size, limit, name
        super().__init__(
            f"Session of {size} bytes (encoded, with its key and entry header) is larger than "
            f"the {limit} bytes the shared-memory session store {name!r} accepts per session; "
            "it was not saved and the store is unchanged. Store less in the session."
        )


_stores = {}  # (name, size, lock timeout) -> ShmStore; one mapping per segment and process
_current = None  # the ShmStore of the current settings, until a setting changes
_prefetch = []  # [_current.prefetch] while _current is set: SessionStore._cs_prefetch
_test_segments = set()


def _setting(name, default):
    return getattr(settings, name, default)


def default_name():
    """``csessions-<uid>-<hash of the project>``: stable across restarts, distinct per site."""
    ident = "\0".join(
        str(_setting(name, "")) for name in ("SETTINGS_MODULE", "BASE_DIR", "ROOT_URLCONF")
    )
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"csessions-{os.geteuid()}-{digest}"


def _in_test_runner():
    from django.test import utils

    return hasattr(utils._TestState, "saved_data")


def _unlink(name, path):
    try:
        if path is None:
            _core.shm_unlink(name)
        else:
            os.unlink(path)
    except OSError:
        pass


def _unlink_test_segments():
    for name, path in _test_segments:
        _unlink(name, path)


def _test_copy(name, path):
    """Under Django's test runner, a segment (or file) of this process's own, removed at exit."""
    if not _test_segments:
        atexit.register(_unlink_test_segments)
    _test_segments.add((name, path))
    return name, path


def config():
    """(name, size, lock timeout, path or None) from the settings."""
    name = _setting("CSESSIONS_SHM_NAME", None)
    path = _setting("CSESSIONS_SHM_PATH", None) or None
    if path is not None:
        path = os.fspath(path)
    if not name:
        name = default_name()
        if _in_test_runner() and path is None:
            name, _ = _test_copy(f"{name}-test-{os.getpid()}", None)
    if path is not None and _in_test_runner():
        _, path = _test_copy(name, f"{path}-test-{os.getpid()}")
    size = int(_setting("CSESSIONS_SHM_SIZE", DEFAULT_SIZE))
    timeout = float(_setting("CSESSIONS_SHM_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
    return name.lstrip("/"), size, timeout, path


def store():
    """The ShmStore of the current settings (created or attached on first use)."""
    global _current
    if _current is None:
        key = config()
        handle = _stores.get(key)
        if handle is None or handle.closed:
            handle = _stores[key] = _core.ShmStore(key[0], key[1], lock_timeout=key[2],
                                                   path=key[3])
        _current = handle
        # The middleware makes the SessionStore when a request starts and the view reads it
        # later: meanwhile the CPU fetches the key's bucket, one of a lookup's two DRAM misses
        # in a big store (the other, the entry, needs the bucket's contents).
        _prefetch[:] = [handle.prefetch]
    return _current


def _forget(**kwargs):
    global _current
    _current = None
    _prefetch.clear()


setting_changed.connect(_forget)


def stats():
    """The store's counters: hits, misses, inserts, updates, deletes, evictions, expirations,
    discarded (dropped by a repair), lock_recoveries, repairs, reboots (file mode: boots after
    which every entry was verified), bytes_used, value_bytes, entries, and its geometry (size,
    stripes, buckets, arena_bytes, bytes_free, max_entry, created)."""
    return store().stats()


def recreate():
    """Removes the segment (or file) of the current settings and creates a new, empty one.
    Processes that still have the old one mapped keep using it until they restart."""
    name, size, timeout, path = config()
    for key in [k for k in _stores if k[0] == name and k[3] == path]:
        _stores.pop(key).close()
    _forget()
    _unlink(name, path)
    return store()


def _now():
    return int(time.time())


_BASE_GET_EXPIRY_AGE = SessionBase.get_expiry_age


def pack_value(session_dict, serializer, packed=None):
    """The value stored for a session (the format is in the module docstring); packed is
    _core.pack(session_dict) when the caller has it already."""
    if serializer in C_SERIALIZERS:
        value = packed if packed is not None else _core.pack(session_dict)
        if value is not None:  # None: JSON would change it, or refuse it
            if len(value) > COMPRESS_ABOVE:
                value = b"y" + _core.deflate(value, _core.DEFLATE_QUICK)
            return value
        value = _core.json_dumps(session_dict)
        if len(value) > COMPRESS_ABOVE:
            value = b"z" + _core.deflate(value, _core.DEFLATE_QUICK)
        return value
    return b"s" + serializer().dumps(session_dict)


def unpack_value(value, serializer):
    """The session in a stored value (a latin-1 str, as the store hands values out); raises
    ValueError (or the serializer's error) when it is not one."""
    tag = value[:1]
    if tag == "o":
        return _core.unpack(value)
    if tag == "{":
        return _core.json_loads(value)
    if tag == "y":
        return _core.unpack(_core.inflate(value[1:]))
    if tag == "z":
        return _core.json_loads(_core.inflate(value[1:]))
    if tag == "s":
        return serializer().loads(value[1:].encode("latin-1"))
    raise ValueError(f"not a stored session (first character {tag!r})")


def _corrupted():
    logging.getLogger("django.security.SuspiciousSession").warning("Session data corrupted")
    return {}


def _func(attr):
    """The function behind a method as the class holds it (a classmethod's __func__)."""
    return attr.__func__ if type(attr) is MethodType else attr


def _own(obj, names):
    """True if each of names resolves, on obj (an instance or a class), to csessions' own
    method: not a subclass's, a mixin's, or a patch applied after import, on the class or on
    the instance. Asked at call time, off the request's hot path (create), or where the
    alternative costs a thread (the async twins)."""
    if isinstance(obj, type):
        cls = obj
    else:
        cls = type(obj)
        patched = obj.__dict__
        for name in names:
            if name in patched:
                return False
    for name in names:
        if _func(getattr(cls, name)) is not _OWN[name]:
            return False
    return True


async def _run_sync(obj, names, *args):
    """obj's sync method names[0], from its async twin: csessions' own runs right here in the
    event loop (the store does no I/O: ~1 us) when the methods it calls, the rest of names,
    are csessions' own too; otherwise in a thread through sync_to_async, as SessionBase's async
    methods run it (a subclass's may use the ORM)."""
    method = getattr(obj, names[0])
    if _own(obj, names):
        return method(*args)
    return await sync_to_async(method)(*args)


# What save() may call besides the store, where a subclass could put its own code.
_SAVE_CALLS = ("save", "load", "_get_session", "get_expiry_age", "get_session_cookie_age")
# What Django's engines await in asave() instead: a subclass may have async-only versions.
_ASAVE_HOOKS = ("_aget_session", "aget_expiry_age", "aget", "aload")
_ASAVE_CALLS = _SAVE_CALLS + _ASAVE_HOOKS
_ACREATE_CALLS = ("create", "exists", "_get_new_session_key", "asave", "aexists",
                  "_aget_new_session_key") + _ASAVE_CALLS


class SessionStore(CSessionMixin, SessionBase):
    _cs_prefetch = _prefetch

    def _pack(self, session_dict):
        return pack_value(session_dict, self.serializer)

    def _unpack(self, value):
        try:
            if value[:1] == "o":  # the common case, without unpack_value's dispatch
                return _core.unpack(value)
            return unpack_value(value, self.serializer)
        except Exception:
            return _corrupted()

    def load(self):
        try:
            handle = _current if _current is not None else store()
            # A packed session comes back as its dict (get_unpacked: no str, no second call)
            raw = handle.get_unpacked(self.session_key, time.time())
        except (TypeError, ValueError):  # a key the store cannot hold (not ASCII, > 255)
            raw = None
        if raw is None:
            self._session_key = None
            return {}
        return raw if type(raw) is dict else self._unpack(raw)

    def exists(self, session_key):
        if not session_key:
            return False
        try:
            return store().contains(session_key, _now())
        except (TypeError, ValueError):
            return False

    def create(self):
        # add() is atomic, so a new key needs no exists() lookup first; a class that draws its
        # keys or answers exists() its own way gets Django's _get_new_session_key instead.
        if _own(self, ("_get_new_session_key", "exists")):
            new_key = _core.new_session_key
        else:
            new_key = self._get_new_session_key
        for _ in range(CREATE_TRIES):
            self._session_key = new_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue  # a key collision: add() is atomic, try another key
            self.modified = True
            return
        raise RuntimeError(CREATE_FAILED)

    def save(self, must_create=False, _resolved=None):
        # SessionBase's steps with fewer Python calls (each is a few percent of a request):
        # _get_session's once the dict is loaded, pack_value's and the bytes for a packable
        # session below COMPRESS_ABOVE (put_packed), get_expiry_age's for no expiry or an
        # age in seconds (it builds timezone.now(), ~2 us, to compare with an expiry date).
        # A subclass that changes one of them (_cs_plain_session), or a patched
        # get_expiry_age, gets the calls. _resolved: (dict, age) that asave() got from a
        # subclass's async hooks.
        if _resolved is None:
            plain = self._cs_plain_session and type(self).get_expiry_age is _BASE_GET_EXPIRY_AGE
            key = self._SessionBase__session_key if plain else self.session_key
            if key is None:
                return self.create()
            try:  # the dict is normally loaded: no getattr call for it
                data = self._session_cache if plain else None
            except AttributeError:
                data = None
            if data is None:
                data = self._get_session(no_load=must_create)
            else:
                self.accessed = True  # what _get_session does
            age = data.get("_session_expiry")
            if not plain or (age and type(age) is not int):
                age = self.get_expiry_age()
            elif not age:
                age = self.get_session_cookie_age()
        else:
            key = self.session_key
            data, age = _resolved
        handle = _current if _current is not None else store()
        now = time.time()  # the store floors it (int() here would cost more than its get)
        mode = _ADD if must_create else _REPLACE
        expires = now + age
        packed = None
        if self.serializer in C_SERIALIZERS:
            try:  # packed and stored in C; bytes: packed only, longer than COMPRESS_ABOVE
                packed = handle.put_packed(key, data, expires, now, mode, COMPRESS_ABOVE)
            except (TypeError, ValueError):
                pass  # a key the store cannot hold, or a closed store: put() answers it
            if packed is True:
                return
            if packed is False:
                raise CreateError if must_create else UpdateError
        value = pack_value(data, self.serializer, packed)
        try:
            stored = handle.put(key, value, expires, now, mode)
        except TypeError:  # a key the store cannot hold: it cannot exist there either
            if must_create:
                raise  # a new key it can never store: create() must not retry it 10,000 times
            stored = False
        except ValueError:  # put() checks before it changes anything
            size = handle.entry_overhead + len(key) + len(value)
            if size > handle.max_entry:
                raise SessionTooLarge(size, handle.max_entry, handle.name) from None
            if len(key) <= 255 or must_create:
                raise
            stored = False
        if not stored:
            raise CreateError if must_create else UpdateError

    def delete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        try:
            store().delete(session_key, _now())
        except (TypeError, ValueError):
            pass

    @classmethod
    def clear_expired(cls):
        store().sweep(_now())

    # The store answers in about a microsecond and never does I/O, so the async twins run
    # the sync methods directly in the event loop instead of going through a thread
    # (sync_to_async, ~100 us), unless a subclass has its own (_run_sync); acreate() goes
    # Django's way (_aget_new_session_key, asave) for a class with its own hooks.

    async def aload(self):
        return await _run_sync(self, ("load",))

    async def aexists(self, session_key):
        return await _run_sync(self, ("exists",), session_key)

    async def acreate(self):
        if _own(self, _ACREATE_CALLS):
            return self.create()
        for _ in range(CREATE_TRIES):
            self._session_key = await self._aget_new_session_key()
            try:
                await self.asave(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError(CREATE_FAILED)

    async def asave(self, must_create=False):
        if self.session_key is None:  # as Django's engines: save() would call create()
            return await self.acreate()
        if _own(self, _ASAVE_CALLS):
            return self.save(must_create)  # all csessions' own: in the loop
        if _own(self, _ASAVE_HOOKS) or not _own(self, ("save",)):
            return await sync_to_async(self.save)(must_create)
        # A subclass's async hooks, awaited as Django's engines await them in asave(), each
        # piece from the most specific override (a sync twin the subclass has without its
        # async one is still honoured, in a thread); save() stores what they give.
        if _own(self, ("_aget_session",)) and not _own(self, ("_get_session",)):
            data = await sync_to_async(self._get_session)(no_load=must_create)
        else:
            data = await self._aget_session(no_load=must_create)
        if _own(self, ("aget_expiry_age",)) and not _own(self, ("get_expiry_age",)):
            age = await sync_to_async(self.get_expiry_age)()
        else:
            age = await self.aget_expiry_age()
        return self.save(must_create, (data, age))

    async def adelete(self, session_key=None):
        return await _run_sync(self, ("delete",), session_key)

    @classmethod
    async def aclear_expired(cls):
        return await _run_sync(cls, ("clear_expired",))


_OWN = {name: _func(getattr(SessionStore, name)) for name in (
    "create", "exists", "delete", "clear_expired", "_get_new_session_key", "aexists", "asave",
    "_aget_new_session_key") + _ASAVE_CALLS}
