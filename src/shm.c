/* The shared-memory store: segment layout, locking and repair are described in shm.h. */
#include "shm.h" /* Python.h first: it sets the feature macros the system headers read */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "pack.h"
#include "util.h"

#define SHM_MAGIC "CSESSHM"          /* 8 bytes with its NUL */
#define SHM_VERSION 2u          /* 2: shm_entry carries a checksum; the header a boot id */
#define SHM_READY 0x52454459u        /* "READY": the creator finished initialising */
#define SHM_HEADER_BYTES 4096u
#define SHM_NIL 0xFFFFFFFFu
#define SHM_UNIT_ORDER 8u            /* 256 B: the smallest block */
#define SHM_UNIT (1u << SHM_UNIT_ORDER)
#define SHM_TOP_ORDER_MAX 18u        /* 256 KiB: the largest block */
#define SHM_NORDERS 32
#define SHM_USED 0x44455355u         /* "USED" */
#define SHM_FREE 0x45455246u         /* "FREE" */
#define SHM_SWEEP 2u                 /* buckets the sweep hand visits per write */
#define SHM_EXPIRED_SCAN 16u         /* LRU-tail entries checked for expiry before evicting */
#define SHM_SECOND_CHANCES 64u       /* referenced tail entries moved to the head per eviction */
#define SHM_MIN_SIZE (256u * 1024u)
#define SHM_STRIPE_MIN (256u * 1024u) /* a stripe is only split off when it keeps this much */
#define SHM_MAX_STRIPES 64u
#define SHM_ARENA_MAX (1u << 31)
#define SHM_KEY_MAX 255
#define SHM_ATTACH_WAIT_MS 2000      /* how long an attacher waits for a creator to finish */
#define SHM_BOOT_ID_BYTES 40         /* the kernel's boot id: 36 characters, NUL-padded */
#define SHM_BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define SHM_DEDUP_DEPTH 64u          /* repair looks this far back in a chain for a twin key */

enum {
    C_HITS, C_MISSES, C_INSERTS, C_UPDATES, C_DELETES, C_EVICTIONS, C_EXPIRATIONS,
    C_DISCARDED, C_LOCK_RECOVERIES, C_REPAIRS, C_BYTES_USED, C_VALUE_BYTES, C_COUNT,
};

static const char *const counter_names[C_COUNT] = {
    "hits", "misses", "inserts", "updates", "deletes", "evictions", "expirations",
    "discarded", "lock_recoveries", "repairs", "bytes_used", "value_bytes",
};

enum { MODE_SET = 0, MODE_ADD = 1, MODE_REPLACE = 2 };

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t total_size;
    uint32_t nstripes;
    uint32_t nbuckets;            /* per stripe */
    uint32_t arena_size;          /* per stripe */
    uint32_t top_order;
    uint64_t stripes_off;
    uint64_t buckets_off;
    uint64_t arenas_off;
    uint32_t stripe_bytes;        /* sizeof(shm_stripe), sizeof(shm_entry) and of the */
    uint32_t entry_bytes;         /* mutex: a build with another ABI refuses the segment */
    uint32_t mutex_bytes;
    uint32_t unused;
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
    int64_t created;
    unsigned char checksum[32];   /* BLAKE2b-256 of every byte above */
    uint32_t ready;
    uint32_t reboots;             /* file mode: boots in which the file was verified */
    char boot_id[SHM_BOOT_ID_BYTES]; /* file mode: the boot its mutexes were made in */
} shm_header;

typedef struct {
    pthread_mutex_t lock;
    uint32_t lru_head;            /* most recently used */
    uint32_t lru_tail;
    uint32_t hand;                /* next bucket of the incremental sweep */
    uint32_t unused;
    uint64_t tick;                /* bumped on every touch; entries keep theirs for repair */
    uint32_t free_head[SHM_NORDERS];
    uint64_t c[C_COUNT];
} __attribute__((aligned(64))) shm_stripe;

/* The head of every block. Used: key and value follow; `next` chains the bucket, `prev` and
 * `lnext` the LRU list. Free: `next`/`prev` chain the free list of its order. */
typedef struct {
    uint32_t magic;
    uint8_t order;
    uint8_t klen;
    uint16_t referenced;          /* read since it was last put at the LRU head: see lru_touch */
    uint32_t vlen;
    uint32_t tag;                 /* high half of the key's hash */
    uint32_t next;
    uint32_t prev;
    uint32_t lnext;
    uint32_t expires;             /* Unix seconds; expired when <= now */
    uint64_t tick;
    uint64_t sum;                 /* entry_sum(): written before the entry is published */
} shm_entry;

/* The budget: at most 64 bytes of fixed memory per session (entry + bucket slot). */
_Static_assert(sizeof(shm_entry) == 48, "shm_entry is part of the segment layout");
_Static_assert(sizeof(shm_entry) + sizeof(uint32_t) <= 64, "per-entry overhead budget");
_Static_assert(sizeof(shm_header) <= SHM_HEADER_BYTES, "header must fit its page");

typedef struct {
    uint64_t tick;
    uint32_t off;
} shm_pair;

typedef struct {
    PyObject_HEAD
    char *base;                   /* NULL once unmapped */
    size_t size;
    /* Threads of this process waiting for a stripe lock without the GIL: close() cannot
     * unmap under them, so it only marks the store closing and the last of them unmaps. */
    int waiters, closing;
    shm_stripe *stripes;
    uint32_t *buckets;
    char *arenas;
    uint32_t nstripes, nbuckets, arena_size, top_order;
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
    double lock_timeout;
    int created;
    PyObject *name;               /* str, with its leading '/' */
    PyObject *path;               /* str in file mode, else NULL */
    PyObject *error;              /* ShmError */
    /* Scratch for repair and check, sized for one arena, allocated at open so that a
     * repair (which must end with the mutex made consistent) never fails for memory. */
    uint8_t *bitmap;
    shm_pair *pairs;
} ShmStore;

/* Where one key lives, and the locked stripe's pieces. */
typedef struct {
    ShmStore *s;
    uint32_t si;
    shm_stripe *st;
    uint32_t *bk;
    char *ar;
    uint32_t bucket;
    uint32_t tag;
} shm_ctx;

/* --- helpers ------------------------------------------------------------------------ */

static void
shm_raise(ShmStore *s, PyObject *error, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg == NULL) {
        return;
    }
    PyObject *prefixed =
        s != NULL && s->path != NULL ? PyUnicode_FromFormat("csessions shm file %R: %U", s->path, msg)
        : s != NULL && s->name != NULL
            ? PyUnicode_FromFormat("csessions shm segment %R: %U", s->name, msg)
            : Py_NewRef(msg);
    if (prefixed != NULL) {
        PyErr_SetObject(error, prefixed);
        Py_DECREF(prefixed);
    }
    Py_DECREF(msg);
}

static uint64_t
key_hash(const ShmStore *s, const char *key, size_t klen)
{
    unsigned char out[crypto_shorthash_BYTES];
    crypto_shorthash(out, (const unsigned char *)key, klen, s->hash_key);
    uint64_t h;
    memcpy(&h, out, sizeof(h));
    return h;
}

/* XXH64 (Yann Collet's xxHash, 64-bit variant): an entry's checksum. It only has to catch
 * bytes that did not all reach the disk together, not an adversary (whoever can write the
 * segment can also write a matching checksum, keyed or not: see Trust in shm.h), so a fast
 * unkeyed hash is enough: ~0.1 ns per byte, against ~1.5 for SipHash. */
#define XXH_P1 UINT64_C(0x9E3779B185EBCA87)
#define XXH_P2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define XXH_P3 UINT64_C(0x165667B19E3779F9)
#define XXH_P4 UINT64_C(0x85EBCA77C2B2AE63)
#define XXH_P5 UINT64_C(0x27D4EB2F165667C5)

static inline uint64_t
xxh_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t
xxh_read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline uint64_t
xxh_round(uint64_t acc, uint64_t input)
{
    acc += input * XXH_P2;
    return xxh_rotl(acc, 31) * XXH_P1;
}

static inline uint64_t
xxh_merge(uint64_t acc, uint64_t val)
{
    acc ^= xxh_round(0, val);
    return acc * XXH_P1 + XXH_P4;
}

static uint64_t
xxh64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
        do {
            v1 = xxh_round(v1, xxh_read64(p));
            v2 = xxh_round(v2, xxh_read64(p + 8));
            v3 = xxh_round(v3, xxh_read64(p + 16));
            v4 = xxh_round(v4, xxh_read64(p + 24));
            p += 32;
        } while (end - p >= 32);
        h = xxh_rotl(v1, 1) + xxh_rotl(v2, 7) + xxh_rotl(v3, 12) + xxh_rotl(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    }
    else {
        h = seed + XXH_P5;
    }
    h += (uint64_t)len;
    for (; end - p >= 8; p += 8) {
        h ^= xxh_round(0, xxh_read64(p));
        h = xxh_rotl(h, 27) * XXH_P1 + XXH_P4;
    }
    if (end - p >= 4) {
        uint32_t w;
        memcpy(&w, p, sizeof(w));
        h ^= (uint64_t)w * XXH_P1;
        h = xxh_rotl(h, 23) * XXH_P2 + XXH_P3;
        p += 4;
    }
    for (; p < end; p++) {
        h ^= (uint64_t)*p * XXH_P5;
        h = xxh_rotl(h, 11) * XXH_P1;
    }
    h ^= h >> 33;
    h *= XXH_P2;
    h ^= h >> 29;
    h *= XXH_P3;
    h ^= h >> 32;
    return h;
}

/* An entry's checksum: its key, then its value (hashed separately, so that put can compute
 * it from the caller's two buffers before taking the lock), their lengths (hashed in) and
 * its order and expiry (in the seed). The tag is not needed: repair re-derives it from the
 * key. The links and the tick change after publishing and are checked structurally. */
static uint64_t
entry_sum(const char *key, size_t klen, const char *value, size_t vlen, unsigned order,
          uint32_t expires)
{
    uint64_t seed = ((uint64_t)order << 32) | expires;
    return xxh64(value, vlen, xxh64(key, klen, seed));
}

static int
entry_intact(const shm_entry *e)
{
    const char *k = (const char *)(e + 1);
    return entry_sum(k, e->klen, k + e->klen, e->vlen, e->order, e->expires) == e->sum;
}

static void
ctx_init(ShmStore *s, shm_ctx *c, uint64_t h)
{
    c->s = s;
    c->si = (uint32_t)h & (s->nstripes - 1);
    c->st = &s->stripes[c->si];
    c->bk = s->buckets + (size_t)c->si * s->nbuckets;
    c->ar = s->arenas + (size_t)c->si * s->arena_size;
    c->bucket = (uint32_t)(h >> 8) & (s->nbuckets - 1);
    c->tag = (uint32_t)(h >> 32);
}

static void
ctx_stripe(ShmStore *s, shm_ctx *c, uint32_t si)
{
    ctx_init(s, c, si);
}

static unsigned
order_for(uint64_t bytes)
{
    unsigned o = SHM_UNIT_ORDER;
    while (((uint64_t)1 << o) < bytes) {
        o++;
    }
    return o;
}

