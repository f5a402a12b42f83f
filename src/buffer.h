/* A growable byte buffer for building output before handing it to Python.
 *
 * Layout: `data` points at `inline_` until the content outgrows it, then at a PyMem
 * block that doubles on demand. Invariant: len <= cap, and `data` is never NULL, so the
 * appenders need no NULL checks. A failed grow raises MemoryError and leaves the buffer
 * valid; cs_buf_free is safe to call on any buffer that was initialised.
 */
#ifndef CSESSIONS_BUFFER_H
#define CSESSIONS_BUFFER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <assert.h>
#include <string.h>

#define CS_BUF_INLINE 1024

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char inline_[CS_BUF_INLINE];
} cs_buf;

static inline void
cs_buf_init(cs_buf *b)
{
    b->data = b->inline_;
    b->len = 0;
    b->cap = CS_BUF_INLINE;
}

static inline void
cs_buf_free(cs_buf *b)
{
    if (b->data != b->inline_) {
        PyMem_Free(b->data);
    }
    b->data = b->inline_;
    b->len = 0;
    b->cap = CS_BUF_INLINE;
}

/* Makes room for `extra` more bytes. Returns 0, or -1 with MemoryError set. */
static inline int
cs_buf_reserve(cs_buf *b, Py_ssize_t extra)
{
    assert(b->data != NULL && 0 <= b->len && b->len <= b->cap && extra >= 0);
    if (b->cap - b->len >= extra) {
        return 0;
    }
    if (extra > PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = b->cap * 2;
    while (cap - b->len < extra) {
        cap *= 2;
    }
    char *data;
    if (b->data == b->inline_) {
        data = PyMem_Malloc(cap);
        if (data != NULL) {
            memcpy(data, b->inline_, b->len);
        }
    }
    else {
        data = PyMem_Realloc(b->data, cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int
cs_buf_append(cs_buf *b, const void *src, Py_ssize_t n)
{
    if (cs_buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int
cs_buf_putc(cs_buf *b, char c)
{
    if (b->len == b->cap && cs_buf_reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->len++] = c;
    return 0;
}

#endif
