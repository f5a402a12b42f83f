/* A binary form of the values that survive a JSON round trip unchanged, for the
 * shared-memory store, where JSON text is read back by the process that wrote it (or its
 * siblings) and its parsing was most of a request's cost.
 *
 * cs_pack writes only what json.loads(json.dumps(obj)) would give back as is: exact dict
 * (str keys), list, tuple (read back as a list, as JSON does), str without surrogate code
 * points (JSON joins an escaped pair), int that fits in 64 bits, float (NaN and infinities
 * included), True, False, None, nested at most CS_PACK_MAX_DEPTH deep. Anything else
 * (subclasses, other key types, big ints, surrogates, cycles, deeper nesting) makes it
 * answer 1, and the caller stores JSON instead, which also raises JSON's errors. So for every
 * value, unpack(pack(v)) == json.loads(json.dumps(v)), types included.
 *
 * Layout (host-endian, like the segment; n and len are uint32):
 *     value := 'N' | 'T' | 'F' | 'j' int8 | 'i' int64 | 'd' double
 *            | 'A' len8 bytes | 'a' len bytes      ASCII str (len8: one byte, < 256)
 *            | 'u' kind(1|2|4) len data  str of len code points, kind bytes each
 *            | 'l' n value*  | 'o' n (str value)*      list / dict in insertion order
 *
 * cs_unpack trusts nothing: every length is checked against what is left, every str goes
 * through PyUnicode_FromKindAndData (which rejects code points past U+10FFFF and makes the
 * canonical form), nesting is bounded, trailing bytes are an error. Malformed input is a
 * ValueError, never a crash.
 */
#ifndef CSESSIONS_PACK_H
#define CSESSIONS_PACK_H

#include "buffer.h"
#include "state.h"

#define CS_PACK_MAX_DEPTH 64

/* Appends obj's packed form to out. 0 done, 1 not representable (out's content is then
 * undefined), -1 with an exception set (MemoryError). */
int cs_pack(cs_buf *out, PyObject *obj);

/* New reference to the value, or NULL with ValueError (malformed) or MemoryError. */
PyObject *cs_unpack(cs_state *st, const char *buf, Py_ssize_t len);

#endif
