/* JSON decoding, with json.loads(data.decode("latin-1")) as the one definition of the
 * result and of every error.
 *
 * What sessions hold is json.dumps output: ASCII (ensure_ascii), every character above
 * U+007F as a \uXXXX escape. A recursive-descent parser builds the Python objects straight
 * from that text: a string goes from its escaped form to a str of the right width in one
 * decode (no UTF-8 in between), a float through simdjson's exact parser. It takes the part
 * of JSON those texts use and bails out on everything else (a byte >= 0x80, NaN and
 * Infinity, integers past 18 digits, a lone surrogate escape, nesting past MAX_DEPTH, any
 * error): a text it bails out on goes through json.loads itself, so what it does not
 * decode exactly it does not decode at all.
 *
 * Ownership: every function returns a new reference or NULL; NULL with an exception set is
 * an error (out of memory), NULL with `bail` set is "not ours". Array items wait on one
 * stack shared by all open arrays (each array knows where its own start) and are moved
 * into a list of the right size at the closing bracket; whatever an abort leaves on the
 * stack is released in one place.
 *
 * Sessions repeat keys ("sku", "qty" in every cart item) and short values (tags, states,
 * currency codes): two small direct-mapped memos, one for keys (as json's scanner keeps)
 * and one for string values, keyed by the escaped text of at most MEMO_MAX_LEN bytes, hand
 * out one str per distinct text, so each is decoded and allocated (and, for keys, hashed)
 * once per document. Sharing one str between equal values is invisible: strs are
 * immutable, and json.loads promises no identity.
 */
#include "json.h"
#include "simdjson_wrap.h"
#include "util.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MEMO_SLOTS 128
#define MEMO_MAX_LEN 48 /* escaped bytes: "\u043f\u0440\u0438\u0432\u0435\u0442" is 36 */
#define MAX_DEPTH 256   /* deeper documents are json.loads's (and its RecursionError's) */
#define SCRATCH_INLINE 256

typedef struct {
    PyObject *str; /* owned; only read when the memo's `used` bit for the slot is set */
    size_t len;
    char text[MEMO_MAX_LEN]; /* the escaped text it was decoded from */
} memo_entry;

/* The slots are left uninitialized and a bit per slot says which hold a str, so that a
 * small document pays for the slots it uses, not for all of them, at start and at end. */
typedef struct {
    uint64_t used[MEMO_SLOTS / 64];
    memo_entry slots[MEMO_SLOTS];
} memo;

typedef struct {
    const char *p, *end;
    int bail;          /* the text is not ours: no exception set, json.loads decides */
    int depth;
    PyObject **items;  /* owned references: the items of the open arrays */
    Py_ssize_t nitems, cap;
    Py_UCS4 *scratch;  /* a string's decoded characters; inline_scratch or heap */
    Py_ssize_t scratch_cap;
    memo keys;
    memo values;
    Py_UCS4 inline_scratch[SCRATCH_INLINE];
} parser;

static PyObject *
bail(parser *ps)
{
    ps->bail = 1;
    return NULL;
}

/* 1 for the bytes that end a run of plain string characters: '"', '\\', controls (json's
 * strict mode refuses them raw) and bytes >= 0x80 (latin-1 here, not ours). */
static const unsigned char special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* The first special byte in [p, end), or end. */
static inline const char *
find_special(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed compare: bytes >= 0x80 are negative, so below 0x20 too */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                   _mm_cmplt_epi8(v, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask != 0) {
            return p + __builtin_ctz((unsigned)mask);
        }
        p += 16;
    }
#endif
    while (p < end && !special[(unsigned char)*p]) {
        p++;
    }
    return p;
}

static inline void
skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t')) {
        ps->p++;
    }
}

