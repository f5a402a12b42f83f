"""A worker process of cases.test_pg_concurrent_processes.

Argument: JSON {"writer", "seed", "shared", "own", "iterations"}. Prints READY, waits for a
line on stdin (so that the workers start together), then runs random create / update /
load-modify-save / delete / load operations with csessions' db and cached_db engines on keys
shared with the other worker and on keys of its own. Every value written is self-checking
(payload() of its key, writer and sequence number); every load must give {} or such a value.
The only exceptions allowed are CreateError and UpdateError; anything else prints a traceback
and exits 1. Prints a JSON line: counters, and the last state of each own key (its last
sequence number, or null when deleted or never created).
"""

import hashlib
import json
import random
import sys
import traceback

import dbcase_setup

dbcase_setup.configure()

from django.contrib.sessions.backends.base import CreateError, UpdateError  # noqa: E402

from csessions.backends import cached_db, db  # noqa: E402

ENGINES = (db.SessionStore, cached_db.SessionStore)


def payload(key, writer, seq):
    # Sizes from ~70 bytes to ~2.6 KB, so some values are stored compressed and some not.
    blob = hashlib.sha256(f"{key}:{writer}:{seq}".encode()).hexdigest() * (1 + seq % 40)
    return {"key": key, "writer": writer, "seq": seq, "blob": blob}


def check(key, data):
    if data != {} and data != payload(key, data.get("writer"), data.get("seq")):
        raise AssertionError(f"corrupt session {key}: {str(data)[:300]}")


def main():
    args = json.loads(sys.argv[1])
    writer, shared, own = args["writer"], args["shared"], args["own"]
    rnd = random.Random(args["seed"])
    counts = dict.fromkeys(("create", "update", "modify", "delete", "load", "CreateError",
                            "UpdateError", "missing"), 0)
    last = dict.fromkeys(own)
    print("READY", flush=True)
    sys.stdin.readline()
    for seq in range(1, args["iterations"] + 1):
        key = rnd.choice(shared if rnd.random() < 0.6 else own)
        op = rnd.choice(("create", "update", "modify", "delete", "load"))
        store = rnd.choice(ENGINES)(key)
        try:
            if op == "create":
                store._session_cache = payload(key, writer, seq)
                store.save(must_create=True)
            elif op == "update":
                store._session_cache = payload(key, writer, seq)
                store.save()
            elif op == "modify":  # a request: load, change, save
                check(key, dict(store.items()))
                if store.session_key is None:  # no such row: Django would make a new session
                    counts["missing"] += 1
                    continue
                store.update(payload(key, writer, seq))
                store.save()
            elif op == "delete":
                store.delete()
            else:
                check(key, dict(store.items()))
        except CreateError:
            counts["CreateError"] += 1
            continue
        except UpdateError:
            counts["UpdateError"] += 1
            continue
        counts[op] += 1
        if key in last and op in ("create", "update", "modify"):
            last[key] = seq
        elif key in last and op == "delete":
            last[key] = None
    print(json.dumps({"counts": counts, "own_last": last}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