/* The bytes an entry of this key and value takes before rounding to its block. */
static uint64_t
entry_need(Py_ssize_t klen, Py_ssize_t vlen)
{
    return sizeof(shm_entry) + (uint64_t)klen + (uint64_t)vlen;
}

static uint32_t
clamp_time(long long t)
{
    return t < 0 ? 0 : t > (long long)UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* The used entry at `off`, or NULL if what is there cannot be one. Everything read from the
 * segment goes through here or free_at before it is followed. */
static shm_entry *
entry_at(const ShmStore *s, char *ar, uint32_t off)
{
    if (off >= s->arena_size || off % SHM_UNIT != 0) {
        return NULL;
    }
    shm_entry *e = (shm_entry *)(ar + off);
    if (e->magic != SHM_USED || e->order < SHM_UNIT_ORDER || e->order > s->top_order) {
        return NULL;
    }
    uint32_t size = 1u << e->order;
    if ((off & (size - 1)) != 0 || s->arena_size - off < size ||
        sizeof(shm_entry) + (uint64_t)e->klen + e->vlen > size) {
        return NULL;
    }
    return e;
}

static shm_entry *
free_at(const ShmStore *s, char *ar, uint32_t off, unsigned order)
{
    uint32_t size = 1u << order;
    if (off >= s->arena_size || (off & (size - 1)) != 0 || s->arena_size - off < size) {
        return NULL;
    }
    shm_entry *e = (shm_entry *)(ar + off);
    return e->magic == SHM_FREE && e->order == order ? e : NULL;
}

static int
expired(const shm_entry *e, long long now)
{
    return (long long)e->expires <= now;
}

/* --- buddy allocator (one per stripe) --------------------------------------------------
 * Every function returns -1 when it meets an inconsistency; the caller then repairs the
 * stripe, which rebuilds all of this from the bucket chains. */

static int
fl_push(shm_ctx *c, uint32_t off, unsigned order)
{
    /* An order or offset that came from the segment is checked before it indexes anything. */
    if (order < SHM_UNIT_ORDER || order > c->s->top_order || (off & ((1u << order) - 1)) != 0 ||
        off > c->s->arena_size - (1u << order)) {
        return -1;
    }
    shm_entry *e = (shm_entry *)(c->ar + off);
    uint32_t head = c->st->free_head[order];
    if (head != SHM_NIL) {
        shm_entry *h = free_at(c->s, c->ar, head, order);
        if (h == NULL) {
            return -1;
        }
        h->prev = off;
    }
    e->magic = SHM_FREE;
    e->order = (uint8_t)order;
    e->next = head;
    e->prev = SHM_NIL;
    c->st->free_head[order] = off;
    return 0;
}

static int
fl_unlink(shm_ctx *c, shm_entry *e, uint32_t off, unsigned order)
{
    uint32_t p = e->prev, n = e->next;
    if (p == SHM_NIL) {
        if (c->st->free_head[order] != off) {
            return -1;
        }
        c->st->free_head[order] = n;
    }
    else {
        shm_entry *pe = free_at(c->s, c->ar, p, order);
        if (pe == NULL || pe->next != off) {
            return -1;
        }
        pe->next = n;
    }
    if (n != SHM_NIL) {
        shm_entry *ne = free_at(c->s, c->ar, n, order);
        if (ne == NULL || ne->prev != off) {
            return -1;
        }
        ne->prev = p;
    }
    e->magic = 0; /* no longer free: a stale FREE header must never be taken for one */
    return 0;
}

/* 0 with *out set, 1 if no block of that order can be had, -1 inconsistent. */
static int
block_alloc(shm_ctx *c, unsigned order, uint32_t *out)
{
    for (unsigned o = order; o <= c->s->top_order; o++) {
        uint32_t off = c->st->free_head[o];
        if (off == SHM_NIL) {
            continue;
        }
        shm_entry *e = free_at(c->s, c->ar, off, o);
        if (e == NULL || fl_unlink(c, e, off, o) < 0) {
            return -1;
        }
        while (o > order) { /* split: the upper halves go back, one per order */
            o--;
            if (fl_push(c, off + (1u << o), o) < 0) {
                return -1;
            }
        }
        *out = off;
        return 0;
    }
    return 1;
}

static int
block_free(shm_ctx *c, uint32_t off, unsigned order)
{
    if (order < SHM_UNIT_ORDER || order > c->s->top_order) {
        return -1;
    }
    while (order < c->s->top_order) {
        uint32_t size = 1u << order;
        uint32_t buddy = off ^ size;
        shm_entry *b = free_at(c->s, c->ar, buddy, order);
        if (b == NULL) {
            break; /* in use, split, or past the end of the arena */
        }
        if (fl_unlink(c, b, buddy, order) < 0) {
            return -1;
        }
        off &= ~size;
        order++;
    }
    return fl_push(c, off, order);
}

/* Covers [lo, hi) (multiples of SHM_UNIT) with the largest aligned free blocks: exactly
 * what freeing and coalescing would have produced. */
static int
fill_gap(shm_ctx *c, uint32_t lo, uint32_t hi)
{
    while (lo < hi) {
        unsigned o = c->s->top_order;
        while ((lo & ((1u << o) - 1)) != 0 || hi - lo < (1u << o)) {
            o--;
        }
        if (fl_push(c, lo, o) < 0) {
            return -1;
        }
        lo += 1u << o;
    }
    return 0;
}

/* --- LRU list -------------------------------------------------------------------------- */

static int
lru_remove(shm_ctx *c, shm_entry *e, uint32_t off)
{
    uint32_t p = e->prev, n = e->lnext;
    if (p == SHM_NIL) {
        if (c->st->lru_head != off) {
            return -1;
        }
        c->st->lru_head = n;
    }
    else {
        shm_entry *pe = entry_at(c->s, c->ar, p);
        if (pe == NULL || pe->lnext != off) {
            return -1;
        }
        pe->lnext = n;
    }
    if (n == SHM_NIL) {
        if (c->st->lru_tail != off) {
            return -1;
        }
        c->st->lru_tail = p;
    }
    else {
        shm_entry *ne = entry_at(c->s, c->ar, n);
        if (ne == NULL || ne->prev != off) {
            return -1;
        }
        ne->prev = p;
    }
    return 0;
}

static int
lru_push(shm_ctx *c, shm_entry *e, uint32_t off)
{
    uint32_t head = c->st->lru_head;
    if (head == SHM_NIL) {
        c->st->lru_tail = off;
    }
    else {
        shm_entry *h = entry_at(c->s, c->ar, head);
        if (h == NULL) {
            return -1;
        }
        h->prev = off;
    }
    e->prev = SHM_NIL;
    e->lnext = head;
    e->referenced = 0;
    e->tick = ++c->st->tick;
    c->st->lru_head = off;
    return 0;
}

/* A read does not move its entry to the head (CLOCK, or second chance): it marks it, and
 * eviction moves a marked tail entry to the head instead of evicting it. Moving it at every
 * read wrote into its two list neighbours and the head entry, three more cache lines (DRAM
 * misses in a big store, and lines every process writes) for ~20% of a lookup. The tick
 * still records every read, so a repair rebuilds the list in exact recency order. */
static void
lru_touch(shm_ctx *c, shm_entry *e)
{
    e->tick = ++c->st->tick;
    e->referenced = 1;
}

/* --- entries ------------------------------------------------------------------------- */

typedef struct {
    uint32_t *link;               /* the word that points at the entry */
    uint32_t off;
    shm_entry *e;
} shm_hit;

/* 1 found (hit filled), 0 absent, -1 inconsistent. */
static int
find(shm_ctx *c, const char *key, size_t klen, shm_hit *hit)
{
    uint32_t *link = &c->bk[c->bucket];
    uint32_t limit = c->s->arena_size / SHM_UNIT; /* a longer chain must have a cycle */
    for (uint32_t steps = 0;; steps++) {
        uint32_t off = *link;
        if (off == SHM_NIL) {
            return 0;
        }
        shm_entry *e = entry_at(c->s, c->ar, off);
        if (e == NULL || steps > limit) {
            return -1;
        }
        if (steps == 0) {
            /* In a big store the entry is a DRAM miss, and so is the value after it: ask for
             * the block's first 512 bytes at once instead of line after line (~7% of a get
             * over 1e6 sessions; a prefetch past the block or the arena is harmless, and the
             * address is computed as an integer: pointer arithmetic past the mapping is UB). */
            for (uintptr_t i = 1; i < 8; i++) {
                __builtin_prefetch((const void *)((uintptr_t)e + 64 * i));
            }
        }
        if (e->tag == c->tag && e->klen == klen &&
            memcmp((char *)(e + 1), key, klen) == 0) {
            hit->link = link;
            hit->off = off;
            hit->e = e;
            return 1;
        }
        link = &e->next;
    }
}

/* Unlinks (the one store that makes it unreachable), then books and frees it. */
static int
entry_remove(shm_ctx *c, uint32_t *link, shm_entry *e, uint32_t off, int counter)
{
    unsigned order = e->order;
    uint32_t vlen = e->vlen;
    *link = e->next;
    c->st->c[counter]++;
    c->st->c[C_BYTES_USED] -= 1u << order;
    c->st->c[C_VALUE_BYTES] -= vlen;
    if (lru_remove(c, e, off) < 0) {
        return -1;
    }
    return block_free(c, off, order);
}

/* The incremental sweep: SHM_SWEEP buckets per write, from where the hand stopped. */
static int
sweep_step(shm_ctx *c, long long now, uint32_t nbuckets_to_visit)
{
    uint32_t limit = c->s->arena_size / SHM_UNIT;
    for (uint32_t i = 0; i < nbuckets_to_visit; i++) {
        uint32_t b = c->st->hand % c->s->nbuckets;
        c->st->hand = (b + 1) % c->s->nbuckets;
        uint32_t *link = &c->bk[b];
        for (uint32_t steps = 0; *link != SHM_NIL; steps++) {
            uint32_t off = *link;
            shm_entry *e = entry_at(c->s, c->ar, off);
            if (e == NULL || steps > limit) {
                return -1;
            }
            if (expired(e, now)) {
                if (entry_remove(c, link, e, off, C_EXPIRATIONS) < 0) {
                    return -1;
                }
            }
            else {
                link = &e->next;
            }
        }
    }
    return 0;
}

/* Makes room for a block of `order`: expired entries near the LRU tail first, then the
 * least recently used, never `keep` (the entry being replaced). 0 with *out, 1 if even an
 * empty stripe (but for `keep`) has no room, -1 inconsistent. */
static int
alloc_evicting(shm_ctx *c, unsigned order, long long now, uint32_t keep, uint32_t *out)
{
    int r = block_alloc(c, order, out);
    if (r != 1) {
        return r;
    }
    uint32_t off = c->st->lru_tail;
    for (uint32_t i = 0; i < SHM_EXPIRED_SCAN && off != SHM_NIL; i++) {
        shm_entry *e = entry_at(c->s, c->ar, off);
        if (e == NULL) {
            return -1;
        }
        uint32_t older_next = e->prev;
        if (off != keep && expired(e, now)) {
            shm_hit hit;
            shm_ctx owner; /* its link is found through its own bucket */
            ctx_init(c->s, &owner, key_hash(c->s, (char *)(e + 1), e->klen));
            if (owner.si != c->si || find(&owner, (char *)(e + 1), e->klen, &hit) != 1 ||
                hit.off != off) {
                return -1;
            }
            if (entry_remove(c, hit.link, e, off, C_EXPIRATIONS) < 0) {
                return -1;
            }
        }
        off = older_next;
    }
    uint32_t chances = SHM_SECOND_CHANCES;
    for (;;) {
        r = block_alloc(c, order, out);
        if (r != 1) {
            return r;
        }
        off = c->st->lru_tail;
        if (off == keep && off != SHM_NIL) {
            shm_entry *k = entry_at(c->s, c->ar, off);
            if (k == NULL) {
                return -1;
            }
            off = k->prev;
        }
        if (off == SHM_NIL) {
            return 1;
        }
        shm_entry *e = entry_at(c->s, c->ar, off);
        if (e == NULL) {
            return -1;
        }
        if (e->referenced && chances > 0 && !expired(e, now)) {
            /* read since it reached the head: to the head again (bounded, so a stripe of
             * marked entries costs one eviction a bounded walk, and then plain LRU) */
            chances--;
            if (lru_remove(c, e, off) < 0 || lru_push(c, e, off) < 0) {
                return -1;
            }
            continue;
        }
        shm_hit hit;
        shm_ctx owner;
        ctx_init(c->s, &owner, key_hash(c->s, (char *)(e + 1), e->klen));
        if (owner.si != c->si || find(&owner, (char *)(e + 1), e->klen, &hit) != 1 ||
            hit.off != off) {
            return -1;
        }
        if (entry_remove(c, hit.link, e, off, expired(e, now) ? C_EXPIRATIONS : C_EVICTIONS) < 0) {
            return -1;
        }
    }
}

/* --- repair and check ------------------------------------------------------------------ */

static int
claim(uint8_t *bitmap, uint32_t first, uint32_t n)
{
    for (uint32_t i = first; i < first + n; i++) {
        if (bitmap[i >> 3] & (1u << (i & 7))) {
            return 0;
        }
    }
    for (uint32_t i = first; i < first + n; i++) {
        bitmap[i >> 3] |= (uint8_t)(1u << (i & 7));
    }
    return 1;
}

static int
pair_by_tick(const void *a, const void *b)
{
    uint64_t x = ((const shm_pair *)a)->tick, y = ((const shm_pair *)b)->tick;
    return x < y ? -1 : x > y;
}

/* The entry at `off` if it is valid and belongs in bucket `b` of the stripe. */
static shm_entry *
entry_belongs(shm_ctx *c, uint32_t off, uint32_t b)
{
    shm_entry *e = entry_at(c->s, c->ar, off);
    if (e == NULL || e->klen == 0) {
        return NULL;
    }
    shm_ctx owner;
    ctx_init(c->s, &owner, key_hash(c->s, (char *)(e + 1), e->klen));
    return owner.si == c->si && owner.bucket == b && owner.tag == e->tag ? e : NULL;
}

/* 1 if an entry before `e` in its chain (which starts at `head`, and which the walk has
 * validated up to `e`) holds the same key. Looks SHM_DEDUP_DEPTH entries back at most: a
 * longer chain is itself a sign of garbage. */
static int
twin_before(shm_ctx *c, uint32_t head, const shm_entry *e)
{
    uint32_t off = head;
    for (uint32_t i = 0; i < SHM_DEDUP_DEPTH && off != SHM_NIL; i++) {
        const shm_entry *x = (const shm_entry *)(c->ar + off);
        if (x == e) {
            return 0;
        }
        if (x->tag == e->tag && x->klen == e->klen &&
            memcmp((const char *)(x + 1), (const char *)(e + 1), e->klen) == 0) {
            return 1;
        }
        off = x->next;
    }
    return 0;
}

/* Walks every chain of the stripe, claiming each entry's units in s->bitmap and recording
 * (tick, off) in s->pairs. An entry whose header is unusable, that overlaps another, or that
 * would make a chain longer than the arena can hold ends its chain; a well-formed entry whose
 * checksum does not match (torn), or whose key already came earlier in its chain (pages
 * written back from different moments), is taken out alone. With `fix` those are removed
 * (counted in *dropped), without they are reported. Returns the number of entries, or -1
 * (check mode) with *why set. */
static long
walk_chains(shm_ctx *c, int fix, uint64_t *bytes, uint64_t *vbytes, uint64_t *dropped,
            const char **why)
{
    ShmStore *s = c->s;
    uint32_t units = s->arena_size / SHM_UNIT;
    memset(s->bitmap, 0, (units + 7) / 8);
    long n = 0;
    *bytes = *vbytes = *dropped = 0;
    for (uint32_t b = 0; b < s->nbuckets; b++) {
        uint32_t *link = &c->bk[b];
        for (uint32_t steps = 0; *link != SHM_NIL; steps++) {
            uint32_t off = *link;
            shm_entry *e = entry_belongs(c, off, b);
            const char *bad = e == NULL ? "a chain holds an invalid entry"
                              : steps > units ? "a chain is longer than the arena can hold"
                              : NULL;
            if (bad == NULL && (!entry_intact(e) || twin_before(c, c->bk[b], e))) {
                if (!fix) {
                    *why = entry_intact(e) ? "a key is twice in its chain"
                                           : "an entry does not match its checksum";
                    return -1;
                }
                /* Unclaimed, so the gap fill frees its block; no longer USED, so a link
                 * that leads here again ends its chain instead of hashing it anew. */
                *link = e->next;
                e->magic = 0;
                (*dropped)++;
                continue;
            }
            if (bad == NULL &&
                !claim(s->bitmap, off / SHM_UNIT, (1u << e->order) / SHM_UNIT)) {
                bad = "entries overlap";
            }
            if (bad != NULL) {
                if (!fix) {
                    *why = bad;
                    return -1;
                }
                *link = SHM_NIL;
                break;
            }
            s->pairs[n].tick = e->tick;
            s->pairs[n].off = off;
            n++;
            *bytes += 1u << e->order;
            *vbytes += e->vlen;
            link = &e->next;
        }
    }
    return n;
}

static int64_t
derived_entries(const shm_stripe *st)
{
    return (int64_t)(st->c[C_INSERTS] - st->c[C_DELETES] - st->c[C_EVICTIONS] -
                     st->c[C_EXPIRATIONS] - st->c[C_DISCARDED]);
}

/* Rebuilds the stripe from its bucket chains (see shm.h). Runs with the lock held, after
 * EOWNERDEAD, when an operation found the stripe inconsistent, or on the first attach of a
 * file in a new boot (counter C_COUNT: counted in the header instead); cannot fail. */
static void
stripe_repair(ShmStore *s, uint32_t si, int counter)
{
    shm_ctx c;
    ctx_stripe(s, &c, si);
    shm_stripe *st = c.st;
    uint64_t bytes, vbytes, dropped;
    const char *why = NULL;
    long n = walk_chains(&c, 1, &bytes, &vbytes, &dropped, &why);
    qsort(s->pairs, (size_t)n, sizeof(shm_pair), pair_by_tick);
    st->lru_head = st->lru_tail = SHM_NIL;
    uint64_t tick = st->tick;
    for (long i = 0; i < n; i++) { /* oldest first, each pushed to the head */
        uint32_t off = s->pairs[i].off;
        shm_entry *e = (shm_entry *)(c.ar + off);
        e->prev = SHM_NIL;
        e->lnext = st->lru_head;
        if (st->lru_head != SHM_NIL) {
            ((shm_entry *)(c.ar + st->lru_head))->prev = off;
        }
        else {
            st->lru_tail = off;
        }
        st->lru_head = off;
        if (e->tick > tick) {
            tick = e->tick;
        }
    }
    st->tick = tick;
    for (int o = 0; o < SHM_NORDERS; o++) {
        st->free_head[o] = SHM_NIL;
    }
    uint32_t units = s->arena_size / SHM_UNIT;
    for (uint32_t u = 0; u < units;) {
        if (s->bitmap[u >> 3] & (1u << (u & 7))) {
            u++;
            continue;
        }
        uint32_t end = u;
        while (end < units && !(s->bitmap[end >> 3] & (1u << (end & 7)))) {
            end++;
        }
        (void)fill_gap(&c, u * SHM_UNIT, end * SHM_UNIT); /* heads are NIL: cannot fail */
        u = end;
    }
    /* The dropped entries were counted in; whatever else is missing was lost some other way
     * (a chain cut, a removal that died before its counter moved), discarded as well. */
    st->c[C_DISCARDED] += dropped;
    int64_t expected = derived_entries(st);
    if (expected > n) {
        st->c[C_DISCARDED] += (uint64_t)(expected - n);
    }
    else if (expected < n) { /* counters overwritten by garbage: make them add up again */
        st->c[C_INSERTS] += (uint64_t)(n - expected);
    }
    st->c[C_BYTES_USED] = bytes;
    st->c[C_VALUE_BYTES] = vbytes;
    st->hand %= s->nbuckets;
    if (counter < C_COUNT) {
        st->c[counter]++;
    }
}

/* Verifies every invariant of a (locked) stripe; NULL if it holds, else what is wrong. */
static const char *
stripe_check(ShmStore *s, uint32_t si, long *entries)
{
    shm_ctx c;
    ctx_stripe(s, &c, si);
    uint64_t bytes, vbytes, dropped;
    const char *why = NULL;
    long n = walk_chains(&c, 0, &bytes, &vbytes, &dropped, &why);
    if (n < 0) {
        return why;
    }
    *entries = n;
    if (derived_entries(c.st) != n) {
        return "entry counters do not add up to the entries in the table";
    }
    if (c.st->c[C_BYTES_USED] != bytes || c.st->c[C_VALUE_BYTES] != vbytes) {
        return "byte counters do not match the entries";
    }
    long seen = 0;
    uint32_t prev = SHM_NIL;
    for (uint32_t off = c.st->lru_head; off != SHM_NIL; seen++) {
        shm_entry *e = entry_at(s, c.ar, off);
        if (e == NULL || seen >= n || e->prev != prev) {
            return "the LRU list is broken";
        }
        prev = off;
        off = e->lnext;
    }
    if (seen != n || c.st->lru_tail != prev) {
        return "the LRU list does not hold every entry exactly once";
    }
    uint32_t units = s->arena_size / SHM_UNIT;
    for (unsigned o = 0; o < SHM_NORDERS; o++) {
        uint32_t p = SHM_NIL;
        for (uint32_t off = c.st->free_head[o]; off != SHM_NIL;) {
            shm_entry *e = o >= SHM_UNIT_ORDER && o <= s->top_order ? free_at(s, c.ar, off, o)
                                                                    : NULL;
            if (e == NULL || e->prev != p ||
                !claim(s->bitmap, off / SHM_UNIT, (1u << o) / SHM_UNIT)) {
                return "a free list is broken or overlaps an entry";
            }
            p = off;
            off = e->next;
        }
    }
    for (uint32_t u = 0; u < units; u++) {
        if (!(s->bitmap[u >> 3] & (1u << (u & 7)))) {
            return "arena space is neither used nor free (leaked)";
        }
    }
    return NULL;
}

/* --- locking ----------------------------------------------------------------------------- */

static void store_unmap(ShmStore *s);

/* 0 with the stripe locked (repaired first if its last owner died), or -1 with an exception.
 * The GIL is released only while waiting for the lock; no Python code runs while a thread
 * holds one (though a thread that just got it may wait for the GIL a switch interval). */
static int
stripe_lock(ShmStore *s, shm_stripe *st, uint32_t si)
{
    int r = pthread_mutex_trylock(&st->lock);
    if (r == EBUSY) {
        struct timespec deadline; /* monotonic: a step of the wall clock changes no wait */
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        double whole = (double)(long long)s->lock_timeout;
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)((s->lock_timeout - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        s->waiters++;
        Py_BEGIN_ALLOW_THREADS
        r = pthread_mutex_clocklock(&st->lock, CLOCK_MONOTONIC, &deadline);
        Py_END_ALLOW_THREADS
        s->waiters--;
    }
    if (r == EOWNERDEAD) {
        stripe_repair(s, si, C_LOCK_RECOVERIES);
        r = pthread_mutex_consistent(&st->lock);
        if (r != 0) {
            pthread_mutex_unlock(&st->lock);
        }
    }
    if (s->closing) { /* closed by another thread while this one waited */
        if (r == 0) {
            pthread_mutex_unlock(&st->lock);
        }
        store_unmap(s);
        shm_raise(s, PyExc_ValueError, "the store was closed while waiting for a lock");
        return -1;
    }
    if (r == 0) {
        return 0;
    }
    if (r == ETIMEDOUT) {
        shm_raise(s, PyExc_TimeoutError,
                  "stripe %u stayed locked for %d ms (a process holding it is stopped, or "
                  "the lock was overwritten; `csessions_shm recreate` starts afresh)",
                  (unsigned)si, (int)(s->lock_timeout * 1000));
    }
    else if (r == ENOTRECOVERABLE) {
        shm_raise(s, s->error, "the lock of stripe %u is not recoverable; recreate the "
                  "segment (`csessions_shm recreate`)", (unsigned)si);
    }
    else {
        shm_raise(s, s->error, "locking stripe %u failed: %s", (unsigned)si, strerror(r));
    }
    return -1;
}

static void
stripe_unlock(shm_stripe *st)
{
    pthread_mutex_unlock(&st->lock);
}

/* --- segment creation and attachment ----------------------------------------------------- */

static void
header_checksum(const shm_header *h, unsigned char out[32])
{
    crypto_generichash(out, 32, (const unsigned char *)h, offsetof(shm_header, checksum),
                       NULL, 0);
}

static size_t
round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* Fills in the geometry for a segment of `size` bytes. 0, or -1 if it is too small. */
static int
plan(shm_header *h, uint64_t size)
{
    if (size < SHM_MIN_SIZE) {
        return -1;
    }
    uint32_t ns = 1;
    while (ns * 2 <= SHM_MAX_STRIPES && size / (ns * 2) >= SHM_STRIPE_MIN) {
        ns *= 2;
    }
    size_t stripes_bytes = round_up((size_t)ns * sizeof(shm_stripe), 4096);
    if (size < SHM_HEADER_BYTES + stripes_bytes) {
        return -1;
    }
    uint64_t per = (size - SHM_HEADER_BYTES - stripes_bytes) / ns;
    uint32_t nb = 16; /* about one bucket per 512 B of arena: chains stay ~1 long */
    while ((uint64_t)nb * 512 < per && nb < (1u << 24)) {
        nb *= 2;
    }
    size_t buckets_bytes = round_up((size_t)ns * nb * sizeof(uint32_t), 4096);
    uint64_t arenas_off = SHM_HEADER_BYTES + stripes_bytes + buckets_bytes;
    if (size <= arenas_off) {
        return -1;
    }
    uint64_t arena = (size - arenas_off) / ns / 4096 * 4096;
    if (arena > SHM_ARENA_MAX) {
        arena = SHM_ARENA_MAX;
    }
    if (arena < 16 * SHM_UNIT) {
        return -1;
    }
    unsigned top = SHM_UNIT_ORDER;
    while (top < SHM_TOP_ORDER_MAX && ((uint64_t)1 << (top + 1)) <= arena) {
        top++;
    }
    memcpy(h->magic, SHM_MAGIC, sizeof(h->magic));
    h->version = SHM_VERSION;
    h->header_bytes = sizeof(shm_header);
    h->total_size = size;
    h->nstripes = ns;
    h->nbuckets = nb;
    h->arena_size = (uint32_t)arena;
    h->top_order = top;
    h->stripes_off = SHM_HEADER_BYTES;
    h->buckets_off = SHM_HEADER_BYTES + stripes_bytes;
    h->arenas_off = arenas_off;
    h->stripe_bytes = sizeof(shm_stripe);
    h->entry_bytes = sizeof(shm_entry);
    h->mutex_bytes = sizeof(pthread_mutex_t);
    return 0;
}

/* NULL if the (checksummed) header describes a segment this build can use safely. The
 * geometry is checked in full, not only trusted for its checksum, since a checksum without
 * a key proves nothing against someone who writes a header on purpose: every region lies
 * inside the file and after the one before it, each bound compared by subtraction from the
 * file's size (a sum of crafted offsets could wrap). `h` is the caller's private copy: the
 * segment may change between the check and the use. */
static const char *
header_problem(const shm_header *h, uint64_t file_size)
{
    unsigned char sum[32];
    if (memcmp(h->magic, SHM_MAGIC, sizeof(h->magic)) != 0) {
        return "is not a csessions session store (bad magic)";
    }
    if (h->version != SHM_VERSION) {
        return "has another layout version than this csessions reads";
    }
    header_checksum(h, sum);
    if (sodium_memcmp(sum, h->checksum, sizeof(sum)) != 0) {
        return "has a corrupt header (checksum mismatch)";
    }
    if (h->header_bytes != sizeof(shm_header) || h->stripe_bytes != sizeof(shm_stripe) ||
        h->entry_bytes != sizeof(shm_entry) || h->mutex_bytes != sizeof(pthread_mutex_t)) {
        return "was made by a build with another memory layout";
    }
    if (h->total_size != file_size) {
        return "has a size other than its header says";
    }
    uint64_t ns = h->nstripes, nb = h->nbuckets, arena = h->arena_size;
    if (ns == 0 || ns > SHM_MAX_STRIPES || (ns & (ns - 1)) != 0 || nb == 0 || nb > (1u << 24) ||
        (nb & (nb - 1)) != 0 || arena == 0 || arena > SHM_ARENA_MAX || arena % 4096 != 0 ||
        h->top_order < SHM_UNIT_ORDER || h->top_order > SHM_TOP_ORDER_MAX ||
        ((uint64_t)1 << h->top_order) > arena || h->stripes_off < SHM_HEADER_BYTES ||
        h->stripes_off % 64 != 0 || h->stripes_off > file_size ||
        ns * sizeof(shm_stripe) > file_size - h->stripes_off ||
        h->buckets_off < h->stripes_off + ns * sizeof(shm_stripe) || h->buckets_off % 4 != 0 ||
        h->buckets_off > file_size || ns * nb * 4 > file_size - h->buckets_off ||
        h->arenas_off < h->buckets_off + ns * nb * 4 || h->arenas_off % 4096 != 0 ||
        h->arenas_off > file_size || (file_size - h->arenas_off) / ns < arena) {
        return "has an impossible geometry in its header";
    }
    return NULL;
}

/* A process-shared robust mutex at `m`, whatever was there before. 0 or -1. */
static int
make_lock(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc = -1;
    if (pthread_mutexattr_init(&attr) != 0) {
        return -1;
    }
    if (pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) == 0 &&
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) == 0 &&
        pthread_mutex_init(m, &attr) == 0) {
        rc = 0;
    }
    pthread_mutexattr_destroy(&attr);
    return rc;
}

