#include "deflate_quick.h"

#include <limits.h>
#include <string.h>
#include <zlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_ADLER32_SSSE3 1
#endif

#define HASH_BITS 13
#define WINDOW 32768
#define MIN_MATCH 4 /* deflate allows 3; a 3-byte match saves too little under fixed codes */
#define MAX_MATCH 258

#define DIST_INVALID (UINT32_C(1) << 20)

/* RFC 1951 3.2.5: each length and distance symbol's base and extra bits. */
static const uint16_t len_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t dist_base[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                       33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                       1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static unsigned
reverse_bits(unsigned code, unsigned len)
{
    unsigned r = 0;
    for (unsigned i = 0; i < len; i++) {
        r = (r << 1) | ((code >> i) & 1);
    }
    return r;
}

void
cs_fixed_codes_init(cs_fixed_codes *c)
{
    for (unsigned s = 0; s < 288; s++) {
        unsigned code, len;
        if (s < 144) {
            code = 0x30 + s, len = 8;
        }
        else if (s < 256) {
            code = 0x190 + s - 144, len = 9;
        }
        else if (s < 280) {
            code = s - 256, len = 7;
        }
        else {
            code = 0xc0 + s - 280, len = 8;
        }
        c->litlen[s] = (uint16_t)(reverse_bits(code, len) << 4 | len);
    }
    for (unsigned d = 0; d < 30; d++) {
        c->dist[d] = (uint8_t)reverse_bits(d, 5);
    }
    /* The encoder's: each match length's code and extra bits, ready to write. */
    for (unsigned li = 0; li < 29; li++) {
        unsigned code = c->litlen[257 + li];
        unsigned last = li == 28 ? 258 : len_base[li + 1] - 1u;
        if (li == 27) {
            last = 257; /* 258 has its own symbol */
        }
        for (unsigned len = len_base[li]; len <= last; len++) {
            unsigned n = (code & 15) + len_extra[li];
            c->len_bits[len - 3] = (uint32_t)n << 24 | ((len - len_base[li]) << (code & 15)) | code >> 4;
        }
    }
    /* Distance - 1 -> symbol: directly below 256, by (distance - 1) >> 7 above (zlib's way). */
    for (unsigned d = 0; d < 30; d++) {
        for (unsigned k = dist_base[d] - 1u; k < dist_base[d] - 1u + (1u << dist_extra[d]); k++) {
            if (k < 256) {
                c->dist_lo[k] = (uint8_t)d;
            }
            else {
                c->dist_hi[k >> 7] = (uint8_t)d;
            }
        }
    }
    /* The decoder's: every 9-bit string that starts with a symbol's code maps to it. */
    for (unsigned s = 0; s < 288; s++) {
        unsigned code = c->litlen[s] >> 4, len = c->litlen[s] & 15;
        for (unsigned fill = 0; fill < 1u << (9 - len); fill++) {
            uint32_t e = s << 4 | len;
            if (s >= 257 && s <= 285) {
                e |= (uint32_t)len_extra[s - 257] << 13 | (uint32_t)len_base[s - 257] << 16;
            }
            c->litlen_dec[code | fill << len] = e;
        }
    }
    for (unsigned d = 0; d < 32; d++) {
        c->dist_dec[reverse_bits(d, 5)] =
            d < 30 ? (uint32_t)dist_extra[d] << 16 | dist_base[d] : DIST_INVALID;
    }
}

/* Bits go out LSB first, 32 at a time; `count` < 32 between calls. */
typedef struct {
    uint64_t bits;
    unsigned count;
    unsigned char *p;
} bitwriter;

static inline void
put_bits(bitwriter *w, uint64_t value, unsigned n)
{
    assert(w->count < 32 && n <= 32);
    w->bits |= value << w->count;
    w->count += n;
    if (w->count >= 32) {
        uint32_t v = (uint32_t)w->bits;
        w->p[0] = (unsigned char)v;
        w->p[1] = (unsigned char)(v >> 8);
        w->p[2] = (unsigned char)(v >> 16);
        w->p[3] = (unsigned char)(v >> 24);
        w->p += 4;
        w->bits >>= 32;
        w->count -= 32;
    }
}

static inline void
put_literal(const cs_fixed_codes *c, bitwriter *w, unsigned char byte)
{
    unsigned e = c->litlen[byte];
    put_bits(w, e >> 4, e & 15);
}

/* One match as a single write: length code + extra (<= 13 bits), distance code + extra
 * (<= 18). */
static inline void
put_match(const cs_fixed_codes *c, bitwriter *w, unsigned len, unsigned dist)
{
    uint32_t lb = c->len_bits[len - 3];
    uint64_t v = lb & 0xffffff;
    unsigned n = lb >> 24, d = dist - 1;
    unsigned dsym = d < 256 ? c->dist_lo[d] : c->dist_hi[d >> 7];
    v |= ((uint64_t)c->dist[dsym] | (uint64_t)(d - (dist_base[dsym] - 1u)) << 5) << n;
    put_bits(w, v, n + 5 + dist_extra[dsym]);
}

static inline uint64_t
le64(uint64_t x) /* a little-endian word read with memcpy */
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(x);
#else
    return x;
#endif
}

