/* A fast deflate encoder for the big values the engines store: greedy LZ77 with one
 * hash probe per position (a hash of its next 6 bytes) and the fixed Huffman code of RFC
 * 1951 (3.2.6), wrapped as a zlib
 * stream (RFC 1950), so zlib.decompress() - Django's decoder - reads it like any other.
 *
 * Why not zlib at level 1: on a 93 KB session zlib spends ~0.4-0.55 ms building its match
 * chains and dynamic trees, most of a server-side engine's codec time; this takes under a
 * third of that for a stream ~20% larger. Its decoder below reads such streams ~2.5x faster
 * than zlib's inflate; zlib still inflates every other stream and still makes the bytes of
 * Django's compress=True (signed cookies), which must be Django's exactly.
 *
 * Layout of the output: the 2-byte zlib header (CMF 0x78: deflate, 32 KiB window; FLG 0x01:
 * "fastest"), one final block of type 01 (fixed codes), the end-of-block symbol, padding to
 * a byte, the Adler-32 of the input, big-endian. Matches are 4..258 bytes long and at most
 * 32,768 bytes back; every other byte is a literal.
 */
#ifndef CSESSIONS_DEFLATE_QUICK_H
#define CSESSIONS_DEFLATE_QUICK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "buffer.h"

/* The level the Python layer passes (beside zlib's -1..9) to ask for this encoder. */
#define CS_DEFLATE_QUICK 10

/* The fixed codes: for each of the 288 literal/length symbols, (bit-reversed code << 4) |
 * code length, ready to be written LSB first. Filled once per module state. */
typedef struct {
    uint16_t litlen[288];
    uint8_t dist[30]; /* the 5-bit distance codes, bit-reversed */
    uint32_t len_bits[256]; /* match length - 3 -> (bits << 24) | code and extra bits */
    uint8_t dist_lo[256];   /* distance - 1 -> distance symbol, below 256 */
    uint8_t dist_hi[256];   /* (distance - 1) >> 7 -> distance symbol, from 256 */
    /* The decoder's, one load per symbol: the next 9 bits of input -> code length (bits
     * 0-3), symbol (4-12) and, for a length symbol, its extra bits (13-15) and base length
     * (16-24); the next 5 bits -> base distance (0-15) and extra bits (16-19) of a distance
     * symbol, or DIST_INVALID for codes 30 and 31. */
    uint32_t litlen_dec[512];
    uint32_t dist_dec[32];
} cs_fixed_codes;

void cs_fixed_codes_init(cs_fixed_codes *codes);

/* Appends in[0:n] inflated to out when it is a stream of this encoder's kind (one final
 * block of fixed codes) that decodes cleanly and matches its Adler-32: 0. Otherwise 1 with
 * out unchanged, for zlib to decode or report; -1 with MemoryError set. */
int cs_inflate_quick(const cs_fixed_codes *codes, cs_buf *out, const unsigned char *in,
                     Py_ssize_t n);

/* Positions are kept + 1 in 32 bits: longer input goes to zlib. */
#define CS_DEFLATE_QUICK_MAX ((uint64_t)PY_SSIZE_T_MAX / 2 < UINT32_MAX - 1 \
                                  ? PY_SSIZE_T_MAX / 2 : (Py_ssize_t)(UINT32_MAX - 1))

/* Appends the zlib stream of in[0:n] (n <= CS_DEFLATE_QUICK_MAX) to out. 0, or -1 with
 * MemoryError set. */
int cs_deflate_quick(const cs_fixed_codes *codes, cs_buf *out, const unsigned char *in,
                     Py_ssize_t n);

#endif
