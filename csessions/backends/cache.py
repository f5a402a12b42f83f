"""Drop-in for ``django.contrib.sessions.backends.cache``: same cache, keys and values.

Entries live under Django's ``KEY_PREFIX`` + session key in ``caches[SESSION_CACHE_ALIAS]`` with
the session's expiry age as timeout, and the value is the session dict itself, exactly as Django
stores it (the cache backend pickles it). So each engine reads what the other writes, in both
directions, and switching engines keeps every session. Storing csessions' C-encoded bytes instead
was measured and rejected: the backends pickle whatever they are given, and pickling the dict
costs no more than the C JSON codec does (bench/cache_cycle.py, typical session: pickle dumps +
loads of the dict ~6.3 us, of C JSON bytes ~6.7 us including the codec, of the signed + zlib
encode() ~23 us), so it would only have cost compatibility.

What differs from Django's engine (everything else is Django's code, via subclassing):

* Round trips. ``create()`` is one ``add()``: a new key goes straight to the cache's atomic add,
  which is what guarantees uniqueness in Django's engine too (Django first asks ``exists()``,
  which cannot make a 165-bit random key any more unique). ``save()`` of a loaded session on
  Django's RedisCache, django-redis or PyMemcacheCache is one atomic "store only if the key
  exists" (Redis ``SET XX``, memcached ``replace``) where Django does ``get()`` then ``set()``:
  one round trip instead of two, and no window in which a concurrent ``delete()`` (a logout) is
  undone by the ``set()``. Other backends (and subclasses) get ``has_key()`` + ``set()``; the
  engines never store None, so that is Django's ``get() is not None`` without the transfer.
* A cache that silently stores nothing makes csessions fail fast instead of spinning. Django
  retries ``create()`` 10,000 times whenever ``add()`` returns False, assuming a key collision;
  with a client that swallows errors (django-redis ``IGNORE_EXCEPTIONS``, pymemcache
  ``ignore_exc``, or pymemcache's default during its retry window) and a hung server, every try
  waits out two socket timeouts: over an hour with 0.2 s timeouts. csessions tells the two cases
  apart: when ``add()`` fails it asks whether the key now exists. If so it was a collision and it
  retries as Django does. If not, the cache did not store the session: it retries with a fresh key
  only while the whole ``create()`` has taken under ``UNSTORED_RETRY_SECONDS`` and at most
  ``UNSTORED_TRIES`` times (enough to get past one dead server of a memcached pool), then raises
  Django's RuntimeError, message included. A cache that *raises* fails at once, as in Django, with
  the same exception (Django's engine then raises the client's error, not its RuntimeError).
* Cache failures are logged (Django's cache engine logs nothing): one WARNING on the
  ``csessions`` logger per failing operation (load, create, save, delete, exists and their async
  twins), naming the cache alias, its backend and the exception, and saying what happens to the
  session; ``save()`` creating a session, and ``create()`` checking a key, still log once. A key
  the cache backend refuses as invalid (``InvalidCacheKey``: a junk cookie) is only logged at
  DEBUG, since any client can send one.
"""

import logging
import time

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import cache
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.cache import caches
from django.core.cache.backends.base import InvalidCacheKey

from csessions import _core
from csessions.backends.base import CSessionMixin
from csessions.conf import setting

KEY_PREFIX = cache.KEY_PREFIX

# Django's create(): how many CreateErrors (key collisions) it tolerates, and its error message.
CREATE_TRIES = 10000
CREATE_FAILED = "Unable to create a new session key. It is likely that the cache is unavailable."
# A cache that answered add() with False but holds nothing under the key did not store the
# session: retry with a fresh key at most this many times in all, and only while create() has run
# for less than this many seconds (so a hung server costs about one socket timeout per call made,
# not 10,000 of them).
UNSTORED_TRIES = 10
UNSTORED_RETRY_SECONDS = 0.1

logger = logging.getLogger("csessions")


# ------------------------------------------------------------------------------ atomic updates
# save() of an existing session must not resurrect one deleted meanwhile (UpdateError). Django
# checks with get() and then set()s: two round trips, and a window in which a concurrent delete
# (a logout) is undone. For the backends below, csessions stores with the server's own "only if
# the key exists" instead: one round trip, no window. Each function is the backend's set() with
# that condition (same key, serializer, timeout conversion; read from Django 5.2-6.1 and
# django-redis 5-7) and returns whether the key existed. Exact classes only: a subclass may
# change set(), and then gets Django's has_key() + set().


def _update_redis(cache, key, value, timeout):
    """django.core.cache.backends.redis.RedisCache.set() with SET ... XX."""
    client = cache._cache
    key = cache.make_and_validate_key(key)
    timeout = cache.get_backend_timeout(timeout)
    redis = client.get_client(key, write=True)
    if timeout == 0:  # RedisCache.set() deletes rather than store an expired entry
        return bool(redis.delete(key))
    return bool(redis.set(key, client._serializer.dumps(value), ex=timeout, xx=True))


