#include <string.h>
#include <time.h>

#include "hmac.h"

#define BLOCK 64

void
cs_sha256(const unsigned char *msg, size_t len, unsigned char out[CS_SHA256_LEN])
{
    SHA256(msg, len, out);
}

void
cs_hmac_key_init(cs_hmac_key *k, const unsigned char *key, size_t keylen)
{
    unsigned char block[BLOCK] = {0};
    if (keylen > BLOCK) {
        SHA256(key, keylen, block);
    }
    else {
        memcpy(block, key, keylen);
    }
    unsigned char pad[BLOCK];
    for (int i = 0; i < BLOCK; i++) {
        pad[i] = block[i] ^ 0x36;
    }
    SHA256_Init(&k->inner);
    SHA256_Update(&k->inner, pad, BLOCK);
    for (int i = 0; i < BLOCK; i++) {
        pad[i] = block[i] ^ 0x5c;
    }
    SHA256_Init(&k->outer);
    SHA256_Update(&k->outer, pad, BLOCK);
    sodium_memzero(block, sizeof(block));
    sodium_memzero(pad, sizeof(pad));
}

void
cs_hmac_sign(const cs_hmac_key *k, const unsigned char *msg, size_t len,
             unsigned char out[CS_SHA256_LEN])
{
    SHA256_CTX ctx = k->inner;
    unsigned char digest[CS_SHA256_LEN];
    SHA256_Update(&ctx, msg, len);
    SHA256_Final(digest, &ctx);
    ctx = k->outer;
    SHA256_Update(&ctx, digest, CS_SHA256_LEN);
    SHA256_Final(out, &ctx);
}

static double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double
cs_hmac_bench(const char *backend, const unsigned char *key, size_t keylen,
              const unsigned char *msg, size_t len, long iterations)
{
    unsigned char out[CS_SHA256_LEN];
    volatile unsigned char sink = 0;
    double start;
    if (strcmp(backend, "openssl") == 0) {
        cs_hmac_key k;
        cs_hmac_key_init(&k, key, keylen);
        start = now_seconds();
        for (long i = 0; i < iterations; i++) {
            cs_hmac_sign(&k, msg, len, out);
            sink ^= out[0];
        }
    }
    else if (strcmp(backend, "sodium") == 0) {
        crypto_auth_hmacsha256_state keyed, st;
        crypto_auth_hmacsha256_init(&keyed, key, keylen);
        start = now_seconds();
        for (long i = 0; i < iterations; i++) {
            st = keyed;
            crypto_auth_hmacsha256_update(&st, msg, len);
            crypto_auth_hmacsha256_final(&st, out);
            sink ^= out[0];
        }
    }
    else {
        return -1;
    }
    (void)sink;
    return now_seconds() - start;
}
