/* JSON decoding: simdjson validates and walks the document, the visitor below builds the
 * Python objects. simdjson rejects everything it cannot represent exactly (NaN and
 * Infinity, integers beyond 64 bits, out-of-range floats, lone surrogate escapes, nesting
 * past its depth limit), and a rejected text goes through json.loads itself, so the
 * result and the error are always json.loads's. Input with bytes >= 0x80 goes there
 * directly: Django decodes latin-1, simdjson would read UTF-8.
 *
 * The builder keeps a stack of open containers. Each container is owned by its parent
 * (or by `root`) from the moment it is created, so the stack holds borrowed pointers and
 * an abort anywhere only has to drop `root`, any pending key and the memos.
 *
 * Sessions repeat keys ("sku", "qty" in every cart item) and short values (tags, states,
 * currency codes): two small direct-mapped memos, one for keys as json's scanner keeps and
 * one for string values up to MEMO_MAX_LEN bytes, hand out one str per distinct text, so
 * each is allocated (and, for keys, hashed) once per document. Sharing one str between
 * equal values is invisible: strs are immutable, and json.loads promises no identity.
 */
#include "json.h"
#include "util.h"

typedef struct {
    PyObject *container; /* borrowed: owned by its parent or by builder.root */
    PyObject *key;       /* owned: the key whose value comes next (dicts only) */
    int is_dict;
} frame;

#define MEMO_SLOTS 64
#define MEMO_MAX_LEN 32

typedef struct {
    PyObject *str; /* owned, or NULL */
    size_t len;
    char utf8[MEMO_MAX_LEN]; /* the text it was made from */
} memo_entry;

typedef struct {
    frame *stack;
    int depth;
    int cap;
    PyObject *root;              /* owned */
    memo_entry keys[MEMO_SLOTS]; /* recent keys, by a hash of their bytes */
    memo_entry values[MEMO_SLOTS];
    frame inline_stack[32];
} builder;

static int
attach(builder *b, PyObject *v) /* steals v */
{
    if (v == NULL) {
        return -1;
    }
    if (b->depth == 0) {
        b->root = v;
        return 0;
    }
    frame *f = &b->stack[b->depth - 1];
    assert(f->is_dict == (f->key != NULL)); /* simdjson gives a key before each member */
    int rc;
    if (f->is_dict) {
        rc = PyDict_SetItem(f->container, f->key, v);
        Py_CLEAR(f->key);
    }
    else {
        rc = PyList_Append(f->container, v);
    }
    Py_DECREF(v);
    return rc;
}

