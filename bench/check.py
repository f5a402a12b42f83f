"""Fast performance regression gate (well under 60 s). Exit status 0 = pass, 1 = fail, 2 = setup error.

Always checked, in one process, contenders interleaved (common.measure):
  * correctness: csessions' dumps byte-identical to Django's at a patched timestamp, each side's
    loads reading the other's tokens, and every checked engine reading its Django twin's
    sessions on the same store (and the other way round);
  * "not slower": every csessions operation (signing dumps/loads for the 4 payloads x compress,
    every signed-cookie engine op for every payload a browser would keep, and the load + modify
    + save cycle of the file engine, db and cached_db on SQLite and cache on LocMem for every
    payload: --engines, --engine-ops) must have a median per-round ratio django/csessions >= 1.
    Clock: by default the verdicts use the thread's CPU time (time.thread_time_ns) of each
    batch, recorded next to the wall time (perf_counter_ns). Both are printed. CPU time does not
    run while the process is preempted, so on a busy CI runner its per-round ratios stay within
    a few % where wall-time ratios swing 0.3x-3x. The default engines do all their work in this
    thread: the file engine's and SQLite's I/O are system calls it makes (counted in its CPU
    time; SQLite is on tmpfs, servers.py, so no fsync wait), the same ones on both sides, so the
    CPU clock compares what differs, the codec and Python code. Engines behind a server
    (--engines db-pg,cache-redis,...) are judged on wall time, noisy on a shared machine: they
    are not in the default set.
    Exception: "parity" ops, where both sides run the very same Django code by construction
    (signed_cookies delete()), have a true ratio of 1 and would fail half the time on noise;
    they pass at >= 1 - --parity-tolerance (default 0.10; in-process state such as heap
    layout moves them by up to ~5% either way), i.e. they only catch csessions
    adding real cost there. No other op gets a tolerance.
With --bars, also the issue's bars on the typical payload (common.BARS):
    dumps(compress=True) >= 10x, loads >= 6x, signed-cookie load+modify+save cycle >= 8x.

Usage: .venv/bin/python bench/check.py [--bars] [--json out.json] [--engines ...] [--engine-ops ...]
"""

import argparse
import json
import random
import sys
import time

import codec
import common
import engines
from common import fmt_ns, table


# Engines the gate checks by default: all their work is in this thread (see the docstring).
CHECKED = ("signed_cookies", "file", "db-sqlite", "cached_db-sqlite", "cache-locmem")


def _ratio(r, clock):
    return r["ratio_cpu" if clock == "cpu" else "ratio"]["median"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bars", action="store_true",
                    help="also require the issue's speed-up bars on the typical payload")
    ap.add_argument("--parity-tolerance", type=float, default=0.10)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="clock the verdicts use (both are printed): the thread's CPU time "
                         "(default; steady on a shared CI machine) or wall time")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--target-ms", type=float, default=2.0, help="wall time of one batch")
    ap.add_argument("--payloads", default=",".join(common.PAYLOAD_NAMES))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--engines", default=",".join(CHECKED),
                    help=f"engines checked (engines.py names or patterns; default {','.join(CHECKED)}): "
                         "signed_cookies on every op, the others on --engine-ops")
    ap.add_argument("--engine-ops", default="cycle",
                    help="ops checked for the engines other than signed_cookies (default cycle)")
    ap.add_argument("--json", help="also write the measurements to this file")
    a = ap.parse_args(argv)

    common.REPORT_CLOCK = a.clock
    t0 = time.monotonic()
    cfg = common.Config(rounds=a.rounds, target_ms=a.target_ms, p99=False, seed=a.seed)
    rng = random.Random(a.seed)
    payloads = common.load_payloads(a.payloads.split(","))
    env = common.environment()
    common.print_environment(env)
    print()

    failures = []
    cc = codec.check_correctness(payloads)
    for c in cc:
        if not c["ok"]:
            failures.append(f"correctness: signing {c['payload']} compress={c['compress']} "
                            f"salt={c['salt']}: " + "; ".join(c["problems"]))
    codec_t = codec.time_codec(payloads, cfg, rng)
    selected = engines.select(a.engines)
    eops = tuple(o for o in a.engine_ops.split(",") if o)
    eng = engines.merge(
        engines.run(payloads, cfg, rng, [e for e in selected if e.name == "signed_cookies"]),
        engines.run(payloads, cfg, rng, [e for e in selected if e.name != "signed_cookies"],
                    ops=eops, payload_ops=eops, codec=False))
    for c in eng["correctness"]:
        if not c["ok"]:
            failures.append(f"correctness: {c['engine']} {c['payload']}: " + "; ".join(c["problems"]))

    rows = []
    for r in codec_t + eng["timings"]:
        what = (f"signing.{r['op']} compress={r['compress']}" if "engine" not in r
                else f"{r['label']}.{r['op']}")
        clock = r.get("clock") or a.clock  # server stores: wall (engines.py)
        ratio = _ratio(r, clock)
        key = "ratio_cpu" if clock == "cpu" else "ratio"
        floor = 1.0 - a.parity_tolerance if r.get("parity") else 1.0
        ok = ratio >= floor
        if not ok:
            failures.append(f"slower: {what} on {r['payload']}: django/csessions = {ratio:.3f} "
                            f"< {floor:.2f}")
        rows.append([r["payload"], what + (" (parity)" if r.get("parity") else ""),
                     fmt_ns(common.med(r["contenders"]["django"], clock)),
                     fmt_ns(common.med(r["contenders"]["csessions"], clock)),
                     f"{r['ratio']['median']:.2f}x", f"{r['ratio_cpu']['median']:.2f}x",
                     f"{r[key]['q1']:.2f}-{r[key]['q3']:.2f}", f">= {floor:.2f}",
                     clock, "ok" if ok else "FAIL"])
    print(f"Medians and verdicts use the {a.clock} clock (wall for engines behind a server); "
          "both speed-ups are shown.")
    print(table(["payload", "operation", "django", "csessions", "speed-up wall", "speed-up cpu",
                 "IQR", "needs", "clock", "verdict"], rows))
    for s in eng["skipped"]:
        print(f"not measured: {s['engine']} {s['payload']}: {s['reason']}")

    bars = common.evaluate_bars(codec_t, eng["timings"], clock=a.clock)
    print()
    print(f"Issue bars, {common.BAR_PAYLOAD} payload, {a.clock} clock"
          + ("" if a.bars else " (informational; --bars to enforce)"))
    print(table(["operation", "django", "csessions", "speed-up", "bar", "verdict"], [
        [b["label"], fmt_ns(b["django_ns"]), fmt_ns(b["csessions_ns"]),
         "-" if b["ratio"] is None else f"{b['ratio']:.2f}x", f">= {b['bar']:g}x",
         "ok" if b["ok"] else ("FAIL" if a.bars else "below")] for b in bars]))
    if a.bars:
        for b in bars:
            if not b["ok"]:
                failures.append(f"bar: {b['label']} on {common.BAR_PAYLOAD}: "
                                f"{b['ratio'] or 0:.2f}x < {b['bar']:g}x")

    elapsed = time.monotonic() - t0
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"environment": env, "config": cfg.as_dict(), "codec_correctness": cc,
                       "codec": codec_t, "engines": eng, "bars": bars, "failures": failures,
                       "elapsed_s": elapsed}, f, indent=1, default=str)
    print()
    if failures:
        print(f"check: FAIL ({len(failures)}) in {elapsed:.1f} s")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"check: pass in {elapsed:.1f} s" + (" (bars included)" if a.bars else ""))
    return 0


if __name__ == "__main__":
    sys.exit(common.cli(main))
