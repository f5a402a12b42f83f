#include "fileio.h" /* Python.h first: it sets the feature macros the system headers read */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#include <sodium.h>

#include "hmac.h"
#include "simdjson_wrap.h"
#include "util.h"

#ifndef O_NOATIME /* Linux only */
#define O_NOATIME 0
#endif
#if defined(SYS_renameat2) && !defined(RENAME_EXCHANGE) /* glibc < 2.28 lacks the name */
#define RENAME_EXCHANGE (1 << 1)
#endif

#define OPEN_READ (O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
#define OPEN_CREATE (O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC)
#define TEMP_INFIX "_out_"
#define TEMP_RANDOM 10 /* 37^10 names: a collision retry is already rare */
#define TEMP_TRIES 100
#define SIG_LEN 43 /* base64url of an HMAC-SHA256, unpadded */
#define SIGNAL_CHECK_EVERY 1024
#define SWEEP_MAX_FILE (64 << 20) /* bytes a sweep reads of one file */

/* --- raw buffers: usable without the GIL --------------------------------------------- */

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} rawbuf;

/* Room for `extra` more bytes. Returns 0, or -1 with errno = ENOMEM. */
static int
rawbuf_reserve(rawbuf *b, size_t extra)
{
    if (b->cap - b->len >= extra) {
        return 0;
    }
    if (extra > (size_t)PY_SSIZE_T_MAX / 2 - b->len) {
        errno = ENOMEM;
        return -1;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap - b->len < extra) {
        cap *= 2;
    }
    char *data = PyMem_RawRealloc(b->data, cap);
    if (data == NULL) {
        errno = ENOMEM;
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static void
rawbuf_free(rawbuf *b)
{
    PyMem_RawFree(b->data);
    *b = (rawbuf){NULL, 0, 0};
}

/* --- syscalls, retried on EINTR ------------------------------------------------------ */

static int
open_at(int dirfd, const char *path, int flags)
{
    int fd;
    do {
        fd = openat(dirfd, path, flags, 0600);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* Linux releases the descriptor even when close() reports EINTR: retrying could close a
 * descriptor another thread has just been given, so EINTR counts as closed. */
static int
close_fd(int fd)
{
    return close(fd) < 0 && errno != EINTR ? -1 : 0;
}

/* close() that keeps the errno of the failure being reported. */
static void
close_quietly(int fd)
{
    int saved = errno;
    close(fd);
    errno = saved;
}

static int
fsync_fd(int fd)
{
    int rc;
    do {
        rc = fsync(fd);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

static int
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends the whole of fd to b; `size` is fstat's st_size. A short read that leaves
 * exactly `size` bytes is the end of the file (this spares a read per file, a tenth of a
 * sweep's syscalls); any other short read is not (FUSE and network filesystems return
 * them), only a read of 0 is. Returns 0 or -1. */
static int
read_all(int fd, rawbuf *b, size_t size)
{
    size_t want = size + 1 > 4096 ? size + 1 : 4096;
    for (;;) {
        if (rawbuf_reserve(b, want) < 0) {
            return -1;
        }
        size_t room = b->cap - b->len;
        ssize_t r = read(fd, b->data + b->len, room);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (r == 0) {
            return 0;
        }
        b->len += (size_t)r;
        if ((size_t)r < room && b->len == size) {
            return 0;
        }
        want = 4096;
    }
}

/* Opens `name` (relative to dirfd) without following a symlink and reads it whole into b
 * (emptied first); *st describes what was read. Anything but a regular file is refused:
 * O_NONBLOCK keeps a FIFO planted at the name from blocking the open, and a directory opens
 * fine read-only. extra_flags: O_NOATIME or 0. A file over max_size is EFBIG (and *st is
 * filled). Returns 0, or -1 with errno set. */
static int
read_regular(int dirfd, const char *name, rawbuf *b, struct stat *st, int extra_flags,
             off_t max_size)
{
    b->len = 0;
    int fd = open_at(dirfd, name, OPEN_READ | extra_flags);
    if (fd < 0) {
        return -1;
    }
    if (fstat(fd, st) < 0) {
        goto fail;
    }
    if (!S_ISREG(st->st_mode)) {
        errno = S_ISDIR(st->st_mode) ? EISDIR : EINVAL;
        goto fail;
    }
    if (st->st_size > max_size) {
        errno = EFBIG;
        goto fail;
    }
    if (read_all(fd, b, (size_t)st->st_size) < 0) {
        goto fail;
    }
    return close_fd(fd);
fail:
    close_quietly(fd);
    return -1;
}

/* os.stat_result.st_mtime, computed as CPython does. */
static double
mtime_of(const struct stat *st)
{
    return (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec * 1e-9;
}

static int
same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* fsync of the directory holding `path`: what makes a rename or an unlink durable. */
static int
fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash == NULL ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = PyMem_RawMalloc(n + 1);
    if (dir == NULL) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(dir, slash == NULL ? "." : path, n);
    dir[n] = '\0';
    int rc = -1;
    int fd = open_at(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        rc = fsync_fd(fd);
        if (rc < 0) {
            close_quietly(fd);
        }
        else {
            rc = close_fd(fd);
        }
    }
    PyMem_RawFree(dir);
    return rc;
}

/* --- read ---------------------------------------------------------------------------- */

PyObject *
cs_file_read(PyObject *module, PyObject *path)
{
    (void)module;
    PyObject *encoded = NULL; /* owned: bytes of the path */
    PyObject *result = NULL;
    rawbuf buf = {NULL, 0, 0};
    struct stat st;
    int rc, err;
    if (!PyUnicode_FSConverter(path, &encoded)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = read_regular(AT_FDCWD, PyBytes_AS_STRING(encoded), &buf, &st, 0, PY_SSIZE_T_MAX / 2);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        goto done;
    }
    result = Py_BuildValue("(y#d)", buf.len ? buf.data : "", (Py_ssize_t)buf.len, mtime_of(&st));
done:
    rawbuf_free(&buf);
    Py_DECREF(encoded);
    return result;
}

/* --- save ---------------------------------------------------------------------------- */

/* Opens a new temp file `<path>_out_<random>` exclusively; tmp receives its name (it has
 * room for the suffix). Returns the descriptor, or -1 with errno set. */
static int
open_temp(const char *path, size_t n, char *tmp)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    memcpy(tmp, path, n);
    memcpy(tmp + n, TEMP_INFIX, sizeof(TEMP_INFIX) - 1);
    char *rnd = tmp + n + sizeof(TEMP_INFIX) - 1;
    rnd[TEMP_RANDOM] = '\0';
    unsigned char pool[TEMP_RANDOM];
    for (int tries = 0;; tries++) {
        /* One getrandom(2) a name, not one a character. The names need to be unique, not
         * uniform: the small bias of `% 37` does not matter. */
        randombytes_buf(pool, sizeof(pool));
        for (int i = 0; i < TEMP_RANDOM; i++) {
            rnd[i] = alphabet[pool[i] % (sizeof(alphabet) - 1)];
        }
        int fd = open_at(AT_FDCWD, tmp, OPEN_CREATE);
        if (fd >= 0 || errno != EEXIST || tries == TEMP_TRIES) {
            return fd;
        }
    }
}

/* Puts the complete temp file `tmp` in place of `path`, atomically for readers. A rename
 * over an existing file makes ext4 (auto_da_alloc, its default) allocate the new file's
 * blocks and start writing them out at once: ~150 us a save on this kind of disk, most of
 * a cycle. Swapping the two names (renameat2 RENAME_EXCHANGE, called through syscall() so
 * that an older glibc builds it too) and unlinking the old content costs a quarter of
 * that, and the writes are left to the kernel's writeback, as for any other write; the
 * durable mode fsyncs before the swap. The swap fails (ENOENT) when `path` is gone: if
 * `must_exist`, *gone = 1 then and nothing has changed; otherwise (an exclusive create
 * whose placeholder was deleted: the key is still ours, as in Django's save) and on a
 * filesystem or kernel without the swap, a rename follows, after checking that `path`
 * exists if `must_exist` (Django's check, as racy as Django's). Returns 0, or -1 with
 * errno set. */
static int
replace_file(const char *tmp, const char *path, int must_exist, int *gone)
{
    *gone = 0;
#ifdef SYS_renameat2
    if (syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == 0) {
        if (unlink(tmp) == 0) {
            return 0;
        }
        if (errno != EISDIR && errno != EPERM) {
            return 0; /* the old content lingers under a temp name: sweeps remove it */
        }
        /* `path` was a directory: put it back and fail as rename(2) would have. */
        syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE);
        errno = EISDIR;
        return -1;
    }
    if (errno == ENOENT && must_exist) {
        *gone = 1;
        return -1;
    }
    if (errno != ENOENT && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP &&
        errno != EPERM) {
        return -1;
    }
#endif
    struct stat st;
    if (must_exist && fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        *gone = errno == ENOENT;
        return -1;
    }
    return rename(tmp, path);
}

/* Django's save: an exclusive create of the empty placeholder (must_create), then a temp
 * file written and put in place of the name. A session that is gone (a symlink counts as
 * there, and is replaced itself, never its target) or a name that is taken are the
 * caller's UpdateError / CreateError, reported with *reserving = 1. Returns 0 or an
 * errno. */
static int
save_file(const char *path, const char *data, size_t n, int must_create, int durable,
          int *reserving)
{
    struct stat placeholder, now;
    int fd = -1, err = 0, made_temp = 0;
    size_t plen = strlen(path);
    char *tmp = NULL;

    *reserving = 1;
    if (must_create) {
        fd = open_at(AT_FDCWD, path, OPEN_CREATE);
        if (fd < 0) {
            goto fail;
        }
        int stat_rc = fstat(fd, &placeholder);
        close(fd); /* nothing was written through it: there is no error to miss */
        fd = -1;
        if (stat_rc < 0) {
            err = errno;
            unlink(path); /* ours: it did not exist a moment ago */
            errno = err;
            goto fail;
        }
    }
    *reserving = 0;

    tmp = PyMem_RawMalloc(plen + sizeof(TEMP_INFIX) + TEMP_RANDOM);
    if (tmp == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    fd = open_temp(path, plen, tmp);
    if (fd < 0) {
        /* Is the session gone, or its name unreachable? Django's check would have said so
         * before writing: the caller's UpdateError or OSError then, as in Django. */
        if (!must_create && fstatat(AT_FDCWD, path, &now, AT_SYMLINK_NOFOLLOW) < 0) {
            *reserving = 1;
        }
        goto fail;
    }
    made_temp = 1;
    if (write_all(fd, data, n) < 0 || (durable && fsync_fd(fd) < 0)) {
        goto fail;
    }
    int closed = close_fd(fd); /* a deferred write error (NFS) surfaces here */
    fd = -1;
    if (closed < 0) {
        goto fail;
    }
    int gone;
    if (replace_file(tmp, path, !must_create, &gone) < 0) {
        *reserving = gone; /* gone (ENOENT): UpdateError, as from Django's check */
        goto fail;
    }
    made_temp = 0;
    if (durable && fsync_parent(path) < 0) {
        goto fail; /* the new content is in place, only not known to be on disk */
    }
    goto done;
fail:
    err = errno ? errno : EIO;
    if (fd >= 0) {
        close(fd);
    }
    if (made_temp) {
        unlink(tmp);
    }
    /* Drop our placeholder, unless someone has written the session meanwhile. */
    if (must_create && !*reserving && fstatat(AT_FDCWD, path, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
        now.st_dev == placeholder.st_dev && now.st_ino == placeholder.st_ino &&
        now.st_size == 0) {
        unlink(path);
    }
done:
    PyMem_RawFree(tmp);
    return err;
}

PyObject *
cs_file_save(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (cs_check_nargs("file_save", nargs, 4) < 0) {
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "file_save() takes bytes for data");
        return NULL;
    }
    int must_create = PyObject_IsTrue(args[2]);
    int durable = must_create < 0 ? -1 : PyObject_IsTrue(args[3]);
    if (durable < 0) {
        return NULL;
    }
    PyObject *encoded = NULL; /* owned: bytes of the path */
    if (!PyUnicode_FSConverter(args[0], &encoded)) {
        return NULL;
    }
    /* args[1] is the caller's immutable bytes, alive for the whole call: safe to read
     * without the GIL. */
    const char *data = PyBytes_AS_STRING(args[1]);
    size_t n = (size_t)PyBytes_GET_SIZE(args[1]);
    int err, reserving;
    Py_BEGIN_ALLOW_THREADS
    err = save_file(PyBytes_AS_STRING(encoded), data, n, must_create, durable, &reserving);
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (err && reserving) {
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
    }
    return PyLong_FromLong(err);
}

/* --- delete -------------------------------------------------------------------------- */

PyObject *
cs_file_unlink(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (cs_check_nargs("file_unlink", nargs, 2) < 0) {
        return NULL;
    }
    int durable = PyObject_IsTrue(args[1]);
    if (durable < 0) {
        return NULL;
    }
    PyObject *encoded = NULL; /* owned: bytes of the path */
    if (!PyUnicode_FSConverter(args[0], &encoded)) {
        return NULL;
    }
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
    rc = unlink(PyBytes_AS_STRING(encoded));
    /* Without this a crash could bring a logged-out session back. */
    if (rc == 0 && durable) {
        rc = fsync_parent(PyBytes_AS_STRING(encoded));
    }
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (rc < 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
    }
    Py_RETURN_NONE;
}

/* --- sweep: the signed value, without Python ------------------------------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void
encode_signature(char out[SIG_LEN], const unsigned char mac[CS_SHA256_LEN])
{
    int i = 0, o = 0;
    for (; i + 3 <= CS_SHA256_LEN; i += 3) {
        uint32_t v = (uint32_t)mac[i] << 16 | (uint32_t)mac[i + 1] << 8 | mac[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    uint32_t v = (uint32_t)mac[i] << 16 | (uint32_t)mac[i + 1] << 8; /* 32 = 30 + 2 */
    out[o++] = b64_alphabet[v >> 18];
    out[o++] = b64_alphabet[(v >> 12) & 63];
    out[o++] = b64_alphabet[(v >> 6) & 63];
}

/* base64url value of each byte; 64 (a bit no value has) outside the alphabet. */
static const unsigned char b64_values[256] = {
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 62, 64, 64,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 64, 64, 64, 64, 64, 64,
    64,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 64, 64, 64, 64, 63,
    64, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
};

/* Strict base64url into out (emptied first). Returns 0, 1 for text that only Python's
 * lenient decoder can judge (a character outside the alphabet, a length it rejects), or
 * -1 (ENOMEM). Trailing bits are ignored, as binascii does. */
static int
b64_decode(rawbuf *out, const unsigned char *s, size_t n)
{
    out->len = 0;
    if (n % 4 == 1) {
        return 1;
    }
    if (rawbuf_reserve(out, n / 4 * 3 + 3) < 0) {
        return -1;
    }
    unsigned char *dst = (unsigned char *)out->data;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        unsigned a = b64_values[s[i]], b = b64_values[s[i + 1]];
        unsigned c = b64_values[s[i + 2]], d = b64_values[s[i + 3]];
        if ((a | b | c | d) & 64) {
            return 1;
        }
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        *dst++ = (unsigned char)(v >> 16);
        *dst++ = (unsigned char)(v >> 8);
        *dst++ = (unsigned char)v;
    }
    if (n - i >= 2) { /* 2 or 3 characters left: 1 or 2 bytes */
        unsigned a = b64_values[s[i]], b = b64_values[s[i + 1]];
        unsigned c = n - i == 3 ? b64_values[s[i + 2]] : 0;
        if ((a | b | c) & 64) {
            return 1;
        }
        uint32_t v = a << 18 | b << 12 | c << 6;
        *dst++ = (unsigned char)(v >> 16);
        if (n - i == 3) {
            *dst++ = (unsigned char)(v >> 8);
        }
    }
    out->len = (size_t)(dst - (unsigned char *)out->data);
    return 0;
}

/* zlib.decompress into out (emptied first). Returns 0, 1 when the data is not a complete
 * stream (Python's zlib gives the exact error), or -1 (ENOMEM). Data after the end of the
 * stream is ignored, as zlib.decompress does. */
static int
inflate_all(z_stream *z, rawbuf *out, const unsigned char *in, size_t n)
{
    out->len = 0;
    if (n > UINT_MAX || inflateReset(z) != Z_OK) {
        return 1;
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)n;
    for (;;) {
        if (rawbuf_reserve(out, n * 4 > 4096 ? n * 4 : 4096) < 0) {
            return -1;
        }
        size_t room = out->cap - out->len;
        if (room > UINT_MAX) {
            room = UINT_MAX;
        }
        z->next_out = (Bytef *)out->data + out->len;
        z->avail_out = (uInt)room;
        uInt in_before = z->avail_in;
        int rc = inflate(z, Z_NO_FLUSH);
        size_t made = room - z->avail_out;
        out->len += made;
        if (rc == Z_STREAM_END) {
            return 0;
        }
        if (rc == Z_MEM_ERROR) {
            errno = ENOMEM;
            return -1;
        }
        if ((rc != Z_OK && rc != Z_BUF_ERROR) || (z->avail_in == 0 && z->avail_out != 0) ||
            (made == 0 && z->avail_in == in_before)) {
            return 1; /* corrupt, truncated, or stuck */
        }
    }
}

/* What the expiry field held in the last document walked. */
enum {
    FIELD_ABSENT,   /* no such top-level key */
    FIELD_FALSY,    /* null, false, 0, 0.0, "": Django falls back to the mtime */
    FIELD_POSITIVE, /* a number > 0 (or true): Django keeps the session */
    FIELD_NEGATIVE, /* a number < 0: Django deletes it */
    FIELD_STRING,   /* a non-empty string, copied to probe.text */
    FIELD_OTHER,    /* a container: Python decides (and Django fails on a non-empty one) */
};

typedef struct {
    const char *field;
    size_t field_len;
    int depth;   /* containers open */
    int capture; /* the next value at depth 1 is the field's; a repeated key wins, as json */
    int kind;
    int nomem;
    rawbuf *text;
} probe;

/* A value at depth 0 is the root: anything but an object is not a session, stop. */
static int
probe_value(probe *p, int kind)
{
    if (p->depth == 0) {
        return 1;
    }
    if (p->depth == 1 && p->capture) {
        p->kind = kind;
        p->capture = 0;
    }
    return 0;
}

static int on_null(void *ctx) { return probe_value(ctx, FIELD_FALSY); }
static int on_bool(void *ctx, int v) { return probe_value(ctx, v ? FIELD_POSITIVE : FIELD_FALSY); }

static int
on_int64(void *ctx, int64_t v)
{
    return probe_value(ctx, v == 0 ? FIELD_FALSY : v < 0 ? FIELD_NEGATIVE : FIELD_POSITIVE);
}

static int on_uint64(void *ctx, uint64_t v) { return probe_value(ctx, v ? FIELD_POSITIVE : FIELD_FALSY); }

/* NaN never gets here (simdjson rejects it); it would be kept, as `nan <= 0` is False. */
static int
on_double(void *ctx, double v)
{
    return probe_value(ctx, v == 0.0 ? FIELD_FALSY : v < 0.0 ? FIELD_NEGATIVE : FIELD_POSITIVE);
}

static int
on_string(void *ctx, const char *s, size_t len)
{
    probe *p = ctx;
    if (p->depth == 1 && p->capture && len > 0) {
        p->text->len = 0;
        if (rawbuf_reserve(p->text, len) < 0) {
            p->nomem = 1;
            return 1;
        }
        memcpy(p->text->data, s, len);
        p->text->len = len;
    }
    return probe_value(p, len ? FIELD_STRING : FIELD_FALSY);
}

static int
on_key(void *ctx, const char *s, size_t len)
{
    probe *p = ctx;
    if (p->depth == 1) {
        p->capture = len == p->field_len && memcmp(s, p->field, len) == 0;
    }
    return 0;
}

static int
on_start_array(void *ctx)
{
    probe *p = ctx;
    if (probe_value(p, FIELD_OTHER)) {
        return 1;
    }
    p->depth++;
    return 0;
}

static int
on_start_object(void *ctx)
{
    probe *p = ctx;
    if (p->depth > 0 && probe_value(p, FIELD_OTHER)) {
        return 1;
    }
    p->depth++;
    return 0;
}

static int
on_end(void *ctx)
{
    ((probe *)ctx)->depth--;
    return 0;
}

static const cs_json_visitor probe_visitor = {
    .null_value = on_null,
    .boolean = on_bool,
    .int64 = on_int64,
    .uint64 = on_uint64,
    .dbl = on_double,
    .string = on_string,
    .key = on_key,
    .start_array = on_start_array,
    .end_array = on_end,
    .start_object = on_start_object,
    .end_object = on_end,
};

/* A JSON scanner in front of simdjson, for the documents sessions are made of. It accepts
 * only what json.loads surely accepts and reads the same way (no NaN or Infinity, numbers
 * of at most 64 characters, nesting up to 64, no escape in a top-level key or in the
 * field's own string, no exponent in the field's own number), finds the top-level field,
 * and answers SCAN_UNSURE for anything else, which then goes to simdjson (and from there,
 * if need be, to json.loads). It spares simdjson's two passes and the walk: a tenth of a
 * sweep's time. */

#define SCAN_UNSURE (-1)
#define SCAN_MAX_DEPTH 64
#define SCAN_MAX_NUMBER 64

typedef struct {
    const char *p;
    const char *end;
    const char *field;
    size_t field_len;
    rawbuf *text; /* receives the field's string */
} cursor;

static void
skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static int
is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int
is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* The string opening at c->p. *start and *len: its raw content; *escaped if it holds a
 * backslash. Control characters are refused, as json.loads' strict mode does; any \uXXXX is
 * fine (json.loads takes lone surrogates too). Returns 0 or SCAN_UNSURE. */
static int
scan_string(cursor *c, const char **start, size_t *len, int *escaped)
{
    *start = ++c->p;
    *escaped = 0;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *len = (size_t)(c->p - *start);
            c->p++;
            return 0;
        }
        if (ch < 0x20) {
            return SCAN_UNSURE;
        }
        if (ch != '\\') {
            c->p++;
            continue;
        }
        *escaped = 1;
        if (c->end - c->p < 2) {
            return SCAN_UNSURE;
        }
        switch (c->p[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            c->p += 2;
            break;
        case 'u':
            if (c->end - c->p < 6 || !is_hex(c->p[2]) || !is_hex(c->p[3]) || !is_hex(c->p[4]) ||
                !is_hex(c->p[5])) {
                return SCAN_UNSURE;
            }
            c->p += 6;
            break;
        default:
            return SCAN_UNSURE;
        }
    }
    return SCAN_UNSURE;
}

/* json's NUMBER_RE, -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?, at c->p. *kind: FIELD_FALSY for a
 * zero, FIELD_NEGATIVE, FIELD_POSITIVE, or FIELD_OTHER when an exponent makes the value
 * something only float() should tell (0.0 by underflow, inf). */
static int
scan_number(cursor *c, int *kind)
{
    const char *start = c->p;
    int negative = *c->p == '-', nonzero = 0;
    c->p += negative;
    if (c->p < c->end && *c->p == '0') {
        c->p++;
    }
    else if (c->p < c->end && *c->p >= '1' && *c->p <= '9') {
        nonzero = 1;
        while (c->p < c->end && is_digit(*c->p)) {
            c->p++;
        }
    }
    else {
        return SCAN_UNSURE; /* "-Infinity", or not a number */
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (c->p >= c->end || !is_digit(*c->p)) {
            return SCAN_UNSURE;
        }
        for (; c->p < c->end && is_digit(*c->p); c->p++) {
            nonzero |= *c->p != '0';
        }
    }
    *kind = !nonzero ? FIELD_FALSY : negative ? FIELD_NEGATIVE : FIELD_POSITIVE;
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) {
            c->p++;
        }
        if (c->p >= c->end || !is_digit(*c->p)) {
            return SCAN_UNSURE;
        }
        while (c->p < c->end && is_digit(*c->p)) {
            c->p++;
        }
        *kind = FIELD_OTHER;
    }
    /* json.loads refuses ints of over 4300 digits (int's default limit). */
    return c->p - start > SCAN_MAX_NUMBER ? SCAN_UNSURE : 0;
}

