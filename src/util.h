/* Small helpers shared by the C files: argument counting for METH_FASTCALL functions, the
 * ASCII test that decides between a fast path and the exact one, and the str it allows. */
#ifndef CSESSIONS_UTIL_H
#define CSESSIONS_UTIL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* 0, or -1 with TypeError when a METH_FASTCALL function got the wrong number of arguments. */
static inline int
cs_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", name,
                     expected, nargs);
        return -1;
    }
    return 0;
}

/* 1 if no byte of s has its high bit set. */
static inline int
cs_is_ascii(const char *s, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        acc |= word;
    }
    for (; i < n; i++) {
        acc |= (unsigned char)s[i];
    }
    return (acc & UINT64_C(0x8080808080808080)) == 0;
}

/* A hash of a short byte string, to pick a memo slot (a collision only costs a miss): its
 * first and last 8 bytes (4, or three single bytes, when shorter) mixed with its length. */
static inline uint64_t
cs_short_hash(const unsigned char *s, size_t n)
{
    uint64_t a, b;
    if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
    }
    else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, s, 4);
        memcpy(&y, s + n - 4, 4);
        a = x;
        b = y;
    }
    else {
        a = n == 0 ? 0 : s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
        b = 0;
    }
    return ((a * UINT64_C(0x9E3779B97F4A7C15)) ^ b ^ n) * UINT64_C(0xFF51AFD7ED558CCD);
}

/* Equality of n (0..64) bytes by overlapping word loads, for the memos: libc's memcmp was
 * 4% of a shm load + save cycle, for strs this short. */
static inline int
cs_same_short_bytes(const unsigned char *a, const unsigned char *b, size_t n)
{
    if (n >= 8) {
        uint64_t diff = 0, x, y;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            diff |= x ^ y;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return (diff | (x ^ y)) == 0;
    }
    if (n >= 4) {
        uint32_t x0, y0, x1, y1;
        memcpy(&x0, a, 4);
        memcpy(&y0, b, 4);
        memcpy(&x1, a + n - 4, 4);
        memcpy(&y1, b + n - 4, 4);
        return ((x0 ^ y0) | (x1 ^ y1)) == 0;
    }
    return n == 0 || (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1]);
}

/* A new str of n bytes the caller knows to be ASCII: PyUnicode_FromKindAndData and
 * PyUnicode_DecodeUTF8 would scan them again. NULL with MemoryError. */
static inline PyObject *
cs_new_ascii(const char *s, size_t n)
{
    PyObject *str = PyUnicode_New((Py_ssize_t)n, 127);
    if (str != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(str), s, n);
    }
    return str;
}

#endif
