/* The packed form of JSON-stable values: format and guarantees in pack.h. */
#include "pack.h"

#include <stdint.h>

#include "util.h"

/* --- pack -------------------------------------------------------------------------- */

/* Appends the tag bytes and the count n. 0, 1 if n does not fit, or -1 (MemoryError). */
static int
put_head(cs_buf *out, const char *tag, Py_ssize_t tag_len, size_t n)
{
    if (n > UINT32_MAX) {
        return 1;
    }
    uint32_t v = (uint32_t)n;
    if (cs_buf_append(out, tag, tag_len) < 0 || cs_buf_append(out, &v, sizeof v) < 0) {
        return -1;
    }
    return 0;
}

static int
has_surrogate(int kind, const void *data, Py_ssize_t n)
{
    if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *p = data;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (p[i] >= 0xD800 && p[i] <= 0xDFFF) {
                return 1;
            }
        }
    }
    else if (kind == PyUnicode_4BYTE_KIND) {
        const Py_UCS4 *p = data;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (p[i] >= 0xD800 && p[i] <= 0xDFFF) {
                return 1;
            }
        }
    }
    return 0;
}

static int
pack_str(cs_buf *out, PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s)) {
        if (n < 256) {
            if (cs_buf_reserve(out, 2 + n) < 0) {
                return -1;
            }
            char *at = out->data + out->len;
            at[0] = 'A';
            at[1] = (char)(unsigned char)n;
            memcpy(at + 2, PyUnicode_1BYTE_DATA(s), n);
            out->len += 2 + n;
            return 0;
        }
        int rc = put_head(out, "a", 1, (size_t)n);
        return rc != 0 ? rc : cs_buf_append(out, PyUnicode_1BYTE_DATA(s), n);
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (has_surrogate(kind, data, n)) {
        return 1;
    }
    if ((size_t)n > UINT32_MAX / (size_t)kind) {
        return 1;
    }
    const char tag[2] = {'u', (char)kind};
    int rc = put_head(out, tag, 2, (size_t)n);
    return rc != 0 ? rc : cs_buf_append(out, data, n * kind);
}

static int
pack_obj(cs_buf *out, PyObject *obj, int depth)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyUnicode_Type) {
        return pack_str(out, obj);
    }
    if (t == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow) {
            return 1;
        }
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (v >= -128 && v <= 127) {
            const char small[2] = {'j', (char)(signed char)v};
            return cs_buf_append(out, small, 2);
        }
        int64_t w = v;
        if (cs_buf_putc(out, 'i') < 0) {
            return -1;
        }
        return cs_buf_append(out, &w, sizeof w);
    }
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(obj);
        if (cs_buf_putc(out, 'd') < 0) {
            return -1;
        }
        return cs_buf_append(out, &d, sizeof d);
    }
    if (obj == Py_None || obj == Py_True || obj == Py_False) {
        return cs_buf_putc(out, obj == Py_None ? 'N' : obj == Py_True ? 'T' : 'F');
    }
    if (depth >= CS_PACK_MAX_DEPTH) {
        return 1; /* deep, or a cycle: JSON's encoder decides (and raises its errors) */
    }
    if (t == &PyDict_Type) {
        int rc = put_head(out, "o", 1, (size_t)PyDict_GET_SIZE(obj));
        if (rc != 0) {
            return rc;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value; /* borrowed; no Python code runs while we iterate */
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key)) {
                return 1; /* JSON would turn it into a str */
            }
            if ((rc = pack_str(out, key)) != 0 || (rc = pack_obj(out, value, depth + 1)) != 0) {
                return rc;
            }
        }
        return 0;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        /* PySequence_Fast_ITEMS: no Python code runs, so a list cannot change meanwhile. */
        Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
        PyObject **items = PySequence_Fast_ITEMS(obj);
        int rc = put_head(out, "l", 1, (size_t)n);
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
            rc = pack_obj(out, items[i], depth + 1);
        }
        return rc;
    }
    return 1;
}

int
cs_pack(cs_buf *out, PyObject *obj)
{
    return pack_obj(out, obj, 0);
}

/* --- unpack ------------------------------------------------------------------------ */

typedef struct {
    cs_state *st;
    const unsigned char *p;
    const unsigned char *end;
} reader;

static PyObject *
malformed(const char *what)
{
    PyErr_Format(PyExc_ValueError, "malformed packed session: %s", what);
    return NULL;
}

static int
get_u32(reader *r, uint32_t *v)
{
    if (r->end - r->p < (ptrdiff_t)sizeof *v) {
        malformed("truncated length");
        return -1;
    }
    memcpy(v, r->p, sizeof *v);
    r->p += sizeof *v;
    return 0;
}

/* Keys repeat across sessions ("_auth_user_id") and within one ("sku" in every cart line),
 * and so do short values ("42", "ru-RU", a backend's path): short ASCII strs are kept in a
 * small table of the module state and shared (a str is immutable), so each is allocated
 * once per process, and a key hashed once, not once per request. Two ways per set: with one,
 * two of a typical session's ~25 strs share a slot more often than not and evict each other
 * on every load. A hit needs no ASCII check: it equals a str that passed one. */
static inline int
memo_equal(PyObject *k, const unsigned char *s, uint32_t n)
{
    return k != NULL && PyUnicode_GET_LENGTH(k) == n && cs_same_short_bytes(PyUnicode_1BYTE_DATA(k), s, n);
}

