"""Instructions per call under valgrind's callgrind: csessions vs Django dumps/loads, typical payload.

Wall-clock ratios move with the machine; instruction counts barely do, so they make a steadier
second opinion (though an instruction is not a cycle: cache misses and SIMD width are invisible).

Method: this script re-runs itself under ``valgrind --tool=callgrind`` in several child
processes that all do the same setup (import Django and csessions, load the payload, one warm-up
call of every measured function so lazy initialisation is paid everywhere), then
  * ``baseline``: nothing more;
  * ``<side>-<op>``: ``--calls`` (default 2000) calls of that one function.
Instructions per call = (child's total - baseline's total) / calls, the totals read from the
``summary:`` (or ``totals:``) line of each ``--callgrind-out-file``. PYTHONHASHSEED is fixed so
every child hashes alike. dumps and loads use compress=True, as the session engines do
(``--nocompress`` adds compress=False); loads reads Django's token.

Caveat: valgrind 3.19 does not emulate the SHA extensions (SHA-NI) and hides them from CPUID,
so under callgrind OpenSSL runs its scalar SHA-256 on both sides; natively it uses SHA-NI where
the CPU has it. zlib's deflateInit/inflateInit (tables zeroed per call) weigh on both sides.

Standalone: .venv/bin/python bench/callgrind.py [--calls 2000] [--payload typical]
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common

SIDES = ("django", "csessions")
OPS = ("dumps", "loads")


def _child(task, payload_name, calls):
    """Runs under valgrind. Identical setup in every task; only the measured loop differs."""
    from django.core import signing as dj

    _, cs, _ = common.import_csessions()
    obj = common.load_payloads([payload_name])[payload_name]
    funcs = {}
    for compress in (True, False):
        token = dj.dumps(obj, compress=compress)
        sfx = "" if compress else "-nocompress"
        funcs.update({
            f"django-dumps{sfx}": lambda c=compress: dj.dumps(obj, compress=c),
            f"django-loads{sfx}": lambda t=token: dj.loads(t),
            f"csessions-dumps{sfx}": lambda c=compress: cs.dumps(obj, compress=c),
            f"csessions-loads{sfx}": lambda t=token: cs.loads(t),
        })
    for f in funcs.values():  # warm-up everywhere, baseline included
        f()
    if task != "baseline":
        f = funcs[task]
        for _ in range(calls):
            f()


def _ops(nocompress):
    return list(OPS) + ([f"{o}-nocompress" for o in OPS] if nocompress else [])


def _parse_total(path):
    summary = totals = None
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                summary = int(line.split()[1])
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
    if summary is None and totals is None:
        raise RuntimeError(f"no summary:/totals: line in {path}")
    return summary if summary is not None else totals


def _run_one(task, payload_name, calls, tmp):
    out = os.path.join(tmp, f"callgrind.{task}.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, os.path.abspath(__file__), "--child", task,
           "--payload", payload_name, "--calls", str(calls)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"valgrind {task} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return task, _parse_total(out), time.monotonic() - t0


def run(payload_name="typical", calls=2000, jobs=None, progress=None, nocompress=False):
    """nocompress=True also measures compress=False (4 more valgrind runs)."""
    if shutil.which("valgrind") is None:
        return {"available": False, "reason": "valgrind not installed (apt-get install valgrind)"}
    common.import_csessions()  # fail early and clearly if the extension is missing
    common.load_payloads([payload_name])
    ops = _ops(nocompress)
    tasks = ["baseline"] + [f"{s}-{o}" for o in ops for s in SIDES]
    jobs = jobs or max(1, min(len(tasks), os.cpu_count() or 1))
    totals, wall = {}, {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="csessions-callgrind-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
            for task, total, secs in ex.map(lambda t: _run_one(t, payload_name, calls, tmp), tasks):
                totals[task], wall[task] = total, secs
                if progress:
                    progress(f"callgrind {task:16} {total:>14,} instructions ({secs:.1f} s)")
    per_call = {t: (totals[t] - totals["baseline"]) / calls for t in tasks if t != "baseline"}
    result = {"available": True, "payload": payload_name, "calls": calls, "ops": ops,
              "totals": totals, "per_call": per_call, "ratios": {}, "wall_s": time.monotonic() - t0}
    for op in ops:
        result["ratios"][op] = per_call[f"django-{op}"] / per_call[f"csessions-{op}"]
    return result


def report(res):
    if not res.get("available"):
        return f"callgrind: not available ({res.get('reason')})"
    rows = []
    for op in res["ops"]:
        d, c = res["per_call"][f"django-{op}"], res["per_call"][f"csessions-{op}"]
        label = op.replace("-nocompress", " (compress=False)") if "nocompress" in op \
            else f"{op} (compress=True)"
        rows.append([label, f"{d:,.0f}", f"{c:,.0f}", f"{res['ratios'][op]:.2f}x"])
    return (f"Instructions per call (callgrind, {res['payload']} payload, {res['calls']} calls, "
            "minus a setup-only baseline run)\n\n"
            + common.table(["op", "django instr/call", "csessions instr/call", "django/csessions"], rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--payload", default="typical", choices=common.PAYLOAD_NAMES)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=None, help="parallel valgrind runs (default: CPUs)")
    ap.add_argument("--nocompress", action="store_true", help="also measure compress=False")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child, a.payload, a.calls)
        return 0
    res = run(a.payload, a.calls, a.jobs, progress=lambda s: print(s, flush=True),
              nocompress=a.nocompress)
    print()
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(common.cli(main))
