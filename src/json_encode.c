/* JSON encoding, byte for byte json.dumps(obj, separators=(",", ":")), following
 * CPython's Modules/_json.c: the same type tests in the same order (None, True, False,
 * str, int, float, list/tuple, dict; anything else is rejected as the default
 * JSONEncoder.default does), int.__repr__ and float.__repr__ for numbers whatever the
 * subclass, ensure_ascii escaping with lowercase hex, NaN/Infinity allowed.
 *
 * Circular references: _json.c keeps a dict of the ids of the open containers. Here the
 * first SCAN_DEPTH open containers sit in a small array scanned linearly, which is cheaper
 * at session depths; deeper ones also go into a set of ids (`deep`), so pathological
 * nesting costs O(depth), not O(depth^2). Same ValueError either way. No user Python code
 * runs during encoding of exact dicts and lists, which is why borrowed references from
 * PyDict_Next are safe.
 */
#include "json.h"
#include "float_repr.h"

#include <math.h>

#define SCAN_DEPTH 32

typedef struct {
    cs_buf *out;
    PyObject *open[SCAN_DEPTH]; /* borrowed: the outermost open containers */
    PyObject *deep;             /* owned, NULL until needed: set of ids of deeper ones */
    Py_ssize_t depth;
} encoder;

static int encode_obj(encoder *e, PyObject *obj);

static const char hexdigits[] = "0123456789abcdef";

/* 0: copied as is; otherwise the character after the backslash ('u' for \u00XX). */
static const char escape_table[128] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'u', /* 0x7f: _json.c escapes DEL */
};

static inline char *
put_u16(char *p, Py_UCS4 c)
{
    *p++ = '\\';
    *p++ = 'u';
    *p++ = hexdigits[(c >> 12) & 0xf];
    *p++ = hexdigits[(c >> 8) & 0xf];
    *p++ = hexdigits[(c >> 4) & 0xf];
    *p++ = hexdigits[c & 0xf];
    return p;
}

/* 1 if any of the 8 ASCII bytes in w needs an escape: below 0x20, '"', '\\' or DEL. */
static inline int
any_escape8(uint64_t w)
{
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
#define HAS_ZERO(x) (((x) - ones) & ~(x) & highs)
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\'), del = w ^ (ones * 0x7f);
    uint64_t control = (w - ones * 0x20) & ~w & highs; /* exact for bytes below 0x80 */
    return (control | HAS_ZERO(quote) | HAS_ZERO(backslash) | HAS_ZERO(del)) != 0;
#undef HAS_ZERO
}

static inline char *
put_ascii(char *p, unsigned char c)
{
    char esc = escape_table[c];
    if (esc == 0) {
        *p++ = (char)c;
    }
    else if (esc == 'u') {
        p = put_u16(p, c);
    }
    else {
        *p++ = '\\';
        *p++ = esc;
    }
    return p;
}

/* Escapes the n characters of type T at src into p; returns the new end. One loop per
 * width, so that the load is a plain one. */
#define ENCODE_CHARS(T, src, n, p)                                                          \
    do {                                                                                    \
        const T *s_ = (const T *)(src);                                                     \
        for (Py_ssize_t i_ = 0; i_ < (n); i_++) {                                           \
            Py_UCS4 c_ = s_[i_];                                                            \
            if (c_ < 128) {                                                                 \
                p = put_ascii(p, (unsigned char)c_);                                        \
            }                                                                               \
            else if (c_ >= 0x10000) {                                                       \
                Py_UCS4 v_ = c_ - 0x10000;                                                  \
                p = put_u16(p, 0xd800 | ((v_ >> 10) & 0x3ff));                             \
                p = put_u16(p, 0xdc00 | (v_ & 0x3ff));                                      \
            }                                                                               \
            else {                                                                          \
                p = put_u16(p, c_);                                                         \
            }                                                                               \
        }                                                                                   \
    } while (0)