static int
init_segment(ShmStore *s, shm_header *h)
{
    memset(s->buckets, 0xFF, (size_t)s->nstripes * s->nbuckets * sizeof(uint32_t)); /* NIL */
    for (uint32_t si = 0; si < s->nstripes; si++) {
        shm_stripe *st = &s->stripes[si];
        memset(st, 0, sizeof(*st));
        if (make_lock(&st->lock) < 0) {
            return -1;
        }
        st->lru_head = st->lru_tail = SHM_NIL;
        for (int o = 0; o < SHM_NORDERS; o++) {
            st->free_head[o] = SHM_NIL;
        }
        shm_ctx c;
        ctx_stripe(s, &c, si);
        if (fill_gap(&c, 0, s->arena_size) < 0) {
            return -1;
        }
    }
    randombytes_buf(h->hash_key, sizeof(h->hash_key));
    h->created = (int64_t)time(NULL);
    header_checksum(h, h->checksum);
    memcpy(s->hash_key, h->hash_key, sizeof(s->hash_key));
    __atomic_store_n(&h->ready, SHM_READY, __ATOMIC_RELEASE); /* attachers may go now */
    return 0;
}

/* From a header that header_problem() passed, or that plan() made: the caller's copy, never
 * the segment's own (it could have changed since the check). */
