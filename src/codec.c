#include "codec.h"
#include "hmac.h"
#include "json.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char b62_alphabet[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* --- base64url without padding ------------------------------------------------------- */

/* On x86 with SSSE3 (every x86-64 CPU since 2006, checked at run time) the bulk of the text
 * goes 16 characters at a time, after Wojciech Mula and Daniel Lemire ("Faster Base64
 * Encoding and Decoding using AVX2 Instructions", 2018): 12 bytes are spread into 16
 * sextets by one shuffle and two multiplies, and sextets become characters by adding an
 * offset that a shuffle looks up; decoding checks each character's range with compares (a
 * block with any other character goes to the scalar loop, which reports it) and packs 16
 * sextets back into 12 bytes with two multiply-adds. The scalar loops do the rest. */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define CS_B64_SIMD 1
#include <immintrin.h>

static int
have_ssse3(void)
{
    static int known = -1; /* racing threads both compute the same answer */
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("ssse3") ? 1 : 0;
    }
    return known;
}

/* Encodes 12 bytes per step while 16 can be read; returns the bytes consumed. */
__attribute__((target("ssse3"))) static Py_ssize_t
b64_encode_ssse3(char *dst, const unsigned char *src, Py_ssize_t n)
{
    const __m128i spread = _mm_set_epi8(10, 11, 9, 10, 7, 8, 6, 7, 4, 5, 3, 4, 1, 2, 0, 1);
    const __m128i offsets = _mm_setr_epi8('a' - 26, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
                                          '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
                                          '0' - 52, '-' - 62, '_' - 63, 'A', 0, 0);
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 12) {
        __m128i in = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(src + i)), spread);
        __m128i hi = _mm_mulhi_epu16(_mm_and_si128(in, _mm_set1_epi32(0x0fc0fc00)),
                                     _mm_set1_epi32(0x04000040));
        __m128i lo = _mm_mullo_epi16(_mm_and_si128(in, _mm_set1_epi32(0x003f03f0)),
                                     _mm_set1_epi32(0x01000010));
        __m128i sextets = _mm_or_si128(hi, lo);
        /* 0-25: 13, 26-51: 0, 52-61: 1-10, 62: 11, 63: 12, the index of its offset */
        __m128i which = _mm_subs_epu8(sextets, _mm_set1_epi8(51));
        __m128i upper = _mm_cmpgt_epi8(_mm_set1_epi8(26), sextets);
        which = _mm_or_si128(which, _mm_and_si128(upper, _mm_set1_epi8(13)));
        __m128i chars = _mm_add_epi8(sextets, _mm_shuffle_epi8(offsets, which));
        _mm_storeu_si128((__m128i *)(dst + i / 3 * 4), chars);
    }
    return i;
}

/* Decodes 16 characters per step into 12 bytes (writing 16: dst needs 4 bytes of room past
 * the output) until a block holds a character outside the alphabet; returns the characters
 * consumed. */
