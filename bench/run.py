"""The full benchmark: codec (signing dumps/loads + HMAC backends), session engines, callgrind.

Writes bench/results/results.json (environment + every measurement, per-round samples included),
bench/results/results.md (typical payload first, then all payloads) and PNG charts
(codec.png, engines.png, hmac.png). Every session engine is measured beside its Django twin on
the same store (engines.py; it starts and stops the PostgreSQL, Redis and memcached servers).
About 4 minutes in full (1.5 of them codec + callgrind), ~1 minute with --quick --no-callgrind.

Usage: .venv/bin/python bench/run.py [--quick] [--no-callgrind] [--payloads ...] [--out DIR]
       [--engines all|file,db-*,...] [--engine-payload-ops cycle,...] [--sqlite-dir DIR]
"""

import argparse
import datetime
import json
import os
import random
import sys
import time
from pathlib import Path

import callgrind
import codec
import common
import engines
from common import fmt_ns, fmt_ratio, headline_clock, med, other_clock, rat, table


def _ratio_cell(r):
    q = rat(r)
    return f"**{fmt_ratio(q['median'])}** ({q['q1']:.2f}-{q['q3']:.2f})"


def _row(label, r):
    d, c, clk = r["contenders"]["django"], r["contenders"]["csessions"], headline_clock(r)
    return [label, clk, fmt_ns(med(d, clk)), fmt_ns(med(c, clk)), _ratio_cell(r),
            fmt_ratio(rat(r, other_clock(clk))["median"]), fmt_ns(d.get("p99")),
            fmt_ns(c.get("p99")), codec._floor(r)]


def _hdr_env(env):
    rows = [
        ["CPU", f"{env['cpu']} ({env['cpu_count']} logical CPUs, governor {env['cpu_governor']})"],
        ["Load average at start", ", ".join(f"{x:.2f}" for x in env["loadavg_at_start"] or [])],
        ["Platform", env["platform"]],
        ["Python", f"{env['python']} ({env['implementation']})"],
        ["Django", env["django"]],
        ["csessions", f"{env['csessions']} ({env['csessions_core']})"],
        ["csessions._core info", ", ".join(f"{k}={v}" for k, v in env["csessions_core_info"].items()) or "-"],
        ["zlib (Python)", env["zlib_python_runtime"]],
        ["OpenSSL (Python ssl)", env["openssl_python"]],
        ["libsodium", f"{env['libsodium']} ({env['libsodium_source']})"],
    ] + [[f"Debian {k}", v] for k, v in sorted(env["debian_packages"].items())]
    return table(["", ""], rows)