static int
scan_literal(cursor *c, const char *word, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) {
        return SCAN_UNSURE;
    }
    c->p += n;
    return 0;
}

static int scan_value(cursor *c, int depth, int *kind, int is_field);

/* The object or array opening at c->p, `depth` containers deep once open. The field is
 * looked for in the root object (depth 1); the last occurrence wins, as in a dict. */
static int
scan_container(cursor *c, int depth, int *kind, int *field_kind)
{
    int object = *c->p == '{';
    char close = object ? '}' : ']';
    if (depth > SCAN_MAX_DEPTH) {
        return SCAN_UNSURE;
    }
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        *kind = FIELD_FALSY; /* {} and [] are falsy */
        return 0;
    }
    *kind = FIELD_OTHER;
    for (;;) {
        int is_field = 0, value_kind;
        if (object) {
            const char *key;
            size_t len;
            int escaped;
            if (c->p >= c->end || *c->p != '"' || scan_string(c, &key, &len, &escaped) < 0) {
                return SCAN_UNSURE;
            }
            if (depth == 1 && escaped) {
                return SCAN_UNSURE; /* "\u005f..." may be the field: simdjson unescapes */
            }
            is_field = depth == 1 && len == c->field_len && memcmp(key, c->field, len) == 0;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') {
                return SCAN_UNSURE;
            }
            c->p++;
            skip_ws(c);
        }
        if (scan_value(c, depth, &value_kind, is_field) < 0) {
            return SCAN_UNSURE;
        }
        if (is_field) {
            *field_kind = value_kind;
        }
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            skip_ws(c);
            continue;
        }
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return 0;
        }
        return SCAN_UNSURE;
    }
}