__attribute__((target("ssse3"))) static Py_ssize_t
b64_decode_ssse3(unsigned char *dst, const unsigned char *src, Py_ssize_t n)
{
    const __m128i gather = _mm_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i));
        /* Signed compares: bytes >= 0x80 are negative and fall in no range. */
        __m128i upper = _mm_and_si128(_mm_cmpgt_epi8(c, _mm_set1_epi8('A' - 1)),
                                      _mm_cmplt_epi8(c, _mm_set1_epi8('Z' + 1)));
        __m128i lower = _mm_and_si128(_mm_cmpgt_epi8(c, _mm_set1_epi8('a' - 1)),
                                      _mm_cmplt_epi8(c, _mm_set1_epi8('z' + 1)));
        __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(c, _mm_set1_epi8('0' - 1)),
                                      _mm_cmplt_epi8(c, _mm_set1_epi8('9' + 1)));
        __m128i dash = _mm_cmpeq_epi8(c, _mm_set1_epi8('-'));
        __m128i under = _mm_cmpeq_epi8(c, _mm_set1_epi8('_'));
        __m128i valid = _mm_or_si128(_mm_or_si128(upper, lower),
                                     _mm_or_si128(digit, _mm_or_si128(dash, under)));
        if (_mm_movemask_epi8(valid) != 0xFFFF) {
            break;
        }
        __m128i v = _mm_and_si128(upper, _mm_sub_epi8(c, _mm_set1_epi8('A')));
        v = _mm_or_si128(v, _mm_and_si128(lower, _mm_sub_epi8(c, _mm_set1_epi8('a' - 26))));
        v = _mm_or_si128(v, _mm_and_si128(digit, _mm_add_epi8(c, _mm_set1_epi8(52 - '0'))));
        v = _mm_or_si128(v, _mm_and_si128(dash, _mm_set1_epi8(62)));
        v = _mm_or_si128(v, _mm_and_si128(under, _mm_set1_epi8(63)));
        /* pairs of sextets into 12 bits, pairs of those into 24, then 3 bytes of each */
        __m128i pairs = _mm_maddubs_epi16(v, _mm_set1_epi32(0x01400140));
        __m128i words = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00011000));
        _mm_storeu_si128((__m128i *)(dst + i / 4 * 3), _mm_shuffle_epi8(words, gather));
    }
    return i;
}
#endif

static Py_ssize_t
b64_encoded_len(Py_ssize_t n)
{
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

static char *
b64_encode(char *dst, const unsigned char *src, Py_ssize_t n)
{
    Py_ssize_t i = 0;
#ifdef CS_B64_SIMD
    if (n >= 16 && have_ssse3()) {
        i = b64_encode_ssse3(dst, src, n);
        dst += i / 3 * 4;
    }
#endif
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        *dst++ = b64_alphabet[v >> 18];
        *dst++ = b64_alphabet[(v >> 12) & 63];
        *dst++ = b64_alphabet[(v >> 6) & 63];
        *dst++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        *dst++ = b64_alphabet[v >> 18];
        *dst++ = b64_alphabet[(v >> 12) & 63];
    }
    else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        *dst++ = b64_alphabet[v >> 18];
        *dst++ = b64_alphabet[(v >> 12) & 63];
        *dst++ = b64_alphabet[(v >> 6) & 63];
    }
    return dst;
}

/* base64url value of each byte, -1 outside the alphabet. */
static const int8_t b64_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/* Decodes the strict alphabet into out. Returns 0, or 1 when the text needs Python's
 * lenient decoder (a character outside the alphabet, or a length it rejects), or -1
 * with MemoryError. Trailing bits are ignored, as binascii does. */
static int
b64_decode_fast(cs_buf *out, const unsigned char *src, Py_ssize_t n)
{
    if (n % 4 == 1) {
        return 1;
    }
    if (cs_buf_reserve(out, n / 4 * 3 + 2 + 4) < 0) { /* + 4: b64_decode_ssse3's stores */
        return -1;
    }
    unsigned char *dst = (unsigned char *)out->data + out->len;
    Py_ssize_t i = 0;
#ifdef CS_B64_SIMD
    if (n >= 16 && have_ssse3()) {
        i = b64_decode_ssse3(dst, src, n);
        dst += i / 4 * 3;
    }
#endif
    for (; i + 4 <= n; i += 4) {
        int32_t a = b64_values[src[i]], b = b64_values[src[i + 1]];
        int32_t c = b64_values[src[i + 2]], d = b64_values[src[i + 3]];
        if ((a | b | c | d) < 0) {
            return 1;
        }
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        *dst++ = (unsigned char)(v >> 16);
        *dst++ = (unsigned char)(v >> 8);
        *dst++ = (unsigned char)v;
    }
    if (n - i >= 2) { /* 2 or 3 characters left: 1 or 2 bytes */
        int32_t a = b64_values[src[i]], b = b64_values[src[i + 1]];
        int32_t c = n - i == 3 ? b64_values[src[i + 2]] : 0;
        if ((a | b | c) < 0) {
            return 1;
        }
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6;
        *dst++ = (unsigned char)(v >> 16);
        if (n - i == 3) {
            *dst++ = (unsigned char)(v >> 8);
        }
    }
    out->len = (char *)dst - out->data;
    return 0;
}

