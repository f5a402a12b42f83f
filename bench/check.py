"""Fast performance regression gate (well under 60 s). Exit status 0 = pass, 1 = fail, 2 = setup error.

Always checked, in one process, contenders interleaved (common.measure):
  * correctness: csessions' dumps byte-identical to Django's at a patched timestamp, each side's
    loads reading the other's tokens, and the signed-cookie engines reading each other's cookies;
  * "not slower": every csessions operation (signing dumps/loads for the 4 payloads x compress,
    every signed-cookie engine op for every payload a browser would keep) must have a median
    per-round ratio django/csessions >= 1.
    Clock: by default the verdicts use the thread's CPU time (time.thread_time_ns) of each
    batch, recorded next to the wall time (perf_counter_ns). Both are printed. CPU time does not
    run while the process is preempted, so on a busy CI runner its per-round ratios stay within
    a few % where wall-time ratios swing 0.3x-3x; all measured operations are CPU-bound, so it
    is the same quantity. --clock wall for wall time (use it for I/O-bound engines later).
    Exception: "parity" ops, where both sides run the very same Django code by construction
    (signed_cookies delete()), have a true ratio of 1 and would fail half the time on noise;
    they pass at >= 1 - --parity-tolerance (default 0.10; in-process state such as heap
    layout moves them by up to ~5% either way), i.e. they only catch csessions
    adding real cost there.
With --bars, also the issue's bars on the typical payload (common.BARS):
    dumps(compress=True) >= 10x, loads >= 6x, signed-cookie load+modify+save cycle >= 8x.

Usage: .venv/bin/python bench/check.py [--bars] [--json out.json]
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
    eng = engines.run(payloads, cfg, rng)
    for c in eng["correctness"]:
        if not c["ok"]:
            failures.append(f"correctness: {c['engine']} {c['payload']}: " + "; ".join(c["problems"]))

    rows = []
    for r in codec_t + eng["timings"]:
        what = (f"signing.{r['op']} compress={r['compress']}" if "engine" not in r
                else f"{r['engine']}.{r['op']}")
        ratio = _ratio(r, a.clock)
        key = "ratio_cpu" if a.clock == "cpu" else "ratio"
        floor = 1.0 - a.parity_tolerance if r.get("parity") else 1.0
        ok = ratio >= floor
        if not ok:
            failures.append(f"slower: {what} on {r['payload']}: django/csessions = {ratio:.3f} "
                            f"< {floor:.2f}")
        rows.append([r["payload"], what + (" (parity)" if r.get("parity") else ""),
                     fmt_ns(common.med(r["contenders"]["django"])),
                     fmt_ns(common.med(r["contenders"]["csessions"])),
                     f"{r['ratio']['median']:.2f}x", f"{r['ratio_cpu']['median']:.2f}x",
                     f"{r[key]['q1']:.2f}-{r[key]['q3']:.2f}", f">= {floor:.2f}",
                     "ok" if ok else "FAIL"])
    print(f"Medians and verdicts use the {a.clock} clock; both speed-ups are shown.")
    print(table(["payload", "operation", "django", "csessions", "speed-up wall", "speed-up cpu",
                 f"IQR ({a.clock})", "needs", "verdict"], rows))
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