/* One value at c->p, inside `depth` containers. *kind: how the value reads as an expiry.
 * The field's string is copied to c->text (is_field). */
static int
scan_value(cursor *c, int depth, int *kind, int is_field)
{
    if (c->p >= c->end) {
        return SCAN_UNSURE;
    }
    switch (*c->p) {
    case '"': {
        const char *s;
        size_t len;
        int escaped;
        if (scan_string(c, &s, &len, &escaped) < 0 || (is_field && escaped)) {
            return SCAN_UNSURE;
        }
        *kind = len ? FIELD_STRING : FIELD_FALSY;
        if (is_field && len) {
            c->text->len = 0;
            if (rawbuf_reserve(c->text, len) < 0) {
                return SCAN_UNSURE; /* simdjson's path reports the ENOMEM */
            }
            memcpy(c->text->data, s, len);
            c->text->len = len;
        }
        return 0;
    }
    case '{':
    case '[': {
        int ignored;
        return scan_container(c, depth + 1, kind, &ignored);
    }
    case 't':
        *kind = FIELD_POSITIVE;
        return scan_literal(c, "true", 4);
    case 'f':
        *kind = FIELD_FALSY;
        return scan_literal(c, "false", 5);
    case 'n':
        *kind = FIELD_FALSY;
        return scan_literal(c, "null", 4);
    default:
        return scan_number(c, kind);
    }
}

