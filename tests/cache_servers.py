"""Real cache servers for the tests: ``redis-server`` and ``memcached`` on 127.0.0.1.

Import the fixtures into a test module (``from cache_servers import redis_server, ...``; tests/
is on sys.path under pytest's default import mode). bench/cache_cycle.py uses the context
managers without pytest. Each session-scoped fixture starts its server
once for the test session on a free loopback port, waits until it answers, and stops it at the
end. ``start_redis()`` / ``start_memcached()`` start a private instance a test may stop, pause or
kill mid-test (``with start_redis() as srv: ...``).

redis-server runs without persistence (no RDB snapshots, no AOF; its working directory is a
temporary directory). A missing binary FAILS the tests that need it, naming the Debian package
to install: these tests never skip.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from pg_server import die_with_parent

try:
    import pytest
except ImportError:  # bench/cache_cycle.py uses the servers without pytest
    pytest = None

START_TIMEOUT = 10.0  # seconds until a started server must answer

PACKAGES = {"redis-server": "redis-server", "memcached": "memcached"}


class ServerError(RuntimeError):
    pass


def _binary(name):
    candidates = (f"/usr/bin/{name}", f"/usr/sbin/{name}", f"/usr/local/bin/{name}")
    path = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if path is None:
        raise ServerError(
            f"{name} not found (PATH={os.environ.get('PATH', '')}). The cache engine tests run against "
            f"a real server: apt-get install {PACKAGES[name]}"
        )
    return path


def _server_env():
    """The environment minus what the sanitizer test run sets for Python (an LD_PRELOADed
    libasan does not belong in redis-server or memcached)."""
    return {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith(("ASAN_", "UBSAN_", "LSAN_"))}


def free_port():
    """A loopback TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port, request, expect, timeout=0.5):
    """True if the server on ``port`` answers ``request`` with bytes starting with ``expect``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while len(data) < len(expect):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(expect)
    except OSError:
        return False


class Server:
    """One running server process. ``location`` is what Django's CACHES LOCATION wants."""

    def __init__(self, kind, argv_for_port, ping, pong, url_format):
        self.kind = kind
        self._argv_for_port = argv_for_port
        self._ping, self._pong = ping, pong
        self._url_format = url_format
        self.proc = None
        self.port = None
        self.paused = False

    @property
    def location(self):
        return self._url_format.format(port=self.port)

    def answers(self, timeout=0.5):
        return _ask(self.port, self._ping, self._pong, timeout)

    def start(self):
        # The port is free when picked but could be taken before the server binds it: retry.
        last = None
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                self._argv_for_port(self.port),
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # a killed test run must not leave a server behind
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.answers(timeout=0.2):
                    return self
                time.sleep(0.01)
            last = self._reap()
        raise ServerError(f"{self.kind} did not start on 127.0.0.1 (last attempt: {last})")

    def _reap(self):
        """Kills the process (if running) and returns a description of how it ended."""
        proc, self.proc = self.proc, None
        if proc is None:
            return "not started"
        if self.paused:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            self.paused = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out = proc.stdout.read().decode(errors="replace").strip() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
        return f"exit status {proc.returncode}" + (f", output: {out[-500:]}" if out else "")

    def stop(self):
        """Stops the server for good: connections to its port are refused from now on."""
        self._reap()

    def pause(self):
        """SIGSTOP: the kernel still accepts connections, nothing ever answers (a hung server).
        Returns once every thread of the server is stopped (a signal is delivered
        asynchronously: a thread running on another core could still answer a request)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise ServerError(f"{self.kind} (pid {self.proc.pid}) did not stop on SIGSTOP")
            time.sleep(0.001)

    def _all_threads_stopped(self):
        task_dir = f"/proc/{self.proc.pid}/task"
        try:
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state not in ("T", "t"):
                    return False
        except FileNotFoundError:  # a thread exited meanwhile: look again
            return False
        return True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _redis(tmpdir):
    binary = _binary("redis-server")

    def argv(port):
        return [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "no",
            "--save", "",          # no RDB snapshots
            "--appendonly", "no",  # no AOF
            "--dir", tmpdir,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--databases", "1",
        ]

    return Server("redis-server", argv, b"PING\r\n", b"+PONG", "redis://127.0.0.1:{port}/0")


def _memcached(memory_mb=64):
    binary = _binary("memcached")

    def argv(port):
        cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb), "-t", "2",
               "-c", "256"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]  # memcached refuses to run as root without -u
        return cmd

    return Server("memcached", argv, b"version\r\n", b"VERSION", "127.0.0.1:{port}")


@contextlib.contextmanager
def start_redis():
    with tempfile.TemporaryDirectory(prefix="csessions-redis-") as tmpdir:
        with _redis(tmpdir).start() as server:
            yield server


@contextlib.contextmanager
def start_memcached(memory_mb=64):
    with _memcached(memory_mb).start() as server:
        yield server


def _fixture(starter):
    error = None
    try:
        with starter() as server:
            yield server
    except ServerError as e:
        error = str(e)
    if error:  # outside the except block: the failure alone, without a chained traceback
        pytest.fail(error, pytrace=False)


if pytest is not None:

    @pytest.fixture(scope="session")
    def redis_server():
        """A redis-server for the whole test session (no persistence)."""
        yield from _fixture(start_redis)

    @pytest.fixture(scope="session")
    def memcached_server():
        """A memcached for the whole test session."""
        yield from _fixture(start_memcached)