/* Each hex digit's value; -1 for every other byte. */
static const int8_t hexval[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  -1, -1, -1, -1, -1, -1, -1, 10, 11, 12, 13, 14, 15, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/* The value of the 4 hex digits at s, or a negative number. */
static inline int32_t
hex4(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    int32_t a = hexval[u[0]], b = hexval[u[1]], c = hexval[u[2]], d = hexval[u[3]];
    return (a | b | c | d) < 0 ? -1 : a << 12 | b << 8 | c << 4 | d;
}

/* The character of the escape at s (a backslash, s + 1 < end) and, in *next, where the text
 * goes on; -1 when it is not ours (invalid, or a lone surrogate: json.loads keeps those). */
static inline int32_t
unescape(const char *s, const char *end, const char **next)
{
    static const char simple[128] = {
        ['"'] = '"', ['\\'] = '\\', ['/'] = '/', ['b'] = '\b',
        ['f'] = '\f', ['n'] = '\n', ['r'] = '\r', ['t'] = '\t',
    };
    unsigned char c = (unsigned char)s[1];
    if (c != 'u') {
        *next = s + 2;
        return c < 128 && simple[c] ? simple[c] : -1;
    }
    int32_t u = end - s >= 6 ? hex4(s + 2) : -1;
    if (u >= 0xD800 && u <= 0xDFFF) { /* only a high + low pair is ours */
        int32_t lo = u <= 0xDBFF && end - s >= 12 && s[6] == '\\' && s[7] == 'u' ? hex4(s + 8) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF) {
            return -1;
        }
        *next = s + 12;
        return 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
    }
    *next = s + 6;
    return u;
}

/* Room for `need` characters in the scratch buffer (its contents kept): 0, or -1 with
 * MemoryError. */
static int
grow_scratch(parser *ps, Py_ssize_t need)
{
    Py_ssize_t cap = ps->scratch_cap * 2 > need ? ps->scratch_cap * 2 : need;
    Py_UCS4 *grown = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(grown, ps->scratch, sizeof(Py_UCS4) * (size_t)ps->scratch_cap);
    if (ps->scratch != ps->inline_scratch) {
        PyMem_Free(ps->scratch);
    }
    ps->scratch = grown;
    ps->scratch_cap = cap;
    return 0;
}

/* A str of n characters from the scratch buffer; `seen` is the OR of them all, which
 * passes each of the widths' bounds (0x80, 0x100, 0x10000) exactly when the widest does. */
static PyObject *
str_from_scratch(const Py_UCS4 *chars, Py_ssize_t n, Py_UCS4 seen)
{
    Py_UCS4 maxchar = seen < 0x80 ? 0x7F : seen < 0x100 ? 0xFF : seen < 0x10000 ? 0xFFFF : 0x10FFFF;
    PyObject *str = PyUnicode_New(n, maxchar);
    if (str == NULL) {
        return NULL;
    }
    switch (PyUnicode_KIND(str)) {
    case PyUnicode_1BYTE_KIND: {
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(str);
        for (Py_ssize_t i = 0; i < n; i++) {
            d[i] = (Py_UCS1)chars[i];
        }
        break;
    }
    case PyUnicode_2BYTE_KIND: {
        Py_UCS2 *d = PyUnicode_2BYTE_DATA(str);
        for (Py_ssize_t i = 0; i < n; i++) {
            d[i] = (Py_UCS2)chars[i];
        }
        break;
    }
    default:
        memcpy(PyUnicode_4BYTE_DATA(str), chars, sizeof(Py_UCS4) * (size_t)n);
        break;
    }
    return str;
}

/* The closing quote of the string that starts at start, if it is within MEMO_MAX_LEN bytes
 * (what the memo holds), else NULL; q: the first special byte, a backslash. A quote is
 * escaped when an odd run of backslashes precedes it. */
static inline const char *
memo_window_quote(const char *start, const char *q, const char *end)
{
    const char *lim = end - start > MEMO_MAX_LEN ? start + MEMO_MAX_LEN + 1 : end;
    const char *p = q;
    while (p < lim) {
#ifdef __SSE2__
        if (end - p >= 16) {
            int mask = _mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), _mm_set1_epi8('"')));
            if (mask == 0) {
                p += 16;
                continue;
            }
            p += __builtin_ctz((unsigned)mask);
        }
        else
