"""``django.core.signing.dumps``/``loads`` with the JSON serializer's whole path in C.

Same signatures, results and exceptions as Django's; any other serializer goes through
Django's own code unchanged.
"""

import datetime
import time

from django.core import signing as _django
from django.core.signing import BadSignature, SignatureExpired  # noqa: F401  (re-exported)

from csessions import _core
from csessions.conf import setting
from csessions.serializers import JSONSerializer

_core.set_error_types(BadSignature, SignatureExpired)

# Both produce and accept the same bytes, so either may take the C path.
_C_SERIALIZERS = (JSONSerializer, _django.JSONSerializer)
_DEFAULT_SALT = "django.core.signing.TimestampSigner"  # what TimestampSigner picks for salt=""


def dumps(obj, key=None, salt="django.core.signing", serializer=JSONSerializer, compress=False):
    if serializer not in _C_SERIALIZERS:
        return _django.dumps(obj, key=key, salt=salt, serializer=serializer, compress=compress)
    return _core.sign_object(
        obj, key or setting("SECRET_KEY"), salt or _DEFAULT_SALT, int(time.time()), compress
    )


def loads(
    s, key=None, salt="django.core.signing", serializer=JSONSerializer, max_age=None, fallback_keys=None
):
    if serializer not in _C_SERIALIZERS or type(s) is not str:
        return _django.loads(
            s, key=key, salt=salt, serializer=serializer, max_age=max_age, fallback_keys=fallback_keys
        )
    if isinstance(max_age, datetime.timedelta):
        max_age = max_age.total_seconds()
    return _core.unsign_object(
        s,
        key or setting("SECRET_KEY"),
        setting("SECRET_KEY_FALLBACKS") if fallback_keys is None else fallback_keys,
        salt or _DEFAULT_SALT,
        max_age,
        time.time(),
    )
