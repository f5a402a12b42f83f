"""csessions.backends.signed_cookies.SessionStore against Django's signed_cookies engine.

Cookies interoperate both ways, bad cookies behave exactly like Django's (empty session,
``modified`` set, no exception), and, beyond Django, oversized cookies are refused
(SessionCookieTooLarge) or logged (CSESSIONS_COOKIE_OVERSIZE = "warn").
"""

import asyncio
import base64
import logging
import random
import zlib
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.sessions.backends.signed_cookies import SessionStore as DjStore
from django.contrib.sessions.middleware import SessionMiddleware
from django.core import signing as dj
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from csessions.backends.signed_cookies import SessionStore as CsStore
from csessions.exceptions import SessionCookieTooLarge

SALT = "django.contrib.sessions.backends.signed_cookies"
T0 = 1767225600.0
LIMIT = 4096


def at(t):
    return mock.patch("time.time", return_value=float(t))


def make_cookie(store_class, data, now=T0):
    store = store_class()
    store.update(data)
    with at(now):
        store.save()
    return store.session_key


def state(store):
    """Load the session (as the middleware would, lazily) and snapshot what Django exposes."""
    try:
        items = dict(store.items())
    except Exception as e:  # the engines must never raise here; report it as a value
        items = ("raised", type(e).__name__, str(e))
    return {
        "items": items,
        "modified": store.modified,
        "accessed": store.accessed,
        "session_key": store.session_key,
        "is_empty": store.is_empty(),
    }


def compare_engines(cookie, now=T0, dj_class=DjStore, cs_class=CsStore):
    with at(now):
        expected = state(dj_class(cookie))
        got = state(cs_class(cookie))
    if not isinstance(expected["items"], tuple):
        assert not isinstance(got["items"], tuple), f"csessions raised for cookie {cookie!r:.200}: {got['items']}"
    assert got == expected, f"cookie {cookie!r:.200}"
    return got


# ------------------------------------------------------------------------------------------
# Interop
# ------------------------------------------------------------------------------------------

SESSIONS = [
    {},
    {"a": 1},
    {"cart": [1, 2, 3]},
    {"_auth_user_id": "42", "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
     "_auth_user_hash": "0" * 64},
    {"k": "x" * 2000},  # compresses well
    {"unicode": "é\u2028\U0001f600\x00\x7f", "nested": {"l": [None, True, False, 1.5, -0.0, 2**70]}},
    {"_session_expiry": "2030-01-01T00:00:00+00:00", "n": 1},
    {"_session_expiry": 0, "float": 1e-300},
]


@pytest.mark.parametrize("data", SESSIONS, ids=range(len(SESSIONS)))
def test_cookies_identical_and_interoperable(data, strict_equal):
    dj_cookie = make_cookie(DjStore, data)
    cs_cookie = make_cookie(CsStore, data)
    assert cs_cookie == dj_cookie
    with at(T0 + 60):
        cs_store = CsStore(dj_cookie)
        strict_equal(dict(cs_store.items()), data)
        assert cs_store.modified is False
        dj_store = DjStore(cs_cookie)
        strict_equal(dict(dj_store.items()), data)
    compare_engines(dj_cookie, now=T0 + 60)


def test_roundtrip_modify_and_resave(strict_equal):
    cookie = make_cookie(DjStore, {"count": 1})
    with at(T0 + 10):
        s = CsStore(cookie)
        s["count"] += 1
        s["new"] = ["é", 2]
        assert s.modified
        s.save()
        new_cookie = s.session_key
        d = DjStore(cookie)
        d["count"] += 1
        d["new"] = ["é", 2]
        d.save()
        assert new_cookie == d.session_key
    with at(T0 + 20):
        strict_equal(dict(DjStore(new_cookie).items()), {"count": 2, "new": ["é", 2]})


session_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=10), c, max_size=4)),
    max_leaves=15,
)


@hsettings(max_examples=100)
@given(
    data=st.dictionaries(st.text(max_size=20), session_values, max_size=6),
    now=st.floats(min_value=1e9, max_value=3e9),
)
def test_interop_property(data, now, strict_equal):
    with at(now):
        expected = dj.dumps(data, compress=True, salt=SALT)
    dj_cookie = make_cookie(DjStore, data, now)
    assert dj_cookie == expected
    cs_cookie = make_cookie(CsStore, data, now)
    assert cs_cookie == dj_cookie
    decoded = dj.loads(dj_cookie, salt=SALT)
    with at(now + 1):
        strict_equal(dict(CsStore(dj_cookie).items()), decoded)
        strict_equal(dict(DjStore(cs_cookie).items()), decoded)