#endif
        {
            while (p < lim && *p != '"') {
                p++;
            }
        }
        if (p >= lim) {
            return NULL;
        }
        const char *b = p;
        while (b > q && b[-1] == '\\') {
            b--;
        }
        if (((p - b) & 1) == 0) {
            return p;
        }
        p++;
    }
    return NULL;
}

/* A string, ps->p just past its opening quote. One pass: runs of plain characters are
 * found 16 bytes at a time and widened into the scratch buffer, escapes decoded between
 * them; a string with no escape (most keys) is copied straight into an ASCII str. */
static PyObject *
parse_string(parser *ps, memo *memo)
{
    const char *start = ps->p, *end = ps->end;
    const char *q = find_special(start, end);
    /* The closing quote, when the text is short enough for the memo: looked up there before
     * the escapes are decoded (repeated values are mostly escaped words). */
    const char *close = q < end && *q == '"' ? q : q < end && *q == '\\' ? memo_window_quote(start, q, end) : NULL;
    memo_entry *m = NULL;
    uint64_t *used = NULL, bit = 0;
    size_t len = 0;
    if (close != NULL && close - start <= MEMO_MAX_LEN) {
        len = (size_t)(close - start);
        size_t slot = (size_t)(cs_short_hash((const unsigned char *)start, len) >> 32) % MEMO_SLOTS;
        m = &memo->slots[slot];
        used = &memo->used[slot / 64];
        bit = UINT64_C(1) << slot % 64;
        if ((*used & bit) && m->len == len && cs_same_short_bytes((const unsigned char *)m->text, (const unsigned char *)start, len)) {
            ps->p = close + 1;
            return Py_NewRef(m->str);
        }
    }
    Py_ssize_t n = 0;
    Py_UCS4 seen = 0;
    if (q < end && *q == '\\') {
        const char *run = start;
        for (;;) {
            /* the plain run before q, widened; then escapes, which come in runs too */
            if (n + (q - run) > ps->scratch_cap && grow_scratch(ps, n + (q - run)) < 0) {
                return NULL;
            }
            for (; run < q; run++) {
                ps->scratch[n++] = (unsigned char)*run;
            }
            if (q == end || *q != '\\') {
                break;
            }
            do {
                if (end - q < 2) {
                    return bail(ps);
                }
                int32_t ch = unescape(q, end, &q);
                if (ch < 0) {
                    return bail(ps);
                }
                if (n == ps->scratch_cap && grow_scratch(ps, n + 1) < 0) {
                    return NULL;
                }
                ps->scratch[n++] = (Py_UCS4)ch;
                seen |= (Py_UCS4)ch;
            } while (q < end && *q == '\\');
            run = q;
            q = find_special(q, end);
        }
    }
    if (q == end || *q != '"') {
        return bail(ps); /* unterminated, a control character or a byte >= 0x80 */
    }
    assert(m == NULL || q == close);
    ps->p = q + 1;
    PyObject *str = n > 0 ? str_from_scratch(ps->scratch, n, seen) : cs_new_ascii(start, q - start);
    if (str != NULL && m != NULL) {
        if (*used & bit) {
            Py_SETREF(m->str, Py_NewRef(str));
        }
        else {
            m->str = Py_NewRef(str);
            *used |= bit;
        }
        m->len = len;
        memcpy(m->text, start, len);
    }
    return str;
}

static inline int
is_digit(const char *p, const char *end)
{
    return p < end && (unsigned char)(*p - '0') <= 9;
}

/* Consumes the digits at p into *acc (acc * 10 + digit each, modulo 2^64: the caller counts
 * them and only uses what fits). Eight at a time while eight are there: a chain of one
 * multiply per digit is what a 17-digit float's text costs otherwise. */