def _update_django_redis(cache, key, value, timeout):
    """django_redis.cache.RedisCache.set(..., xx=True): DefaultClient's SET ... XX (a timeout
    <= 0 deletes, returning whether the key existed)."""
    return bool(cache.set(key, value, timeout, xx=True))


def _update_pymemcache(cache, key, value, timeout):
    """django.core.cache.backends.memcached.PyMemcacheCache.set() with memcached's replace."""
    key = cache.make_and_validate_key(key)
    return bool(cache._cache.replace(key, value, cache.get_backend_timeout(timeout), noreply=False))


def _django_redis_default_client(cache):
    # DefaultClient and SentinelClient pass xx through; HerdClient drops it, ShardClient is
    # left to Django's way too.
    return type(cache.client).__name__ in ("DefaultClient", "SentinelClient") and type(
        cache.client
    ).__module__.startswith("django_redis.client.")


_UPDATERS = {
    # backend class: (update function, check of the instance's configuration)
    "django.core.cache.backends.redis.RedisCache": (
        _update_redis,
        lambda cache: hasattr(cache._cache, "_serializer") and hasattr(cache._cache, "get_client"),
    ),
    "django.core.cache.backends.memcached.PyMemcacheCache": (
        _update_pymemcache, lambda cache: hasattr(cache._cache, "replace")),
    "django_redis.cache.RedisCache": (_update_django_redis, _django_redis_default_client),
}
_by_class = {}  # backend class -> (update function, check) or None


def atomic_updater(cache):
    """The atomic "store only if present" function for this cache handle, or None."""
    cls = type(cache)
    try:
        entry = _by_class[cls]
    except KeyError:
        entry = _by_class[cls] = _UPDATERS.get(f"{cls.__module__}.{cls.__qualname__}")
    if entry is None:
        return None
    update, usable = entry
    try:
        return update if usable(cache) else None
    except Exception:  # e.g. a client class that cannot be imported: Django's way
        return None