static int
encode_str(cs_buf *out, PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    /* Worst case: every character a surrogate pair, 12 bytes. */
    if (n > (PY_SSIZE_T_MAX - 2) / 12) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyUnicode_IS_ASCII(s)) {
        const unsigned char *src = PyUnicode_1BYTE_DATA(s);
        if (cs_buf_reserve(out, n * 6 + 2) < 0) {
            return -1;
        }
        char *p = out->data + out->len;
        *p++ = '"';
        Py_ssize_t i = 0;
        /* Most text needs no escape: 8 bytes at a time while none does. */
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, src + i, sizeof w);
            if (any_escape8(w)) {
                for (int k = 0; k < 8; k++) {
                    p = put_ascii(p, src[i + k]);
                }
            }
            else {
                memcpy(p, &w, sizeof w);
                p += 8;
            }
        }
        for (; i < n; i++) {
            p = put_ascii(p, src[i]);
        }
        *p++ = '"';
        out->len = p - out->data;
        return 0;
    }
    const void *data = PyUnicode_DATA(s);
    if (cs_buf_reserve(out, n * 12 + 2) < 0) {
        return -1;
    }
    char *p = out->data + out->len;
    *p++ = '"';
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND:
        ENCODE_CHARS(Py_UCS1, data, n, p);
        break;
    case PyUnicode_2BYTE_KIND:
        ENCODE_CHARS(Py_UCS2, data, n, p);
        break;
    default:
        ENCODE_CHARS(Py_UCS4, data, n, p);
        break;
    }
    *p++ = '"';
    out->len = p - out->data;
    return 0;
}

static int
append_repr(cs_buf *out, PyObject *repr) /* steals repr */
{
    if (repr == NULL) {
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(repr, &n);
    int rc = s == NULL ? -1 : cs_buf_append(out, s, n);
    Py_DECREF(repr);
    return rc;
}

static int
encode_int(cs_buf *out, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) {
        return append_repr(out, PyLong_Type.tp_repr(obj)); /* int.__repr__, as _json.c */
    }
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    char tmp[24];
    char *end = tmp + sizeof(tmp);
    char *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) {
        *--p = '-';
    }
    return cs_buf_append(out, p, end - p);
}

static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7};

/* repr() of a float in [1e-4, 1e6) with at most 7 decimals, such as prices and ages,
 * without dtoa. Returns the length written to buf (<= 16), or 0 to let dtoa decide.
 *
 * Why it is exact: for |d| < 1e6 one ulp is below 1.2e-10, far finer than the 1e-7
 * spacing of 7-decimal numbers, so at most one p-decimal number rounds to d, and it is
 * m = round(d * 10**p). m < 2**53 and 10**p are exact doubles and IEEE division is
 * correctly rounded, so m / 10**p == d is precisely the round-trip test repr uses, and
 * the smallest such p gives repr's shortest digits (fixed notation in this range). */
static int
float_repr_fast(double d, char *buf)
{
    double a = fabs(d);
    if (!(a >= 1e-4 && a < 1e6)) {
        return 0;
    }
    /* A number with p <= 7 decimals also passes the test with 7, so most doubles (17
     * digits) are told apart with one try instead of eight. */
    if (nearbyint(a * pow10[7]) / pow10[7] != a) {
        return 0;
    }
    for (int p = 0; p < 8; p++) {
        double m = nearbyint(a * pow10[p]);
        if (m / pow10[p] != a) {
            continue;
        }
        unsigned long long digits = (unsigned long long)m;
        char tmp[24];
        char *end = tmp + sizeof(tmp);
        char *q = end;
        for (int i = 0; i < p; i++) {
            *--q = (char)('0' + digits % 10);
            digits /= 10;
        }
        if (p == 0) {
            *--q = '0';
        }
        *--q = '.';
        do {
            *--q = (char)('0' + digits % 10);
            digits /= 10;
        } while (digits);
        if (d < 0) {
            *--q = '-';
        }
        memcpy(buf, q, (size_t)(end - q));
        return (int)(end - q);
    }
    return 0;
}