static void
adopt_geometry(ShmStore *s, char *base, size_t mapped, const shm_header *h)
{
    s->base = base;
    s->size = mapped;
    s->stripes = (shm_stripe *)(base + h->stripes_off);
    s->buckets = (uint32_t *)(base + h->buckets_off);
    s->arenas = base + h->arenas_off;
    s->nstripes = h->nstripes;
    s->nbuckets = h->nbuckets;
    s->arena_size = h->arena_size;
    s->top_order = h->top_order;
    memcpy(s->hash_key, h->hash_key, sizeof(s->hash_key));
}

/* Checks the segment's header and adopts its geometry, both from a private copy (the segment
 * may change between the check and the use). NULL, or what is wrong with it. */
static const char *
adopt_checked_header(ShmStore *s, char *base, size_t mapped)
{
    shm_header copy;
    memcpy(&copy, base, sizeof(copy));
    const char *problem = header_problem(&copy, (uint64_t)mapped);
    if (problem == NULL) {
        adopt_geometry(s, base, mapped, &copy);
    }
    return problem;
}

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* NULL if the store's file or segment may be used: only the site's own user may touch it. */
static const char *
owner_problem(const struct stat *sb)
{
    if (sb->st_uid != geteuid()) {
        return "is owned by another user; refusing to use it";
    }
    if ((sb->st_mode & 077) != 0) {
        return "is accessible to group or others (mode must be 0600); refusing to use it";
    }
    return NULL;
}

/* The geometry a store of `size` bytes gets if this opener creates it. 0, or -1 with
 * ValueError when the size is too small. */
