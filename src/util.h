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
