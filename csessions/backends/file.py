"""File sessions: Django's ``file`` engine with its I/O, codec and keys in C, and a
``clear_expired()`` that does not decode every file in Python.

    SESSION_ENGINE = "csessions.backends.file"

Same directory (``SESSION_FILE_PATH``, else ``tempfile.gettempdir()``), same file names
(``<SESSION_COOKIE_NAME><key>``), same content (the signed value ``encode()`` makes), same write
protocol (an empty placeholder made with ``O_CREAT | O_EXCL`` for a new session, then a temp file
``<name>_out_<random>`` in the same directory renamed over it): a file written by Django's
``file`` engine loads here and the other way round, and both engines may share a directory
while a site moves from one to the other. Expiry is Django's: ``_session_expiry`` when the
session has a truthy one, else the file's mtime plus ``SESSION_COOKIE_AGE``.

Differences from Django's engine:

* The session's file is never opened through a symlink (``O_NOFOLLOW``, also ``O_CLOEXEC``;
  the storage directory itself may be a symlink). A symlink, a directory, a FIFO or an
  unreadable file at a session's name is an empty session, as a missing file is; Django
  follows the link (and blocks for ever on a FIFO). Saving over a symlink replaces the link,
  never its target. ``exists()`` counts any entry at the name, a dangling symlink too, so a
  fresh key never collides with the exclusive create.
* A file that is not ASCII is an empty session, logged like a file whose signature fails
  ("Session data corrupted" on ``django.security.SuspiciousSession``). Django opens the file
  as ASCII and lets ``UnicodeDecodeError`` out of ``load()``: every request of that user
  fails, and ``clearsessions`` stops at that file.
* ``save()`` encodes the session before touching the disk, so a session that cannot be encoded
  (``TypeError``) leaves no empty placeholder behind. A write that fails leaves nothing behind
  either (its temp file, and the placeholder of an exclusive create, are removed) and keeps
  the session file as it was; as in Django the failure does not raise, but it is logged as a
  warning on the ``csessions`` logger (Django ignores it silently).
* A save puts its temp file in place by swapping the two names (Linux's ``renameat2`` with
  ``RENAME_EXCHANGE``) and unlinking the old content, where Django renames over the session.
  Readers see the old file or the new one either way, but on ext4 a rename over an existing
  file also makes the kernel allocate and start writing the new file at once (its
  ``auto_da_alloc`` heuristic): ~150 µs of a ~500 µs cycle on a disk here, which the swap
  leaves to the kernel's normal writeback. Two consequences: a session deleted while a save
  writes its temp file stays deleted (``UpdateError``; Django's rename brings it back), and
  without ``CSESSIONS_FILE_FSYNC`` a power loss (not a crash of the process) within the
  writeback interval (~5-30 s) may leave a session saved just before it empty, i.e. that
  visitor logged out, where the heuristic usually keeps the old or the new content. Other
  systems and filesystems without the swap get Django's check and rename.
* ``CSESSIONS_FILE_FSYNC = True`` (default False, Django's behaviour) makes saves and deletes
  durable: the file is fsynced before it takes the session's name, and the directory after
  that or after the unlink, so a save or a logout that returned survives a power loss.
* ``clear_expired()`` (``manage.py clearsessions``) also removes the temp files of writers that
  crashed (Django's ``mkstemp`` names and ours), once older than ``temp_file_grace`` seconds
  (a class attribute, one hour) so that a live writer's file is never taken from under it.
  Django decodes every file in Python; here the sweep runs in C (``_core.file_sweep``), on
  ``sweep_threads`` threads (a class attribute; by default one per usable CPU, at most 8):
  each file is read, its signature checked and its ``_session_expiry`` picked out of the
  JSON without building a Python object. Only the files whose verdict needs Python reach
  it, and Django's own methods judge them: an ISO-date expiry, a corrupt file, an mtime
  within 2 seconds of the cutoff (2 days with ``USE_TZ = False``: local time), anything
  unusual. A file is removed only if it is still the file that was judged (same inode, size
  and mtime), so a session saved meanwhile survives. The verdicts are Django's, file for
  file (tested on identical copies of mixed directories). Custom serializers, and
  subclasses that override how a session is decoded or judged, get Django's procedure for
  every file (still read by C, still with the temp files).
* The storage path is cached on the class asking for it, as in Django, but not inherited from
  Django's class (which would hand this engine the path Django's engine cached earlier).
"""