def markdown(res):
    env, cfg = res["environment"], res["config"]
    codec_t, eng = res["codec"]["timings"], res["engines"]
    L = []
    add = L.append
    add("# csessions benchmark results\n")
    add(f"Run {res['started']} with `{res['command']}`, {res['elapsed_s']:.0f} s. "
        f"{cfg['rounds']} interleaved rounds per measurement, batches of ~{cfg['target_ms']:g} ms, "
        "contender order shuffled each round. "
        f"Headline clock: **{common.REPORT_CLOCK}** ("
        + ("`time.perf_counter_ns`" if common.REPORT_CLOCK == "wall" else "the thread's CPU time, `time.thread_time_ns`")
        + ") for the codec and the engines that do all their work in this thread; **wall** for "
        "the engines behind a server round trip (PostgreSQL, Redis, memcached), whose server "
        "time is not in this thread's CPU time (column *clock*). The speed-up on the other "
        "clock is shown next to it. "
        "*Median* = median over rounds of the per-call time; "
        "*speed-up* = django/csessions computed per round, median (IQR in brackets); "
        "*p99* from individually timed calls of a separate interleaved sample run. "
        "See bench/README.md for the method.\n")
    add(_hdr_env(env) + "\n")
    busy = max([(env["loadavg_at_start"] or [0])[0], (res.get("loadavg_at_end") or [0])[0]])
    if busy > 0.5 * (env["cpu_count"] or 1):
        add(f"> **Busy machine:** 1-minute load average {busy:.1f} on {env['cpu_count']} CPUs "
            "during the run. Wall-clock times, ratios and p99s are disturbed (batches get "
            "preempted); the cpu-clock columns are far less so (`--clock cpu` makes them the "
            "headline). Rerun on an idle machine for publishable numbers.\n")

    bad = [c for c in res["codec"]["correctness"] if not c["ok"]] + \
          [c for c in eng["correctness"] if not c["ok"]]
    n = len(res["codec"]["correctness"]) + len(eng["correctness"])
    add("**Correctness:** " + ("all %d checks passed (byte-identical dumps at a patched timestamp, "
                               "cross loads, each engine reading its twin's sessions on the "
                               "same store)." % n if not bad else
                               f"{len(bad)} of {n} checks FAILED:"))
    for c in bad:
        add(f"- {c.get('engine', 'signing')} {c['payload']} "
            f"{'compress=%s ' % c['compress'] if 'compress' in c else ''}: " + "; ".join(c["problems"]))
    add("")

    P = common.BAR_PAYLOAD
    add(f"## Typical payload ({common.compact_size(res['payloads'][P])} B compact JSON)\n")
    rows = [_row(f"signing.{r['op']}(compress={r['compress']})", r)
            for r in codec_t if r["payload"] == P]
    rows += [_row(f"{r.get('label', r['engine'])} {r['op']}" + (" ‡" if r.get("parity") else ""), r)
             for r in eng["timings"] if r["payload"] == P
             and (r["engine"] == "signed_cookies" or r["op"] == "cycle")]
    add(table(["operation", "clock", "django median", "csessions median", "speed-up (IQR)",
               "speed-up, other clock", "django p99", "csessions p99",
               "bare zlib call (speed-up ceiling)"], rows))
    add("\n" + engines.PARITY_NOTE + " Every engine's other ops, its codec share and the other "
        "payloads: *Session engines* below.")
    add("\n*Bare zlib call*: `zlib.compress(compact JSON)` / `zlib.decompress(...)` timed in "
        "the same rounds. csessions must produce Django's exact bytes, so it cannot skip that "
        "deflate/inflate work: django / zlib is the highest speed-up reachable with stock zlib "
        "even if everything else cost nothing.\n")
    add(f"Issue bars (typical payload, {common.REPORT_CLOCK} clock):\n")
    add(table(["operation", "speed-up", f"[{other_clock()} clock]", "bar", "met?"], [
        [b["label"], "-" if b["ratio"] is None else f"{b['ratio']:.2f}x",
         "-" if b["ratio_other_clock"] is None else f"{b['ratio_other_clock']:.2f}x",
         f">= {b['bar']:g}x", "yes" if b["ok"] else "**no**"] for b in res["bars"]]))
    cg = res.get("callgrind")
    if cg and cg.get("available"):
        add("\n" + callgrind.report(cg))
    add("")

    add("## signing.dumps / loads, all payloads\n")
    add("Payload sizes (compact JSON): " + ", ".join(
        f"{k} {common.compact_size(v)} B" for k, v in res["payloads"].items()) + ".\n")
    add(table(codec.codec_headers(), codec.codec_rows(codec_t)))
    add("\n![codec speed-ups](codec.png)\n")

    add("## Session engines, all payloads\n")
    add("Each csessions engine beside its Django twin on the same store (shm: beside Django's "
        "cache engine), typical payload first. " + engines.report(eng))
    add("\n![engine speed-ups](engines.png)\n")

    add("## HMAC-SHA256: libsodium vs OpenSSL (csessions._core.hmac_bench)\n")
    add("Time per HMAC from a cached keyed state, measured inside C; *openssl/sodium* > 1 means "
        "libsodium is faster. `python-hmac.digest` is Python's one-shot `hmac.digest` (OpenSSL, "
        "re-keys each call, timed from Python) for scale.\n")
    add(codec.hmac_table(res["codec"]["hmac"]))
    if res["codec"]["hmac"]["sizes"]:
        add("\n![hmac](hmac.png)")
    add("")
    if cg is not None and not cg.get("available"):
        add(callgrind.report(cg) + "\n")
    elif cg is None:
        add("Callgrind: skipped (--no-callgrind).\n")
    return "\n".join(L) + "\n"


# --- charts ---------------------------------------------------------------------------------


