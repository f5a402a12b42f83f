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
