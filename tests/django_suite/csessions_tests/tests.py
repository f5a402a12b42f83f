"""Django's per-engine session test classes with ``backend`` set to the csessions engine.

Each class subclasses Django's class for the same engine and changes nothing but the engine,
so it runs exactly Django's tests (same skips and expected failures). run.py checks that every
test here has the same outcome as in the Django class it subclasses.

Importing Django's module (not its classes) keeps Django's originals from being collected a
second time under this package's name. Engines whose module does not exist define nothing; an
engine module that exists but fails to import is an error, not a skip.
"""

import importlib
import os

from django.test import SimpleTestCase

from sessions_tests import tests as dj

from . import PREFIX, is_present, module_name


def _engine(name):
    return importlib.import_module(module_name(name)) if is_present(name) else None


# run.py asks for the csessions of the checkout it lives in (the in-place build), not some
# installed copy.
_root = os.environ.get("CSESSIONS_SUITE_EXPECT_ROOT")
if _root and PREFIX.startswith("csessions."):
    import csessions

    _where = os.path.realpath(os.path.dirname(csessions.__file__))
    if _where != os.path.realpath(os.path.join(_root, "csessions")):
        raise ImportError(f"csessions imported from {_where}, expected the checkout at {_root}")


if db := _engine("db"):

    class DatabaseSessionTests(dj.DatabaseSessionTests):
        backend = db.SessionStore
        session_engine = db.__name__

    class DatabaseSessionWithTimeZoneTests(dj.DatabaseSessionWithTimeZoneTests):
        backend = db.SessionStore
        session_engine = db.__name__


if cached_db := _engine("cached_db"):

    class CacheDBSessionTests(dj.CacheDBSessionTests):
        backend = cached_db.SessionStore

    class CacheDBSessionWithTimeZoneTests(dj.CacheDBSessionWithTimeZoneTests):
        backend = cached_db.SessionStore


class FreshStoragePath:
    """Django's FileSessionTests.setUp forgets the storage path the engine caches on its class
    (``del self.backend._storage_path``), assuming the attribute lives on the backend class
    itself. An engine that subclasses Django's file SessionStore also sees the path Django's
    class caches (e.g. when Django's test_clearsessions_command runs Django's file engine): a
    stale, deleted directory, and an AttributeError on that ``del``. Forget it everywhere in the
    MRO first, so each test starts as it does in Django's own run."""

    def setUp(self):
        for cls in self.backend.__mro__:
            if "_storage_path" in vars(cls):
                delattr(cls, "_storage_path")
        super().setUp()


if file := _engine("file"):

    class FileSessionTests(FreshStoragePath, dj.FileSessionTests):
        backend = file.SessionStore

    class FileSessionPathLibTests(FreshStoragePath, dj.FileSessionPathLibTests):
        backend = file.SessionStore


if cache := _engine("cache"):

    class CacheSessionTests(dj.CacheSessionTests):
        backend = cache.SessionStore


if signed_cookies := _engine("signed_cookies"):

    class CookieSessionTests(dj.CookieSessionTests):
        backend = signed_cookies.SessionStore


if shm := _engine("shm"):

    class ShmSessionTests(dj.SessionTestsMixin, SimpleTestCase):
        backend = shm.SessionStore