static PyObject *
memo_str(cs_state *st, const unsigned char *s, uint32_t n)
{
    uint64_t h = cs_short_hash(s, n);
    PyObject **set = &st->pack_memo[2 * ((h >> 32) % (CS_PACK_MEMO / 2))];
    if (memo_equal(set[0], s, n)) {
        return Py_NewRef(set[0]);
    }
    if (memo_equal(set[1], s, n)) {
        PyObject *hit = set[1]; /* to the front: a miss replaces the one used least recently */
        set[1] = set[0];
        set[0] = hit;
        return Py_NewRef(hit);
    }
    if (!cs_is_ascii((const char *)s, n)) {
        return malformed("non-ASCII byte in an ASCII str");
    }
    PyObject *k = cs_new_ascii((const char *)s, n);
    if (k == NULL) {
        return NULL;
    }
    Py_XSETREF(set[1], set[0]); /* the less recently used one goes */
    set[0] = Py_NewRef(k);
    return k;
}

static PyObject *
get_str(reader *r)
{
    if (r->p == r->end) {
        return malformed("truncated");
    }
    unsigned char tag = *r->p++;
    int kind = 1;
    uint32_t n;
    if (tag == 'A') {
        if (r->p == r->end) {
            return malformed("truncated");
        }
        n = *r->p++;
    }
    else if (tag == 'u') {
        if (r->p == r->end) {
            return malformed("truncated");
        }
        kind = *r->p++;
        if (kind != 1 && kind != 2 && kind != 4) {
            return malformed("bad str kind");
        }
    }
    else if (tag != 'a') {
        return malformed("expected a str");
    }
    if (tag != 'A' && get_u32(r, &n) < 0) {
        return NULL;
    }
    if ((uint64_t)n * (uint64_t)kind > (uint64_t)(r->end - r->p)) {
        return malformed("str past the end");
    }
    const unsigned char *s = r->p;
    r->p += (size_t)n * (size_t)kind;
    if (tag != 'u') {
        if (n > 0 && n <= CS_PACK_MEMO_LEN) {
            return memo_str(r->st, s, n);
        }
        if (!cs_is_ascii((const char *)s, n)) {
            return malformed("non-ASCII byte in an ASCII str");
        }
        return cs_new_ascii((const char *)s, n);
    }
    /* Copies (the input need not be aligned for kinds 2 and 4) and canonicalises. */
    if (kind == 1) {
        return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, s, n);
    }
    void *tmp = PyMem_Malloc((size_t)n * (size_t)kind + 1);
    if (tmp == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(tmp, s, (size_t)n * (size_t)kind);
    if (kind == PyUnicode_4BYTE_KIND) {
        const Py_UCS4 *c = tmp;
        for (uint32_t i = 0; i < n; i++) {
            if (c[i] > 0x10FFFF) { /* CPython would raise SystemError, not ValueError */
                PyMem_Free(tmp);
                return malformed("code point out of range");
            }
        }
    }
    PyObject *str = PyUnicode_FromKindAndData(kind, tmp, n);
    PyMem_Free(tmp);
    return str;
}

static PyObject *
get_value(reader *r, int depth)
{
    if (r->p == r->end) {
        return malformed("truncated");
    }
    unsigned char tag = *r->p;
    switch (tag) {
    case 'N':
        r->p++;
        Py_RETURN_NONE;
    case 'T':
        r->p++;
        Py_RETURN_TRUE;
    case 'F':
        r->p++;
        Py_RETURN_FALSE;
    case 'i':
    case 'd': {
        r->p++;
        if (r->end - r->p < 8) {
            return malformed("truncated number");
        }
        const unsigned char *at = r->p;
        r->p += 8;
        if (tag == 'i') {
            int64_t v;
            memcpy(&v, at, sizeof v);
            return PyLong_FromLongLong(v);
        }
        double d;
        memcpy(&d, at, sizeof d);
        return PyFloat_FromDouble(d);
    }
    case 'j':
        if (r->end - r->p < 2) {
            return malformed("truncated number");
        }
        r->p += 2;
        return PyLong_FromLong((signed char)r->p[-1]);
    case 'A':
    case 'a':
    case 'u':
        return get_str(r);
    case 'l':
    case 'o':
        break;
    default:
        return malformed("unknown tag");
    }
    r->p++;
    if (depth >= CS_PACK_MAX_DEPTH) {
        return malformed("nested too deep");
    }
    uint32_t n;
    if (get_u32(r, &n) < 0) {
        return NULL;
    }
    if (n > (uint64_t)(r->end - r->p)) { /* every item takes at least one byte */
        return malformed("count past the end");
    }
    if (tag == 'l') {
        PyObject *list = PyList_New(n); /* owned; items are stolen into it as they come */
        if (list == NULL) {
            return NULL;
        }
        for (uint32_t i = 0; i < n; i++) {
            PyObject *item = get_value(r, depth + 1);
            if (item == NULL) {
                Py_DECREF(list); /* unset slots are NULL, which list_dealloc skips */
                return NULL;
            }
            PyList_SET_ITEM(list, i, item); /* steals item */
        }
        return list;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        PyObject *key = get_str(r);
        PyObject *value = key != NULL ? get_value(r, depth + 1) : NULL;
        int rc = value != NULL ? PyDict_SetItem(dict, key, value) : -1;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (rc < 0) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    return dict;
}

PyObject *
cs_unpack(cs_state *st, const char *buf, Py_ssize_t len)
{
    reader r = {st, (const unsigned char *)buf, (const unsigned char *)buf + len};
    PyObject *v = get_value(&r, 0);
    if (v != NULL && r.p != r.end) {
        Py_DECREF(v);
        return malformed("trailing bytes");
    }
    return v;
}