static int
plan_or_raise(shm_header *h, uint64_t size, int create)
{
    memset(h, 0, sizeof(*h));
    if (create && plan(h, size) < 0) {
        PyErr_Format(PyExc_ValueError, "csessions shm: a store of %llu bytes is too small "
                     "(at least %u)", (unsigned long long)size, SHM_MIN_SIZE);
        return -1;
    }
    return 0;
}

/* Huge pages where /dev/shm allows them (mounted with huge=advise or huge=within_size; the
 * default, huge=never, ignores this): over 1e6 sessions a lookup then misses the TLB far
 * less (raw get 1.10 -> 0.79 us on the bench machine). Best effort: a refusal changes
 * nothing else. */
static void
advise_huge_pages(void *base, size_t len)
{
    (void)madvise(base, len, MADV_HUGEPAGE);
}

/* Creates the segment (0) or attaches to the one that exists (0), or -1 with an exception.
 * Holds the GIL throughout, also while it waits (at most SHM_ATTACH_WAIT_MS) for another
 * process to finish creating the segment: this happens once per process, at startup. */
static int
segment_open(ShmStore *s, const char *name, uint64_t size, int create)
{
    int fd = -1, rc = -1, saved = 0;
    char *base = MAP_FAILED;
    size_t mapped = 0;
    const char *problem = NULL;
    shm_header plan_h;
    if (plan_or_raise(&plan_h, size, create) < 0) {
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        if (create) {
            fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd >= 0) {
                /* Ours: the umask may only have removed bits, set exactly 0600 anyway. */
                if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0) {
                    saved = errno;
                    goto create_failed;
                }
                base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (base == MAP_FAILED) {
                    saved = errno;
                    goto create_failed;
                }
                mapped = size;
                advise_huge_pages(base, size);
                shm_header *h = (shm_header *)base;
                memcpy(h, &plan_h, sizeof(plan_h));
                adopt_geometry(s, base, mapped, &plan_h);
                if (init_segment(s, h) < 0) {
                    saved = EINVAL;
                    goto create_failed;
                }
                s->created = 1;
                rc = 0;
                goto done;
            create_failed:
                shm_unlink(name); /* never leave a half-made segment for others to wait on */
                errno = saved;
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
                goto done;
            }
            if (errno != EEXIST) {
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
                goto done;
            }
        }
        fd = shm_open(name, O_RDWR, 0);
        if (fd < 0) {
            if (errno == ENOENT && create) {
                continue; /* unlinked between our two opens: race for creating it again */
            }
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
            goto done;
        }
        struct stat sb;
        int waited = 0;
        for (;;) {
            if (fstat(fd, &sb) < 0) {
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
                goto done;
            }
            problem = owner_problem(&sb);
            if (problem != NULL) {
                goto refuse;
            }
            if (sb.st_size != 0 || waited >= SHM_ATTACH_WAIT_MS) {
                break;
            }
            sleep_ms(1); /* the creator has not sized it yet */
            waited++;
        }
        if ((uint64_t)sb.st_size < SHM_HEADER_BYTES) {
            problem = "is empty or truncated (its creator died before sizing it?)";
            goto refuse;
        }
        mapped = (size_t)sb.st_size;
        base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
            goto done;
        }
        advise_huge_pages(base, mapped);
        shm_header *h = (shm_header *)base;
        for (waited = 0; __atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) != SHM_READY; waited++) {
            if (waited >= SHM_ATTACH_WAIT_MS) {
                problem = "was never finished by its creator (it died while creating it?)";
                goto refuse;
            }
            sleep_ms(1);
        }
        problem = adopt_checked_header(s, base, mapped);
        if (problem != NULL) {
            goto refuse;
        }
        rc = 0;
        goto done;
    }
    PyErr_Format(PyExc_OSError, "csessions shm segment '%s' keeps disappearing while "
                 "being opened", name);
    goto done;
refuse:
    shm_raise(s, s->error, "%s (recreate it: `manage.py csessions_shm recreate`)", problem);
done:
    if (fd >= 0) {
        close(fd); /* the mapping keeps the segment */
    }
    if (rc < 0 && base != MAP_FAILED) {
        munmap(base, mapped);
        s->base = NULL;
    }
    return rc;
}

/* --- file mode ----------------------------------------------------------------------------- */

/* The kernel's id of the running boot, NUL-padded. 0, or -1 with errno set. */
static int
read_boot_id(char out[SHM_BOOT_ID_BYTES])
{
    char buf[64];
    ssize_t n;
    int fd, saved;
    do {
        fd = open(SHM_BOOT_ID_PATH, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        return -1;
    }
    do {
        n = read(fd, buf, sizeof(buf));
    } while (n < 0 && errno == EINTR);
    saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) {
        n--;
    }
    if (n == 0 || n >= SHM_BOOT_ID_BYTES) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, SHM_BOOT_ID_BYTES);
    memcpy(out, buf, (size_t)n);
    return 0;
}

/* Repair's scratch (see ShmStore), once the geometry is known. 0, or -1 with MemoryError. */
static int
scratch_alloc(ShmStore *s)
{
    uint32_t units = s->arena_size / SHM_UNIT;
    if (s->bitmap == NULL) {
        s->bitmap = PyMem_RawCalloc((units + 7) / 8, 1);
    }
    if (s->pairs == NULL) {
        s->pairs = PyMem_RawMalloc(sizeof(shm_pair) * units);
    }
    if (s->bitmap == NULL || s->pairs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The first attach of a file in a new boot. Nothing of the previous boot's in-memory state
 * means anything now (a locked mutex names a thread of that boot), and the disk may hold
 * pages from different moments if the machine crashed. So every mutex is made anew and every
 * stripe rebuilt from its chains, each entry verified against its checksum. Runs under the
 * file's flock, which every opener of this boot takes first: no one else has it mapped. */
static int
boot_verify(ShmStore *s, shm_header *h, const char *boot_id)
{
    for (uint32_t si = 0; si < s->nstripes; si++) {
        if (make_lock(&s->stripes[si].lock) < 0) {
            return -1;
        }
        stripe_repair(s, si, C_COUNT);
    }
    h->reboots++;
    memcpy(h->boot_id, boot_id, SHM_BOOT_ID_BYTES); /* last: a verify cut short is redone */
    return 0;
}

/* Sizes a file about to be initialised, with its blocks allocated now: a write into a hole
 * of a full disk would kill the writer with SIGBUS later. 0, or -1 with errno. */
static int
file_size_up(int fd, uint64_t size)
{
    int r;
    if (ftruncate(fd, (off_t)size) < 0) {
        return -1;
    }
    do {
        r = posix_fallocate(fd, 0, (off_t)size);
    } while (r == EINTR);
    if (r != 0 && r != EOPNOTSUPP && r != EINVAL) { /* no fallocate here: stays sparse */
        errno = r;
        return -1;
    }
    return 0;
}

static int
all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

/* Opens `path` (no symlink in the last component), creating it 0600 if allowed, and returns
 * its descriptor flock()ed: LOCK_EX if no other process holds a lock on it (*exclusive set),
 * else LOCK_SH; and its stat in *sb. -1 with an exception. */
static int
file_open_locked(ShmStore *s, const char *path, int create, struct stat *sb, int *exclusive)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int fd = -1, made = 0, r;
        if (create) {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            made = fd >= 0;
        }
        if (fd < 0 && (!create || errno == EEXIST)) {
            fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0 && errno == ENOENT && create) {
                continue; /* removed between our two opens: race for creating it again */
            }
        }
        if (fd < 0) {
            if (errno == ELOOP) {
                shm_raise(s, s->error, "is a symbolic link; refusing to use it");
            }
            else {
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
            }
            return -1;
        }
        /* Ours: the umask may only have removed bits, set exactly 0600 anyway. */
        if (made && fchmod(fd, 0600) < 0) {
            goto os_error;
        }
        /* Alone with the file (no other process has it mapped: each keeps a shared lock for
         * as long as it does), or one of many. */
        r = flock(fd, LOCK_EX | LOCK_NB);
        *exclusive = r == 0;
        while (r < 0 && (errno == EWOULDBLOCK || errno == EINTR)) {
            if (errno == EINTR && PyErr_CheckSignals() < 0) {
                close(fd);
                return -1;
            }
            Py_BEGIN_ALLOW_THREADS /* an opener alone with it may be verifying it */
            r = flock(fd, LOCK_SH);
            Py_END_ALLOW_THREADS
        }
        if (r < 0 || fstat(fd, sb) < 0) {
            goto os_error;
        }
        if (sb->st_nlink == 0) { /* removed (recreated) while we waited for the lock */
            close(fd);
            continue;
        }
        return fd;
    os_error:
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        close(fd);
        return -1;
    }
    shm_raise(s, PyExc_OSError, "keeps disappearing while being opened");
    return -1;
}

/* File mode: the store lives in the regular file `path`, mapped MAP_SHARED. Everything that
 * must happen once (creating, sizing, initialising, verifying after a reboot) happens under
 * flock(LOCK_EX), which an opener gets only when no other process has the file mapped (each
 * keeps LOCK_SH for as long as it does): so of the workers that start at once exactly one
 * does it, and a file in use is never re-made under its users, whatever its header says.
 * 0, or -1 with an exception, or -1 without one and *busy set: it needed to be alone. */
static int
file_attach(ShmStore *s, const char *path, uint64_t size, int create, int *busy)
{
    int fd = -1, rc = -1, fresh, exclusive = 0;
    char *base = MAP_FAILED;
    size_t mapped = 0;
    const char *problem = NULL;
    char boot_id[SHM_BOOT_ID_BYTES];
    struct stat sb;
    shm_header plan_h;
    shm_header *h;
    if (plan_or_raise(&plan_h, size, create) < 0) {
        return -1;
    }
    if (read_boot_id(boot_id) < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, SHM_BOOT_ID_PATH);
        return -1;
    }
    fd = file_open_locked(s, path, create, &sb, &exclusive);
    if (fd < 0) {
        return -1;
    }
    problem = S_ISREG(sb.st_mode) ? owner_problem(&sb) : "is not a regular file";
    if (problem != NULL) {
        goto refuse;
    }
    fresh = sb.st_size == 0; /* new, or its creator died before sizing it */
    if (!fresh) {
        if ((uint64_t)sb.st_size < SHM_HEADER_BYTES) {
            problem = "is too short to be a session store";
            goto refuse;
        }
        mapped = (size_t)sb.st_size;
        base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            goto os_error;
        }
        h = (shm_header *)base;
        if (__atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) != SHM_READY) {
            /* Its creator died midway, or the machine did before the header reached the
             * disk: ours to redo, if it is one of ours (or nothing at all). */
            if (memcmp(h->magic, SHM_MAGIC, sizeof(h->magic)) != 0 &&
                !all_zero(base, SHM_HEADER_BYTES)) {
                problem = "is not a csessions session store (bad magic)";
                goto refuse;
            }
            munmap(base, mapped);
            base = MAP_FAILED;
            fresh = 1;
        }
    }
    if (fresh) {
        if (!create) {
            problem = "is empty or was never finished by its creator";
            goto refuse;
        }
        if (!exclusive) { /* others have it mapped: only an opener alone may (re)make it */
            *busy = 1;
            goto done;
        }
        if (file_size_up(fd, size) < 0) {
            goto os_error;
        }
        mapped = (size_t)size;
        base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            goto os_error;
        }
        h = (shm_header *)base;
        memcpy(h, &plan_h, sizeof(plan_h));
        memcpy(h->boot_id, boot_id, sizeof(boot_id));
        adopt_geometry(s, base, mapped, &plan_h);
        if (init_segment(s, h) < 0) {
            shm_raise(s, s->error, "its locks could not be initialised");
            goto done;
        }
        s->created = 1;
        rc = 0;
        goto done;
    }
    problem = adopt_checked_header(s, base, mapped);
    if (problem != NULL) {
        goto refuse;
    }
    if (memcmp(h->boot_id, boot_id, sizeof(boot_id)) != 0) {
        if (!exclusive) { /* as above: no verify (new locks) under processes using it */
            *busy = 1;
            goto done;
        }
        if (scratch_alloc(s) < 0) {
            goto done;
        }
        if (boot_verify(s, h, boot_id) < 0) {
            shm_raise(s, s->error, "its locks could not be initialised");
            goto done;
        }
    }
    rc = 0;
    goto done;