/* Django's b64_decode: re-pad, then base64.urlsafe_b64decode (lenient). New reference. */
static PyObject *
b64_decode_exact(cs_state *st, const char *src, Py_ssize_t n)
{
    Py_ssize_t pad = (4 - n % 4) % 4;
    PyObject *padded = PyBytes_FromStringAndSize(NULL, n + pad);
    if (padded == NULL) {
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(padded), src, n);
    memset(PyBytes_AS_STRING(padded) + n, '=', pad);
    PyObject *result = PyObject_CallOneArg(st->b64decode, padded);
    Py_DECREF(padded);
    return result;
}

/* --- base62 timestamps --------------------------------------------------------------- */

static char *
b62_encode(char *dst, long long n)
{
    char tmp[16];
    char *p = tmp + sizeof(tmp);
    unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    do {
        *--p = b62_alphabet[u % 62];
        u /= 62;
    } while (u);
    if (n < 0) {
        *dst++ = '-';
    }
    size_t len = (size_t)(tmp + sizeof(tmp) - p);
    memcpy(dst, p, len);
    return dst + len;
}

/* b62_encode of an int too large for long long, digit by digit with Python arithmetic.
 * Appends to out; returns 0, or -1 with an exception set. */
static int
b62_encode_big(cs_buf *out, PyObject *n)
{
    int rc = -1;
    cs_buf digits;
    cs_buf_init(&digits);
    PyObject *base = PyLong_FromLong(62);
    PyObject *zero = PyLong_FromLong(0);
    int negative = zero ? PyObject_RichCompareBool(n, zero, Py_LT) : -1;
    PyObject *rest = negative == 1 ? PyNumber_Negative(n) : (negative == 0 ? Py_NewRef(n) : NULL);
    if (base == NULL || rest == NULL) {
        goto done;
    }
    for (;;) {
        PyObject *qr = PyNumber_Divmod(rest, base); /* new ref: (q, r) */
        if (qr == NULL) {
            goto done;
        }
        long r = PyLong_AsLong(PyTuple_GET_ITEM(qr, 1));
        Py_SETREF(rest, Py_NewRef(PyTuple_GET_ITEM(qr, 0)));
        Py_DECREF(qr);
        if (cs_buf_putc(&digits, b62_alphabet[r]) < 0) {
            goto done;
        }
        int more = PyObject_IsTrue(rest);
        if (more < 0) {
            goto done;
        }
        if (!more) {
            break;
        }
    }
    if (negative && cs_buf_putc(out, '-') < 0) {
        goto done;
    }
    if (cs_buf_reserve(out, digits.len) < 0) {
        goto done;
    }
    for (Py_ssize_t i = digits.len - 1; i >= 0; i--) {
        out->data[out->len++] = digits.data[i];
    }
    rc = 0;
done:
    Py_XDECREF(rest);
    Py_XDECREF(base);
    Py_XDECREF(zero);
    cs_buf_free(&digits);
    return rc;
}

/* django.core.signing.b62_decode, with its errors (IndexError for "", ValueError for a
 * character outside the alphabet). New reference to an int. */