import datetime
import errno
import hashlib
import logging
import os
import tempfile
import time

from django.conf import settings
from django.contrib.sessions.backends import file
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.utils import timezone
from django.utils.encoding import force_bytes

from csessions import _core, signing
from csessions.backends.base import CSessionMixin
from csessions.conf import setting

logger = logging.getLogger("csessions")
corrupt_logger = logging.getLogger("django.security.SuspiciousSession")

EXPIRY_FIELD = b"_session_expiry"
# An mtime this close to the cutoff is judged in Python, with Django's datetimes. The C side
# compares POSIX seconds: with USE_TZ those are Django's UTC datetimes but for the rounding
# (fromtimestamp's microseconds, get_expiry_age's whole seconds); without it Django subtracts
# naive local times, which differ from POSIX seconds by the change of UTC offset between the
# two instants (an hour for DST; a day at the very most, Samoa 2011).
MTIME_MARGIN_UTC = 2
MTIME_MARGIN_LOCAL = 2 * 86400
# file_sweep's statuses (src/fileio.h).
SWEEP_MTIME, SWEEP_STRING, SWEEP_CORRUPT, SWEEP_OTHER = 0, 1, 2, 3
# What clear_expired's C path replaces; a subclass overriding any of them gets Django's path.
SWEEP_REPLACES = ("decode", "load", "get_expiry_age", "_expiry_date", "_last_modification",
                  "key_salt", "delete", "_key_to_file", "__init__")


def durable():
    """CSESSIONS_FILE_FSYNC, read at each call (override_settings applies at once)."""
    return bool(setting("CSESSIONS_FILE_FSYNC", False))


