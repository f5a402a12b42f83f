"""Shared configuration for the csessions test suite.

Django is configured here (once, before any test module imports csessions). The oracles the
tests compare against are Django itself and CPython's ``json``; helpers are exposed as
session-scoped fixtures (no ``tests/__init__.py``, so test modules cannot import each other).
"""

import math
import os

import django
from django.conf import settings
from hypothesis import HealthCheck
from hypothesis import settings as hsettings

import pytest

if not settings.configured:
    settings.configure(
        SECRET_KEY="csessions-tests-secret-key-not-for-production",
        SECRET_KEY_FALLBACKS=[],
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        DATABASES={},
        SESSION_ENGINE="csessions.backends.signed_cookies",
        LOGGING_CONFIG=None,
    )
    django.setup()

# Guard for runs against a build outside the checkout (the sanitizer build): fail loudly if the
# csessions that gets imported is not the one under test.
_EXPECT = os.environ.get("CSESSIONS_EXPECT_PATH")
if _EXPECT:
    import csessions
    import csessions._core

    _root = os.path.realpath(_EXPECT)
    for _mod in (csessions, csessions._core):
        _path = os.path.realpath(_mod.__file__)
        assert _path.startswith(_root), (
            f"CSESSIONS_EXPECT_PATH={_EXPECT!r} but {_mod.__name__} was imported from {_path!r}"
        )

# Whole suite must stay quick (about a minute on 2 cores, also under ASan).
hsettings.register_profile(
    "csessions",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    database=None,  # no .hypothesis/ directory in the checkout; failures print a reproducer
)
hsettings.register_profile(
    "csessions-sanitized",
    parent=hsettings.get_profile("csessions"),
    max_examples=60,
)
hsettings.load_profile(
    "csessions-sanitized" if os.environ.get("CSESSIONS_SANITIZED") == "1" else "csessions"
)


# --------------------------------------------------------------------------------------------
# Strict structural comparison: types must match exactly (1 vs 1.0 vs True), NaN equals NaN,
# -0.0 differs from 0.0, dict key order matters (json keeps insertion / last-duplicate order).
# --------------------------------------------------------------------------------------------


def _strict_diff(a, b, path="$"):
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} != {type(b).__name__} ({a!r:.80} vs {b!r:.80})"
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            if not (math.isnan(a) and math.isnan(b)):
                return f"{path}: {a!r} != {b!r}"
            return None
        if a != b or math.copysign(1.0, a) != math.copysign(1.0, b):
            return f"{path}: {a!r} != {b!r}"
        return None
    if isinstance(a, dict):
        ka, kb = list(a), list(b)
        if ka != kb:
            return f"{path}: dict keys (in order) differ: {ka!r:.200} vs {kb!r:.200}"
        for k in ka:
            d = _strict_diff(a[k], b[k], f"{path}[{k!r:.40}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _strict_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a != b:
        return f"{path}: {a!r:.200} != {b!r:.200}"
    return None


def assert_strict_equal(a, b):
    """Assert ``a`` and ``b`` are the same JSON-ish value, types included (see _strict_diff)."""
    diff = _strict_diff(a, b)
    assert diff is None, diff


def outcome(fn, *args, **kwargs):
    """Run fn; return ("ok", value) or ("exc", exception). Never swallows BaseException."""
    try:
        return ("ok", fn(*args, **kwargs))
    except RecursionError as e:  # a RecursionError is an Exception; kept explicit for clarity
        return ("exc", e)
    except Exception as e:
        return ("exc", e)


def assert_same_outcome(expected, got, *, messages=False, what=""):
    """Compare two ``outcome()`` results: same value (strictly), or same exception type.

    With ``messages=True`` the exception messages must match too.
    """
    ek, ev = expected
    gk, gv = got
    if ek == "ok":
        assert gk == "ok", f"{what}: oracle returned {ev!r:.200}, csessions raised {gv!r:.300}"
        assert_strict_equal(gv, ev)
    else:
        assert gk == "exc", f"{what}: oracle raised {ev!r:.300}, csessions returned {gv!r:.200}"
        assert type(gv) is type(ev), (
            f"{what}: oracle raised {type(ev).__name__}({ev}), "
            f"csessions raised {type(gv).__name__}({gv})"
        )
        if messages:
            assert str(gv) == str(ev), f"{what}: message {str(gv)!r} != {str(ev)!r}"


@pytest.fixture(scope="session")
def strict_equal():
    return assert_strict_equal


@pytest.fixture(scope="session")
def run():
    return outcome


@pytest.fixture(scope="session")
def same_outcome():
    return assert_same_outcome


def pytest_collection_finish(session):
    """Let modules start slow subprocess work early (test_leaks runs it beside the suite)."""
    started = set()
    for item in session.items:
        module = getattr(item, "module", None)
        starter = getattr(module, "start_in_background", None)
        if starter is not None and module not in started:
            started.add(module)
            starter()


def pytest_collection_modifyitems(session, config, items):
    """Tests of modules with background work (test_leaks) run last, to overlap it the most."""
    items.sort(key=lambda item: hasattr(getattr(item, "module", None), "start_in_background"))