def _log_axis(ax, ratio):
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    fmt = (lambda v, _: f"{v:g}x") if ratio else (lambda v, _: f"{v:g}")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(fmt))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _grouped(ax, groups, series, values, title, ylabel, log=True, hline=None, bars=None,
             markers=None, marker_label=None):
    import numpy as np

    x = np.arange(len(groups))
    w = 0.8 / max(1, len(series))
    labelled = False
    for i, s in enumerate(series):
        vals = [values.get((g, s), np.nan) for g in groups]
        b = ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=s)
        for j, g in enumerate(groups):
            m = (markers or {}).get((g, s))
            if m:
                xs = x[j] + (i - (len(series) - 1) / 2) * w
                ax.plot([xs - w / 2, xs + w / 2], [m, m], color="black", lw=2,
                        label=None if labelled else marker_label)
                labelled = True
        if hline is not None:
            ax.bar_label(b, labels=["" if v != v else f"{v:.1f}x" for v in vals], fontsize=7,
                         padding=1)
    ax.set_xticks(x, groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        _log_axis(ax, ratio=hline is not None)
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.8, ls="--")
    for label, y in bars or []:
        ax.axhline(y, color="red", lw=0.7, ls=":")
        ax.text(len(groups) - 0.5, y, f" {label}", color="red", fontsize=7, va="bottom", ha="right")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", which="both", alpha=0.3)