/* float.__repr__, with allow_nan's spellings for the non-finite. */
static int
encode_float(cs_buf *out, PyObject *obj)
{
    double d = PyFloat_AS_DOUBLE(obj);
    if (!isfinite(d)) {
        if (isnan(d)) {
            return cs_buf_append(out, "NaN", 3);
        }
        return d > 0 ? cs_buf_append(out, "Infinity", 8) : cs_buf_append(out, "-Infinity", 9);
    }
    char fast[24];
    int n = float_repr_fast(d, fast);
    if (n > 0) {
        return cs_buf_append(out, fast, n);
    }
    char shortest[CS_FLOAT_REPR_MAX];
    n = cs_float_repr(d, shortest);
    if (n > 0) {
        return cs_buf_append(out, shortest, n);
    }
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return -1;
    }
    int rc = cs_buf_append(out, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return rc;
}

/* Removes obj from the set of deep open containers. Runs while an error may be
 * propagating, so it sets that error aside and puts it back. */
static void
forget_deep(encoder *e, PyObject *obj)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
#endif
    PyObject *id = PyLong_FromVoidPtr(obj);
    if (id == NULL || PySet_Discard(e->deep, id) < 0) {
        PyErr_Clear(); /* only costs a stale id: the set dies with the encoder */
    }
    Py_XDECREF(id);
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(type, value, tb);
#endif
}

/* Marks obj as open. -1 with ValueError if it already is (a cycle), or RecursionError. */
static int
enter(encoder *e, PyObject *obj)
{
    Py_ssize_t scanned = e->depth < SCAN_DEPTH ? e->depth : SCAN_DEPTH;
    for (Py_ssize_t i = 0; i < scanned; i++) {
        if (e->open[i] == obj) {
            goto circular;
        }
    }
    if (e->depth >= SCAN_DEPTH) {
        if (e->deep == NULL && (e->deep = PySet_New(NULL)) == NULL) {
            return -1;
        }
        PyObject *id = PyLong_FromVoidPtr(obj);
        if (id == NULL) {
            return -1;
        }
        int seen = PySet_Contains(e->deep, id);
        int rc = seen == 0 ? PySet_Add(e->deep, id) : -1;
        Py_DECREF(id);
        if (seen == 1) {
            goto circular;
        }
        if (rc < 0) {
            return -1;
        }
    }
    if (Py_EnterRecursiveCall(" while encoding a JSON object")) {
        if (e->depth >= SCAN_DEPTH) {
            forget_deep(e, obj);
        }
        return -1;
    }
    if (e->depth < SCAN_DEPTH) {
        e->open[e->depth] = obj;
    }
    e->depth++;
    return 0;
circular:
    PyErr_SetString(PyExc_ValueError, "Circular reference detected");
    return -1;
}

static void
leave(encoder *e, PyObject *obj)
{
    assert(e->depth > 0);
    e->depth--;
    Py_LeaveRecursiveCall();
    if (e->depth >= SCAN_DEPTH) {
        forget_deep(e, obj);
    }
}

static int
encode_list(encoder *e, PyObject *obj)
{
    PyObject *seq = PySequence_Fast(obj, "_iterencode_list needs a sequence"); /* new ref */
    if (seq == NULL) {
        return -1;
    }
    int rc = -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        rc = cs_buf_append(e->out, "[]", 2);
        goto done;
    }
    if (enter(e, obj) < 0) {
        goto done;
    }
    if (cs_buf_putc(e->out, '[') < 0) {
        goto fail_open;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i && cs_buf_putc(e->out, ',') < 0) {
            goto fail_open;
        }
        if (encode_obj(e, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            goto fail_open;
        }
    }
    rc = cs_buf_putc(e->out, ']');
fail_open:
    leave(e, obj);
done:
    Py_DECREF(seq);
    return rc;
}