static PyObject *
b62_decode(const char *s, Py_ssize_t n)
{
    if (n == 0) {
        PyErr_SetString(PyExc_IndexError, "string index out of range");
        return NULL;
    }
    int negative = s[0] == '-';
    Py_ssize_t i = negative;
    long long small = 0;
    PyObject *big = NULL; /* used once the value outgrows long long */
    PyObject *base = NULL;
    for (; i < n; i++) {
        const char *hit = memchr(b62_alphabet, s[i], 62);
        if (hit == NULL) {
            PyErr_SetString(PyExc_ValueError, "substring not found");
            goto fail;
        }
        long long digit = hit - b62_alphabet;
        if (big == NULL && small <= (LLONG_MAX - digit) / 62) {
            small = small * 62 + digit;
            continue;
        }
        if (big == NULL) {
            big = PyLong_FromLongLong(small);
            base = PyLong_FromLong(62);
            if (big == NULL || base == NULL) {
                goto fail;
            }
        }
        PyObject *d = PyLong_FromLongLong(digit);
        PyObject *t = d ? PyNumber_Multiply(big, base) : NULL;
        Py_SETREF(big, t ? PyNumber_Add(t, d) : NULL);
        Py_XDECREF(t);
        Py_XDECREF(d);
        if (big == NULL) {
            goto fail;
        }
    }
    Py_XDECREF(base);
    if (big == NULL) {
        return PyLong_FromLongLong(negative ? -small : small);
    }
    if (negative) {
        Py_SETREF(big, PyNumber_Negative(big));
    }
    return big;
fail:
    Py_XDECREF(big);
    Py_XDECREF(base);
    return NULL;
}

/* --- keys -------------------------------------------------------------------------- */

/* django.utils.encoding.force_bytes: bytes as they are, anything else str() in UTF-8.
 * New reference to bytes. */
static PyObject *
force_bytes(PyObject *o)
{
    if (PyBytes_Check(o)) {
        return Py_NewRef(o);
    }
    if (PyMemoryView_Check(o)) {
        return PyBytes_FromObject(o);
    }
    PyObject *s = PyObject_Str(o);
    if (s == NULL) {
        return NULL;
    }
    PyObject *b = PyUnicode_AsUTF8String(s);
    Py_DECREF(s);
    return b;
}

#define KEY_CACHE_MAX 256

/* Borrowed pointer to the cached keyed HMAC state for (salt, secret), or NULL with an
 * exception set. The pointer stays valid until the next call that may fill the cache. */
