"""Cached database sessions: Django's ``cached_db`` engine with the codec and keys in C.

    SESSION_ENGINE = "csessions.backends.cached_db"

Loads, saves, ``exists()`` (answered from the cache first), deletes and the logging of cache
failures are Django's ``cached_db`` code; the database side is ``csessions.backends.db``, so
``clear_expired()`` deletes in bounded batches without loading rows (see that module and its
``CSESSIONS_CLEAR_BATCH`` setting). Same model, table, cache keys (``KEY_PREFIX``) and stored
values as Django's engine: either engine reads what the other wrote.
"""

from django.contrib.sessions.backends import cached_db
from django.core.cache import caches

from csessions.backends import db
from csessions.conf import setting

KEY_PREFIX = cached_db.KEY_PREFIX


# MRO: this class, csessions' db SessionStore (clear_expired), CSessionMixin (codec, keys,
# __init__), Django's cached_db SessionStore (everything cache-related), Django's db
# SessionStore. Neither csessions class may define a method Django's cached_db class defines
# (tests/test_db_engines.py checks), __init__ aside.
class SessionStore(db.SessionStore, cached_db.SessionStore):
    def __init__(self, session_key=None):
        # Django's cached_db __init__ (same in 5.2, 6.0 and 6.1): CSessionMixin.__init__ does
        # not chain to it. An unknown SESSION_CACHE_ALIAS raises InvalidCacheBackendError here.
        self._cache = caches[setting("SESSION_CACHE_ALIAS")]
        super().__init__(session_key)
