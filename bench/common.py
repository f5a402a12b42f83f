"""Shared bench machinery: Django settings, reference payloads, the interleaved timing core and
the environment report. Imported by codec.py, engines.py, run.py, check.py and callgrind.py.

Timing method (``measure``)
---------------------------
Contenders (Django and csessions doing the same thing) are timed *interleaved*: for each of R
rounds, every contender runs one batch of N calls, in an order shuffled anew each round. So a
frequency change, a noisy neighbour or a GC pause hits both sides alike, and the per-round ratio
django/csessions compares two batches run next to each other in time. Per-call time of a batch
= batch time / N, with N calibrated per contender so one batch lasts about ``target_ms``.

Reported per contender: the median over rounds of the per-call time (the headline number), the
spread over rounds (IQR and min/max), and a p99. The speed-up is the ratio computed per round
then the median over rounds (not the ratio of the medians), with its own IQR / min / max.

The loop and call overhead (an ``itertools.repeat`` loop calling a ``functools.partial``, some
30-60 ns) is *not* subtracted: every caller pays it, and it only makes the csessions side look
slower (the conservative direction for a speed-up claim).

The garbage collector stays on during timing (``gc.collect()`` runs before each measurement):
allocation-heavy code pays for the collections it triggers in production too.
"""

import argparse
import functools
import gc
import itertools
import json
import math
import os
import platform
import random
import ssl
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # csessions from this checkout (in-place build)

PAYLOAD_NAMES = ("small", "typical", "large", "huge")
BUILD_CMD = (
    "cd %s && flock /tmp/csessions-build.lock .venv/bin/python setup.py -q build_ext "
    "--inplace --build-temp build/py311" % REPO
)
SECRET_KEY = "csessions-bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
SESSION_SALT = "django.contrib.sessions.backends.signed_cookies"
COOKIE_NAME = "sessionid"
COOKIE_LIMIT = 4096  # bytes of name + value a browser keeps per cookie
SESSION_AGE = 1209600  # SESSION_COOKIE_AGE, 2 weeks


class BenchError(Exception):
    """Fatal setup problem (no payloads, no extension): ``cli`` prints it and exits with 2."""


def standalone(doc, argv):
    """Argument parsing and set-up shared by the scripts that run one part on its own.
    Returns (config, payloads, rng) after printing the environment."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--payloads", default=",".join(PAYLOAD_NAMES))
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = Config.quick(seed=a.seed) if a.quick else Config(seed=a.seed)
    payloads = load_payloads(a.payloads.split(","))
    print_environment(environment())
    return cfg, payloads, random.Random(a.seed)


def cli(main):
    """Run a script's main(); a BenchError becomes a clear message and exit status 2."""
    try:
        return main()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------
# Django and csessions


def setup_django():
    """settings.configure() once per process; the minimum the session engines need."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY=SECRET_KEY,
            USE_TZ=True,
            INSTALLED_APPS=["django.contrib.sessions"],
            # Defaults spelled out: what the engines read on the measured paths.
            SESSION_COOKIE_NAME=COOKIE_NAME,
            SESSION_SERIALIZER="django.core.signing.JSONSerializer",
            SESSION_COOKIE_AGE=SESSION_AGE,
            LOGGING_CONFIG=None,
        )
        django.setup()


def import_csessions():
    """(csessions, csessions.signing, csessions._core), or a clear error if not built."""
    setup_django()
    try:
        import csessions
        import csessions.signing
        from csessions import _core
    except ImportError as e:
        raise BenchError(
            f"cannot import csessions ({e}). Build the C extension first:\n    {BUILD_CMD}"
        ) from e
    return csessions, csessions.signing, _core


# --------------------------------------------------------------------------------------------
# Payloads


def data_dir():
    """$CSESSIONS_BENCH_DATA, else bench/data: a verbatim copy of the shared reference payloads
    (../shared/data beside the repo), kept in the repo so a clean clone can run the benchmark."""
    env = os.environ.get("CSESSIONS_BENCH_DATA")
    path = Path(env) if env else REPO / "bench" / "data"
    missing = [n for n in PAYLOAD_NAMES if not (path / f"session-{n}.json").is_file()]
    if missing:
        where = "CSESSIONS_BENCH_DATA" if env else "the default (bench/data)"
        raise BenchError(
            f"reference payloads not found: {path} (from {where}) lacks "
            + ", ".join(f"session-{n}.json" for n in missing)
            + ". Set CSESSIONS_BENCH_DATA to the directory holding session-{small,typical,large,huge}.json."
        )
    return path


def load_payloads(names=PAYLOAD_NAMES):
    """{name: session dict}, in the order given."""
    d = data_dir()
    out = {}
    for n in names:
        if n not in PAYLOAD_NAMES:
            raise BenchError(f"unknown payload {n!r}; choose from {', '.join(PAYLOAD_NAMES)}")
        with open(d / f"session-{n}.json", encoding="utf-8") as f:
            out[n] = json.load(f)
    return out


def compact_size(obj):
    """The README's size: bytes Django serializes before compression and signing."""
    return len(json.dumps(obj, separators=(",", ":")))


