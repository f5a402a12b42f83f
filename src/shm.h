/* The shared-memory session store of csessions.backends.shm: one POSIX shared-memory segment
 * (or, in file mode, one regular file) that every worker process of a host maps (MAP_SHARED)
 * and uses directly, under striped, process-shared, robust mutexes. The core knows nothing about Django: keys and values are
 * bytes (or ASCII str), times are integer Unix seconds passed down by the caller.
 *
 * Segment layout (all offsets from the start of the mapping, all fields host-endian):
 *
 *     [0, 4096)           shm_header: magic "CSESSHM\0", layout version, total size, geometry
 *                         (stripes, buckets per stripe, arena bytes per stripe, largest block),
 *                         the SipHash key of the table, creation time, a BLAKE2b-256 checksum
 *                         of all of that, and `ready`, stored last (release) by the creator;
 *                         after the checksum (they change): in file mode, the kernel boot id
 *                         the mutexes were made in and the count of boots it was verified in
 *     stripes_off         nstripes x shm_stripe (64-byte aligned): the robust mutex, the LRU
 *                         list ends, the buddy free lists, the sweep hand, the counters
 *     buckets_off         nstripes x nbuckets x uint32: the head of each bucket's chain
 *     arenas_off          nstripes x arena_size bytes (4096-aligned): the stripe's blocks
 *
 * A key hashes (keyed SipHash-2-4) to one stripe and one bucket of that stripe; everything a
 * stripe owns (its buckets, its arena, its lists, its counters) is touched only under its
 * lock, so workers on different stripes never contend and there is no global lock at all.
 *
 * Memory: each arena is a binary buddy allocator whose size classes are the powers of two
 * from 256 B (an entry of the smallest session, Django's auth keys: 172 B of JSON) up to
 * `1 << top_order` (256 KiB for the default 64 MiB segment, enough for a ~100 KB session).
 * Freed buddies coalesce, so space moves between size classes as the mix of session sizes
 * changes and never leaks. A block starts with a 48-byte shm_entry; a used block holds the
 * key and then the value right after it. With the bucket slot, a session costs 52 bytes
 * beyond its key and value. The entry's `sum` is XXH64 over its key, then its value, seeded
 * with its order and expiry: written with the rest of the entry, before it is published. Offsets inside an arena are uint32 byte offsets,
 * SHM_NIL for none. The segment never grows: it is sized once, at creation.
 *
 * Invariants (what every operation keeps, and what repair restores):
 * - The bucket chains are the only truth. A used block is live iff it is reachable from its
 *   bucket; the LRU list, the free lists and the counters are derived data.
 * - Publishing is one aligned 32-bit store under the stripe lock: a new value is written
 *   into a fresh block first, then linked in place of the old one (whose block is freed
 *   after). A reader holds the same lock while it copies a value out, so no reader ever sees
 *   a torn value, and a writer killed at any instruction leaves either the old or the new
 *   value reachable, never a half-written one. Within a boot, then, a reachable entry always
 *   matches its checksum; `get` does not verify it (the ~0.1 ns/byte would buy nothing the
 *   publishing order does not already give). Repair and check() do.
 * - Entry counters move before an insert is published and after a removal is unlinked, so
 *   after any crash the live entries are at most what the counters say; repair books the
 *   difference as `discarded`, and inserts - deletes - evictions - expirations - discarded
 *   == entries holds exactly.
 * - Expiry is checked on every read (an expired entry is a miss and is reclaimed there);
 *   each put also advances the stripe's sweep hand over SHM_SWEEP buckets, reclaiming the
 *   expired entries it finds: expired sessions go away incrementally, with no full scan on
 *   the request path and no background thread. When a write finds no free block, expired
 *   entries near the LRU tail go first, then the least recently used ones (counted). The
 *   LRU list is kept CLOCK-fashion: a read marks its entry instead of moving it to the head,
 *   and eviction moves a marked tail entry to the head (unmarked) instead of evicting it, at
 *   most SHM_SECOND_CHANCES times per eviction, then takes the tail.
 *
 * Crash repair: a worker SIGKILLed while holding a stripe lock leaves the robust mutex to
 * the next locker with EOWNERDEAD. That locker rebuilds the stripe from its bucket chains
 * (every entry is validated: bounds, alignment, block order, lengths, the key's hash against
 * the bucket it sits in, no overlap with another entry; the chain is cut at the first entry
 * that fails; an entry that passes all that but not its checksum, or whose key already came
 * earlier in the chain, is taken out alone and booked as `discarded`), then rebuilds the LRU list (by last-access tick), the free lists (from the
 * gaps) and the counters, and only then marks the mutex consistent. The same rebuild runs
 * when a normal operation meets an inconsistency (garbage written into the segment): the
 * damaged entries are dropped, the others stay readable, nothing is dereferenced out of
 * bounds. A repair killed midway is simply redone by the next locker (it is idempotent).
 * Garbage written over a mutex itself may make its stripe time out (TimeoutError after
 * lock_timeout) instead of working; written over a mutex that a process holds at that
 * moment, it can make that process fault in pthread_mutex_unlock (glibc follows the robust
 * list pointers kept in the mutex), which no check of the store can prevent.
 *
 * File mode (a path given): the store is that regular file, mapped MAP_SHARED, so it also
 * survives a reboot. Whoever comes first creates it (O_CREAT | O_EXCL | O_NOFOLLOW, 0600) and
 * allocates its blocks (posix_fallocate: a write into a hole of a full disk would be a
 * SIGBUS). Every process that has the file mapped holds flock(LOCK_SH) on it for as long
 * as it does (the mapping keeps the open file description, and so the lock), and only an
 * opener that gets LOCK_EX at once, so one alone with the file, initialises it (a file of
 * size 0, or one of ours whose creator died before `ready`) or verifies it; the others take
 * LOCK_SH, which waits for that to finish, and find it done. A file whose `ready` or boot id
 * says otherwise while others use it (garbage in those bytes) is refused after
 * SHM_ATTACH_WAIT_MS, never re-made under its users.
 * Nothing is fsynced: the kernel writes the pages back (all of them at a clean shutdown).
 * After a machine crash, any page (or sector) of the file may be from any moment of its
 * last seconds. So the first opener in a new boot (the header's boot id is not
 * /proc/sys/kernel/random/boot_id) makes every stripe's mutex anew (a locked one names a
 * thread of the old boot), runs the repair above on every stripe, which checks every entry
 * against its checksum, and only then records the new boot id and counts it in `reboots`
 * (a verify cut short is redone by the next opener). What comes back after a crash is, per
 * session, one value that was written whole at some point, or nothing: never a torn one. It
 * may be older than the last write, and a session deleted in the last seconds may come back
 * (till it expires). Counters live in the stripes, so they count since the file's creation,
 * across reboots; the repair makes them add up again (dropped entries are `discarded`; if a
 * stripe's counters reached the disk older than its entries, the surplus is booked as
 * `inserts`). All processes using one file must be on one host and in one PID namespace
 * (the mutexes hold thread ids), and the file on a local filesystem (not NFS).
 * A file or segment truncated under running processes makes them die with SIGBUS, as any
 * mapping does: only the site's own user can do that, and the store cannot guard against it.
 *
 * Trust: the segment (or file) is created 0600 with O_EXCL, and attaching refuses one that
 * is not owned by the current uid or has any group/other permission bit (a file also if it
 * is a symlink or not a regular file), so only the site's own user can read or write it.
 * Values are what the Python layer stores, unsigned: any process of that user can read the
 * site's SECRET_KEY and sign whatever it likes, so a signature would protect nothing here
 * (the reasoning is in csessions/backends/shm.py's docstring).
 *
 * Fork: the mapping is MAP_SHARED, so a process that opened the store and then forks
 * (gunicorn --preload) keeps a valid store in parent and children. A robust mutex belongs to
 * the thread that locked it, not to the process image: a child never inherits ownership,
 * and no Python code runs while a thread holds a stripe lock (the GIL is released only to
 * wait for one), so a fork from Python cannot happen while this process holds one.
 */
#ifndef CSESSIONS_SHM_H
#define CSESSIONS_SHM_H

#include "state.h"

PyObject *cs_shm_unlink(PyObject *module, PyObject *name);

/* Entries for the module's method table; defined in shm.c. */
#define CS_SHM_METHODS                                                                       \
    {"shm_unlink", cs_shm_unlink, METH_O,                                                    \
     "shm_unlink(name) -> bool: removes the segment's name (False if there was none); "      \
     "processes that have it mapped keep using it until they close it"},

/* Called from the module's exec slot: adds the ShmStore type, the ShmError exception and
 * the constants. 0 or -1. */
int cs_shm_exec(PyObject *module);

#endif