/* The field's kind in the JSON document json[0:n] (FIELD_ABSENT if the root object lacks
 * it), or SCAN_UNSURE. */
static int
scan_document(const char *json, size_t n, const char *field, size_t field_len, rawbuf *text)
{
    cursor c = {json, json + n, field, field_len, text};
    int kind, field_kind = FIELD_ABSENT;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{' || scan_container(&c, 1, &kind, &field_kind) < 0) {
        return SCAN_UNSURE;
    }
    skip_ws(&c);
    return c.p == c.end ? field_kind : SCAN_UNSURE;
}

/* --- sweep: the walk --------------------------------------------------------------------
 *
 * The directory is read in batches of BATCH names (which bounds memory whatever its size).
 * Each batch is judged by `nworkers` threads at once, the calling thread being one of them:
 * a session file costs an open, a stat, two reads and a close, most of it in the kernel,
 * and on a cold cache a read waits for the disk, so more files in flight is what makes a
 * sweep fast. The workers share nothing but the batch and two atomics; each has its own
 * buffers, zlib stream and simdjson parser. Files they cannot judge become questions,
 * which the calling thread puts to the callback, with the GIL, once the batch is done.
 */

#define BATCH 65536
#define CHUNK 32 /* names a worker takes at a time */

typedef struct {
    size_t name; /* offset in the batch's name arena */
    ino_t ino;   /* the batch is handled in inode order: on a cold cache, fewer seeks */
    int temp;    /* a writer's temp file, else a session file */
} entry;