static const cs_hmac_key *
get_key(cs_state *st, PyObject *salt, PyObject *secret)
{
    PyObject *cache_key = PyTuple_Pack(2, salt, secret);
    if (cache_key == NULL) {
        return NULL;
    }
    const cs_hmac_key *result = NULL;
    PyObject *salt_b = NULL, *secret_b = NULL, *entry = NULL;
    PyObject *hit = PyDict_GetItemWithError(st->key_cache, cache_key); /* borrowed */
    if (hit != NULL) {
        result = (const cs_hmac_key *)PyBytes_AS_STRING(hit);
        goto done;
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    salt_b = force_bytes(salt);
    secret_b = force_bytes(secret);
    if (salt_b == NULL || secret_b == NULL) {
        goto done;
    }
    /* salted_hmac(salt + "signer", ..., secret): K = SHA256(key_salt + secret). */
    Py_ssize_t ns = PyBytes_GET_SIZE(salt_b), nk = PyBytes_GET_SIZE(secret_b);
    cs_buf material;
    cs_buf_init(&material);
    if (cs_buf_append(&material, PyBytes_AS_STRING(salt_b), ns) < 0 ||
        cs_buf_append(&material, "signer", 6) < 0 ||
        cs_buf_append(&material, PyBytes_AS_STRING(secret_b), nk) < 0) {
        cs_buf_free(&material);
        goto done;
    }
    unsigned char derived[CS_SHA256_LEN];
    cs_sha256((unsigned char *)material.data, (size_t)material.len, derived);
    sodium_memzero(material.data, (size_t)material.len);
    cs_buf_free(&material);

    entry = PyBytes_FromStringAndSize(NULL, sizeof(cs_hmac_key));
    if (entry == NULL) {
        goto done;
    }
    cs_hmac_key_init((cs_hmac_key *)PyBytes_AS_STRING(entry), derived, sizeof(derived));
    sodium_memzero(derived, sizeof(derived));
    if (PyDict_GET_SIZE(st->key_cache) >= KEY_CACHE_MAX) {
        PyDict_Clear(st->key_cache); /* settings rarely change; bound it anyway */
    }
    if (PyDict_SetItem(st->key_cache, cache_key, entry) < 0) {
        goto done;
    }
    result = (const cs_hmac_key *)PyBytes_AS_STRING(entry); /* the cache owns entry now */
done:
    Py_XDECREF(entry);
    Py_XDECREF(salt_b);
    Py_XDECREF(secret_b);
    Py_DECREF(cache_key);
    return result;
}

#define SIG_LEN 43 /* base64url of 32 bytes, unpadded */

static int
signature(cs_state *st, PyObject *salt, PyObject *secret, const char *msg, Py_ssize_t n,
          char out[SIG_LEN])
{
    const cs_hmac_key *key = get_key(st, salt, secret);
    if (key == NULL) {
        return -1;
    }
    unsigned char mac[CS_SHA256_LEN];
    cs_hmac_sign(key, (const unsigned char *)msg, (size_t)n, mac);
    b64_encode(out, mac, CS_SHA256_LEN);
    return 0;
}

/* --- zlib --------------------------------------------------------------------------- */

/* Compresses in into out at `level`; at Z_DEFAULT_COMPRESSION, the stream zlib.compress()
 * makes. One stream serves every level: deflateParams right after deflateReset sets exactly
 * what deflateInit at that level would, so the default level's bytes stay zlib.compress's.
 * CS_DEFLATE_QUICK: deflate_quick.c's encoder instead.
 * Returns 0, or -1 with an exception set. */
static int
deflate_into(cs_state *st, cs_buf *out, const char *in, Py_ssize_t n, int level)
{
    if (level == CS_DEFLATE_QUICK) {
        if (n <= CS_DEFLATE_QUICK_MAX) {
            return cs_deflate_quick(&st->fixed_codes, out, (const unsigned char *)in, n);
        }
        level = Z_BEST_SPEED;
    }
    z_stream *z = &st->deflater;
    int rc = st->deflater_ready ? deflateReset(z) : deflateInit(z, level);
    if (rc == Z_OK && st->deflater_ready && st->deflater_level != level) {
        rc = deflateParams(z, level, Z_DEFAULT_STRATEGY);
    }
    if (rc != Z_OK) {
        if (st->deflater_ready) { /* start afresh next time */
            deflateEnd(z);
            st->deflater_ready = 0;
        }
        PyErr_SetString(PyExc_MemoryError, "zlib: cannot initialise compression");
        return -1;
    }
    st->deflater_ready = 1;
    st->deflater_level = level;
    uLong bound = deflateBound(z, (uLong)n);
    if (cs_buf_reserve(out, (Py_ssize_t)bound) < 0) {
        return -1;
    }
    /* zlib counts in 32 bits: past 4 GiB the input and the room go in in slices, the last
     * with Z_FINISH (one call with the lengths cast down would compress n mod 4 GiB). */
    z->next_in = (Bytef *)in;
    z->next_out = (Bytef *)out->data + out->len;
    uint64_t in_left = (uint64_t)n, out_left = bound;
    for (;;) {
        uInt in_now = in_left > UINT_MAX ? UINT_MAX : (uInt)in_left;
        uInt out_now = out_left > UINT_MAX ? UINT_MAX : (uInt)out_left;
        z->avail_in = in_now;
        z->avail_out = out_now;
        rc = deflate(z, in_now == in_left ? Z_FINISH : Z_NO_FLUSH);
        int moved = z->avail_in != in_now || z->avail_out != out_now;
        in_left -= in_now - z->avail_in;
        out_left -= out_now - z->avail_out;
        if (rc == Z_STREAM_END) {
            break;
        }
        if ((rc != Z_OK && rc != Z_BUF_ERROR) || !moved) {
            PyErr_SetString(PyExc_RuntimeError, "zlib: compression did not finish");
            return -1;
        }
    }
    out->len += (Py_ssize_t)(bound - out_left);
    return 0;
}

/* deflate_quick.c decodes its own streams; zlib everything else, and whatever that refuses.
 * Returns 0, 1 when the data is not a complete zlib stream (the caller asks Python's zlib
 * for the exact error), or -1 with an exception set. Data after the stream's end is
 * ignored, as zlib.decompress does. */
static int
inflate_into(cs_state *st, cs_buf *out, const unsigned char *in, Py_ssize_t n)
{
    int rc = cs_inflate_quick(&st->fixed_codes, out, in, n);
    if (rc <= 0) {
        return rc;
    }
    z_stream *z = &st->inflater;
    rc = st->inflater_ready ? inflateReset(z) : inflateInit(z);
    if (rc != Z_OK) {
        PyErr_SetString(PyExc_MemoryError, "zlib: cannot initialise decompression");
        return -1;
    }
    st->inflater_ready = 1;
    if ((uint64_t)n > UINT_MAX) {
        return 1;
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)n;
    for (;;) {
        Py_ssize_t chunk = n * 4 > 4096 ? n * 4 : 4096;
        if (chunk > (Py_ssize_t)UINT_MAX) {
            chunk = UINT_MAX;
        }
        if (cs_buf_reserve(out, chunk) < 0) {
            return -1;
        }
        z->next_out = (Bytef *)out->data + out->len;
        z->avail_out = (uInt)(out->cap - out->len > chunk ? chunk : out->cap - out->len);
        uInt before = z->avail_out;
        rc = inflate(z, Z_NO_FLUSH);
        out->len += before - z->avail_out;
        if (rc == Z_STREAM_END) {
            return 0;
        }
        if (rc == Z_MEM_ERROR) {
            PyErr_NoMemory();
            return -1;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            return 1;
        }
        if (rc == Z_BUF_ERROR && z->avail_in == 0) {
            return 1; /* truncated */
        }
    }
}

PyObject *
cs_deflate_bytes(cs_state *st, const char *in, Py_ssize_t n, int level)
{
    cs_buf out;
    cs_buf_init(&out);
    PyObject *result = deflate_into(st, &out, in, n, level) < 0
                           ? NULL
                           : PyBytes_FromStringAndSize(out.data, out.len);
    cs_buf_free(&out);
    return result;
}

PyObject *
cs_inflate_bytes(cs_state *st, const char *in, Py_ssize_t n)
{
    cs_buf out;
    cs_buf_init(&out);
    PyObject *result = NULL;
    int rc = inflate_into(st, &out, (const unsigned char *)in, n);
    if (rc == 0) {
        result = PyBytes_FromStringAndSize(out.data, out.len);
    }
    else if (rc == 1) {
        PyErr_SetString(PyExc_ValueError, "not a complete zlib stream");
    }
    cs_buf_free(&out);
    return result;
}

PyObject *
cs_inflate_quick_bytes(cs_state *st, const char *in, Py_ssize_t n)
{
    cs_buf out;
    cs_buf_init(&out);
    int rc = cs_inflate_quick(&st->fixed_codes, &out, (const unsigned char *)in, n);
    PyObject *result = rc < 0    ? NULL
                       : rc == 1 ? Py_NewRef(Py_None)
                                 : PyBytes_FromStringAndSize(out.data, out.len);
    cs_buf_free(&out);
    return result;
}

/* --- sign / unsign -------------------------------------------------------------------- */

PyObject *
cs_sign_object(cs_state *st, PyObject *obj, PyObject *secret, PyObject *salt,
               PyObject *timestamp, int level, Py_ssize_t compress_above)
{
    PyObject *result = NULL;
    cs_buf json, packed, out;
    cs_buf_init(&json);
    cs_buf_init(&packed);
    cs_buf_init(&out);
    if (cs_json_encode(&json, obj) < 0) {
        goto done;
    }
    const char *data = json.data;
    Py_ssize_t n = json.len;
    int dotted = 0;
    if (level != 0 && json.len > compress_above) {
        if (deflate_into(st, &packed, json.data, json.len, level) < 0) {
            goto done;
        }
        if (packed.len < json.len - 1) { /* Django keeps it only if it saves 2 bytes */
            data = packed.data;
            n = packed.len;
            dotted = 1;
        }
    }
    int overflow;
    long long ts = PyLong_AsLongLongAndOverflow(timestamp, &overflow);
    if (ts == -1 && PyErr_Occurred()) {
        goto done;
    }
    /* '.' + payload + ':' + ts (<= 12) + ':' + signature */
    if (cs_buf_reserve(&out, 1 + b64_encoded_len(n) + 1 + 13 + 1 + SIG_LEN) < 0) {
        goto done;
    }
    char *p = out.data;
    if (dotted) {
        *p++ = '.';
    }
    p = b64_encode(p, (const unsigned char *)data, n);
    *p++ = ':';
    if (overflow) {
        out.len = p - out.data;
        if (b62_encode_big(&out, timestamp) < 0 || cs_buf_reserve(&out, 1 + SIG_LEN) < 0) {
            goto done;
        }
        p = out.data + out.len;
    }
    else {
        p = b62_encode(p, ts);
    }
    Py_ssize_t signed_len = p - out.data;
    *p++ = ':';
    if (signature(st, salt, secret, out.data, signed_len, p) < 0) {
        goto done;
    }
    p += SIG_LEN;
    assert(p <= out.data + out.cap);
    result = PyUnicode_New(p - out.data, 127);
    if (result != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(result), out.data, (size_t)(p - out.data));
    }
done:
    cs_buf_free(&json);
    cs_buf_free(&packed);
    cs_buf_free(&out);
    return result;
}

