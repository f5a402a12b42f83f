"""A real PostgreSQL server for the tests (and bench/db_clear_expired.py), from Debian's package.

``postgresql_server`` is a session-scoped pytest fixture: it runs ``initdb`` on a fresh data
directory in a temporary directory, starts ``postgres`` listening on 127.0.0.1 on a free port
(no Unix socket outside that temporary directory), waits until it accepts connections, and
stops it and removes the directory at the end of the test session. Import it into a test
module (``from pg_server import postgresql_server``; tests/ is on sys.path under pytest's
default import mode). ``start_postgres()`` starts a private server outside pytest (a context
manager; the benchmark uses it).

Binaries come from /usr/lib/postgresql/<version>/bin (Debian's layout; the newest version
wins). If they are missing, the fixture FAILS with the Debian package to install: these tests
never skip. initdb and postgres refuse to run as root, so when the caller is root both run as
the ``postgres`` system user the package creates (setuid in the child, as ``runuser -u
postgres --`` would; the temporary directory is handed over to that user). The server trusts
every connection (``-A trust``): it listens on the loopback interface only and its data is
thrown away.
"""

import contextlib
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

PACKAGE = "postgresql"  # Debian package that provides /usr/lib/postgresql/<ver>/bin
BIN_ROOT = "/usr/lib/postgresql"
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"  # the database role initdb creates
START_TIMEOUT = 30.0  # seconds until a started server must accept connections

# For tests: nothing the tests check depends on durability, and these make every commit cheap.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresError(RuntimeError):
    pass


def find_bin_dir(root=BIN_ROOT):
    """The bin/ directory of the newest PostgreSQL under ``root`` that has initdb and postgres."""
    found = []
    for bin_dir in glob.glob(os.path.join(root, "*", "bin")):
        if all(os.access(os.path.join(bin_dir, b), os.X_OK) for b in ("initdb", "postgres")):
            version = os.path.basename(os.path.dirname(bin_dir))
            key = tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)
            found.append((key, bin_dir))
    if not found:
        raise PostgresError(
            f"PostgreSQL server binaries not found (no {root}/<version>/bin/initdb and postgres). "
            f"The database engine tests run against a real PostgreSQL server: "
            f"apt-get install {PACKAGE}"
        )
    return max(found)[1]


def free_port():
    """A loopback TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    # Runs in the child after the setuid (a credential change clears the parent-death signal,
    # so it has to come after). A killed test run must not leave a server behind.
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


class PostgresServer:
    """One server: ``host``, ``port``, ``user`` to connect with; ``django_database(name)`` for
    a Django DATABASES entry. Use as a context manager, or call ``start()``/``stop()``."""

    host = "127.0.0.1"
    user = SUPERUSER

    def __init__(self, settings=None, bin_dir=None):
        self.settings = dict(settings or {})
        self.bin_dir = bin_dir
        self.port = None
        self.proc = None
        self.tmp = None
        self.data_dir = None
        self.log_path = None

    # -- process management -----------------------------------------------------------------

    def _user_kwargs(self):
        if os.geteuid() != 0:
            return {}
        try:
            pw = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, but there is no '{SYSTEM_USER}' system user to run initdb and "
                f"postgres as (Debian's {PACKAGE} package creates it): apt-get install {PACKAGE}"
            ) from None
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _chown(self, path):
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _env(self):
        # Nothing of the caller's environment: the sanitizer run preloads libasan (LD_PRELOAD),
        # and an uninstrumented pg_isready with it hangs on a futex.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": self.tmp or "/"}

    def start(self):
        self.bin_dir = self.bin_dir or find_bin_dir()
        user = self._user_kwargs()
        self.tmp = tempfile.mkdtemp(prefix="csessions-pg-")
        self._chown(self.tmp)
        self.data_dir = os.path.join(self.tmp, "data")
        self.log_path = os.path.join(self.tmp, "postgres.log")
        env = self._env()
        try:
            proc = subprocess.run(
                [os.path.join(self.bin_dir, "initdb"), "-D", self.data_dir, "-U", SUPERUSER,
                 "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                cwd=self.tmp, env=env, capture_output=True, text=True, timeout=120, **user,
            )
            if proc.returncode != 0:
                raise PostgresError(f"initdb failed (exit status {proc.returncode}):\n"
                                    f"{(proc.stdout + proc.stderr)[-2000:]}")
            last = None
            for _ in range(5):  # the free port can be taken before postgres binds it: retry
                self.port = free_port()
                argv = [os.path.join(self.bin_dir, "postgres"), "-D", self.data_dir,
                        "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                        "-c", f"unix_socket_directories={self.tmp}"]
                for name, value in self.settings.items():
                    argv += ["-c", f"{name}={value}"]
                with open(self.log_path, "ab") as log:
                    self.proc = subprocess.Popen(argv, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=subprocess.STDOUT,
                                                 preexec_fn=die_with_parent, **user)
                deadline = time.monotonic() + START_TIMEOUT
                while time.monotonic() < deadline and self.proc.poll() is None:
                    if self._accepts():
                        return self
                    time.sleep(0.05)
                last = self._halt()
            raise PostgresError(f"postgres did not start on 127.0.0.1 ({last}); "
                                f"log {self.log_path}:\n{self._log_tail()}")
        except BaseException:
            self.stop(keep_log=True)
            raise

    def _accepts(self):
        """True once the server completes a connection (not just a TCP accept while starting)."""
        try:
            proc = subprocess.run(
                [os.path.join(self.bin_dir, "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                 "-U", SUPERUSER, "-d", "postgres", "-t", "1"],
                env=self._env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return "(no log)"

    def _halt(self):
        """Stops the postmaster (fast shutdown, then harder); returns how it ended."""
        proc, self.proc = self.proc, None
        if proc is None:
            return "not started"
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        return f"exit status {proc.returncode}"

    def stop(self, keep_log=False):
        self._halt()
        if self.tmp and not keep_log:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self if self.proc else self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- clients ------------------------------------------------------------------------------

    def conninfo(self, dbname="postgres"):
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def connect(self, dbname="postgres", **kwargs):
        import psycopg  # only the tests and the benchmark need it

        return psycopg.connect(self.conninfo(dbname), **kwargs)

    def create_database(self, name):
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def django_database(self, name, **extra):
        """A DATABASES entry for database ``name`` on this server (create it first)."""
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": self.user,
                "PASSWORD": "", "HOST": self.host, "PORT": str(self.port), **extra}


def start_postgres(settings=None, bin_dir=None):
    """Starts a fresh server and returns it (a context manager that stops it)."""
    return PostgresServer(settings, bin_dir).start()


@pytest.fixture(scope="session")
def postgresql_server():
    """A fresh PostgreSQL server for the whole test session; fails (never skips) without one."""
    try:
        server = start_postgres(FAST_SETTINGS)
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server
