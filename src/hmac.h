/* HMAC-SHA256 with the keyed state computed once and reused.
 *
 * A cs_hmac_key holds the SHA-256 states after absorbing key^ipad and key^opad, so a
 * signature costs the message's blocks plus two finalisations. OpenSSL's low-level
 * SHA256 API is used on purpose: it dispatches to SHA-NI/AVX2 code and its context is a
 * plain struct that can be copied, while EVP would allocate on every copy. libsodium's
 * portable SHA-256 is kept beside it only so the benchmark can compare the two
 * (bench/codec.py; the figures are in the README).
 */
#ifndef CSESSIONS_HMAC_H
#define CSESSIONS_HMAC_H

#include <stddef.h>

#include <openssl/sha.h>
#include <sodium.h>

#define CS_SHA256_LEN 32

typedef struct {
    SHA256_CTX inner;
    SHA256_CTX outer;
} cs_hmac_key;

void cs_hmac_key_init(cs_hmac_key *k, const unsigned char *key, size_t keylen);
void cs_hmac_sign(const cs_hmac_key *k, const unsigned char *msg, size_t len,
                  unsigned char out[CS_SHA256_LEN]);
void cs_sha256(const unsigned char *msg, size_t len, unsigned char out[CS_SHA256_LEN]);

/* Seconds spent computing `iterations` HMACs of msg with a cached keyed state, with
 * backend "openssl" or "sodium"; -1 for an unknown backend. */
double cs_hmac_bench(const char *backend, const unsigned char *key, size_t keylen,
                     const unsigned char *msg, size_t len, long iterations);

#endif