def charts(res, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    codec_t = res["codec"]["timings"]
    groups = list(res["payloads"])
    lab = lambda r: f"{r['op']}{' +compress' if r['compress'] else ''}"
    series = list(dict.fromkeys(lab(r) for r in codec_t))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    _grouped(a1, groups, series, {(r["payload"], lab(r)): rat(r)["median"] for r in codec_t},
             f"signing: speed-up django/csessions ({common.REPORT_CLOCK} clock)", "speed-up (x, log)",
             hline=1.0, bars=[("dumps bar 10x", 10), ("loads bar 6x", 6)],
             markers={(r["payload"], lab(r)): r["zlib_ceiling"][common.REPORT_CLOCK]
                      for r in codec_t if "zlib_ceiling" in r},
             marker_label="ceiling: django / bare zlib call")
    abs_series = [f"{side} {lab(r)}" for r in codec_t if r["payload"] == groups[0] and r["compress"]
                  for side in ("django", "csessions")]
    _grouped(a2, groups, abs_series,
             {(r["payload"], f"{side} {lab(r)}"): med(r["contenders"][side]) / 1e3
              for r in codec_t if r["compress"] for side in ("django", "csessions")},
             f"signing with compress=True: median {common.REPORT_CLOCK} time per call",
             "µs per call (log)")
    fig.tight_layout()
    fig.savefig(out / "codec.png", dpi=110)
    plt.close(fig)
    made.append("codec.png")

    et = res["engines"]["timings"]
    if et:
        engine_chart(plt, res["engines"], out / "engines.png")
        made.append("engines.png")

    h = res["codec"]["hmac"]
    if h["sizes"]:
        fig, ax = plt.subplots(figsize=(7, 5))
        sizes = [r["size"] for r in h["sizes"]]
        for name in h["sizes"][0]["contenders"]:
            ax.plot(sizes, [r["contenders"][name]["median"] for r in h["sizes"]], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [codec._size(s) for s in sizes])
        _log_axis(ax, ratio=False)
        ax.set_xlabel("message bytes")
        ax.set_ylabel("ns per HMAC-SHA256 (log)")
        ax.set_title("HMAC-SHA256, cached key: OpenSSL vs libsodium")
        ax.grid(which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "hmac.png", dpi=110)
        plt.close(fig)
        made.append("hmac.png")
    return made


def engine_chart(plt, eng, path):
    """Per engine: the cycle's speed-up on each payload, every op's on the typical payload, and
    the cycle's absolute times; log axes, each measurement on its headline clock."""
    et = eng["timings"]
    labels = list(dict.fromkeys(r["label"] for r in et))
    P = common.BAR_PAYLOAD
    fig, axes = plt.subplots(3, 1, figsize=(max(12, 1.1 * len(labels)), 15))
    clocks = f"{common.REPORT_CLOCK} clock; wall for server stores"
    cyc = [r for r in et if r["op"] == "cycle"]
    _grouped(axes[0], labels, list(dict.fromkeys(r["payload"] for r in cyc)),
             {(r["label"], r["payload"]): rat(r)["median"] for r in cyc},
             f"load + modify + save cycle: speed-up django/csessions per payload ({clocks})",
             "speed-up (x, log)", hline=1.0)
    typ = [r for r in et if r["payload"] == P]
    _grouped(axes[1], labels, list(dict.fromkeys(r["op"] for r in typ)),
             {(r["label"], r["op"]): rat(r)["median"] for r in typ},
             f"every op, {P} payload: speed-up django/csessions ({clocks})",
             "speed-up (x, log)", hline=1.0)
    _grouped(axes[2], labels, ["django", "csessions"],
             {(r["label"], s): med(r["contenders"][s], headline_clock(r)) / 1e3
              for r in cyc if r["payload"] == P for s in ("django", "csessions")},
             f"cycle, {P} payload: median time per call ({clocks})", "µs per call (log)")
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    skipped = [f"{s.get('label', s['engine'])} {s['payload']}" for s in eng["skipped"]]
    if skipped:
        fig.text(0.01, 0.005, "not measured: " + ", ".join(skipped), fontsize=8)
    fig.tight_layout(rect=(0, 0.015, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, short batches: a smoke run")
    ap.add_argument("--no-callgrind", action="store_true", help="skip the valgrind part")
    ap.add_argument("--callgrind-calls", type=int, default=None,
                    help="calls per callgrind run (default 2000, 200 with --quick)")
    ap.add_argument("--no-charts", action="store_true")
    ap.add_argument("--clock", choices=common.CLOCKS, default="wall",
                    help="clock of the headline medians/ratios, tables and charts (both are "
                         "always measured and saved): wall = perf_counter_ns (default), "
                         "cpu = the thread's CPU time, steadier on a busy machine")
    ap.add_argument("--payloads", default=",".join(common.PAYLOAD_NAMES))
    engines.add_arguments(ap)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=str(common.BENCH_DIR / "results"))
    a = ap.parse_args(argv)

    common.REPORT_CLOCK = a.clock
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    cfg = (common.Config.quick if a.quick else common.Config)(seed=a.seed)
    rng = random.Random(a.seed)
    names = a.payloads.split(",")
    common.load_payloads(names)  # unknown names or missing files: a clear error
    if common.BAR_PAYLOAD not in names:
        names.insert(0, common.BAR_PAYLOAD)
    payloads = common.load_payloads([n for n in common.PAYLOAD_NAMES if n in names])
    env = common.environment()
    common.print_environment(env)
    print(f"Headline clock: {a.clock} (codec, in-process engines); wall for engines behind a "
          "server (PostgreSQL, Redis, memcached)\n", flush=True)
    say = lambda s: print(s, flush=True)

    res = {"started": started, "command": " ".join(["bench/run.py"] + (argv or sys.argv[1:])),
           "environment": env, "config": cfg.as_dict(), "payloads": payloads,
           "payload_sizes": {k: common.compact_size(v) for k, v in payloads.items()}}
    res["codec"] = codec.run(payloads, cfg, rng, progress=say)
    res["engines"] = engines.run(payloads, cfg, rng, engines.select(a.engines),
                                 payload_ops=engines.payload_ops(a), sqlite_dir=a.sqlite_dir,
                                 progress=say)
    res["bars"] = common.evaluate_bars(res["codec"]["timings"], res["engines"]["timings"])
    res["report_clock"] = a.clock
    if not a.no_callgrind:
        calls = a.callgrind_calls or (200 if a.quick else 2000)
        try:
            res["callgrind"] = callgrind.run(common.BAR_PAYLOAD, calls, progress=say)
        except RuntimeError as e:
            res["callgrind"] = {"available": False, "reason": str(e)}
    res["elapsed_s"] = time.monotonic() - t0
    res["loadavg_at_end"] = os.getloadavg()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    res_json = dict(res)
    res_json["payloads"] = res["payload_sizes"]  # sizes only; the data lives in the payload dir
    with open(out / "results.json", "w") as f:
        json.dump(res_json, f, indent=1, default=str)
    with open(out / "results.md", "w") as f:
        f.write(md)
    made = [] if a.no_charts else charts(res, out)

    print()
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}"
          + "".join(f", {out / m}" for m in made) + f" in {time.monotonic() - t0:.0f} s")
    ok = all(c["ok"] for c in res["codec"]["correctness"]) and \
        all(c["ok"] for c in res["engines"]["correctness"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.cli(main))
