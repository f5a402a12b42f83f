/* Session files: the I/O of csessions.backends.file. The core still knows nothing about
 * Django: paths, bytes, numbers and one callback in and out.
 *
 * On-disk layout, Django's own, so that both engines can share one directory:
 *
 *     <dir>/<prefix><key>             a session: one signed value, or empty (the placeholder
 *                                     an exclusive create leaves until its temp file lands)
 *     <dir>/<prefix><key>_out_<rnd>   a writer's temp file, <rnd> in [a-z0-9_]+ (mkstemp's
 *                                     alphabet), so a sweep recognises Django's and ours
 *
 * Invariants:
 * - A session file's content is only ever replaced whole, by a complete temp file from the
 *   same directory taking its name (a swap of the two names, renameat2 RENAME_EXCHANGE,
 *   where the filesystem has it; rename(2) elsewhere): a reader sees the old value, the
 *   new one or the placeholder, never a mix.
 * - Every open(2) of a session or temp file carries O_NOFOLLOW and O_CLOEXEC (the storage
 *   directory itself may be a symlink: it is the administrator's, the names in it are not);
 *   files are created 0600 (before the umask) with O_EXCL.
 * - A failed save leaves no file of its own behind: its temp file is unlinked, and so is
 *   the placeholder an exclusive create made, if it is still the empty file it made.
 * - The GIL is released around every syscall; no Python object is touched meanwhile
 *   (buffers are PyMem_Raw, the bytes written belong to the caller and are immutable).
 *
 * file_sweep() is clear_expired. Each session file is read, its signature checked against
 * the HMAC keys given, its payload decoded and one top-level JSON field (the expiry) picked
 * out without a Python object (a strict scanner, simdjson when it is unsure); `threads`
 * threads judge a batch of names at once. A file is removed, if it is still the file judged
 * (same inode, size and mtime), when the field is a number < 0, or when the field is absent
 * or falsy (null, false, 0, "", [], {}) and its mtime is below mtime_lo. It is kept when it
 * is empty, when the field is a number > 0 (or true), or when there is no usable field and
 * its mtime is above mtime_hi. Whatever else needs a verdict goes to callback(name, mtime,
 * status, value) after the batch, in the calling thread, with the GIL; a true answer removes
 * the file (same check), except for CS_SWEEP_OTHER, whose callback does it all. Temp files
 * whose mtime is below temp_cutoff are removed. Other names, symlinks, directories and files
 * that cannot be opened are left alone.
 */
#ifndef CSESSIONS_FILEIO_H
#define CSESSIONS_FILEIO_H

#include "state.h"

enum {
    CS_SWEEP_MTIME = 0,   /* no usable field: judged by mtime, but too close to the cutoff */
    CS_SWEEP_STRING = 1,  /* the field is a non-empty string (value): only Python parses it */
    CS_SWEEP_CORRUPT = 2, /* bad signature or non-ASCII: an empty session, judged by mtime */
    CS_SWEEP_OTHER = 3,   /* anything unusual: the callback does the whole job itself */
};

PyObject *cs_file_read(PyObject *module, PyObject *path);
PyObject *cs_file_save(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *cs_file_unlink(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *cs_file_sweep(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* Entries for the module's method table (module.c puts the terminator after them). */
#define CS_FILEIO_METHODS                                                                      \
    {"file_read", cs_file_read, METH_O,                                                        \
     "file_read(path) -> (bytes, mtime: float); OSError if it cannot be read (a symlink, a "   \
     "directory or anything else than a regular file included)"},                              \
    {"file_save", (PyCFunction)(void (*)(void))cs_file_save, METH_FASTCALL,                    \
     "file_save(path, data: bytes, must_create, durable) -> 0 or the errno of a failed write. " \
     "Raises OSError when the name cannot be reserved: FileExistsError (must_create), "        \
     "FileNotFoundError (not must_create)."},                                                  \
    {"file_unlink", (PyCFunction)(void (*)(void))cs_file_unlink, METH_FASTCALL,                \
     "file_unlink(path, durable) -> None; OSError on failure"},                                \
    {"file_sweep", (PyCFunction)(void (*)(void))cs_file_sweep, METH_FASTCALL,                 \
     "file_sweep(dir, prefix: bytes, keys: list[bytes] | None, field: bytes, mtime_lo, "       \
     "mtime_hi, temp_cutoff, callback, threads) -> (sessions removed, temp files removed)"},

#endif
