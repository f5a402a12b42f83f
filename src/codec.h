/* The signed-object codec of django.core.signing (TimestampSigner.sign_object and
 * unsign_object with the JSON serializer), in C:
 *
 *     value = ["."] b64url(zlib?(json)) ":" base62(ts) ":" b64url(HMAC-SHA256(K, payload:ts))
 *     K     = SHA256(salt "signer" secret)
 *
 * Keys derived from (salt, secret) are cached in the module state; the cache is keyed by
 * the values themselves, so a changed SECRET_KEY simply misses.
 */
#ifndef CSESSIONS_CODEC_H
#define CSESSIONS_CODEC_H

#include "state.h"

/* New reference to the signed str, or NULL with an exception set. `level` 0 never
 * compresses; otherwise JSON longer than `compress_above` bytes is deflated at that zlib
 * level (Z_DEFAULT_COMPRESSION with compress_above 0: Django's compress=True, byte for
 * byte) and kept when it saves at least 2 bytes, as Django does. */
PyObject *cs_sign_object(cs_state *st, PyObject *obj, PyObject *secret, PyObject *salt,
                         PyObject *timestamp, int level, Py_ssize_t compress_above);

/* New reference to the decoded object, or NULL with an exception set: the registered
 * BadSignature / SignatureExpired types, or what Django's code raises for a validly
 * signed but undecodable payload. max_age may be Py_None. */
PyObject *cs_unsign_object(cs_state *st, PyObject *signed_value, PyObject *secret,
                           PyObject *fallback_keys, PyObject *salt, PyObject *max_age,
                           PyObject *now);

/* zlib.compress(data, level) and zlib.decompress(data) on the module's reused streams
 * (no ~270 KB allocation per call). New bytes, or NULL with an exception set (ValueError
 * for data that is not a complete zlib stream). */
PyObject *cs_deflate_bytes(cs_state *st, const char *in, Py_ssize_t n, int level);
PyObject *cs_inflate_bytes(cs_state *st, const char *in, Py_ssize_t n);

/* deflate_quick.c's decoder alone, for the tests: new bytes, None for a stream it does not
 * take whole (which inflate hands to zlib), or NULL with an exception set. */
PyObject *cs_inflate_quick_bytes(cs_state *st, const char *in, Py_ssize_t n);

#endif