static inline const char *
scan_digits(const char *p, const char *end, uint64_t *acc)
{
    uint64_t v = *acc;
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        /* all eight are '0'..'9': high nibbles 3, and adding 6 carries out of none */
        if (((w & UINT64_C(0xF0F0F0F0F0F0F0F0)) |
             (((w + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) >> 4)) !=
            UINT64_C(0x3333333333333333)) {
            break;
        }
        w -= UINT64_C(0x3030303030303030);
        w = w * 10 + (w >> 8); /* pairs */
        w = (((w & UINT64_C(0x000000FF000000FF)) * (100 + (UINT64_C(1000000) << 32))) +
             (((w >> 16) & UINT64_C(0x000000FF000000FF)) * (1 + (UINT64_C(10000) << 32)))) >> 32;
        v = v * 100000000 + (uint32_t)w;
        p += 8;
    }
    while (is_digit(p, end)) {
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    *acc = v;
    return p;
}

/* json's NUMBER_RE, -?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?: an int when it has neither
 * fraction nor exponent, else float(text). */
static PyObject *
parse_number(parser *ps)
{
    const char *s = ps->p, *p = s, *end = ps->end;
    int negative = p < end && *p == '-';
    p += negative;
    if (!is_digit(p, end)) {
        return bail(ps); /* -Infinity, or not a number */
    }
    uint64_t mantissa = 0;
    Py_ssize_t significant; /* digits from the first non-zero one */
    if (*p == '0') {
        p++;
        significant = 0;
    }
    else {
        const char *digits = p;
        p = scan_digits(p, end, &mantissa);
        significant = p - digits;
    }
    int is_float = 0;
    int64_t exp10 = 0;
    if (p < end && *p == '.') {
        const char *fraction = ++p;
        if (significant == 0) {
            while (p < end && *p == '0') { /* 0.000123: leading zeros are not significant */
                p++;
            }
        }
        const char *digits = p;
        p = scan_digits(p, end, &mantissa);
        if (p == fraction) {
            return bail(ps);
        }
        significant += p - digits;
        exp10 = -(int64_t)(p - fraction);
        is_float = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int exp_negative = p < end && *p == '-';
        p += p < end && (*p == '+' || *p == '-');
        const char *digits = p;
        uint64_t e = 0;
        p = scan_digits(p, end, &e);
        if (p == digits || p - digits > 9) {
            return bail(ps); /* no digits, or an exponent json.loads had better judge */
        }
        exp10 += exp_negative ? -(int64_t)e : (int64_t)e;
        is_float = 1;
    }
    ps->p = p;
    if (is_float) {
        double d;
        if (significant > 19 || cs_double_from_decimal(mantissa, exp10, negative, s, p, &d) != 0) {
            return bail(ps); /* a long mantissa, or out of range (json.loads gives inf) */
        }
        return PyFloat_FromDouble(d);
    }
    if (significant > 18) {
        return bail(ps);
    }
    return PyLong_FromLongLong(negative ? -(long long)mantissa : (long long)mantissa);
}

static PyObject *parse_value(parser *ps);

static PyObject *
parse_array(parser *ps)
{
    Py_ssize_t base = ps->nitems;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return PyList_New(0);
    }
    for (;;) {
        PyObject *item = parse_value(ps);
        if (item == NULL) {
            return NULL; /* the items stay on the stack for the caller to release */
        }
        if (ps->nitems == ps->cap) {
            Py_ssize_t cap = ps->cap ? ps->cap * 2 : 64;
            PyObject **grown = PyMem_Realloc(ps->items, sizeof(PyObject *) * (size_t)cap);
            if (grown == NULL) {
                Py_DECREF(item);
                return PyErr_NoMemory();
            }
            ps->items = grown;
            ps->cap = cap;
        }
        ps->items[ps->nitems++] = item; /* the stack owns it */
        skip_ws(ps);
        if (ps->p >= ps->end) {
            return bail(ps);
        }
        char c = *ps->p++;
        if (c == ']') {
            break;
        }
        if (c != ',') {
            return bail(ps);
        }
    }
    PyObject *list = PyList_New(ps->nitems - base);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = base; i < ps->nitems; i++) {
        PyList_SET_ITEM(list, i - base, ps->items[i]); /* steals the stack's reference */
    }
    ps->nitems = base;
    return list;
}