static const char *
find_last(const char *s, Py_ssize_t n, char c)
{
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        if (s[i] == c) {
            return s + i;
        }
    }
    return NULL;
}

/* Signer.unsign: the value before the last ':' if the signature after it matches the
 * secret or a fallback key. Returns 0, or -1 with an exception set. */
static int
verify(cs_state *st, const char *s, Py_ssize_t n, PyObject *secret, PyObject *fallback_keys,
       PyObject *salt, Py_ssize_t *value_len)
{
    const char *sep = find_last(s, n, ':');
    if (sep == NULL) {
        PyErr_SetString(st->bad_signature, "No \":\" found in value");
        return -1;
    }
    Py_ssize_t vlen = sep - s;
    const char *sig = sep + 1;
    Py_ssize_t siglen = n - vlen - 1;
    char expected[SIG_LEN];

    if (signature(st, salt, secret, s, vlen, expected) < 0) {
        return -1;
    }
    if (siglen == SIG_LEN && sodium_memcmp(expected, sig, SIG_LEN) == 0) {
        *value_len = vlen;
        return 0;
    }
    PyObject *keys = PySequence_Fast(fallback_keys, "fallback_keys must be a sequence");
    if (keys == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(keys); i++) {
        if (signature(st, salt, PySequence_Fast_GET_ITEM(keys, i), s, vlen, expected) < 0) {
            Py_DECREF(keys);
            return -1;
        }
        if (siglen == SIG_LEN && sodium_memcmp(expected, sig, SIG_LEN) == 0) {
            Py_DECREF(keys);
            *value_len = vlen;
            return 0;
        }
    }
    Py_DECREF(keys);
    PyObject *text = PyUnicode_DecodeUTF8(sig, siglen, "surrogatepass");
    if (text != NULL) {
        PyErr_Format(st->bad_signature, "Signature \"%U\" does not match", text);
        Py_DECREF(text);
    }
    return -1;
}