static int
encode_key(cs_buf *out, PyObject *key)
{
    if (PyUnicode_Check(key)) {
        return encode_str(out, key);
    }
    cs_buf tmp;
    cs_buf_init(&tmp);
    int rc;
    if (PyFloat_Check(key)) {
        rc = encode_float(&tmp, key);
    }
    else if (key == Py_True) {
        rc = cs_buf_append(&tmp, "true", 4);
    }
    else if (key == Py_False) {
        rc = cs_buf_append(&tmp, "false", 5);
    }
    else if (key == Py_None) {
        rc = cs_buf_append(&tmp, "null", 4);
    }
    else if (PyLong_Check(key)) {
        rc = encode_int(&tmp, key);
    }
    else {
        PyErr_Format(PyExc_TypeError, "keys must be str, int, float, bool or None, not %.100s",
                     Py_TYPE(key)->tp_name);
        rc = -1;
    }
    /* The coerced key is plain ASCII without characters to escape. */
    if (rc == 0) {
        rc = cs_buf_putc(out, '"') < 0 || cs_buf_append(out, tmp.data, tmp.len) < 0 ||
                     cs_buf_putc(out, '"') < 0
                 ? -1
                 : 0;
    }
    cs_buf_free(&tmp);
    return rc;
}

static int
encode_member(encoder *e, PyObject *key, PyObject *value, int first)
{
    if (!first && cs_buf_putc(e->out, ',') < 0) {
        return -1;
    }
    if (encode_key(e->out, key) < 0 || cs_buf_putc(e->out, ':') < 0) {
        return -1;
    }
    return encode_obj(e, value);
}

static int
encode_dict(encoder *e, PyObject *obj)
{
    if (PyDict_GET_SIZE(obj) == 0) {
        return cs_buf_append(e->out, "{}", 2);
    }
    if (enter(e, obj) < 0) {
        return -1;
    }
    int rc = -1;
    PyObject *items = NULL;
    if (cs_buf_putc(e->out, '{') < 0) {
        goto done;
    }
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value; /* borrowed */
        int first = 1;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (encode_member(e, key, value, first) < 0) {
                goto done;
            }
            first = 0;
        }
    }
    else {
        /* A subclass may override items(); _json.c asks it too. */
        items = PyMapping_Items(obj); /* new ref: a list of pairs */
        if (items == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
            PyObject *item = PyList_GET_ITEM(items, i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_ValueError, "items must return tuples of 2 elements");
                goto done;
            }
            if (encode_member(e, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), i == 0) < 0) {
                goto done;
            }
        }
    }
    rc = cs_buf_putc(e->out, '}');
done:
    Py_XDECREF(items);
    leave(e, obj);
    return rc;
}

static int
reject(PyObject *obj)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(obj), "__name__");
    if (name == NULL) {
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "Object of type %U is not JSON serializable", name);
    Py_DECREF(name);
    return -1;
}

static int
encode_obj(encoder *e, PyObject *obj)
{
    /* The exact built-in types first: each matches one test only, so the order below, which
     * decides for subclasses, is kept; and no PyType_IsSubtype() call for a dict or a list. */
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyUnicode_Type) {
        return encode_str(e->out, obj);
    }
    if (type == &PyDict_Type) {
        return encode_dict(e, obj);
    }
    if (type == &PyList_Type) {
        return encode_list(e, obj);
    }
    if (type == &PyFloat_Type) {
        return encode_float(e->out, obj);
    }
    if (type == &PyLong_Type) {
        return encode_int(e->out, obj);
    }
    if (obj == Py_None) {
        return cs_buf_append(e->out, "null", 4);
    }
    if (obj == Py_True) {
        return cs_buf_append(e->out, "true", 4);
    }
    if (obj == Py_False) {
        return cs_buf_append(e->out, "false", 5);
    }
    if (PyUnicode_Check(obj)) {
        return encode_str(e->out, obj);
    }
    if (PyLong_Check(obj)) {
        return encode_int(e->out, obj);
    }
    if (PyFloat_Check(obj)) {
        return encode_float(e->out, obj);
    }
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        return encode_list(e, obj);
    }
    if (PyDict_Check(obj)) {
        return encode_dict(e, obj);
    }
    return reject(obj);
}

int
cs_json_encode(cs_buf *out, PyObject *obj)
{
    encoder e = {.out = out, .deep = NULL, .depth = 0};
    int rc = encode_obj(&e, obj);
    Py_XDECREF(e.deep);
    return rc;
}
