"""Fast reads of Django settings on the request path.

LazySettings caches every setting it has resolved in its own __dict__ and clears that
cache whenever settings change (override_settings included). Reading the cache first
follows every change Django itself sees, without LazyObject's ~0.3 us per attribute.
"""

from django.conf import settings

_resolved = settings.__dict__


def setting(name):
    try:
        return _resolved[name]
    except KeyError:
        return getattr(settings, name)