/* TimestampSigner's age check. Returns 0, or -1 with SignatureExpired (or another error). */
static int
check_age(cs_state *st, const char *ts, Py_ssize_t n, PyObject *max_age, PyObject *now)
{
    PyObject *stamp = b62_decode(ts, n);
    if (stamp == NULL) {
        return -1;
    }
    if (max_age == Py_None) {
        Py_DECREF(stamp);
        return 0;
    }
    int rc = -1;
    PyObject *age = PyNumber_Subtract(now, stamp);
    if (age != NULL) {
        int expired = PyObject_RichCompareBool(age, max_age, Py_GT);
        if (expired == 0) {
            rc = 0;
        }
        else if (expired == 1) {
            PyObject *msg = PyUnicode_FromFormat("Signature age %S > %S seconds", age, max_age);
            if (msg != NULL) {
                PyErr_SetObject(st->signature_expired, msg);
                Py_DECREF(msg);
            }
        }
    }
    Py_XDECREF(age);
    Py_DECREF(stamp);
    return rc;
}

PyObject *
cs_unsign_object(cs_state *st, PyObject *signed_value, PyObject *secret,
                 PyObject *fallback_keys, PyObject *salt, PyObject *max_age, PyObject *now)
{
    if (!PyUnicode_Check(signed_value)) {
        PyErr_Format(PyExc_TypeError, "a str is required, not '%.100s'",
                     Py_TYPE(signed_value)->tp_name);
        return NULL;
    }
    /* Django looks for the separator before anything can fail to encode. */
    Py_ssize_t found = PyUnicode_FindChar(signed_value, ':', 0, PY_SSIZE_T_MAX, -1);
    if (found == -1) {
        PyErr_SetString(st->bad_signature, "No \":\" found in value");
        return NULL;
    }
    if (found == -2) {
        return NULL;
    }
    Py_ssize_t n, vlen;
    const char *s = PyUnicode_AsUTF8AndSize(signed_value, &n); /* borrowed, cached in the str */
    if (s == NULL) {
        return NULL;
    }
    if (verify(st, s, n, secret, fallback_keys, salt, &vlen) < 0) {
        return NULL;
    }
    const char *sep = find_last(s, vlen, ':');
    if (sep == NULL) {
        PyErr_SetString(PyExc_ValueError, "not enough values to unpack (expected 2, got 1)");
        return NULL;
    }
    if (check_age(st, sep + 1, vlen - (sep + 1 - s), max_age, now) < 0) {
        return NULL;
    }

    const unsigned char *payload = (const unsigned char *)s;
    Py_ssize_t plen = sep - s;
    int dotted = plen > 0 && payload[0] == '.';
    if (dotted) {
        payload++;
        plen--;
    }
    PyObject *result = NULL, *exact = NULL;
    cs_buf raw, inflated;
    cs_buf_init(&raw);
    cs_buf_init(&inflated);
    const char *data;
    Py_ssize_t dlen;
    int rc = b64_decode_fast(&raw, payload, plen);
    if (rc < 0) {
        goto done;
    }
    if (rc == 0) {
        data = raw.data;
        dlen = raw.len;
    }
    else {
        exact = b64_decode_exact(st, (const char *)payload, plen);
        if (exact == NULL) {
            goto done;
        }
        data = PyBytes_AS_STRING(exact);
        dlen = PyBytes_GET_SIZE(exact);
    }
    if (dotted) {
        rc = inflate_into(st, &inflated, (const unsigned char *)data, dlen);
        if (rc < 0) {
            goto done;
        }
        if (rc == 1) {
            PyObject *compressed = PyBytes_FromStringAndSize(data, dlen);
            if (compressed == NULL) {
                goto done;
            }
            /* Raises zlib.error with zlib.decompress's own message. */
            Py_XSETREF(exact, PyObject_CallOneArg(st->zlib_decompress, compressed));
            Py_DECREF(compressed);
            if (exact == NULL) {
                goto done;
            }
            if (!PyBytes_Check(exact)) {
                PyErr_SetString(PyExc_TypeError, "zlib.decompress returned a non-bytes object");
                goto done;
            }
            data = PyBytes_AS_STRING(exact);
            dlen = PyBytes_GET_SIZE(exact);
        }
        else {
            data = inflated.data;
            dlen = inflated.len;
        }
    }
    result = cs_json_decode(st, data, dlen);
done:
    Py_XDECREF(exact);
    cs_buf_free(&raw);
    cs_buf_free(&inflated);
    return result;
}
