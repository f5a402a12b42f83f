/* JSON in and out, with the exact semantics of CPython's json module as Django calls it:
 * encoding as json.dumps(obj, separators=(",", ":")) (ensure_ascii, allow_nan, insertion
 * order), decoding as json.loads(data.decode("latin-1")).
 */
#ifndef CSESSIONS_JSON_H
#define CSESSIONS_JSON_H

#include "buffer.h"
#include "state.h"

/* Appends the encoding of obj to out. Returns 0, or -1 with TypeError (unsupported
 * type or key), ValueError (circular reference) or RecursionError set. */
int cs_json_encode(cs_buf *out, PyObject *obj);

/* New reference to the decoded object, or NULL with an exception set (ValueError for
 * invalid JSON, as json.loads). */
PyObject *cs_json_decode(cs_state *st, const char *buf, Py_ssize_t len);

#endif