# --------------------------------------------------------------------------------------------
# Timing core


def _quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(xs):
    q1, q3 = _quartiles(xs)
    return {
        "median": statistics.median(xs),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def call_batch(fn, fresh=None):
    """A batch runner: run(n) -> (wall ns, thread CPU ns) for n calls of ``fn()``.

    Wall time (perf_counter_ns) is the reported clock. The thread's CPU time is recorded next to
    it because it does not advance while the thread is preempted: on a shared machine it stays
    steady where wall time jumps (check.py --clock cpu uses it).

    ``fresh``: for an ``fn(arg)`` that uses its argument up (a server-side session that
    cycle_key() or delete() destroys): ``fresh()`` makes one, and the n arguments of a batch are
    made before its clock starts (also before each chunk of p99 samples, ``run.prepare``), so
    only a batch's worth of them exists at a time and their making is never timed.
    ``run.setup_ns`` (wall ns to make one argument, from the last batch) lets the calibration
    and the p99 sampling count that untimed work in their time budgets: deleting a session
    takes 1 us, seeding a huge one 4 ms.
    """
    perf = time.perf_counter_ns
    cpu = time.thread_time_ns
    rep = itertools.repeat

    if fresh is None:
        def run(n):
            c0 = cpu()
            t0 = perf()
            for _ in rep(None, n):
                fn()
            t1 = perf()
            return t1 - t0, cpu() - c0

        run.fn = fn
        return run

    pool = []

    def run(n):
        s0 = perf()
        args = [fresh() for _ in rep(None, n)]
        c0 = cpu()
        t0 = perf()
        for a in args:
            fn(a)
        t1 = perf()
        run.setup_ns = (t0 - s0) / n
        return t1 - t0, cpu() - c0

    run.setup_ns = 0
    run.fn = lambda: fn(pool.pop())
    run.prepare = lambda k: pool.extend(fresh() for _ in rep(None, k))
    return run


def timer_overhead_ns(k=2000):
    """Median cost of one back-to-back perf_counter_ns() pair, subtracted from single-call samples."""
    perf = time.perf_counter_ns
    d = []
    for _ in range(k):
        t0 = perf()
        t1 = perf()
        d.append(t1 - t0)
    return statistics.median(d)


def _wall(x):
    return x[0] if isinstance(x, tuple) else x


def _calibrate(run, target_ns, max_n=5_000_000):
    """Calls per batch so that a batch, with the making of its arguments (call_batch's
    ``fresh``), lasts about ``target_ns``."""
    run(1)  # warm-up: first-call caches, lazy imports
    n = 1
    while True:
        dt = _wall(run(n)) + n * getattr(run, "setup_ns", 0)
        if dt >= target_ns / 8 or n >= max_n:
            break
        n *= 4
    return max(1, min(max_n, int(target_ns * n / max(dt, 1))))


def sample_calls(contenders, per_call_ns, budget_ns, max_samples, rng, chunk=25):
    """Individually timed calls, interleaved in chunks of ``chunk`` calls in shuffled order.

    Why a separate sample run for p99: a batch's per-call time is a mean over N calls, so the
    per-round (per-batch) values only show slow *batches*, never slow *calls*; a p99 over R~21
    batch values would in any case be just their maximum. Tail latency needs per-call samples.
    These carry the timer's own cost (subtracted: median perf_counter_ns pair) and its ~tens of
    ns resolution, irrelevant at p99 scale, which is why they are not used for the medians.
    """
    perf = time.perf_counter_ns
    overhead = timer_overhead_ns()
    names = [n for n in contenders if getattr(contenders[n], "fn", None) is not None]
    cost = {n: per_call_ns[n] + getattr(contenders[n], "setup_ns", 0) for n in names}
    want = {n: int(max(100, min(max_samples, budget_ns / max(cost[n], 1)))) for n in names}
    samples = {n: [] for n in names}
    while any(len(samples[n]) < want[n] for n in names):
        order = [n for n in names if len(samples[n]) < want[n]]
        rng.shuffle(order)
        for name in order:
            fn = contenders[name].fn
            if hasattr(contenders[name], "prepare"):
                contenders[name].prepare(chunk)  # fresh arguments, untimed (call_batch)
            out = samples[name]
            for _ in range(chunk):
                t0 = perf()
                fn()
                out.append(perf() - t0 - overhead)
    return {
        n: {"p99": percentile(s, 99), "p50": percentile(s, 50), "samples": len(s),
            "timer_overhead_ns": overhead}
        for n, s in samples.items()
    }


class Config:
    """Knobs of the timing core. ``quick()`` for smoke runs, ``check()`` for the CI gate."""

    # Many short batches rather than few long ones: on a shared machine a batch shorter than a
    # scheduler time slice usually runs unpreempted, and the few preempted ones fall out as
    # outliers that the medians ignore (31 x 2 ms beats 7 x 10 ms under load).
    def __init__(self, rounds=41, target_ms=2.0, p99=True, p99_budget_ms=150.0,
                 p99_max_samples=3000, seed=None):
        self.rounds = rounds
        self.target_ms = target_ms
        self.p99 = p99
        self.p99_budget_ms = p99_budget_ms
        self.p99_max_samples = p99_max_samples
        self.seed = seed

    @classmethod
    def quick(cls, **kw):
        return cls(rounds=15, target_ms=0.5, p99_budget_ms=30.0, p99_max_samples=1000, **kw)

    def as_dict(self):
        return dict(vars(self))


def measure(contenders, cfg, baseline="django", subject="csessions", rng=None):
    """Time contenders interleaved. ``contenders``: {name: batch runner run(n) -> total wall ns,
    or (wall ns, CPU ns)} (``call_batch(fn)`` for a plain callable). Returns per-contender stats
    in ns per call (wall clock; CPU-time stats under "cpu" when measured) and, if both
    ``baseline`` and ``subject`` are present, the per-round ratio baseline/subject ("ratio",
    wall; "ratio_cpu")."""
    rng = rng or random.Random(cfg.seed)
    names = list(contenders)
    target_ns = cfg.target_ms * 1e6
    gc.collect()
    batch = {name: _calibrate(contenders[name], target_ns) for name in names}
    per_round = {name: [] for name in names}
    cpu_round = {name: [] for name in names}
    for _ in range(cfg.rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            n = batch[name]
            t = contenders[name](n)
            if isinstance(t, tuple):
                per_round[name].append(t[0] / n)
                cpu_round[name].append(t[1] / n)
            else:
                per_round[name].append(t / n)
    out = {"rounds": cfg.rounds, "contenders": {}}
    for name in names:
        st = summarize(per_round[name])
        st["batch"] = batch[name]
        st["per_round"] = per_round[name]
        if cpu_round[name]:
            st["cpu"] = summarize(cpu_round[name])
            st["cpu"]["per_round"] = cpu_round[name]
        out["contenders"][name] = st
    if cfg.p99:
        medians = {n: out["contenders"][n]["median"] for n in names}
        tails = sample_calls(contenders, medians, cfg.p99_budget_ms * 1e6, cfg.p99_max_samples, rng)
        for n, t in tails.items():
            out["contenders"][n].update(t)
    if baseline in per_round and subject in per_round:
        ratios = [b / s for b, s in zip(per_round[baseline], per_round[subject])]
        out["ratio"] = summarize(ratios)
        out["ratio"]["of"] = f"{baseline}/{subject}"
        out["ratio"]["per_round"] = ratios
        if cpu_round[baseline] and cpu_round[subject]:
            rc = [b / s for b, s in zip(cpu_round[baseline], cpu_round[subject])]
            out["ratio_cpu"] = summarize(rc)
            out["ratio_cpu"]["per_round"] = rc
    return out


def bind(fn, *args, **kwargs):
    """A zero-argument callable with the least call overhead (C-level partial)."""
    return functools.partial(fn, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Clock selection for reports: "wall" (perf_counter_ns, the default) or "cpu" (thread CPU time,
# steadier on a busy machine). p99s are always wall time (individually timed calls).

CLOCKS = ("wall", "cpu")
REPORT_CLOCK = "wall"  # run.py --clock sets it


def headline_clock(r):
    """The clock a measurement is reported on: its own "clock" if it fixes one (engines behind
    a server round trip: wall, since the server's work is not in this thread's CPU time),
    else the report clock."""
    return r.get("clock") or REPORT_CLOCK


def med(st, clock=None):
    """Median ns per call of one contender's stats, on the report clock."""
    if (clock or REPORT_CLOCK) == "cpu" and "cpu" in st:
        return st["cpu"]["median"]
    return st["median"]


def rat(r, clock=None):
    """The ratio stats of one measurement, on its headline clock (headline_clock)."""
    if (clock or headline_clock(r)) == "cpu" and "ratio_cpu" in r:
        return r["ratio_cpu"]
    return r.get("ratio")


def other_clock(clock=None):
    return "wall" if (clock or REPORT_CLOCK) == "cpu" else "cpu"


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def table(headers, rows):
    """A Markdown table (also readable on a terminal)."""
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    sep = "| " + " | ".join("-" * x for x in w) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------------
# Environment


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _dpkg_versions(pkgs):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *pkgs],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in r.stdout.splitlines():
        name, _, ver = line.partition(" ")
        out[name] = ver
    return out


def _sodium_version(core):
    for attr in ("sodium_version", "SODIUM_VERSION", "libsodium_version", "LIBSODIUM_VERSION"):
        v = getattr(core, attr, None) if core else None
        if v is not None:
            return (v() if callable(v) else v), f"csessions._core.{attr}"
    try:  # the system library the extension links (same soname), via ctypes
        import ctypes
        import ctypes.util

        lib = ctypes.CDLL(ctypes.util.find_library("sodium") or "libsodium.so.23")
        lib.sodium_version_string.restype = ctypes.c_char_p
        return lib.sodium_version_string().decode(), "system libsodium (ctypes)"
    except (OSError, AttributeError):
        return None, "not found"


def _core_info(core):
    """Whatever version/build info csessions._core exposes (attributes named *version*/*info*)."""
    info = {}
    if core is None:
        return info
    for attr in dir(core):
        low = attr.lower()
        if attr.startswith("__") or not ("version" in low or "build" in low or low.endswith("info")):
            continue
        v = getattr(core, attr)
        if callable(v):
            try:
                v = v()
            except Exception:  # noqa: BLE001 - needs arguments: not an info getter
                continue
        info[attr] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
    return info


def environment():
    import django

    try:
        csessions, _, core = import_csessions()
        cs_version, core_path = csessions.__version__, getattr(core, "__file__", None)
    except BenchError:
        core, cs_version, core_path = None, None, None
    sodium, sodium_src = _sodium_version(core)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "django": django.__version__,
        "csessions": cs_version,
        "csessions_core": core_path,
        "csessions_core_info": _core_info(core),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "loadavg_at_start": load,
        "zlib_python_runtime": zlib.ZLIB_RUNTIME_VERSION,
        "openssl_python": ssl.OPENSSL_VERSION,
        "libsodium": sodium,
        "libsodium_source": sodium_src,
        "debian_packages": _dpkg_versions(
            ["libsodium-dev", "libsimdjson-dev", "zlib1g-dev", "libssl-dev", "valgrind"]
        ),
        "payload_dir": str(data_dir()),
    }


def print_environment(env, file=sys.stdout):
    p = lambda *a: print(*a, file=file)
    p(f"Python    {env['python']} ({env['implementation']}) {env['executable']}")
    p(f"Django    {env['django']}")
    p(f"csessions {env['csessions']}  core: {env['csessions_core']}")
    if env["csessions_core_info"]:
        p(f"          core info: {env['csessions_core_info']}")
    p(f"CPU       {env['cpu']} x{env['cpu_count']}  governor: {env['cpu_governor']}  "
      f"load avg: {env['loadavg_at_start']}")
    p(f"Platform  {env['platform']}")
    p(f"zlib      {env['zlib_python_runtime']} (Python's zlib module)")
    p(f"OpenSSL   {env['openssl_python']} (Python's ssl module)")
    p(f"libsodium {env['libsodium']} ({env['libsodium_source']})")
    pk = env["debian_packages"]
    if pk:
        p("Debian    " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())))
    p(f"Payloads  {env['payload_dir']}")


