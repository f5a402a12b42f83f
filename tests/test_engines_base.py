"""What every csessions engine shares with Django's SessionBase."""

import importlib

import pytest
from django.contrib.sessions.backends.base import SessionBase
from django.test import override_settings

from csessions.serializers import JSONSerializer

ENGINES = [
    (f"csessions.backends.{name}", f"django.contrib.sessions.backends.{name}")
    for name in ("signed_cookies", "db", "cached_db", "cache")
]


@pytest.mark.parametrize("ours, django", ENGINES)
def test_fresh_store_has_djangos_attributes(ours, django):
    # CSessionMixin.__init__ replaces SessionBase.__init__: a Django release that adds state
    # there must show up here.
    mine = importlib.import_module(ours).SessionStore("k" * 32)
    theirs = importlib.import_module(django).SessionStore("k" * 32)
    assert vars(mine) == vars(theirs)
    assert type(mine).__qualname__ == "SessionStore"  # key_salt depends on it


@pytest.mark.parametrize("ours, django", ENGINES)
def test_serializer_and_cookie_age_follow_settings(ours, django):
    store = importlib.import_module(ours).SessionStore
    with override_settings(SESSION_SERIALIZER="csessions.serializers.JSONSerializer",
                           SESSION_COOKIE_AGE=77):
        s = store()
        assert s.serializer is JSONSerializer
        assert s.get_session_cookie_age() == 77
    s = store()
    assert s.serializer is importlib.import_module("django.core.signing").JSONSerializer
    assert s.get_session_cookie_age() == SessionBase().get_session_cookie_age()


def _flags_after(store, steps):
    """(accessed, modified) after each step on a fresh store over a saved session."""
    seen = []
    for step in steps:
        s = store(KEY_HOLDER[store])
        for op in step:
            try:
                op(s)
            except KeyError:
                pass
        seen.append((s.accessed, s.modified))
    return seen


KEY_HOLDER = {}
STEPS = [
    [lambda s: s.get("a")], [lambda s: s.get("zz", 1)], [lambda s: "a" in s],
    [lambda s: "zz" in s], [lambda s: s["a"]], [lambda s: s["zz"]],
    [lambda s: s.__setitem__("b", 2)], [lambda s: s.get("a"), lambda s: s.__setitem__("a", 3)],
    [lambda s: s.__setitem__("a", 3), lambda s: s.get("a")], [],
] + [  # once loaded, with the flags reset (as a test or a middleware may do)
    [lambda s: s.get("a"), lambda s: setattr(s, "accessed", False),
     lambda s: setattr(s, "modified", False), op]
    for op in (lambda s: s.get("a"), lambda s: "a" in s, lambda s: s["a"],
               lambda s: s.__setitem__("a", 4))
]


@pytest.mark.parametrize("ours, django", [
    (f"csessions.backends.{name}", f"django.contrib.sessions.backends.{name}")
    for name in ("signed_cookies", "cache")
] + [("csessions.backends.shm", "django.contrib.sessions.backends.cache")])
def test_accessors_behave_as_djangos(ours, django):
    # CSessionMixin's get/[]/in/[]= (every engine's; these need no database) read the loaded
    # dict without the _session property; what they return and the accessed/modified flags
    # they leave must stay Django's.
    stores = [importlib.import_module(m).SessionStore for m in (ours, django)]
    for store in stores:
        s = store()
        s["a"] = 1
        s.save()
        KEY_HOLDER[store] = s.session_key
    assert _flags_after(stores[0], STEPS) == _flags_after(stores[1], STEPS)
    mine, theirs = (store(KEY_HOLDER[store]) for store in stores)
    assert (mine.get("a"), mine["a"], "a" in mine, mine.get("zz", 5)) == \
        (theirs.get("a"), theirs["a"], "a" in theirs, theirs.get("zz", 5)) == (1, 1, True, 5)


def test_subclass_with_its_own_session_property_keeps_djangos_accessors():
    from csessions.backends.cache import SessionStore

    class Traced(SessionStore):
        reads = 0

        @property
        def _session(self):
            type(self).reads += 1
            return self._get_session()

    s = Traced()
    s["x"] = 1
    assert s.get("x") == 1 and s["x"] == 1 and "x" in s
    assert Traced.reads == 4
    assert SessionStore.get is not SessionBase.get  # the fast path is still the default


@pytest.mark.parametrize("ours, django", ENGINES)
def test_session_key_is_validated_as_djangos(ours, django):
    # __init__ checks the key inline unless a subclass has its own _validate_session_key.
    for key in ("k" * 8, "k" * 7, "", None, "k" * 40):
        mine = importlib.import_module(ours).SessionStore(key)
        theirs = importlib.import_module(django).SessionStore(key)
        assert (mine.session_key, mine._session_key) == (theirs.session_key, theirs._session_key)
        mine._session_key = "short"
        assert mine.session_key is None
    with pytest.raises(AttributeError):
        mine.session_key = "k" * 32  # read-only, as SessionBase's


def test_subclass_with_its_own_key_validation_is_obeyed():
    from csessions.backends.cache import SessionStore

    class Lenient(SessionStore):
        def _validate_session_key(self, key):
            return bool(key)

    assert Lenient("abc").session_key == "abc"
    assert SessionStore("abc").session_key is None


def test_a_mixin_before_ours_with_its_own_session_property_keeps_djangos_accessors():
    from csessions.backends.cache import SessionStore

    class Traced:
        reads = 0

        @property
        def _session(self):
            Traced.reads += 1
            return self._get_session()

    class Store(Traced, SessionStore):
        pass

    s = Store()
    s["x"] = 1
    assert s.get("x") == 1 and s["x"] == 1 and "x" in s
    assert Traced.reads == 4


def test_subclass_with_its_own_session_key_property_gets_the_key_through_it():
    from csessions.backends.cache import SessionStore

    class Upper(SessionStore):
        def _set_key(self, value):
            self._SessionBase__session_key = value.upper() if value else None

        _session_key = property(SessionStore.session_key.fget, _set_key)

    assert Upper("abcdefgh").session_key == "ABCDEFGH"


def test_subclass_with_its_own_public_session_key_is_asked_on_first_access():
    # SessionBase._get_session loads when session_key (the public property) is not None;
    # the fast accessors read the key without it, so such a class must not get them.
    from csessions.backends.cache import SessionStore as Ours
    from django.contrib.sessions.backends.cache import SessionStore as Theirs

    loads = []
    for base in (Ours, Theirs):
        class Announced(base):
            session_key = property(lambda self: "announced-elsewhere")

            def load(self):
                loads.append(base)
                return super().load()

        Announced().get("x")
    assert loads == [Ours, Theirs]


def test_a_mixin_s_own_accessors_are_kept():
    from csessions.backends.cache import SessionStore

    class Tagged:
        @property
        def _session(self):
            return self._get_session()

        def __getitem__(self, key):
            return "mixin:" + key

    class Store(Tagged, SessionStore):
        pass

    class Sub(Store):
        pass

    for store in (Store, Sub):
        s = store()
        s["a"] = "x"
        assert s["a"] == "mixin:a" and s.get("a") == "x"
