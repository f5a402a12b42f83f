"""Fast reads of Django settings on the request path.

LazySettings caches every setting it has resolved in its own __dict__ and clears that
cache whenever settings change (override_settings included). Reading the cache first
follows every change Django itself sees, without LazyObject's ~0.3 us per attribute.
"""

from django.conf import settings

_resolved = settings.__dict__
_REQUIRED = object()


def setting(name, default=_REQUIRED):
    """The setting ``name``; ``default`` when it is not set and a default is given.

    An unset setting costs a chain of AttributeErrors through LazySettings (~2-8 us), so its
    default joins LazySettings' cache, which Django clears on override_settings and on
    assignment to the setting: ``settings.NAME`` then reads the default too.
    """
    try:
        return _resolved[name]
    except KeyError:
        pass
    try:
        return getattr(settings, name)
    except AttributeError:
        if default is _REQUIRED:
            raise
        _resolved[name] = default
        return default