class SessionStore(CSessionMixin, cache.SessionStore):
    cache_key_prefix = KEY_PREFIX

    def __init__(self, session_key=None):
        self._cache = caches[setting("SESSION_CACHE_ALIAS")]
        super().__init__(session_key)

    def _cache_failed(self, operation, exc, outcome):
        """The one log record of a failing public operation. The public methods are thin
        wrappers around ``_create``/``_save``/... which call each other, never the wrappers,
        so an operation that fails inside another one is logged once, by the outer one."""
        backend = type(self._cache)
        detail = getattr(exc, "csessions_detail", None)
        logger.log(
            logging.DEBUG if isinstance(exc, InvalidCacheKey) else logging.WARNING,
            "%s(): session cache %r (%s.%s) failed%s: %s: %s%s",
            operation,
            setting("SESSION_CACHE_ALIAS"),
            backend.__module__,
            backend.__qualname__,
            f"; {outcome}" if outcome else "",
            type(exc).__name__,
            exc,
            f" [{detail}]" if detail else "",
        )

    @staticmethod
    def _unstored(tries, started):
        error = RuntimeError(CREATE_FAILED)
        error.csessions_detail = (
            f"add() of a new session returned False {tries} time(s) in "
            f"{time.monotonic() - started:.3f}s with nothing stored under the key: the cache is not storing"
        )
        return error

    # ---------------------------------------------------------------------------- keys

    def _get_new_session_key(self):
        # No exists() round trip: create() hands the key to the cache's atomic add(), which
        # detects a collision anyway (and it would take ~2**82 keys to expect one). A
        # subclass's own exists() is still asked, as Django asks it.
        if type(self).exists is SessionStore.exists:
            return _core.new_session_key()
        return super()._get_new_session_key()

    async def _aget_new_session_key(self):
        if type(self).aexists is SessionStore.aexists:
            return _core.new_session_key()
        return await super()._aget_new_session_key()

    # ---------------------------------------------------------------------------- sync API

    def load(self):
        try:
            session_data = self._cache.get(self.cache_key)
        except Exception as exc:
            # Django's behaviour: any error is a miss (#17810: memcached raises on invalid keys).
            self._cache_failed("load", exc, "the session is loaded as empty")
            session_data = None
        if session_data is not None:
            return session_data
        self._session_key = None
        return {}

    def create(self):
        try:
            self._create()
        except Exception as exc:
            self._cache_failed("create", exc, "no session was created")
            raise

    def save(self, must_create=False):
        try:
            self._save(must_create)
        except (CreateError, UpdateError):
            raise
        except Exception as exc:
            self._cache_failed("save", exc, "the session was not saved")
            raise

    def exists(self, session_key):
        try:
            return self._exists(session_key)
        except Exception as exc:
            self._cache_failed("exists", exc, "")
            raise

    def delete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        try:
            self._cache.delete(self.cache_key_prefix + session_key)
        except Exception as exc:
            self._cache_failed("delete", exc, "the session was not deleted")
            raise

    def _hook(self, name, inner):
        """The public method `name` where a subclass overrides it (Django's create, save and
        their async twins call each other's public methods); else `inner`, the same work
        without the public method's failure logging (logged once, by the caller)."""
        if getattr(type(self), name) is getattr(SessionStore, name):
            return inner
        return getattr(self, name)

    def _create(self):
        started = time.monotonic()
        unstored = 0
        for _ in range(CREATE_TRIES):
            self._session_key = self._get_new_session_key()
            try:
                self._hook("save", self._save)(must_create=True)
            except CreateError:
                if self._hook("exists", self._exists)(self._session_key):
                    continue  # a real collision: the key is taken, try another (Django)
                unstored += 1
                if unstored < UNSTORED_TRIES and time.monotonic() - started < UNSTORED_RETRY_SECONDS:
                    continue
                raise self._unstored(unstored, started) from None
            self.modified = True
            return
        raise RuntimeError(CREATE_FAILED)

    def _save(self, must_create):
        if self.session_key is None:
            return self._hook("create", self._create)()
        cache_key = self.cache_key
        if must_create:
            func = self._cache.add
        elif hasattr(self, "_session_cache") and (update := atomic_updater(self._cache)):
            # Loaded (so storing it needs no load() that could reset the key): one round trip.
            if not update(self._cache, cache_key, self._get_session(), self.get_expiry_age()):
                raise UpdateError
            return
        elif self._cache.has_key(cache_key):  # Django: get(cache_key) is not None
            func = self._cache.set
        else:
            raise UpdateError
        result = func(cache_key, self._get_session(no_load=must_create), self.get_expiry_age())
        if must_create and not result:
            raise CreateError

    def _exists(self, session_key):
        return bool(session_key) and (self.cache_key_prefix + session_key) in self._cache

    # ---------------------------------------------------------------------------- async API

    async def aload(self):
        try:
            session_data = await self._cache.aget(await self.acache_key())
        except Exception as exc:
            self._cache_failed("aload", exc, "the session is loaded as empty")
            session_data = None
        if session_data is not None:
            return session_data
        self._session_key = None
        return {}

    async def acreate(self):
        try:
            await self._acreate()
        except Exception as exc:
            self._cache_failed("acreate", exc, "no session was created")
            raise

    async def asave(self, must_create=False):
        try:
            await self._asave(must_create)
        except (CreateError, UpdateError):
            raise
        except Exception as exc:
            self._cache_failed("asave", exc, "the session was not saved")
            raise

    async def aexists(self, session_key):
        try:
            return await self._aexists(session_key)
        except Exception as exc:
            self._cache_failed("aexists", exc, "")
            raise

    async def adelete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        try:
            await self._cache.adelete(self.cache_key_prefix + session_key)
        except Exception as exc:
            self._cache_failed("adelete", exc, "the session was not deleted")
            raise

    async def _acreate(self):
        started = time.monotonic()
        unstored = 0
        for _ in range(CREATE_TRIES):
            self._session_key = await self._aget_new_session_key()
            try:
                await self._hook("asave", self._asave)(must_create=True)
            except CreateError:
                if await self._hook("aexists", self._aexists)(self._session_key):
                    continue
                unstored += 1
                if unstored < UNSTORED_TRIES and time.monotonic() - started < UNSTORED_RETRY_SECONDS:
                    continue
                raise self._unstored(unstored, started) from None
            self.modified = True
            return
        raise RuntimeError(CREATE_FAILED)

    async def _asave(self, must_create):
        if self.session_key is None:
            return await self._hook("acreate", self._acreate)()
        cache_key = await self.acache_key()
        if must_create:
            func = self._cache.aadd
        elif hasattr(self, "_session_cache") and (update := atomic_updater(self._cache)):
            data, age = await self._aget_session(), await self.aget_expiry_age()
            # As the backends' own async methods do (BaseCache.aset()).
            if not await sync_to_async(update, thread_sensitive=True)(self._cache, cache_key, data, age):
                raise UpdateError
            return
        elif await self._cache.ahas_key(cache_key):
            func = self._cache.aset
        else:
            raise UpdateError
        result = await func(
            cache_key,
            await self._aget_session(no_load=must_create),
            await self.aget_expiry_age(),
        )
        if must_create and not result:
            raise CreateError

    async def _aexists(self, session_key):
        return bool(session_key) and await self._cache.ahas_key(self.cache_key_prefix + session_key)