def default_sweep_threads():
    """Threads for clear_expired(): one per CPU this process may use, at most 8. Most of a
    file's cost is the kernel's (open, stat, read), or the disk's on a cold cache."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class SessionStore(CSessionMixin, file.SessionStore):
    temp_file_grace = 3600  # seconds before clear_expired() removes a writer's temp file
    sweep_threads = None  # clear_expired()'s threads; None: default_sweep_threads()

    def __init__(self, session_key=None):
        # file.SessionStore.__init__, then CSessionMixin's in place of SessionBase's.
        self.storage_path = self._get_storage_path()
        self.file_prefix = setting("SESSION_COOKIE_NAME")
        super().__init__(session_key)

    @classmethod
    def _get_storage_path(cls):
        try:
            return cls.__dict__["_storage_path"]
        except KeyError:
            pass
        storage_path = getattr(settings, "SESSION_FILE_PATH", None) or tempfile.gettempdir()
        if not os.path.isdir(storage_path):
            raise ImproperlyConfigured(
                "The session storage path %r doesn't exist. Please set your"
                " SESSION_FILE_PATH setting to an existing directory in which"
                " Django can store session data." % storage_path
            )
        cls._storage_path = storage_path
        return storage_path

    def _last_modification(self, mtime=None):
        if mtime is None:
            mtime = os.stat(self._key_to_file(), follow_symlinks=False).st_mtime
        tz = datetime.timezone.utc if setting("USE_TZ") else None
        return datetime.datetime.fromtimestamp(mtime, tz=tz)

    # Django's hooks keep Django's signatures: the mtime of the file just read (Django stats
    # the name again) is passed only to our own, never to a subclass's override.

    def _expiry_date(self, session_data, mtime=None):
        own = type(self)._last_modification is SessionStore._last_modification
        return session_data.get("_session_expiry") or (
            (self._last_modification(mtime) if own else self._last_modification())
            + datetime.timedelta(seconds=self.get_session_cookie_age())
        )

    def load(self):
        session_data = {}
        try:
            content, mtime = _core.file_read(self._key_to_file())
            # An empty file is the placeholder of a create whose temp file has not landed yet.
            if content:
                try:
                    text = content.decode("ascii")
                except UnicodeDecodeError:
                    # Django lets UnicodeDecodeError out of load(). No signed value is
                    # non-ASCII, so this is a corrupt file like one whose signature fails: an
                    # empty session (judged by mtime below), logged as decode() logs those.
                    corrupt_logger.warning("Session data corrupted")
                else:
                    try:
                        session_data = self.decode(text)
                    except (EOFError, SuspiciousOperation) as e:  # from a subclass's decode()
                        if isinstance(e, SuspiciousOperation):
                            logging.getLogger("django.security.%s" % e.__class__.__name__).warning(
                                str(e)
                            )
                        self.create()
                # Remove expired sessions.
                if type(self)._expiry_date is SessionStore._expiry_date:
                    expiry = self._expiry_date(session_data, mtime)
                else:
                    expiry = self._expiry_date(session_data)
                expiry_age = self.get_expiry_age(expiry=expiry)
                if expiry_age <= 0:
                    session_data = {}
                    self.delete()
                    self.create()
        except (OSError, SuspiciousOperation):
            self._session_key = None
        return session_data

    def save(self, must_create=False):
        if self.session_key is None:
            return self.create()
        # Get the session data now, before we start messing with the file it is stored within.
        session_data = self._get_session(no_load=must_create)
        session_file_name = self._key_to_file()
        data = self.encode(session_data).encode()
        try:
            failed = _core.file_save(session_file_name, data, must_create, durable())
        except FileNotFoundError:
            if not must_create:
                raise UpdateError
            failed = errno.ENOENT  # the directory is gone; Django's write fails silently too
        except FileExistsError:
            if must_create:
                raise CreateError
            raise
        if failed:
            logger.warning(
                "Could not save session file %s: %s",
                session_file_name,
                os.strerror(failed),
            )

    def exists(self, session_key):
        return os.path.lexists(self._key_to_file(session_key))

    def delete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        try:
            _core.file_unlink(self._key_to_file(session_key), durable())
        except OSError:
            pass

    @classmethod
    def clear_expired(cls):
        storage_path = cls._get_storage_path()
        file_prefix = setting("SESSION_COOKIE_NAME")
        judge = cls()
        keys = None
        if judge.serializer in signing.C_SERIALIZERS and all(
            getattr(cls, name) is getattr(SessionStore, name) for name in SWEEP_REPLACES
        ):
            # What django.core.signing.Signer derives from each secret: SHA256(salt "signer" secret).
            salt = force_bytes(judge.key_salt + "signer")
            keys = [
                hashlib.sha256(salt + force_bytes(secret)).digest()
                for secret in [setting("SECRET_KEY"), *setting("SECRET_KEY_FALLBACKS")]
            ]
        # One "now" for the whole sweep (Django's load() asks for it at each file).
        now = timezone.now()
        cutoff = now.timestamp() - judge.get_session_cookie_age()
        margin = MTIME_MARGIN_UTC if setting("USE_TZ") else MTIME_MARGIN_LOCAL
        prefix_len = len(file_prefix)

        def ask(name, mtime, status, value):
            if status == SWEEP_OTHER:
                # Django's clear_expired for this one file: load() removes it if expired.
                session = cls(name[prefix_len:])
                session.create = lambda: None
                session.load()
                return False
            if status == SWEEP_CORRUPT:
                corrupt_logger.warning("Session data corrupted")
            expiry = value if status == SWEEP_STRING else judge._expiry_date({}, mtime)
            return judge.get_expiry_age(modification=now, expiry=expiry) <= 0

        _core.file_sweep(
            storage_path,
            os.fsencode(file_prefix),
            keys,
            EXPIRY_FIELD,
            cutoff - margin,
            cutoff + margin,
            time.time() - cls.temp_file_grace,
            ask,
            cls.sweep_threads or default_sweep_threads(),
        )