static PyObject *
parse_object(parser *ps)
{
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return dict;
    }
    for (;;) {
        if (ps->p >= ps->end || *ps->p != '"') {
            goto not_ours;
        }
        ps->p++;
        PyObject *key = parse_string(ps, &ps->keys);
        if (key == NULL) {
            goto fail;
        }
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            Py_DECREF(key);
            goto not_ours;
        }
        ps->p++;
        PyObject *value = parse_value(ps);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int rc = PyDict_SetItem(dict, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) {
            goto fail;
        }
        skip_ws(ps);
        if (ps->p >= ps->end) {
            goto not_ours;
        }
        char c = *ps->p++;
        if (c == '}') {
            return dict;
        }
        if (c != ',') {
            goto not_ours;
        }
        skip_ws(ps);
    }
not_ours:
    ps->bail = 1;
fail:
    Py_DECREF(dict);
    return NULL;
}

static PyObject *
parse_value(parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        return bail(ps);
    }
    const char *p = ps->p;
    switch (*p) {
    case '"':
        ps->p++;
        return parse_string(ps, &ps->values);
    case '{':
    case '[': {
        /* json's scanner enters a recursive call per container, so the same limit holds,
         * give or take the three frames json.loads itself stands on: within those of the
         * limit a document may decode here that json.loads refuses, never the reverse */
        if (ps->depth == MAX_DEPTH || Py_EnterRecursiveCall(" while decoding a JSON document")) {
            PyErr_Clear(); /* json.loads decides what is too deep */
            return bail(ps);
        }
        ps->depth++;
        ps->p++;
        PyObject *v = *p == '{' ? parse_object(ps) : parse_array(ps);
        ps->depth--;
        Py_LeaveRecursiveCall();
        return v;
    }
    case 't':
        if (ps->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            ps->p += 4;
            Py_RETURN_TRUE;
        }
        return bail(ps);
    case 'f':
        if (ps->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            ps->p += 5;
            Py_RETURN_FALSE;
        }
        return bail(ps);
    case 'n':
        if (ps->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            ps->p += 4;
            Py_RETURN_NONE;
        }
        return bail(ps);
    default:
        return parse_number(ps);
    }
}

static void
memo_clear(memo *memo)
{
    for (int w = 0; w < MEMO_SLOTS / 64; w++) {
        for (uint64_t bits = memo->used[w]; bits != 0; bits &= bits - 1) {
            Py_DECREF(memo->slots[w * 64 + __builtin_ctzll(bits)].str);
        }
    }
}

static PyObject *
decode_exact(cs_state *st, const char *buf, Py_ssize_t len)
{
    PyObject *text = PyUnicode_DecodeLatin1(buf, len, NULL);
    if (text == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(st->json_loads, text);
    Py_DECREF(text);
    return result;
}

PyObject *
cs_json_decode(cs_state *st, const char *buf, Py_ssize_t len)
{
    parser ps; /* not zeroed whole: a memo slot is only read behind its used bit */
    ps.p = buf;
    ps.end = buf + len;
    ps.bail = 0;
    ps.depth = 0;
    ps.items = NULL;
    ps.nitems = ps.cap = 0;
    ps.scratch = ps.inline_scratch;
    ps.scratch_cap = SCRATCH_INLINE;
    memset(ps.keys.used, 0, sizeof ps.keys.used);
    memset(ps.values.used, 0, sizeof ps.values.used);

    PyObject *result = parse_value(&ps);
    if (result != NULL) {
        skip_ws(&ps);
        if (ps.p != ps.end) { /* json.loads: "Extra data" */
            Py_CLEAR(result);
            ps.bail = 1;
        }
    }

    for (Py_ssize_t i = 0; i < ps.nitems; i++) { /* only after an abort */
        Py_DECREF(ps.items[i]);
    }
    PyMem_Free(ps.items);
    if (ps.scratch != ps.inline_scratch) {
        PyMem_Free(ps.scratch);
    }
    memo_clear(&ps.keys);
    memo_clear(&ps.values);
    if (result == NULL && ps.bail && !PyErr_Occurred()) {
        return decode_exact(st, buf, len);
    }
    return result;
}