# --------------------------------------------------------------------------------------------
# The speed-up bars, typical payload (check.py --bars, results.md)

# (label, section, selector, minimum django/csessions ratio)
BARS = [
    ("signing.dumps(compress=True)", "codec", {"op": "dumps", "compress": True}, 10.0),
    ("signing.loads(compressed token)", "codec", {"op": "loads", "compress": True}, 6.0),
    ("signed-cookie load+modify+save cycle", "engines",
     {"engine": "signed_cookies", "op": "cycle"}, 8.0),
]
BAR_PAYLOAD = "typical"


def find_timing(timings, **sel):
    for r in timings:
        if all(r.get(k) == v for k, v in sel.items()):
            return r
    return None


def evaluate_bars(codec_timings, engine_timings, clock=None):
    clock = clock or REPORT_CLOCK
    out = []
    for label, section, sel, bar in BARS:
        r = find_timing(codec_timings if section == "codec" else engine_timings,
                        payload=BAR_PAYLOAD, **sel)
        ratio = rat(r, clock)["median"] if r else None
        other = rat(r, other_clock(clock))["median"] if r else None
        out.append({"label": label, "bar": bar, "ratio": ratio, "clock": clock,
                    "ratio_other_clock": other, "ok": ratio is not None and ratio >= bar,
                    "django_ns": med(r["contenders"]["django"], clock) if r else None,
                    "csessions_ns": med(r["contenders"]["csessions"], clock) if r else None})
    return out