os_error:
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    goto done;
refuse:
    shm_raise(s, s->error, "%s (remove it, or recreate it: `manage.py csessions_shm recreate`)",
              problem);
done:
    /* The shared lock stays for as long as the mapping does (it holds the open file
     * description, and with it the flock, after the descriptor is closed): it tells later
     * openers that this process uses the file. */
    if (rc == 0 && exclusive && flock(fd, LOCK_SH) < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        rc = -1;
    }
    if (rc < 0) {
        flock(fd, LOCK_UN);
    }
    close(fd);
    if (rc < 0 && base != MAP_FAILED) {
        munmap(base, mapped);
        s->base = NULL;
    }
    return rc;
}

/* File mode: file_attach until it is not `busy` (the file needs making or verifying while
 * other processes have it mapped: its maker may still be at it), for SHM_ATTACH_WAIT_MS. */
static int
file_open(ShmStore *s, const char *path, uint64_t size, int create)
{
    for (int waited = 0;; waited++) {
        int busy = 0, rc = file_attach(s, path, size, create, &busy);
        if (!busy) {
            return rc;
        }
        if (waited >= SHM_ATTACH_WAIT_MS) {
            shm_raise(s, s->error, "is unfinished, or was last verified in another boot, while "
                      "other processes have it mapped (remove it, or recreate it: "
                      "`manage.py csessions_shm recreate`)");
            return -1;
        }
        sleep_ms(1);
    }
}

/* --- the Python type --------------------------------------------------------------------- */

/* A pointer to the bytes of a bytes object or an ASCII str, borrowed from `obj`. */
static int
as_bytes(PyObject *obj, const char *what, const char **ptr, Py_ssize_t *len)
{
    if (PyBytes_Check(obj)) {
        *ptr = PyBytes_AS_STRING(obj);
        *len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyUnicode_Check(obj) && PyUnicode_IS_ASCII(obj)) {
        *ptr = (const char *)PyUnicode_DATA(obj);
        *len = PyUnicode_GET_LENGTH(obj);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "ShmStore: %s must be bytes or an ASCII str, not %.80s", what,
                 PyUnicode_Check(obj) ? "a str with non-ASCII characters" : Py_TYPE(obj)->tp_name);
    return -1;
}

static int
as_key(PyObject *obj, const char **ptr, Py_ssize_t *len)
{
    if (as_bytes(obj, "the key", ptr, len) < 0) {
        return -1;
    }
    if (*len < 1 || *len > SHM_KEY_MAX) {
        PyErr_Format(PyExc_ValueError, "ShmStore: a key is 1 to %d bytes, not %zd", SHM_KEY_MAX,
                     *len);
        return -1;
    }
    return 0;
}