typedef struct {
    size_t name;     /* offset in the batch's name arena */
    int status;      /* CS_SWEEP_* */
    struct stat st;  /* the file as judged */
    size_t text;     /* the field's string (CS_SWEEP_STRING), in the worker's `texts` */
    size_t text_len;
} question;

typedef struct sweep sweep;

typedef struct {
    sweep *s;
    pthread_t thread;
    rawbuf file, raw, inflated, text; /* reused from file to file */
    rawbuf questions;                 /* question[] for this batch */
    rawbuf texts;                     /* their strings */
    z_stream z;
    int z_ready;
    cs_json_parser *parser; /* a worker's own: the module's belongs to GIL holders */
    long removed, temps_removed;
    int error; /* the errno that stopped this worker (ENOMEM), else 0 */
} worker;

struct sweep {
    /* Read-only while the workers run. */
    const char *prefix;
    size_t prefix_len;
    cs_hmac_key *keys; /* NULL: no fast path, every session file is a question */
    Py_ssize_t nkeys;
    const char *field;
    size_t field_len;
    double mtime_lo, mtime_hi, temp_cutoff;
    int dirfd;
    rawbuf names;   /* the batch: NUL-terminated names ... */
    rawbuf entries; /* ... and entry[] pointing into them */
    size_t nentries;
    /* Shared by the workers. */
    atomic_size_t next;  /* first entry not yet taken */
    atomic_int stop;     /* an error or a signal: leave the batch */
    atomic_int noatime;  /* O_NOATIME still allowed (we own the files, or CAP_FOWNER) */
    /* The calling thread's. */
    PyObject *callback;
    PyThreadState *released; /* non-NULL while the GIL is released */
    worker *workers;
    int nworkers;
    long removed_by_callback;
};

static void
drop_gil(sweep *s)
{
    s->released = PyEval_SaveThread();
}

static void
take_gil(sweep *s)
{
    PyEval_RestoreThread(s->released);
    s->released = NULL;
}

/* Verdicts on one session file, beyond the statuses of fileio.h. */
enum {
    KEEP = 10,
    EXPIRED = 11,
    BY_MTIME = 12, /* no usable field: expired iff mtime + cookie age has passed */
};

static const char *
find_last(const char *s, size_t n, char c)
{
    while (n > 0) {
        if (s[--n] == c) {
            return s + n;
        }
    }
    return NULL;
}

/* django.core.signing.b62_decode accepts an optional '-' before [0-9A-Za-z]* ("-" alone is
 * 0); the empty string raises. */
static int
valid_b62(const char *s, size_t n)
{
    if (n == 0) {
        return 0;
    }
    for (size_t i = s[0] == '-'; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) {
            return 0;
        }
    }
    return 1;
}