static inline uint32_t
load32(const unsigned char *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* How far a and b agree, from `len` (known equal before it) up to max: 8 bytes at a time
 * (the first differing bit of their XOR names the byte) while 8 remain. */
static inline Py_ssize_t
match_length(const unsigned char *a, const unsigned char *b, Py_ssize_t len, Py_ssize_t max)
{
    while (len + 8 <= max) {
        uint64_t x, y;
        memcpy(&x, a + len, 8);
        memcpy(&y, b + len, 8);
        uint64_t diff = le64(x ^ y);
        if (diff != 0) {
            return len + (__builtin_ctzll(diff) >> 3);
        }
        len += 8;
    }
    while (len < max && a[len] == b[len]) {
        len++;
    }
    return len;
}

/* --- Adler-32 ----------------------------------------------------------------------------
 * zlib's adler32() goes a byte at a time (~3.6 instructions a byte: a third of what the
 * encoder spends on the rest of a 93 KB session); with SSSE3, 32 bytes at a time. Per
 * 32-byte block, s1 gains the bytes' sum (psadbw) and s2 gains 32 x the s1 it started with
 * plus the bytes weighted 32..1 (pmaddubsw, pmaddwd); both are reduced mod 65521 every
 * ADLER_NMAX bytes, zlib's bound for 32-bit sums that cannot overflow. */
#define ADLER_BASE 65521u
#define ADLER_NMAX 5552

#ifdef HAVE_ADLER32_SSSE3
__attribute__((target("ssse3"))) static uint32_t
adler32_ssse3(uint32_t adler, const unsigned char *p, size_t len)
{
    uint32_t s1 = adler & 0xffff, s2 = adler >> 16;
    const __m128i tap1 = _mm_setr_epi8(32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17);
    const __m128i tap2 = _mm_setr_epi8(16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    const __m128i zero = _mm_setzero_si128(), ones = _mm_set1_epi16(1);
    size_t blocks = len / 32;
    len -= blocks * 32;
    while (blocks > 0) {
        size_t n = blocks < ADLER_NMAX / 32 ? blocks : ADLER_NMAX / 32;
        blocks -= n;
        __m128i v_ps = _mm_set_epi32(0, 0, 0, (int)(s1 * n)); /* the s1 each block starts with */
        __m128i v_s1 = zero, v_s2 = _mm_set_epi32(0, 0, 0, (int)s2);
        for (; n > 0; n--, p += 32) {
            __m128i a = _mm_loadu_si128((const __m128i *)p);
            __m128i b = _mm_loadu_si128((const __m128i *)(p + 16));
            v_ps = _mm_add_epi32(v_ps, v_s1);
            v_s1 = _mm_add_epi32(v_s1, _mm_add_epi32(_mm_sad_epu8(a, zero), _mm_sad_epu8(b, zero)));
            v_s2 = _mm_add_epi32(v_s2, _mm_madd_epi16(_mm_maddubs_epi16(a, tap1), ones));
            v_s2 = _mm_add_epi32(v_s2, _mm_madd_epi16(_mm_maddubs_epi16(b, tap2), ones));
        }
        v_s2 = _mm_add_epi32(v_s2, _mm_slli_epi32(v_ps, 5));
        v_s1 = _mm_add_epi32(v_s1, _mm_shuffle_epi32(v_s1, _MM_SHUFFLE(2, 3, 0, 1)));
        v_s1 = _mm_add_epi32(v_s1, _mm_shuffle_epi32(v_s1, _MM_SHUFFLE(1, 0, 3, 2)));
        v_s2 = _mm_add_epi32(v_s2, _mm_shuffle_epi32(v_s2, _MM_SHUFFLE(2, 3, 0, 1)));
        v_s2 = _mm_add_epi32(v_s2, _mm_shuffle_epi32(v_s2, _MM_SHUFFLE(1, 0, 3, 2)));
        s1 = (s1 + (uint32_t)_mm_cvtsi128_si32(v_s1)) % ADLER_BASE;
        s2 = (uint32_t)_mm_cvtsi128_si32(v_s2) % ADLER_BASE;
    }
    for (size_t i = 0; i < len; i++) { /* < 32 bytes */
        s1 += p[i];
        s2 += s1;
    }
    return (s1 % ADLER_BASE) | (s2 % ADLER_BASE) << 16;
}
#endif

static uint32_t
adler32_of(const unsigned char *p, size_t len)
{
#ifdef HAVE_ADLER32_SSSE3
    if (__builtin_cpu_supports("ssse3")) {
        return adler32_ssse3(1, p, len);
    }
#endif
    return (uint32_t)adler32_z(adler32(0L, Z_NULL, 0), p, len);
}

/* The hash of the 6 bytes at p (8 readable). Hashing 6 rather than the 4 a match needs
 * leaves out the candidates that share only "\\u04" or "\":\"" with the text, which a
 * session's JSON is full of: on the 93 KB reference session the matches come out fewer and
 * longer (5,363 of 16.2 bytes on average against 6,534 of 13.6), the stream 5% smaller and
 * both directions ~10% faster. */
static inline uint32_t
hash6(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return (uint32_t)(((x << 16) * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - HASH_BITS));
}

int
cs_deflate_quick(const cs_fixed_codes *c, cs_buf *out, const unsigned char *in, Py_ssize_t n)
{
    assert(0 <= n && n <= CS_DEFLATE_QUICK_MAX);
    /* At worst every byte is a 9-bit literal; + header, block header, end, padding and the
     * Adler-32. */
    if (cs_buf_reserve(out, n + n / 8 + 32) < 0) {
        return -1;
    }
    uint32_t *head = PyMem_Calloc((size_t)1 << HASH_BITS, sizeof(uint32_t));
    if (head == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *start = (unsigned char *)out->data + out->len;
    start[0] = 0x78;
    start[1] = 0x01;
    bitwriter w = {0, 0, start + 2};
    put_bits(&w, 1 | 1 << 1, 3); /* BFINAL, BTYPE 01 */
    Py_ssize_t i = 0, last = n - 8; /* the last position hash6 can read at */
    while (i <= last) {
        uint32_t x = load32(in + i);
        uint32_t *slot = &head[hash6(in + i)];
        Py_ssize_t cand = (Py_ssize_t)*slot - 1;
        *slot = (uint32_t)(i + 1);
        if (cand < 0 || i - cand > WINDOW || load32(in + cand) != x) {
            put_literal(c, &w, in[i++]);
            continue;
        }
        Py_ssize_t max = n - i < MAX_MATCH ? n - i : MAX_MATCH;
        Py_ssize_t len = match_length(in + cand, in + i, MIN_MATCH, max);
        put_match(c, &w, (unsigned)len, (unsigned)(i - cand));
        /* One more position for later matches: the one before the match's end. */
        Py_ssize_t j = i + len - 2;
        if (j <= last) {
            head[hash6(in + j)] = (uint32_t)(j + 1);
        }
        i += len;
    }
    while (i < n) {
        put_literal(c, &w, in[i++]);
    }
    put_bits(&w, c->litlen[256] >> 4, c->litlen[256] & 15);
    while (w.count > 0) {
        *w.p++ = (unsigned char)w.bits;
        w.bits >>= 8;
        w.count = w.count > 8 ? w.count - 8 : 0;
    }
    uint32_t adler = adler32_of(in, (size_t)n);
    w.p[0] = (unsigned char)(adler >> 24);
    w.p[1] = (unsigned char)(adler >> 16);
    w.p[2] = (unsigned char)(adler >> 8);
    w.p[3] = (unsigned char)adler;
    w.p += 4;
    PyMem_Free(head);
    assert(w.p <= (unsigned char *)out->data + out->cap);
    out->len = (char *)w.p - out->data;
    return 0;
}

/* --- the decoder ------------------------------------------------------------------------ */

/* Refills to at least 56 bits. While 8 bytes remain it ORs in a whole word and advances by
 * the bytes that fit: the bits above `bc` then already hold the next bytes, and OR-ing the
 * same bits into the same places again next time changes nothing. Past the input's end,
 * zero bits come in and `over` counts them (a stream that uses them is truncated). */
#define REFILL()                                                                             \
    do {                                                                                     \
        if (iend - ip >= 8) {                                                                \
            uint64_t w_;                                                                     \
            memcpy(&w_, ip, 8);                                                              \
            bb |= le64(w_) << bc;                                                            \
            ip += (63 - bc) >> 3;                                                            \
            bc |= 56;                                                                        \
        }                                                                                    \
        else {                                                                               \
            while (bc <= 56) {                                                               \
                if (ip < iend) {                                                             \
                    bb |= (uint64_t)*ip++ << bc;                                             \
                }                                                                            \
                else {                                                                       \
                    over += 8;                                                               \
                }                                                                            \
                bc += 8;                                                                     \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* Room the loop keeps ahead of the output pointer: a whole match plus the overrun of its
 * wide copy (at most 15 bytes). */
#define ROOM (MAX_MATCH + 17)

int
cs_inflate_quick(const cs_fixed_codes *c, cs_buf *out, const unsigned char *in, Py_ssize_t n)
{
    /* Ours: zlib header 78 01 and one final block of fixed codes first. */
    if (n < 2 + 1 + 4 || in[0] != 0x78 || in[1] != 0x01 || (in[2] & 7) != 3) {
        return 1;
    }
    Py_ssize_t start = out->len;
    if (cs_buf_reserve(out, (n < PY_SSIZE_T_MAX / 8 ? n * 4 : n) + ROOM) < 0) {
        return -1;
    }
    const unsigned char *ip = in + 2, *iend = in + n;
    char *op = out->data + out->len, *oend = out->data + out->cap - ROOM;
    uint64_t bb = 0, over = 0;
    unsigned bc = 0;
    REFILL();
    bb >>= 3;
    bc -= 3;
    for (;;) {
        if (op > oend) {
            out->len = op - out->data;
            if (cs_buf_reserve(out, ROOM) < 0) {
                out->len = start;
                return -1;
            }
            op = out->data + out->len;
            oend = out->data + out->cap - ROOM;
        }
        REFILL(); /* >= 56 bits: a literal (<= 9) and then the longest match (31) */
        uint32_t e = c->litlen_dec[bb & 511];
        unsigned sym = e >> 4 & 511;
        bb >>= e & 15;
        bc -= e & 15;
        if (sym < 256) {
            *op++ = (char)sym;
            e = c->litlen_dec[bb & 511];
            sym = e >> 4 & 511;
            bb >>= e & 15;
            bc -= e & 15;
            if (sym < 256) {
                *op++ = (char)sym;
                continue;
            }
        }
        if (sym == 256) {
            break;
        }
        if (sym > 285) {
            goto not_ours;
        }
        unsigned extra = e >> 13 & 7;
        unsigned len = (e >> 16) + (unsigned)(bb & ((1u << extra) - 1));
        bb >>= extra;
        bc -= extra;
        uint32_t de = c->dist_dec[bb & 31];
        bb >>= 5;
        bc -= 5;
        if (de & DIST_INVALID) {
            goto not_ours;
        }
        extra = de >> 16;
        unsigned dist = (de & 0xffff) + (unsigned)(bb & ((1u << extra) - 1));
        bb >>= extra;
        bc -= extra;
        if ((Py_ssize_t)dist > op - (out->data + start)) {
            goto not_ours;
        }
        const char *src = op - dist;
        if (dist >= 8) {
            /* 8 at a time, the first 16 bytes (most matches) with no loop to mispredict; up
             * to 15 bytes past the match: within ROOM */
            memcpy(op, src, 8);
            memcpy(op + 8, src + 8, 8);
            for (unsigned k = 16; k < len; k += 8) {
                memcpy(op + k, src + k, 8);
            }
        }
        else {
            for (unsigned k = 0; k < len; k++) {
                op[k] = src[k];
            }
        }
        op += len;
    }
    out->len = op - out->data;
    if (over > bc) { /* consumed bits that were never there */
        goto not_ours;
    }
    /* The Adler-32 starts at the next byte boundary after the bits consumed. */
    Py_ssize_t pos = (ip - in) - (Py_ssize_t)((bc - over) / 8);
    if (pos + 4 > n) {
        goto not_ours;
    }
    uint32_t adler = (uint32_t)in[pos] << 24 | (uint32_t)in[pos + 1] << 16 |
                     (uint32_t)in[pos + 2] << 8 | in[pos + 3];
    if (adler != adler32_of((const unsigned char *)out->data + start, (size_t)(out->len - start))) {
        goto not_ours;
    }
    return 0;
not_ours:
    out->len = start;
    return 1;
}