static int
push(builder *b, PyObject *container, int is_dict) /* steals container */
{
    if (container == NULL) {
        return -1;
    }
    if (Py_EnterRecursiveCall(" while decoding a JSON document")) {
        Py_DECREF(container);
        return -1;
    }
    if (b->depth == b->cap) {
        int cap = b->cap * 2;
        frame *stack = PyMem_Malloc(sizeof(frame) * cap);
        if (stack == NULL) {
            Py_LeaveRecursiveCall();
            Py_DECREF(container);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(stack, b->stack, sizeof(frame) * b->depth);
        if (b->stack != b->inline_stack) {
            PyMem_Free(b->stack);
        }
        b->stack = stack;
        b->cap = cap;
    }
    if (attach(b, container) < 0) { /* the parent (or root) now owns it */
        Py_LeaveRecursiveCall();
        return -1;
    }
    b->stack[b->depth++] = (frame){container, NULL, is_dict};
    return 0;
}

static int
pop(void *ctx)
{
    builder *b = ctx;
    assert(b->depth > 0 && b->stack[b->depth - 1].key == NULL);
    b->depth--;
    Py_LeaveRecursiveCall();
    return 0;
}

static int on_null(void *ctx) { return attach(ctx, Py_NewRef(Py_None)); }
static int on_bool(void *ctx, int v) { return attach(ctx, PyBool_FromLong(v)); }
static int on_int64(void *ctx, int64_t v) { return attach(ctx, PyLong_FromLongLong(v)); }
static int on_uint64(void *ctx, uint64_t v) { return attach(ctx, PyLong_FromUnsignedLongLong(v)); }
static int on_double(void *ctx, double v) { return attach(ctx, PyFloat_FromDouble(v)); }

/* Decodes the n code points of valid UTF-8 at src into out, an array of T; one loop per
 * width, so that the store is a plain one. */
#define DECODE_UTF8(T, out, src, n)                                                         \
    do {                                                                                    \
        T *o_ = (out);                                                                      \
        const unsigned char *p_ = (src);                                                    \
        for (size_t k_ = 0; k_ < (n); k_++) {                                               \
            Py_UCS4 c_ = *p_;                                                               \
            if (c_ < 0x80) {                                                                \
                p_ += 1;                                                                    \
            }                                                                               \
            else if (c_ < 0xE0) {                                                           \
                c_ = ((c_ & 0x1F) << 6) | (p_[1] & 0x3F);                                   \
                p_ += 2;                                                                    \
            }                                                                               \
            else if (c_ < 0xF0) {                                                           \
                c_ = ((c_ & 0x0F) << 12) | ((Py_UCS4)(p_[1] & 0x3F) << 6) | (p_[2] & 0x3F); \
                p_ += 3;                                                                    \
            }                                                                               \
            else {                                                                          \
                c_ = ((c_ & 0x07) << 18) | ((Py_UCS4)(p_[1] & 0x3F) << 12) |                \
                     ((Py_UCS4)(p_[2] & 0x3F) << 6) | (p_[3] & 0x3F);                       \
                p_ += 4;                                                                    \
            }                                                                               \
            o_[k_] = (T)c_;                                                                 \
        }                                                                                   \
    } while (0)

/* A str from the UTF-8 simdjson unescaped. simdjson has validated it (and rejected lone
 * surrogate escapes), so unlike PyUnicode_DecodeUTF8, which decodes into a growing writer
 * and copies the result when the text turns out not to be ASCII, this sizes the str in one
 * scan: the code points are the bytes that do not continue a sequence, and the widest lead
 * byte gives the canonical kind (0xC2-0xC3: Latin-1, up to 0xEF: UCS-2, else UCS-4). */
static PyObject *
str_from_utf8(const char *text, size_t len)
{
    if (cs_is_ascii(text, len)) {
        return cs_new_ascii(text, len);
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t n = 0;
    unsigned char widest = 0;
    for (size_t i = 0; i < len; i++) {
        n += (s[i] & 0xC0) != 0x80;
        widest = s[i] > widest ? s[i] : widest;
    }
    Py_UCS4 maxchar = widest >= 0xF0 ? 0x10FFFF : widest >= 0xC4 ? 0xFFFF : 0xFF;
    PyObject *str = PyUnicode_New((Py_ssize_t)n, maxchar);
    if (str == NULL) {
        return NULL;
    }
    switch (PyUnicode_KIND(str)) {
    case PyUnicode_1BYTE_KIND:
        DECODE_UTF8(Py_UCS1, PyUnicode_1BYTE_DATA(str), s, n);
        break;
    case PyUnicode_2BYTE_KIND:
        DECODE_UTF8(Py_UCS2, PyUnicode_2BYTE_DATA(str), s, n);
        break;
    default:
        DECODE_UTF8(Py_UCS4, PyUnicode_4BYTE_DATA(str), s, n);
        break;
    }
    return str;
}

/* New reference to the str of s[0:len], from the memo when it made one for the same text. */
static PyObject *
memo_str(memo_entry *memo, const char *s, size_t len)
{
    if (len > MEMO_MAX_LEN) {
        return str_from_utf8(s, len);
    }
    memo_entry *m = &memo[(cs_short_hash((const unsigned char *)s, len) >> 32) % MEMO_SLOTS];
    if (m->str != NULL && m->len == len && memcmp(m->utf8, s, len) == 0) {
        return Py_NewRef(m->str);
    }
    PyObject *str = str_from_utf8(s, len);
    if (str == NULL) {
        return NULL;
    }
    Py_XSETREF(m->str, Py_NewRef(str));
    m->len = len;
    memcpy(m->utf8, s, len);
    return str;
}

static int
on_string(void *ctx, const char *s, size_t len)
{
    return attach(ctx, memo_str(((builder *)ctx)->values, s, len));
}

static int
on_key(void *ctx, const char *s, size_t len)
{
    builder *b = ctx;
    frame *f = &b->stack[b->depth - 1];
    f->key = memo_str(b->keys, s, len);
    return f->key == NULL ? -1 : 0;
}

static int on_start_array(void *ctx) { return push(ctx, PyList_New(0), 0); }
static int on_start_object(void *ctx) { return push(ctx, PyDict_New(), 1); }

static const cs_json_visitor visitor = {
    .null_value = on_null,
    .boolean = on_bool,
    .int64 = on_int64,
    .uint64 = on_uint64,
    .dbl = on_double,
    .string = on_string,
    .key = on_key,
    .start_array = on_start_array,
    .end_array = pop,
    .start_object = on_start_object,
    .end_object = pop,
};

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
    if (!cs_is_ascii(buf, (size_t)len)) {
        return decode_exact(st, buf, len);
    }
    /* Building objects can run arbitrary finalizers, which may decode JSON again: such a
     * nested call must not reuse the parser whose document is being walked. */
    cs_json_parser *parser = st->parser;
    int own_parser = st->parser_busy;
    if (own_parser) {
        parser = cs_json_parser_new();
        if (parser == NULL) {
            return PyErr_NoMemory();
        }
    }
    else {
        st->parser_busy = 1;
    }

    builder b; /* not zeroed whole: only what is read before it is written */
    b.depth = 0;
    b.cap = 32;
    b.root = NULL;
    b.stack = b.inline_stack;
    for (int i = 0; i < MEMO_SLOTS; i++) {
        b.keys[i].str = b.values[i].str = NULL;
    }
    int rc = cs_json_parse(parser, buf, (size_t)len, &visitor, &b);

    for (; b.depth > 0; b.depth--) { /* only after an abort */
        Py_XDECREF(b.stack[b.depth - 1].key);
        Py_LeaveRecursiveCall();
    }
    if (b.stack != b.inline_stack) {
        PyMem_Free(b.stack);
    }
    for (int i = 0; i < MEMO_SLOTS; i++) {
        Py_XDECREF(b.keys[i].str);
        Py_XDECREF(b.values[i].str);
    }
    if (own_parser) {
        cs_json_parser_free(parser);
    }
    else {
        st->parser_busy = 0;
    }

    switch (rc) {
    case CS_JSON_OK:
        return b.root;
    case CS_JSON_NOMEM:
        Py_XDECREF(b.root);
        return PyErr_NoMemory();
    case CS_JSON_STOPPED:
        Py_XDECREF(b.root);
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            PyErr_Clear(); /* json.loads decides what is too deep */
            return decode_exact(st, buf, len);
        }
        return NULL;
    default:
        Py_XDECREF(b.root);
        return decode_exact(st, buf, len);
    }
}