/* SessionBase.decode, then the `_session_expiry` lookup of the file engine's load(), on one
 * file's content. Returns a verdict (a CS_SWEEP_* status, KEEP, EXPIRED or BY_MTIME), or -1
 * with errno = ENOMEM. */
static int
judge(const sweep *s, worker *w, const char *data, size_t n)
{
    if (n == 0) {
        return KEEP; /* the placeholder: load() keeps it, without an expiry check */
    }
    if (s->keys == NULL) {
        return CS_SWEEP_OTHER;
    }
    if (!cs_is_ascii(data, n)) {
        return CS_SWEEP_CORRUPT;
    }
    /* Signer.unsign: value, sig = rsplit(":", 1); any of the keys may have signed it. */
    const char *colon = find_last(data, n, ':');
    if (colon == NULL || n - (size_t)(colon - data) - 1 != SIG_LEN) {
        return CS_SWEEP_CORRUPT;
    }
    size_t vlen = (size_t)(colon - data);
    int good = 0;
    for (Py_ssize_t i = 0; i < s->nkeys && !good; i++) {
        unsigned char mac[CS_SHA256_LEN];
        char expected[SIG_LEN];
        cs_hmac_sign(&s->keys[i], (const unsigned char *)data, vlen, mac);
        encode_signature(expected, mac);
        good = sodium_memcmp(expected, colon + 1, SIG_LEN) == 0;
    }
    if (!good) {
        return CS_SWEEP_CORRUPT;
    }
    /* TimestampSigner.unsign: payload, ts = rsplit(":", 1); b62_decode(ts). */
    const char *ts = find_last(data, vlen, ':');
    if (ts == NULL || !valid_b62(ts + 1, vlen - (size_t)(ts + 1 - data))) {
        return CS_SWEEP_OTHER;
    }
    const unsigned char *payload = (const unsigned char *)data;
    size_t plen = (size_t)(ts - data);
    int dotted = plen > 0 && payload[0] == '.';
    int rc = b64_decode(&w->raw, payload + dotted, plen - (size_t)dotted);
    if (rc != 0) {
        return rc < 0 ? -1 : CS_SWEEP_OTHER;
    }
    rawbuf *json = &w->raw;
    if (dotted) {
        rc = inflate_all(&w->z, &w->inflated, (const unsigned char *)w->raw.data, w->raw.len);
        if (rc != 0) {
            return rc < 0 ? -1 : CS_SWEEP_OTHER;
        }
        json = &w->inflated;
    }
    /* Django reads the JSON as latin-1, simdjson as UTF-8: only ASCII means the same. */
    if (!cs_is_ascii(json->data, json->len)) {
        return CS_SWEEP_OTHER;
    }
    w->text.len = 0;
    int kind = scan_document(json->data, json->len, s->field, s->field_len, &w->text);
    if (kind == SCAN_UNSURE) {
        probe p = {s->field, s->field_len, 0, 0, FIELD_ABSENT, 0, &w->text};
        w->text.len = 0;
        rc = cs_json_parse(w->parser, json->data ? json->data : "", json->len, &probe_visitor, &p);
        if (rc == CS_JSON_NOMEM || p.nomem) {
            errno = ENOMEM;
            return -1;
        }
        if (rc != CS_JSON_OK) {
            return CS_SWEEP_OTHER; /* not an object, or JSON that only json.loads may take */
        }
        kind = p.kind;
    }
    switch (kind) {
    case FIELD_ABSENT:
    case FIELD_FALSY:
        return BY_MTIME;
    case FIELD_POSITIVE:
        return KEEP;
    case FIELD_NEGATIVE:
        return EXPIRED;
    case FIELD_STRING:
        return CS_SWEEP_STRING;
    default:
        return CS_SWEEP_OTHER;
    }
}

static int
is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* prefix [a-z0-9]{8,}: what SessionStore(key) takes for a key and _key_to_file for a name. */
static int
is_session_name(const char *rest)
{
    size_t i = 0;
    while (is_key_char(rest[i])) {
        i++;
    }
    return rest[i] == '\0' && i >= 8;
}

/* prefix [a-z0-9]+ "_out_" [a-z0-9_]+: a temp file of Django's mkstemp or of ours. */
static int
is_temp_name(const char *rest)
{
    size_t i = 0;
    while (is_key_char(rest[i])) {
        i++;
    }
    if (i == 0 || strncmp(rest + i, TEMP_INFIX, sizeof(TEMP_INFIX) - 1) != 0) {
        return 0;
    }
    i += sizeof(TEMP_INFIX) - 1;
    size_t start = i;
    while (is_key_char(rest[i]) || rest[i] == '_') {
        i++;
    }
    return rest[i] == '\0' && i > start;
}

/* Removes dirfd/name if it is still the file that was judged: a writer may have renamed a
 * fresh session over it since. Returns 1 if it did. */
