"""Django's own session tests, re-run against the csessions engines.

run.py copies this package into the ``tests/`` directory of an extracted Django sdist and runs
``runtests.py csessions_tests sessions_tests``. This module must stay importable without
Django: run.py imports it (outside any Django project) for the engine table below.
"""

import importlib.util
import os

# Where the engines live. Only run.py's self-test (--engine-prefix) changes it, to check the
# harness against Django's own engines.
PREFIX = os.environ.get("CSESSIONS_SUITE_ENGINE_PREFIX", "csessions.backends")

# engine -> (Django engine it must behave like under Django's unchanged suite,
#            [(class in csessions_tests.tests, class in sessions_tests.tests it is checked against)])
# An engine whose module does not exist yet is simply not tested.
ENGINES = {
    "db": (
        "django.contrib.sessions.backends.db",
        [
            ("DatabaseSessionTests", "DatabaseSessionTests"),
            ("DatabaseSessionWithTimeZoneTests", "DatabaseSessionWithTimeZoneTests"),
        ],
    ),
    "cached_db": (
        "django.contrib.sessions.backends.cached_db",
        [
            ("CacheDBSessionTests", "CacheDBSessionTests"),
            ("CacheDBSessionWithTimeZoneTests", "CacheDBSessionWithTimeZoneTests"),
        ],
    ),
    "file": (
        "django.contrib.sessions.backends.file",
        [
            ("FileSessionTests", "FileSessionTests"),
            ("FileSessionPathLibTests", "FileSessionPathLibTests"),
        ],
    ),
    "cache": (
        "django.contrib.sessions.backends.cache",
        [("CacheSessionTests", "CacheSessionTests")],
    ),
    "signed_cookies": (
        "django.contrib.sessions.backends.signed_cookies",
        [("CookieSessionTests", "CookieSessionTests")],
    ),
    # No Django twin: a server-side store without a database, so it is held to what Django's
    # cache engine does (for the mixin's tests; its own extra tests, if any, must pass).
    "shm": (
        "django.contrib.sessions.backends.cache",
        [("ShmSessionTests", "CacheSessionTests")],
    ),
}


def module_name(engine):
    return f"{PREFIX}.{engine}"


def is_present(engine):
    """True if the engine's module exists (it is not imported here)."""
    try:
        return importlib.util.find_spec(module_name(engine)) is not None
    except ImportError:  # the parent package itself is missing
        return False


def present_engines():
    return [engine for engine in ENGINES if is_present(engine)]