static int
as_int(PyObject *obj, long long *out)
{
    *out = PyLong_AsLongLong(obj);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Seconds since the epoch, whole or as time.time() gives them (floored: int() on the caller's
 * side costs more than the store's own get). Times come from the caller, never from a C
 * clock: a test's fake time.time() (freezegun, time-machine) is every operation's clock. */
static int
as_time(PyObject *obj, long long *out)
{
    if (PyFloat_CheckExact(obj)) {
        double d = floor(PyFloat_AS_DOUBLE(obj));
        if (!(d >= -9.0e18 && d <= 9.0e18)) { /* NaN fails both */
            PyErr_SetString(PyExc_ValueError, "time out of range");
            return -1;
        }
        *out = (long long)d;
        return 0;
    }
    return as_int(obj, out);
}

static int
check_open(ShmStore *s)
{
    if (s->closing || s->base == NULL) {
        shm_raise(s, PyExc_ValueError, "the store is closed");
        return -1;
    }
    return 0;
}

/* Locks the key's stripe; on success the caller must stripe_unlock(c->st). */
static int
lock_key(ShmStore *s, PyObject *key, const char **k, Py_ssize_t *klen, shm_ctx *c)
{
    if (check_open(s) < 0 || as_key(key, k, klen) < 0) {
        return -1;
    }
    ctx_init(s, c, key_hash(s, *k, (size_t)*klen));
    __builtin_prefetch(&c->bk[c->bucket]); /* while the lock is taken */
    return stripe_lock(s, c->st, c->si);
}

/* A stripe found inconsistent mid-operation: rebuild it, and let the caller retry once. */
static int
repaired(shm_ctx *c, int *tries)
{
    stripe_repair(c->s, c->si, C_REPAIRS);
    return ++*tries <= 1;
}

static void
raise_corrupt(shm_ctx *c)
{
    shm_raise(c->s, c->s->error, "stripe %u is still inconsistent after repair",
              (unsigned)c->si);
}

/* get(key, now) -> str | None; with `unpack`, get_unpacked(key, now) -> dict | str | None:
 * a value in pack.h's form of a dict comes back unpacked, from a copy taken under the lock
 * (one call and no str a load); any other value, or one that does not unpack, as get() gives
 * it, for the caller to decode or report. */
static PyObject *
get_impl(ShmStore *s, PyObject *const *args, Py_ssize_t nargs, const char *name, int unpack)
{
    const char *k;
    Py_ssize_t klen;
    long long now;
    shm_ctx c;
    shm_hit hit;
    PyObject *result = NULL;
    int tries = 0, copied = 0;
    cs_buf copy;
    cs_buf_init(&copy);
    if (cs_check_nargs(name, nargs, 2) < 0 || as_time(args[1], &now) < 0 ||
        lock_key(s, args[0], &k, &klen, &c) < 0) {
        return NULL;
    }
retry:;
    int r = find(&c, k, (size_t)klen, &hit);
    if (r == 1 && expired(hit.e, now)) {
        if (entry_remove(&c, hit.link, hit.e, hit.off, C_EXPIRATIONS) < 0) {
            r = -1;
        }
        else {
            r = 0;
        }
    }
    if (r == 1) {
        lru_touch(&c, hit.e);
    }
    if (r < 0) {
        if (repaired(&c, &tries)) {
            goto retry;
        }
        raise_corrupt(&c);
        goto done;
    }
    if (r == 0) {
        c.st->c[C_MISSES]++;
        result = Py_NewRef(Py_None);
        goto done;
    }
    c.st->c[C_HITS]++;
    /* Copied out under the lock: the block may be reused the moment it is released. */
    const char *value = (char *)(hit.e + 1) + hit.e->klen;
    if (unpack && hit.e->vlen > 0 && value[0] == 'o') {
        copied = cs_buf_append(&copy, value, hit.e->vlen) == 0;
    }
    else {
        result = PyUnicode_DecodeLatin1(value, hit.e->vlen, NULL);
    }
done:
    stripe_unlock(c.st);
    if (copied) {
        result = cs_unpack(PyType_GetModuleState(Py_TYPE(s)), copy.data, copy.len);
        if (result == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear(); /* malformed: the caller's decoder reports it */
            result = PyUnicode_DecodeLatin1(copy.data, copy.len, NULL);
        }
    }
    cs_buf_free(&copy);
    return result;
}

static PyObject *
store_get(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    return get_impl(s, args, nargs, "get", 0);
}

static PyObject *
store_get_unpacked(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    return get_impl(s, args, nargs, "get_unpacked", 1);
}

/* prefetch(key) -> None: asks the CPU for the cache line of the key's bucket, taking no lock
 * and reading nothing, so that a get() some time later finds it in cache instead of paying a
 * DRAM miss (in a big store). Advisory: a key the store cannot hold, or a closed store, is
 * not an error here; get() reports it. */
static PyObject *
store_prefetch(ShmStore *s, PyObject *key)
{
    const char *k;
    Py_ssize_t klen;
    shm_ctx c;
    if (s->closing || s->base == NULL) {
        Py_RETURN_NONE;
    }
    if (as_key(key, &k, &klen) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    ctx_init(s, &c, key_hash(s, k, (size_t)klen));
    __builtin_prefetch(&c.bk[c.bucket]);
    Py_RETURN_NONE;
}

/* For the crash tests only: with die_at > 0, the process _exit()s at that point of a put,
 * as a SIGKILL would stop it there: 1 holding the lock, 2 with the new entry half written,
 * 3 after publishing it, before the LRU list and the old block are updated; 4 stops it
 * (SIGSTOP) holding the lock, for the timeout test. */
static void
maybe_die(int die_at, int here)
{
    if (die_at == here) {
        _exit(0);
    }
    if (die_at == 4 && here == 1) { /* 4: stop, holding the lock, until killed */
        kill(getpid(), SIGSTOP);
    }
}

/* rest: expires, now, mode. */
static PyObject *
put_impl(ShmStore *s, PyObject *key, const char *v, Py_ssize_t vlen, PyObject *const *rest,
         int die_at)
{
    const char *k;
    Py_ssize_t klen;
    long long expires, now, mode;
    shm_ctx c;
    shm_hit hit;
    int tries = 0, stored = 0;
    if (check_open(s) < 0 || as_time(rest[0], &expires) < 0 || as_time(rest[1], &now) < 0 ||
        as_int(rest[2], &mode) < 0) {
        return NULL;
    }
    if (mode < MODE_SET || mode > MODE_REPLACE) {
        PyErr_SetString(PyExc_ValueError, "ShmStore.put: mode is 0 (set), 1 (add) or 2 (replace)");
        return NULL;
    }
    if (as_key(key, &k, &klen) < 0) {
        return NULL;
    }
    uint64_t need = entry_need(klen, vlen);
    unsigned order = order_for(need);
    if (order > s->top_order) {
        shm_raise(s, PyExc_ValueError, "an entry of %llu bytes (value %zd, key %zd, header "
                  "%zu) is larger than the largest the store accepts (%u bytes)",
                  (unsigned long long)need, vlen, klen, sizeof(shm_entry), 1u << s->top_order);
        return NULL;
    }
    /* Hashed before the lock is taken: the stripe is held no longer than without it. */
    uint64_t sum = entry_sum(k, (size_t)klen, v, (size_t)vlen, order, clamp_time(expires));
    if (lock_key(s, key, &k, &klen, &c) < 0) {
        return NULL;
    }
    maybe_die(die_at, 1);
retry:;
    int r = sweep_step(&c, now, SHM_SWEEP);
    if (r == 0) {
        r = find(&c, k, (size_t)klen, &hit);
    }
    if (r == 1 && expired(hit.e, now)) {
        r = entry_remove(&c, hit.link, hit.e, hit.off, C_EXPIRATIONS) < 0 ? -1 : 0;
    }
    if (r < 0) {
        goto corrupt;
    }
    int found = r;
    if ((mode == MODE_ADD && found) || (mode == MODE_REPLACE && !found)) {
        goto done; /* stored stays 0 */
    }
    uint32_t off;
    r = alloc_evicting(&c, order, now, found ? hit.off : SHM_NIL, &off);
    if (r == 1 && found) { /* only the old entry is left in the way: drop it first */
        if (find(&c, k, (size_t)klen, &hit) != 1 ||
            entry_remove(&c, hit.link, hit.e, hit.off, C_DELETES) < 0) {
            goto corrupt;
        }
        found = 0;
        r = alloc_evicting(&c, order, now, SHM_NIL, &off);
    }
    if (r != 0) {
        goto corrupt; /* an empty arena always has a top-order block */
    }
    if (found && find(&c, k, (size_t)klen, &hit) != 1) { /* evictions may have moved its link */
        goto corrupt;
    }
    /* The old entry's fields are read before the new block is written: free lists made of
     * garbage could hand out a block that covers them (that is a repair, not a write). */
    unsigned old_order = found ? hit.e->order : SHM_UNIT_ORDER;
    uint32_t old_vlen = found ? hit.e->vlen : 0, old_next = found ? hit.e->next : SHM_NIL;
    if (found && (uint64_t)off < hit.off + ((uint64_t)1 << old_order) &&
        (uint64_t)hit.off < off + ((uint64_t)1 << order)) {
        goto corrupt;
    }
    shm_entry *e = (shm_entry *)(c.ar + off);
    e->order = (uint8_t)order;
    e->klen = (uint8_t)klen;
    e->referenced = 0;
    e->vlen = (uint32_t)vlen;
    e->tag = c.tag;
    e->expires = clamp_time(expires);
    e->prev = e->lnext = SHM_NIL;
    e->tick = 0;
    e->sum = sum;
    memcpy((char *)(e + 1), k, (size_t)klen);
    memcpy((char *)(e + 1) + klen, v, (size_t)(die_at == 2 ? vlen / 2 : vlen));
    e->magic = SHM_USED;
    maybe_die(die_at, 2);
    c.st->c[C_BYTES_USED] += 1u << order;
    c.st->c[C_VALUE_BYTES] += (uint64_t)vlen;
    if (found) {
        e->next = old_next;
        c.st->c[C_UPDATES]++;
        *hit.link = off; /* publish: readers now find the new value */
        maybe_die(die_at, 3);
        c.st->c[C_BYTES_USED] -= 1u << old_order;
        c.st->c[C_VALUE_BYTES] -= old_vlen;
        if (lru_remove(&c, hit.e, hit.off) < 0 || block_free(&c, hit.off, old_order) < 0 ||
            lru_push(&c, e, off) < 0) {
            goto corrupt;
        }
    }
    else {
        e->next = c.bk[c.bucket];
        c.st->c[C_INSERTS]++; /* counted before it is published: see shm.h */
        c.bk[c.bucket] = off; /* publish */
        maybe_die(die_at, 3);
        if (lru_push(&c, e, off) < 0) {
            goto corrupt;
        }
    }
    stored = 1;
    goto done;
corrupt:
    if (repaired(&c, &tries)) {
        goto retry;
    }
    raise_corrupt(&c);
    stripe_unlock(c.st);
    return NULL;
done:
    stripe_unlock(c.st);
    return PyBool_FromLong(stored);
}

/* put(key, value, expires, now, mode) -> bool; mode 0 set, 1 add (False if a live entry
 * exists), 2 replace (False if none). */
static PyObject *
store_put(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    const char *v;
    Py_ssize_t vlen;
    if (cs_check_nargs("put", nargs, 5) < 0 || as_bytes(args[1], "the value", &v, &vlen) < 0) {
        return NULL;
    }
    return put_impl(s, args[0], v, vlen, args + 2, 0);
}

/* put_packed(key, obj, expires, now, mode, limit) -> bool | bytes | None: put() of pack.h's
 * form of the dict obj, packed here into a C buffer (one call and no bytes a save). Nothing
 * is stored when obj is not a dict with a packed form (None) or its packed form is longer
 * than limit or than an entry can be (that form, as bytes, for the caller to store what it
 * chooses through put()). */
static PyObject *
store_put_packed(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    PyObject *result = NULL;
    cs_buf out;
    cs_buf_init(&out);
    if (cs_check_nargs("put_packed", nargs, 6) < 0 || check_open(s) < 0) {
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[5]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int rc = PyDict_CheckExact(args[1]) ? cs_pack(&out, args[1]) : 1;
    if (rc < 0) {
        goto done;
    }
    if (rc == 1) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    const char *k;
    Py_ssize_t klen;
    if (as_key(args[0], &k, &klen) < 0) {
        goto done;
    }
    if (out.len > limit || order_for(entry_need(klen, out.len)) > s->top_order) {
        result = PyBytes_FromStringAndSize(out.data, out.len);
        goto done;
    }
    result = put_impl(s, args[0], out.data, out.len, args + 2, 0);
done:
    cs_buf_free(&out);
    return result;
}

/* _put_and_die(key, value, expires, now, mode, stage): see maybe_die. */
static PyObject *
store_put_and_die(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    const char *v;
    Py_ssize_t vlen;
    if (cs_check_nargs("_put_and_die", nargs, 6) < 0 ||
        as_bytes(args[1], "the value", &v, &vlen) < 0) {
        return NULL;
    }
    long stage = PyLong_AsLong(args[5]);
    if (stage == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return put_impl(s, args[0], v, vlen, args + 2, (int)stage);
}

/* delete(key, now) -> bool: whether a live entry was deleted. */
static PyObject *
store_delete(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    const char *k;
    Py_ssize_t klen;
    long long now;
    shm_ctx c;
    shm_hit hit;
    int tries = 0, deleted = 0;
    if (cs_check_nargs("delete", nargs, 2) < 0 || as_time(args[1], &now) < 0 ||
        lock_key(s, args[0], &k, &klen, &c) < 0) {
        return NULL;
    }
retry:;
    int r = find(&c, k, (size_t)klen, &hit);
    if (r == 1) {
        deleted = !expired(hit.e, now);
        if (entry_remove(&c, hit.link, hit.e, hit.off,
                         deleted ? C_DELETES : C_EXPIRATIONS) < 0) {
            r = -1;
        }
    }
    if (r < 0) {
        if (repaired(&c, &tries)) {
            deleted = 0;
            goto retry;
        }
        raise_corrupt(&c);
        stripe_unlock(c.st);
        return NULL;
    }
    stripe_unlock(c.st);
    return PyBool_FromLong(deleted);
}

/* contains(key, now) -> bool; neither a hit nor a miss, and the LRU order is kept. */
static PyObject *
store_contains(ShmStore *s, PyObject *const *args, Py_ssize_t nargs)
{
    const char *k;
    Py_ssize_t klen;
    long long now;
    shm_ctx c;
    shm_hit hit;
    int tries = 0;
    if (cs_check_nargs("contains", nargs, 2) < 0 || as_time(args[1], &now) < 0 ||
        lock_key(s, args[0], &k, &klen, &c) < 0) {
        return NULL;
    }
retry:;
    int r = find(&c, k, (size_t)klen, &hit);
    if (r == 1 && expired(hit.e, now)) {
        r = entry_remove(&c, hit.link, hit.e, hit.off, C_EXPIRATIONS) < 0 ? -1 : 0;
    }
    if (r < 0) {
        if (repaired(&c, &tries)) {
            goto retry;
        }
        raise_corrupt(&c);
        stripe_unlock(c.st);
        return NULL;
    }
    stripe_unlock(c.st);
    return PyBool_FromLong(r);
}

/* sweep(now) -> int: removes every expired entry, one stripe (lock) at a time. For
 * clear_expired(); the request path only ever sweeps a few buckets. */
static PyObject *
store_sweep(ShmStore *s, PyObject *arg)
{
    long long now;
    if (check_open(s) < 0 || as_time(arg, &now) < 0) {
        return NULL;
    }
    uint64_t removed = 0;
    for (uint32_t si = 0; si < s->nstripes; si++) {
        shm_ctx c;
        ctx_stripe(s, &c, si);
        if (stripe_lock(s, c.st, si) < 0) {
            return NULL;
        }
        uint64_t before = c.st->c[C_EXPIRATIONS];
        c.st->hand = 0;
        if (sweep_step(&c, now, s->nbuckets) < 0) {
            stripe_repair(s, si, C_REPAIRS);
            (void)sweep_step(&c, now, s->nbuckets);
        }
        removed += c.st->c[C_EXPIRATIONS] - before;
        stripe_unlock(c.st);
    }
    return PyLong_FromUnsignedLongLong(removed);
}

static int
dict_set_u64(PyObject *d, const char *key, uint64_t value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    int rc = v == NULL ? -1 : PyDict_SetItemString(d, key, v);
    Py_XDECREF(v);
    return rc;
}

/* stats() -> dict: the counters summed over the stripes (each read under its lock, so
 * each stripe's figures are consistent), `entries`, and the geometry. */
static PyObject *
store_stats(ShmStore *s, PyObject *unused)
{
    (void)unused;
    if (check_open(s) < 0) {
        return NULL;
    }
    uint64_t sum[C_COUNT] = {0};
    int64_t entries = 0;
    for (uint32_t si = 0; si < s->nstripes; si++) {
        shm_stripe *st = &s->stripes[si];
        if (stripe_lock(s, st, si) < 0) {
            return NULL;
        }
        for (int i = 0; i < C_COUNT; i++) {
            sum[i] += st->c[i];
        }
        entries += derived_entries(st);
        stripe_unlock(st);
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int i = 0; i < C_COUNT; i++) {
        if (dict_set_u64(d, counter_names[i], sum[i]) < 0) {
            goto fail;
        }
    }
    uint64_t arenas = (uint64_t)s->nstripes * s->arena_size;
    if (dict_set_u64(d, "entries", (uint64_t)entries) < 0 ||
        dict_set_u64(d, "bytes_free", arenas - sum[C_BYTES_USED]) < 0 ||
        dict_set_u64(d, "arena_bytes", arenas) < 0 ||
        dict_set_u64(d, "size", s->size) < 0 || dict_set_u64(d, "stripes", s->nstripes) < 0 ||
        dict_set_u64(d, "buckets", (uint64_t)s->nstripes * s->nbuckets) < 0 ||
        dict_set_u64(d, "max_entry", 1u << s->top_order) < 0 ||
        dict_set_u64(d, "created", (uint64_t)((shm_header *)s->base)->created) < 0 ||
        dict_set_u64(d, "reboots", ((shm_header *)s->base)->reboots) < 0) {
        goto fail;
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

/* check() -> dict(entries=n): verifies every invariant of every stripe (for tests and the
 * management command); raises ShmError naming the stripe and the problem. */
static PyObject *
store_check(ShmStore *s, PyObject *unused)
{
    (void)unused;
    if (check_open(s) < 0) {
        return NULL;
    }
    long total = 0;
    for (uint32_t si = 0; si < s->nstripes; si++) {
        shm_stripe *st = &s->stripes[si];
        if (stripe_lock(s, st, si) < 0) {
            return NULL;
        }
        long n = 0;
        const char *why = stripe_check(s, si, &n);
        stripe_unlock(st);
        if (why != NULL) {
            shm_raise(s, s->error, "stripe %u: %s", (unsigned)si, why);
            return NULL;
        }
        total += n;
    }
    return Py_BuildValue("{s:l}", "entries", total);
}

static void
store_unmap(ShmStore *s)
{
    s->closing = 1;
    if (s->base != NULL && s->waiters == 0) {
        munmap(s->base, s->size);
        s->base = NULL;
    }
}

static PyObject *
store_close(ShmStore *s, PyObject *unused)
{
    (void)unused;
    store_unmap(s);
    Py_RETURN_NONE;
}

static PyObject *
store_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "size", "create", "lock_timeout", "path", NULL};
    PyObject *name, *path = Py_None, *fspath = NULL;
    unsigned long long size;
    int create = 1;
    double lock_timeout = 5.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UK|pdO:ShmStore", kwlist, &name, &size,
                                     &create, &lock_timeout, &path)) {
        return NULL;
    }
    if (!(lock_timeout > 0 && lock_timeout < 1e6)) {
        PyErr_SetString(PyExc_ValueError, "ShmStore: lock_timeout must be a positive number of seconds");
        return NULL;
    }
    if (size > ((unsigned long long)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "ShmStore: size must be at most 1 TiB");
        return NULL;
    }
    PyObject *module = PyType_GetModule(type); /* borrowed */
    if (module == NULL) {
        return NULL;
    }
    ShmStore *s = (ShmStore *)type->tp_alloc(type, 0);
    if (s == NULL) {
        return NULL;
    }
    s->lock_timeout = lock_timeout;
    s->error = PyObject_GetAttrString(module, "ShmError");
    if (s->error == NULL) {
        goto fail;
    }
    /* Names are one path component under /dev/shm: a leading '/', then no other. */
    Py_ssize_t n;
    const char *raw = PyUnicode_AsUTF8AndSize(name, &n);
    if (raw == NULL) {
        goto fail;
    }
    const char *body = raw[0] == '/' ? raw + 1 : raw;
    size_t blen = strlen(body);
    if (blen == 0 || blen > 200 || strcspn(body, "/") != blen || (Py_ssize_t)strlen(raw) != n ||
        strcmp(body, ".") == 0 || strcmp(body, "..") == 0) {
        PyErr_Format(PyExc_ValueError, "ShmStore: bad segment name %R (1 to 200 characters, "
                     "no '/' but a leading one)", name);
        goto fail;
    }
    s->name = PyUnicode_FromFormat("/%s", body);
    if (s->name == NULL) {
        goto fail;
    }
    if (path != Py_None) {
        /* bytes for open() (NULs refused), and str for the messages */
        if (!PyUnicode_FSConverter(path, &fspath)) {
            goto fail;
        }
        if (PyBytes_GET_SIZE(fspath) == 0) {
            PyErr_SetString(PyExc_ValueError, "ShmStore: path must not be empty");
            goto fail;
        }
        s->path = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(fspath),
                                                   PyBytes_GET_SIZE(fspath));
        if (s->path == NULL ||
            file_open(s, PyBytes_AS_STRING(fspath), size & ~(uint64_t)4095, create) < 0) {
            goto fail;
        }
    }
    else if (segment_open(s, PyUnicode_AsUTF8(s->name), size & ~(uint64_t)4095, create) < 0) {
        goto fail;
    }
    if (scratch_alloc(s) < 0) {
        goto fail;
    }
    Py_XDECREF(fspath);
    return (PyObject *)s;
fail:
    Py_XDECREF(fspath);
    Py_DECREF(s);
    return NULL;
}

static void
store_dealloc(ShmStore *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    store_unmap(s);
    PyMem_RawFree(s->bitmap);
    PyMem_RawFree(s->pairs);
    Py_XDECREF(s->name);
    Py_XDECREF(s->path);
    Py_XDECREF(s->error);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp); /* instances of a heap type own a reference to it */
}

static PyObject *
store_get_name(ShmStore *s, void *closure)
{
    (void)closure;
    return Py_NewRef(s->name);
}

static PyObject *
store_get_path(ShmStore *s, void *closure)
{
    (void)closure;
    return Py_NewRef(s->path != NULL ? s->path : Py_None);
}

static PyObject *
store_get_u64(ShmStore *s, void *closure)
{
    const char *what = closure;
    if (strcmp(what, "size") == 0) {
        return PyLong_FromSize_t(s->size);
    }
    if (strcmp(what, "max_entry") == 0) {
        return PyLong_FromUnsignedLong(1u << s->top_order);
    }
    if (strcmp(what, "entry_overhead") == 0) {
        return PyLong_FromSize_t(sizeof(shm_entry));
    }
    if (strcmp(what, "closed") == 0) {
        return PyBool_FromLong(s->closing || s->base == NULL);
    }
    return PyBool_FromLong(s->created);
}

static PyMethodDef store_methods[] = {
    {"get", (PyCFunction)(void (*)(void))store_get, METH_FASTCALL,
     "get(key, now) -> str | None: the value, or None if absent or expired (reclaimed then). "
     "Every time argument (now, expires) is in seconds since the epoch, an int or a float "
     "(floored)."},
    {"prefetch", (PyCFunction)store_prefetch, METH_O,
     "prefetch(key) -> None: asks the CPU for the key's bucket ahead of a get (advisory: "
     "takes no lock, reads nothing, raises nothing)"},
    {"get_unpacked", (PyCFunction)(void (*)(void))store_get_unpacked, METH_FASTCALL,
     "get_unpacked(key, now) -> dict | str | None: get(), but a value in csessions' packed "
     "form of a dict (src/pack.h) comes back unpacked; any other value, or one that does not "
     "unpack, as get() gives it"},
    {"put", (PyCFunction)(void (*)(void))store_put, METH_FASTCALL,
     "put(key, value, expires, now, mode) -> bool. mode 0: set; 1: add, False if a live "
     "entry exists; 2: replace, False if none. ValueError if the entry exceeds max_entry."},
    {"put_packed", (PyCFunction)(void (*)(void))store_put_packed, METH_FASTCALL,
     "put_packed(key, obj, expires, now, mode, limit) -> bool | bytes | None: put() of the "
     "dict obj's packed form (src/pack.h); nothing stored and None if obj has none, or that "
     "form as bytes if it is longer than limit or than max_entry allows"},
    {"_put_and_die", (PyCFunction)(void (*)(void))store_put_and_die, METH_FASTCALL,
     "_put_and_die(key, value, expires, now, mode, stage): for crash tests, a put that "
     "_exit()s midway (1: holding the lock, 2: entry half written, 3: just published) or "
     "stops holding the lock (4)"},
    {"delete", (PyCFunction)(void (*)(void))store_delete, METH_FASTCALL,
     "delete(key, now) -> bool: whether a live entry was removed"},
    {"contains", (PyCFunction)(void (*)(void))store_contains, METH_FASTCALL,
     "contains(key, now) -> bool"},
    {"sweep", (PyCFunction)store_sweep, METH_O,
     "sweep(now) -> int: removes every expired entry, stripe by stripe"},
    {"stats", (PyCFunction)store_stats, METH_NOARGS, "stats() -> dict of counters"},
    {"check", (PyCFunction)store_check, METH_NOARGS,
     "check() -> {'entries': n}: verifies every invariant; ShmError if one fails"},
    {"close", (PyCFunction)store_close, METH_NOARGS, "close(): unmaps the segment"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef store_getset[] = {
    {"name", (getter)store_get_name, NULL, "the segment's name", NULL},
    {"path", (getter)store_get_path, NULL, "the file in file mode, else None", NULL},
    {"size", (getter)store_get_u64, NULL, "the segment's size in bytes", "size"},
    {"max_entry", (getter)store_get_u64, NULL,
     "the largest entry (header + key + value) the store accepts", "max_entry"},
    {"entry_overhead", (getter)store_get_u64, NULL, "bytes of header per entry",
     "entry_overhead"},
    {"created", (getter)store_get_u64, NULL, "whether this handle created the segment",
     "created"},
    {"closed", (getter)store_get_u64, NULL, "whether close() was called", "closed"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot store_slots[] = {
    {Py_tp_new, store_new},
    {Py_tp_dealloc, store_dealloc},
    {Py_tp_methods, store_methods},
    {Py_tp_getset, store_getset},
    {Py_tp_doc, "ShmStore(name, size, create=True, lock_timeout=5.0, path=None): a session "
                "store in the shared-memory segment `name`, created with `size` bytes if it "
                "does not exist (an existing one keeps its own size). With `path`, the store "
                "is that regular file instead (it survives a reboot; verified on the first "
                "attach of each boot), and `name` only names it."},
    {0, NULL},
};

static PyType_Spec store_spec = {
    .name = "csessions._core.ShmStore",
    .basicsize = sizeof(ShmStore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = store_slots,
};

PyObject *
cs_shm_unlink(PyObject *module, PyObject *name)
{
    (void)module;
    const char *raw = PyUnicode_AsUTF8(name);
    if (raw == NULL) {
        return NULL;
    }
    char path[256];
    if (snprintf(path, sizeof(path), "%s%s", raw[0] == '/' ? "" : "/", raw) >= (int)sizeof(path)) {
        PyErr_SetString(PyExc_ValueError, "shm_unlink: name too long");
        return NULL;
    }
    if (shm_unlink(path) == 0) {
        Py_RETURN_TRUE;
    }
    if (errno == ENOENT) {
        Py_RETURN_FALSE;
    }
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
}

int
cs_shm_exec(PyObject *module)
{
    int rc = -1;
    PyObject *error = PyErr_NewExceptionWithDoc(
        "csessions._core.ShmError",
        "The shared-memory segment cannot be used (wrong layout, owner or mode, corrupt).",
        PyExc_OSError, NULL);
    PyObject *type = error ? PyType_FromModuleAndSpec(module, &store_spec, NULL) : NULL;
    if (type == NULL || PyModule_AddObjectRef(module, "ShmError", error) < 0 ||
        PyModule_AddObjectRef(module, "ShmStore", type) < 0 ||
        PyModule_AddIntConstant(module, "SHM_VERSION", SHM_VERSION) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(type);
    Py_XDECREF(error);
    return rc;
}