static int
remove_if_unchanged(int dirfd, const char *name, const struct stat *judged)
{
    struct stat now;
    return fstatat(dirfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 && same_file(&now, judged) &&
           unlinkat(dirfd, name, 0) == 0;
}

/* One entry of the batch. Returns 0, or -1 with errno set (ENOMEM: the sweep stops). */
static int
handle(sweep *s, worker *w, const entry *e)
{
    const char *name = s->names.data + e->name;
    struct stat st;
    if (e->temp) {
        if (fstatat(s->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            mtime_of(&st) < s->temp_cutoff && unlinkat(s->dirfd, name, 0) == 0) {
            w->temps_removed++;
        }
        return 0;
    }
    /* A sweep reads every file: without O_NOATIME each first read since the last write
     * would also dirty the inode. */
    int noatime = atomic_load(&s->noatime);
    int rc = read_regular(s->dirfd, name, &w->file, &st, noatime ? O_NOATIME : 0, SWEEP_MAX_FILE);
    if (rc < 0 && noatime && errno == EPERM) { /* not the files' owner */
        atomic_store(&s->noatime, 0);
        rc = read_regular(s->dirfd, name, &w->file, &st, 0, SWEEP_MAX_FILE);
    }
    int verdict;
    if (rc == 0) {
        verdict = judge(s, w, w->file.data, w->file.len);
    }
    else if (errno == EFBIG) {
        verdict = CS_SWEEP_OTHER; /* no session is that big: Django's code may read it */
    }
    else {
        /* load() would give an empty session and touch nothing */
        return errno == ENOMEM ? -1 : 0;
    }
    if (verdict < 0) {
        return -1;
    }
    if (verdict == BY_MTIME) {
        double m = mtime_of(&st);
        verdict = m < s->mtime_lo ? EXPIRED : m > s->mtime_hi ? KEEP : CS_SWEEP_MTIME;
    }
    if (verdict == EXPIRED) {
        w->removed += remove_if_unchanged(s->dirfd, name, &st);
        return 0;
    }
    if (verdict == KEEP) {
        return 0;
    }
    question q = {e->name, verdict, st, w->texts.len, 0};
    if (verdict == CS_SWEEP_STRING) {
        if (rawbuf_reserve(&w->texts, w->text.len) < 0) {
            return -1;
        }
        memcpy(w->texts.data + w->texts.len, w->text.data, w->text.len);
        w->texts.len += w->text.len;
        q.text_len = w->text.len;
    }
    if (rawbuf_reserve(&w->questions, sizeof(q)) < 0) {
        return -1;
    }
    memcpy(w->questions.data + w->questions.len, &q, sizeof(q));
    w->questions.len += sizeof(q);
    return 0;
}

/* A worker's share of the batch. The calling thread (`caller`) also looks for signals:
 * Ctrl-C must stop a sweep of a million files. Returns -1 (with an exception set) only
 * when a signal handler raised. */
static int
work(sweep *s, worker *w, int caller)
{
    unsigned long chunks = 0;
    for (;;) {
        if (atomic_load(&s->stop)) {
            return 0;
        }
        size_t start = atomic_fetch_add(&s->next, CHUNK);
        if (start >= s->nentries) {
            return 0;
        }
        size_t end = start + CHUNK < s->nentries ? start + CHUNK : s->nentries;
        const entry *entries = (const entry *)s->entries.data;
        for (size_t i = start; i < end; i++) {
            if (handle(s, w, &entries[i]) < 0) {
                w->error = errno ? errno : EIO;
                atomic_store(&s->stop, 1);
                return 0;
            }
        }
        if (caller && ++chunks % (SIGNAL_CHECK_EVERY / CHUNK) == 0) {
            take_gil(s);
            int rc = PyErr_CheckSignals();
            drop_gil(s);
            if (rc < 0) {
                atomic_store(&s->stop, 1);
                return -1;
            }
        }
    }
}

static void *
worker_main(void *arg)
{
    worker *w = arg;
    work(w->s, w, 0);
    return NULL;
}

/* Judges the batch with all workers. Returns 0, or -1 with an exception set (a signal) or
 * a worker's `error` set. */
static int
run_batch(sweep *s)
{
    atomic_store(&s->next, 0);
    int started = 1;
    while (started < s->nworkers &&
           pthread_create(&s->workers[started].thread, NULL, worker_main, &s->workers[started]) == 0) {
        started++; /* fewer threads than asked for (EAGAIN) only makes the batch slower */
    }
    int rc = work(s, &s->workers[0], 1);
    for (int i = 1; i < started; i++) {
        pthread_join(s->workers[i].thread, NULL);
    }
    for (int i = 0; i < s->nworkers; i++) {
        if (s->workers[i].error) {
            rc = -1;
        }
    }
    return rc;
}

/* Puts a worker's questions to the callback; with the GIL. Returns 0 or -1 (exception). */
static int
answer(sweep *s, worker *w)
{
    const question *qs = (const question *)w->questions.data;
    size_t n = w->questions.len / sizeof(question);
    for (size_t i = 0; i < n; i++) {
        const question *q = &qs[i];
        const char *name = s->names.data + q->name;
        PyObject *args[4] = {NULL, NULL, NULL, NULL}; /* owned */
        args[0] = PyUnicode_DecodeFSDefault(name);
        args[1] = PyFloat_FromDouble(mtime_of(&q->st));
        args[2] = PyLong_FromLong(q->status);
        args[3] = q->status == CS_SWEEP_STRING
                      ? PyUnicode_DecodeUTF8(w->texts.data + q->text, (Py_ssize_t)q->text_len, NULL)
                      : Py_NewRef(Py_None);
        PyObject *result = NULL; /* owned */
        int remove = -1;
        if (args[0] != NULL && args[1] != NULL && args[2] != NULL && args[3] != NULL) {
            result = PyObject_Vectorcall(s->callback, args, 4, NULL);
        }
        if (result != NULL) {
            /* CS_SWEEP_OTHER: the callback has done the whole job itself. */
            remove = q->status == CS_SWEEP_OTHER ? 0 : PyObject_IsTrue(result);
        }
        Py_XDECREF(result);
        for (int j = 0; j < 4; j++) {
            Py_XDECREF(args[j]);
        }
        if (remove < 0) {
            return -1;
        }
        if (remove) {
            int removed;
            Py_BEGIN_ALLOW_THREADS
            removed = remove_if_unchanged(s->dirfd, name, &q->st);
            Py_END_ALLOW_THREADS
            s->removed_by_callback += removed;
        }
    }
    w->questions.len = 0;
    w->texts.len = 0;
    return 0;
}

/* Reads up to BATCH matching names into the batch. Returns 1 if the directory has more,
 * 0 at its end, -1 with errno set. Without the GIL. */
static int
read_batch(sweep *s, DIR *d)
{
    s->names.len = 0;
    s->entries.len = 0;
    s->nentries = 0;
    while (s->nentries < BATCH) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            return errno ? -1 : 0;
        }
        /* Django follows a symlink at a session's name; O_NOFOLLOW means we never do. */
        if (strncmp(de->d_name, s->prefix, s->prefix_len) != 0 ||
            (de->d_type != DT_UNKNOWN && de->d_type != DT_REG)) {
            continue;
        }
        const char *rest = de->d_name + s->prefix_len;
        entry e = {s->names.len, de->d_ino, is_temp_name(rest)};
        if (!e.temp && !is_session_name(rest)) {
            continue; /* Django's clear_expired skips these too (an invalid key) */
        }
        size_t len = strlen(de->d_name) + 1;
        if (rawbuf_reserve(&s->names, len) < 0 || rawbuf_reserve(&s->entries, sizeof(e)) < 0) {
            return -1;
        }
        memcpy(s->names.data + s->names.len, de->d_name, len);
        s->names.len += len;
        memcpy(s->entries.data + s->entries.len, &e, sizeof(e));
        s->entries.len += sizeof(e);
        s->nentries++;
    }
    return 1;
}

