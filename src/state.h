/* Module state: every Python object the C core keeps between calls lives here, never in a
 * C global, so several interpreters (and reloads) each get their own. All fields are
 * strong references owned by the module; they are set in module exec and cleared in
 * m_clear; the C resources are released in m_free.
 */
#ifndef CSESSIONS_STATE_H
#define CSESSIONS_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <zlib.h>

#include "deflate_quick.h"

#define CS_PACK_MEMO 512     /* slots (two per set) of pack.c's memo of short strs */
#define CS_PACK_MEMO_LEN 64  /* the longest str it keeps */

typedef struct {
    PyObject *bad_signature;     /* exception types unsign raises; set_error_types() */
    PyObject *signature_expired;
    PyObject *key_cache;         /* dict (salt, secret) -> bytes holding a cs_hmac_key */
    PyObject *json_loads;        /* json.loads: the exact path behind the fast decoder */
    PyObject *b64decode;         /* base64.urlsafe_b64decode: exact path for odd base64 */
    PyObject *zlib_decompress;   /* zlib.decompress: raises the exact error on bad data */
    /* zlib streams reused through deflateReset/inflateReset, which spares the ~270 KB
     * allocation per call; no Python code runs while they are in use. */
    z_stream deflater;
    z_stream inflater;
    int deflater_ready;
    int deflater_level;          /* the level deflater is set to */
    cs_fixed_codes fixed_codes;  /* deflate_quick.c's code tables */
    PyObject *pack_memo[CS_PACK_MEMO]; /* str or NULL: pack.c's memo of short strs */
    int inflater_ready;
} cs_state;

static inline cs_state *
cs_get_state(PyObject *module)
{
    return (cs_state *)PyModule_GetState(module);
}

#endif