# ------------------------------------------------------------------------------------------
# Bad cookies: empty session, modified=True, never an exception; exactly like Django
# ------------------------------------------------------------------------------------------

def _valid_cookie():
    return make_cookie(DjStore, {"user": "42", "cart": [1, 2, 3]})


def _valid_compressed_cookie():
    return make_cookie(DjStore, {"user": "42", "blob": "ab" * 300})


@pytest.mark.parametrize("make", [_valid_cookie, _valid_compressed_cookie], ids=["plain", "compressed"])
def test_tampered_cookies(make):
    cookie = make()
    payload, ts, sig = cookie.split(":")
    variants = []
    for part_start, part in ((0, payload), (len(payload) + 1, ts), (len(payload) + len(ts) + 2, sig)):
        for i in sorted({0, 1, len(part) // 2, len(part) - 1}):
            pos = part_start + i
            for c in ("A", "z", "0", "-", "_", ".", ":", "é"):
                if cookie[pos] != c:
                    variants.append(cookie[:pos] + c + cookie[pos + 1 :])
    variants.append(cookie.swapcase())
    variants.append(f"{payload}:{ts}:{sig[::-1]}")
    variants.append(f"{payload}:{ts}")
    variants.append(f"{payload}::{sig}")
    variants.append(f"{payload}:{ts}:{sig}:{sig}")
    variants.append(f"{payload}:{ts}:{sig}:")
    variants.append(f".{payload}:{ts}:{sig}" if not payload.startswith(".") else f"{payload[1:]}:{ts}:{sig}")
    for v in variants:
        got = compare_engines(v, now=T0 + 1)
        assert got["items"] == {} and got["modified"] is True


@pytest.mark.parametrize("make", [_valid_cookie, _valid_compressed_cookie], ids=["plain", "compressed"])
def test_truncated_cookies(make):
    cookie = make()
    for i in range(len(cookie)):
        compare_engines(cookie[:i], now=T0 + 1)
        compare_engines(cookie[i:], now=T0 + 1)


def test_expiry_uses_session_cookie_age():
    cookie = _valid_cookie()  # signed at T0 (an integral second)
    age = settings.SESSION_COOKIE_AGE
    for dt, expired in ((0, False), (age - 1, False), (age, False), (age + 0.5, True), (age + 1, True),
                        (10 * age, True), (-100, False)):
        got = compare_engines(cookie, now=T0 + dt)
        assert (got["items"] == {}) is expired, dt
        assert got["modified"] is expired, dt
    with override_settings(SESSION_COOKIE_AGE=10):
        for dt, expired in ((10, False), (10.001, True), (11, True)):
            got = compare_engines(cookie, now=T0 + dt)
            assert (got["items"] == {}) is expired, dt


def test_expiry_hook_and_custom_expiry_ignored():
    """get_session_cookie_age() is the hook; set_expiry() values are not used (Django #19201)."""

    class DjShort(DjStore):
        def get_session_cookie_age(self):
            return 5

    class CsShort(CsStore):
        def get_session_cookie_age(self):
            return 5

    cookie = _valid_cookie()
    for dt in (4, 5, 5.5, 100):
        compare_engines(cookie, now=T0 + dt, dj_class=DjShort, cs_class=CsShort)
    got = compare_engines(cookie, now=T0 + 6, dj_class=DjShort, cs_class=CsShort)
    assert got["items"] == {}

    s = CsStore()
    s["x"] = 1
    s.set_expiry(1)
    with at(T0):
        s.save()
    got = compare_engines(s.session_key, now=T0 + 100)
    assert got["items"]["x"] == 1


GARBAGE_COOKIES = [
    None, "", " ", "a", "short", "12345678", "\x00" * 10, "é" * 10, "\U0001f600" * 10, ":" * 10,
    "..::", "..::....", ":::::::::", "a:b:c", "a:b:c:d:e", "eyJhIjoxfQ:1vb66i:", "." * 100,
    "x" * 100_000, ":" * 100_000, "a:" * 50_000, "é" * 100_000, "\t\n\r" * 5, "sessionid=abc; x=y",
    "eyJhIjoxfQ:1vb66i:3-BgNXBbXuAHQs_ILt-eLXkNnUGreyIM_a77sYxZ-M4",  # another salt/key
    "\ud800" * 10,
]


@pytest.mark.parametrize("cookie", GARBAGE_COOKIES, ids=range(len(GARBAGE_COOKIES)))
def test_garbage_cookies(cookie):
    got = compare_engines(cookie)
    assert got["items"] == {}


def _sign(payload, ts):
    return dj.Signer(salt=SALT).sign(f"{payload}:{ts}")


def _b64(b):
    return dj.b64_encode(b).decode()


SIGNED_GARBAGE = [
    ("", "1vb66i"), ("!!!", "1vb66i"), (_b64(b"{bad"), "1vb66i"), (_b64(b"[1,2]"), "1vb66i"),
    (_b64(b'"str"'), "1vb66i"), (_b64(b"null"), "1vb66i"), (_b64(b"1e400"), "1vb66i"),
    (_b64(b'{"a":1}'), ""), (_b64(b'{"a":1}'), "!"), (_b64(b'{"a":1}'), "-"), (_b64(b'{"a":1}'), "z" * 30),
    ("." + _b64(b"not zlib"), "1vb66i"), ("." + _b64(zlib.compress(b"{bad")), "1vb66i"),
    ("." + _b64(zlib.compress(b'{"a":1}')[:-2]), "1vb66i"), (".", "1vb66i"),
    (_b64(b"[" * 100_000), "1vb66i"),
]


@pytest.mark.parametrize("payload,ts", SIGNED_GARBAGE, ids=range(len(SIGNED_GARBAGE)))
def test_validly_signed_garbage_cookies(payload, ts):
    """A cookie whose MAC is valid but whose content is not a session dict (or not decodable).

    (A JSON non-dict loads "successfully" in Django too, and then fails in items(): same here.)
    """
    compare_engines(_sign(payload, ts), now=T0)


@hsettings(max_examples=150)
@given(cookie=st.one_of(st.text(), st.text(alphabet="abcXYZ019-_.:=", min_size=8)))
def test_garbage_cookies_property(cookie):
    compare_engines(cookie)


# ------------------------------------------------------------------------------------------
# Other engine methods behave like Django's
# ------------------------------------------------------------------------------------------


def test_methods_match_django():
    cookie = _valid_cookie()
    with at(T0 + 5):
        d, c = DjStore(cookie), CsStore(cookie)
        assert c.exists(cookie) is d.exists(cookie) is False
        assert c.exists() is False
        assert c.get_expiry_age() == d.get_expiry_age()
        c.cycle_key()
        d.cycle_key()
        assert c.session_key == d.session_key
        assert c.modified == d.modified
        c.delete()
        d.delete()
        assert c.session_key == d.session_key is None
        assert dict(c.items()) == dict(d.items()) == {}
        assert c.modified and d.modified
        c2, d2 = CsStore(cookie), DjStore(cookie)
        c2.flush()
        d2.flush()
        assert c2.session_key == d2.session_key is None
        assert c2.is_empty() and d2.is_empty()
    CsStore.clear_expired()
    assert CsStore.__name__ == "SessionStore" and CsStore.__qualname__ == "SessionStore"
    assert issubclass(CsStore, DjStore)


def test_async_methods_match_django():
    cookie = _valid_cookie()

    async def scenario(cls):
        s = cls(cookie)
        loaded = await s.aload()
        await s.aset("z", [1])
        await s.asave()
        key_after_save = s.session_key
        await s.acycle_key()
        exists = await s.aexists()
        await s.adelete()
        return loaded, key_after_save, exists, s.session_key

    with at(T0 + 7):
        assert asyncio.run(scenario(CsStore)) == asyncio.run(scenario(DjStore))


def test_custom_serializer_goes_through_django():
    import ast

    class ReprSerializer:
        def dumps(self, obj):
            return repr(obj).encode()

        def loads(self, data):
            return ast.literal_eval(data.decode())

    class DjRepr(DjStore):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.serializer = ReprSerializer

    class CsRepr(CsStore):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.serializer = ReprSerializer

    data = {"set": {1, 2}, "tuple": (1, "é")}
    cookie = make_cookie(CsRepr, data)
    assert cookie == make_cookie(DjRepr, data)
    with at(T0 + 1):
        assert dict(CsRepr(cookie).items()) == data
        assert dict(DjRepr(cookie).items()) == data


def test_middleware_roundtrip():
    def view(request):
        request.session["n"] = request.session.get("n", 0) + 1
        return HttpResponse(str(request.session["n"]))

    mw = SessionMiddleware(view)
    assert mw.SessionStore is CsStore
    factory = RequestFactory()
    response = mw(factory.get("/"))
    cookie = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert DjStore(cookie).load() == {"n": 1}
    request = factory.get("/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = cookie
    response = mw(request)
    assert response.content == b"2"
    cookie2 = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert DjStore(cookie2).load() == {"n": 2}
    # a Django-made cookie is read by the csessions middleware
    request = factory.get("/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = make_cookie(DjStore, {"n": 41}, now=__import__("time").time())
    assert mw(request).content == b"42"


# ------------------------------------------------------------------------------------------
# Beyond Django: cookies over 4096 bytes (name + value) are refused or logged
# ------------------------------------------------------------------------------------------

_RNG = random.Random(4096)
BLOB = base64.b64encode(_RNG.randbytes(6000)).decode()  # base64 of random bytes: barely compressible


def _size(data, name=None):
    name = settings.SESSION_COOKIE_NAME if name is None else name
    with at(T0):
        return len(name) + len(dj.dumps(data, compress=True, salt=SALT))


def _boundary():
    """(largest data with size <= 4096, smallest data with size > 4096), sizes from Django."""
    ok = bad = None
    for n in range(2000, len(BLOB)):
        data = {"blob": BLOB[:n]}
        size = _size(data)
        if size <= LIMIT:
            if ok is None or size >= ok[1]:
                ok = (data, size)
        elif bad is None:
            bad = (data, size)
        if size > LIMIT + 64:
            break
    return ok, bad


OK, BAD = _boundary()


def test_boundary_search_is_tight():
    assert OK is not None and BAD is not None
    assert LIMIT - 3 <= OK[1] <= LIMIT
    assert LIMIT < BAD[1] <= LIMIT + 3


def test_just_under_limit_saves():
    data, size = OK
    s = CsStore()
    s.update(data)
    with at(T0):
        s.save()
        assert s.session_key == dj.dumps(data, compress=True, salt=SALT)
    assert len(settings.SESSION_COOKIE_NAME) + len(s.session_key) == size <= LIMIT


@pytest.mark.parametrize("previous", [None, "old"])
def test_oversize_raises(previous):
    data, size = BAD
    old_cookie = _valid_cookie() if previous else None
    s = CsStore(old_cookie)
    if previous:
        with at(T0 + 1):
            assert s["user"] == "42"
    s.clear()
    s.update(data)
    with at(T0), pytest.raises(SessionCookieTooLarge) as exc:
        s.save()
    e = exc.value
    assert isinstance(e, ValueError)
    assert e.name == settings.SESSION_COOKIE_NAME
    assert e.size == size
    assert e.limit == LIMIT
    assert str(size) in str(e) and str(LIMIT) in str(e)
    assert s.session_key == old_cookie
    # cycle_key() saves too
    with at(T0), pytest.raises(SessionCookieTooLarge):
        s.cycle_key()
    assert s.session_key == old_cookie


def test_oversize_explicit_raise_setting():
    with override_settings(CSESSIONS_COOKIE_OVERSIZE="raise"):
        s = CsStore()
        s.update(BAD[0])
        with at(T0), pytest.raises(SessionCookieTooLarge):
            s.save()


def test_oversize_counts_cookie_name():
    data, size = OK
    name = "n" * 100
    with override_settings(SESSION_COOKIE_NAME=name):
        s = CsStore()
        s.update(data)
        with at(T0), pytest.raises(SessionCookieTooLarge) as exc:
            s.save()
        assert exc.value.name == name
        assert exc.value.size == size - len("sessionid") + len(name)
        assert s.session_key is None


def test_oversize_warn_mode(caplog):
    data, size = BAD
    with override_settings(CSESSIONS_COOKIE_OVERSIZE="warn"):
        s = CsStore()
        s.update(data)
        with at(T0), caplog.at_level(logging.WARNING, logger="csessions"):
            s.save()
            expected = dj.dumps(data, compress=True, salt=SALT)
    assert s.session_key == expected
    records = [r for r in caplog.records if r.name == "csessions"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert str(size) in records[0].getMessage() and str(LIMIT) in records[0].getMessage()
    with at(T0 + 1):
        assert dict(DjStore(s.session_key).items()) == data


def test_under_limit_does_not_warn(caplog):
    with override_settings(CSESSIONS_COOKIE_OVERSIZE="warn"):
        s = CsStore()
        s.update(OK[0])
        with at(T0), caplog.at_level(logging.DEBUG, logger="csessions"):
            s.save()
    assert [r for r in caplog.records if r.name == "csessions"] == []


@hsettings(max_examples=60)
@given(n=st.integers(min_value=0, max_value=len(BLOB)), extra=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_oversize_rule_property(n, extra):
    data = {**extra, "blob": BLOB[:n]}
    size = _size(data)
    s = CsStore()
    s.update(data)
    with at(T0):
        if size > LIMIT:
            with pytest.raises(SessionCookieTooLarge) as exc:
                s.save()
            assert exc.value.size == size
            assert s.session_key is None
        else:
            s.save()
            assert s.session_key == dj.dumps(data, compress=True, salt=SALT)
