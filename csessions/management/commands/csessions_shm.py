"""``manage.py csessions_shm stats|check|recreate``: the shared-memory session store
(csessions.backends.shm) of this project. Needs "csessions" in INSTALLED_APPS.

* ``stats`` (``--json``): the counters kept in the segment (hits, misses, evictions,
  expirations, lock recoveries, bytes used, ...) and its geometry.
* ``check``: verifies every invariant of every stripe (the table, the LRU lists, the free
  space, the counters); exits with an error naming the stripe if one fails.
* ``recreate``: removes the segment and creates an empty one (every session is lost). Use it
  when the segment is refused (another layout after an upgrade, a corrupt header, wrong owner
  or mode) or to change CSESSIONS_SHM_SIZE. Restart the web server afterwards: running
  workers keep the old segment mapped until they exit.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from csessions.backends import shm


class Command(BaseCommand):
    help = "Statistics, consistency check or re-creation of the shared-memory session store."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["stats", "check", "recreate"], nargs="?",
                            default="stats")
        parser.add_argument("--json", action="store_true", help="stats as one JSON object")

    def handle(self, *args, action="stats", **options):
        name, _, _, path = shm.config()
        where = path or f"/{name}"
        try:
            if action == "recreate":
                handle = shm.recreate()
                self.stdout.write(f"recreated {where}: {handle.size} bytes, empty")
                return
            handle = shm.store()
            if action == "check":
                entries = handle.check()["entries"]
                self.stdout.write(f"{where}: consistent, {entries} entries")
                return
        except (OSError, ValueError) as exc:  # ShmError is an OSError
            raise CommandError(str(exc)) from exc
        stats = handle.stats()
        if options["json"]:
            self.stdout.write(json.dumps({"name": handle.name, "path": handle.path, **stats},
                                         sort_keys=True))
            return
        self.stdout.write(f"file {path}" if path else f"segment {handle.name}")
        for field in sorted(stats):
            self.stdout.write(f"  {field:<16} {stats[field]}")
