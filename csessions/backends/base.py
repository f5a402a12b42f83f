"""What every csessions engine shares: Django's SessionBase with its codec and keys in C.

Engines list ``CSessionMixin`` before Django's own ``SessionStore`` of the same engine, so
everything not named here stays Django's code, exact across Django versions.
"""

import logging
import operator

from django.contrib.sessions.backends.base import SessionBase
from django.utils.module_loading import import_string

from csessions import _core, signing
from csessions.conf import _resolved, setting

# SessionBase.__init__ imports SESSION_SERIALIZER on every instantiation (~1 us); the
# import is cached here by the setting's value, so a changed setting is still followed.
# A dict, not lru_cache: a subscript costs less than its call, and the setting takes few values.
_serializers = {}
_MISSING = object()


class CSessionMixin:
    def __init__(self, session_key=None):
        # SessionBase.__init__ (identical in Django 5.2, 6.0 and 6.1) with a cached import;
        # tests/test_engines_base.py checks the attributes still match Django's.
        if self._cs_plain_key:  # SessionBase._set_session_key and _validate_session_key inline
            self._SessionBase__session_key = (
                session_key if session_key and len(session_key) >= 8 else None)
        else:
            self._session_key = session_key
        prefetch = self._cs_prefetch
        if prefetch and session_key:
            prefetch[0](session_key)
        self.accessed = False
        self.modified = False
        try:  # LazySettings' cache, without setting()'s Python call (see conf.py)
            path = _resolved["SESSION_SERIALIZER"]
        except KeyError:
            path = setting("SESSION_SERIALIZER")
        try:
            self.serializer = _serializers[path]
        except KeyError:
            self.serializer = _serializers.setdefault(path, import_string(path))

    # SessionBase's properties over its private __session_key, read by a C getter instead of
    # SessionBase._get_session_key's Python call (several a request).
    session_key = property(operator.attrgetter("_SessionBase__session_key"))
    _session_key = property(session_key.fget, SessionBase._set_session_key)
    # [a C callable] given the key of every instance made with one, to start fetching its
    # entry from the store ahead of load() (shm: the bucket; see shm.store()). A list filled
    # and emptied in place: assigning a class attribute invalidates the interpreter's
    # attribute caches of the class and every subclass (and from Python 3.13, after 1,000
    # such changes, disables them for the class for good).
    _cs_prefetch = ()
    # The fast paths here and in the engines skip calls that a subclass (or a mixin listed
    # before ours) may change; a class that changes one gets the plain calls. Set per class,
    # compared as resolved through the MRO.
    _cs_plain_key = True  # __init__ may check the key inline
    _cs_plain_session = True  # the dict and key may be read without _session, _get_session,
    # get or session_key

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mine = CSessionMixin.__dict__
        cls._cs_plain_key = (cls._validate_session_key is SessionBase._validate_session_key
                             and cls._session_key is mine["_session_key"])
        if cls._session is not mine["_session"] or cls.session_key is not mine["session_key"]:
            # A class that changes how the dict or the key is reached gets SessionBase's
            # accessors back, which go through its _session; see get() below.
            for name in ("__contains__", "__getitem__", "__setitem__", "get"):
                if getattr(cls, name) is mine[name]:  # not its own, nor a mixin's
                    setattr(cls, name, getattr(SessionBase, name))
        cls._cs_plain_session = all(getattr(cls, name) is mine[name]
                                    for name in ("_session", "_get_session", "get", "session_key"))

    def _get_session(self, no_load=False):
        # SessionBase._get_session (identical in Django 5.2, 6.0 and 6.1), except that the
        # first access does not raise and catch AttributeError in Python (~1 us a request):
        # getattr with a default looks the attribute up without making the exception.
        self.accessed = True
        cache = getattr(self, "_session_cache", _MISSING)
        return _fill_cache(self, self.session_key, no_load) if cache is _MISSING else cache

    _session = property(_get_session)

    # SessionBase's accessors reach the dict through the _session property: a Python call
    # each, a fifth of a shm request. These do what _get_session does: once the dict is
    # loaded, accessed = True and the cached dict; before, the rest of _get_session as a plain
    # function (the property's call from C costs more), given the key without session_key's
    # call. Classes whose _session or session_key is not ours get SessionBase's accessors
    # instead (__init_subclass__), so this is what _session does.

    def __contains__(self, key):
        self.accessed = True
        cache = getattr(self, "_session_cache", _MISSING)
        if cache is _MISSING:
            cache = _fill_cache(self, self._SessionBase__session_key)
        return key in cache

    def __getitem__(self, key):
        self.accessed = True
        cache = getattr(self, "_session_cache", _MISSING)
        if cache is _MISSING:
            cache = _fill_cache(self, self._SessionBase__session_key)
        return cache[key]

    def __setitem__(self, key, value):
        self.accessed = True
        cache = getattr(self, "_session_cache", _MISSING)
        if cache is _MISSING:
            cache = _fill_cache(self, self._SessionBase__session_key)
        cache[key] = value
        self.modified = True

    def get(self, key, default=None):
        self.accessed = True
        cache = getattr(self, "_session_cache", _MISSING)
        if cache is _MISSING:
            cache = _fill_cache(self, self._SessionBase__session_key)
        return cache.get(key, default)

    def get_session_cookie_age(self):
        return setting("SESSION_COOKIE_AGE")

    def encode(self, session_dict):
        return signing.dumps_for_store(session_dict, self.key_salt, self.serializer)

    def decode(self, session_data):
        try:
            return signing.loads(session_data, salt=self.key_salt, serializer=self.serializer)
        except signing.BadSignature:
            logging.getLogger("django.security.SuspiciousSession").warning("Session data corrupted")
        except Exception:
            pass  # Django's behaviour: anything else undecodable is an empty session.
        return {}

    def _get_new_session_key(self):
        while True:
            session_key = _core.new_session_key()
            if not self.exists(session_key):
                return session_key

    async def _aget_new_session_key(self):
        while True:
            session_key = _core.new_session_key()
            if not await self.aexists(session_key):
                return session_key


def _fill_cache(session, session_key, no_load=False):
    """The rest of _get_session when the dict is not loaded yet."""
    if session_key is None or no_load:
        cache = session._session_cache = {}
    else:
        cache = session._session_cache = session.load()
    return cache
