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
C_SERIALIZERS = (_django.JSONSerializer, JSONSerializer)  # Django's default first: `in` tries it first
_DEFAULT_SALT = "django.core.signing.TimestampSigner"  # what TimestampSigner picks for salt=""
# What the server-side engines store need not be Django's bytes, only readable by Django's
# decode, which takes any zlib stream or none. Compressing costs more than everything else in
# encode + decode together (zlib's fixed ~10 us on a typical session, 50 us at 5 KB) to save
# a few KB per session in a store that does not limit its size (PostgreSQL compresses large
# values itself), so only JSON above STORE_COMPRESS_ABOVE bytes is compressed, and by the C
# core's own quick deflate (src/deflate_quick.h: ~3.5x faster than zlib's fastest level on
# 93 KB, for 20% more bytes; any zlib inflates it).
STORE_COMPRESS_ABOVE = 8192
STORE_COMPRESS_LEVEL = _core.DEFLATE_QUICK


def dumps(obj, key=None, salt="django.core.signing", serializer=JSONSerializer, compress=False):
    if serializer not in C_SERIALIZERS:
        return _django.dumps(obj, key=key, salt=salt, serializer=serializer, compress=compress)
    return _core.sign_object(
        obj, key or setting("SECRET_KEY"), salt or _DEFAULT_SALT, int(time.time()), -1 if compress else 0, 0
    )


def dumps_for_store(obj, salt, serializer):
    """A session value for a server-side store (SessionBase.encode): Django's format, any
    decoder reads it; see STORE_COMPRESS_ABOVE for how it differs from dumps(compress=True)."""
    if serializer not in C_SERIALIZERS:
        return _django.dumps(obj, salt=salt, serializer=serializer, compress=True)
    return _core.sign_object(
        obj, setting("SECRET_KEY"), salt or _DEFAULT_SALT, int(time.time()),
        STORE_COMPRESS_LEVEL, STORE_COMPRESS_ABOVE,
    )


def loads(
    s, key=None, salt="django.core.signing", serializer=JSONSerializer, max_age=None, fallback_keys=None
):
    if serializer not in C_SERIALIZERS or type(s) is not str:
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