static int
by_inode(const void *a, const void *b)
{
    ino_t x = ((const entry *)a)->ino, y = ((const entry *)b)->ino;
    return (x > y) - (x < y);
}

/* The sweep proper, entered and left with the GIL. Returns 0, or -1 with an exception set. */
static int
sweep_dir(sweep *s, PyObject *dir_obj, const char *dir)
{
    int rc = -1, err = 0, more = 1;
    DIR *d = NULL;
    drop_gil(s);
    int fd = open_at(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (d = fdopendir(fd)) == NULL) {
        err = errno;
        goto done;
    }
    s->dirfd = dirfd(d);
    /* Names already returned may be unlinked without disturbing readdir. A file renamed
     * meanwhile may show twice or not at all: it is judged twice, or at the next sweep. */
    while (more) {
        more = read_batch(s, d);
        if (more < 0) {
            err = errno;
            goto done;
        }
        if (s->nentries > 1) {
            qsort(s->entries.data, s->nentries, sizeof(entry), by_inode);
        }
        if (run_batch(s) < 0) {
            for (int i = 0; i < s->nworkers && !err; i++) {
                err = s->workers[i].error;
            }
            goto done; /* err = 0: a signal handler raised, its exception is set */
        }
        take_gil(s);
        for (int i = 0; i < s->nworkers; i++) {
            if (answer(s, &s->workers[i]) < 0) {
                drop_gil(s);
                goto done;
            }
        }
        drop_gil(s);
    }
    rc = 0;
done:
    if (d != NULL) {
        closedir(d); /* closes fd too */
    }
    else if (fd >= 0) {
        close(fd);
    }
    take_gil(s);
    if (err == ENOMEM) {
        PyErr_NoMemory();
    }
    else if (err) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, dir_obj);
    }
    return err ? -1 : rc;
}

static void
worker_free(worker *w)
{
    if (w->parser != NULL) {
        cs_json_parser_free(w->parser);
    }
    if (w->z_ready) {
        inflateEnd(&w->z);
    }
    rawbuf_free(&w->file);
    rawbuf_free(&w->raw);
    rawbuf_free(&w->inflated);
    rawbuf_free(&w->text);
    rawbuf_free(&w->questions);
    rawbuf_free(&w->texts);
}

/* file_sweep(dir, prefix, keys, field, mtime_lo, mtime_hi, temp_cutoff, callback, threads) */
PyObject *
cs_file_sweep(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (cs_check_nargs("file_sweep", nargs, 9) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *dir = NULL; /* owned: bytes of the path */
    sweep s;
    memset(&s, 0, sizeof(s));
    atomic_init(&s.noatime, 1);
    if (!PyBytes_Check(args[1]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "file_sweep() takes bytes for prefix and field");
        goto done;
    }
    if (!PyCallable_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "file_sweep() takes a callable");
        goto done;
    }
    s.prefix = PyBytes_AS_STRING(args[1]);
    s.prefix_len = (size_t)PyBytes_GET_SIZE(args[1]);
    s.field = PyBytes_AS_STRING(args[3]);
    s.field_len = (size_t)PyBytes_GET_SIZE(args[3]);
    s.callback = args[7]; /* borrowed: the caller's argument outlives the call */
    s.mtime_lo = PyFloat_AsDouble(args[4]);
    s.mtime_hi = PyFloat_AsDouble(args[5]);
    s.temp_cutoff = PyFloat_AsDouble(args[6]);
    long threads = PyLong_AsLong(args[8]);
    if (PyErr_Occurred()) {
        goto done;
    }
    if (threads < 1 || threads > 256) {
        PyErr_SetString(PyExc_ValueError, "file_sweep(): threads must be in 1..256");
        goto done;
    }
    if (strlen(s.prefix) != s.prefix_len) {
        PyErr_SetString(PyExc_ValueError, "file_sweep(): embedded null byte in prefix");
        goto done;
    }
    if (args[2] != Py_None) {
        PyObject *keys = PySequence_Fast(args[2], "file_sweep() takes a list of keys or None");
        if (keys == NULL) {
            goto done;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
        s.keys = PyMem_Calloc((size_t)(n ? n : 1), sizeof(cs_hmac_key));
        if (s.keys == NULL) {
            Py_DECREF(keys);
            PyErr_NoMemory();
            goto done;
        }
        s.nkeys = n;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PySequence_Fast_GET_ITEM(keys, i); /* borrowed */
            if (!PyBytes_Check(k)) {
                Py_DECREF(keys);
                PyErr_SetString(PyExc_TypeError, "file_sweep() takes bytes keys");
                goto done;
            }
            cs_hmac_key_init(&s.keys[i], (const unsigned char *)PyBytes_AS_STRING(k),
                             (size_t)PyBytes_GET_SIZE(k));
        }
        Py_DECREF(keys);
    }
    s.workers = PyMem_Calloc((size_t)threads, sizeof(worker));
    if (s.workers == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    s.nworkers = (int)threads;
    for (int i = 0; i < s.nworkers; i++) {
        worker *w = &s.workers[i];
        w->s = &s;
        if (s.keys != NULL) {
            w->parser = cs_json_parser_new();
            w->z_ready = inflateInit(&w->z) == Z_OK;
            if (w->parser == NULL || !w->z_ready) {
                PyErr_NoMemory();
                goto done;
            }
        }
    }
    if (!PyUnicode_FSConverter(args[0], &dir)) {
        goto done;
    }
    if (sweep_dir(&s, args[0], PyBytes_AS_STRING(dir)) < 0) {
        goto done;
    }
    long removed = s.removed_by_callback, temps_removed = 0;
    for (int i = 0; i < s.nworkers; i++) {
        removed += s.workers[i].removed;
        temps_removed += s.workers[i].temps_removed;
    }
    result = Py_BuildValue("(ll)", removed, temps_removed);
done:
    Py_XDECREF(dir);
    for (int i = 0; s.workers != NULL && i < s.nworkers; i++) {
        worker_free(&s.workers[i]);
    }
    PyMem_Free(s.workers);
    if (s.keys != NULL) {
        sodium_memzero(s.keys, sizeof(cs_hmac_key) * (size_t)s.nkeys);
        PyMem_Free(s.keys);
    }
    rawbuf_free(&s.names);
    rawbuf_free(&s.entries);
    return result;
}
