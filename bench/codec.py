"""csessions.signing.dumps/loads vs django.core.signing.dumps/loads, and HMAC-SHA256 backends.

For every payload, with and without compress, correctness comes FIRST:
  * at one patched timestamp (time.time fixed), csessions' dumps must equal Django's byte for
    byte (same type too), with the default salt and with the signed-cookie session salt;
  * each side's loads must read the other side's output back to a dict equal to the payload
    (with max_age=None and with a max_age, at the same patched time).
Then dumps and loads are timed, interleaved (see common.measure). loads is fed Django's token.

HMAC: csessions._core.hmac_bench(backend, key, msg, iterations) returns the seconds spent in C
on ``iterations`` HMAC-SHA256 of msg from a cached keyed state; libsodium vs OpenSSL at 64 B,
512 B, 4 KB and 64 KB, interleaved like the rest. For scale, Python's ``hmac.digest`` (OpenSSL
one-shot, re-keys every call, timed from Python) is shown next to them.

Standalone: .venv/bin/python bench/codec.py [--quick] [--payloads typical,large]
"""

import hmac as py_hmac
import json
import random
import sys
import zlib
from unittest import mock

import common
from common import bind, call_batch, fmt_ns, fmt_ratio, measure, med, other_clock, rat, table

FIXED_TS = 1_700_000_000.25  # the patched time.time() of the byte-for-byte check
HMAC_SIZES = (64, 512, 4096, 65536)
HMAC_KEY = bytes(range(32))  # 32 bytes, the size of the SHA-256-derived keys Django signs with
SALTS = ("django.core.signing", common.SESSION_SALT)


def _first_diff(a, b):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, n - 20)
    return f"first difference at {n} (len {len(a)} vs {len(b)}): {a[lo:n + 20]!r} vs {b[lo:n + 20]!r}"


def _try(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - recorded as a failure
        return None, f"{type(e).__name__}: {e}"


def check_correctness(payloads, compress_modes=(False, True)):
    """One record per payload x compress x salt; record["ok"] is the verdict."""
    from django.core import signing as dj

    _, cs, _ = common.import_csessions()
    records = []
    for name, obj in payloads.items():
        for compress in compress_modes:
            for salt in SALTS:
                problems = []
                with mock.patch("time.time", return_value=FIXED_TS):
                    cs_out, err = _try(lambda: cs.dumps(obj, salt=salt, compress=compress))
                    if err:
                        problems.append(f"csessions dumps raised {err}")
                    dj_out = dj.dumps(obj, salt=salt, compress=compress)
                    if cs_out is not None:
                        if type(cs_out) is not type(dj_out):
                            problems.append(f"dumps type {type(cs_out).__name__} != {type(dj_out).__name__}")
                        elif cs_out != dj_out:
                            problems.append("dumps differ: " + _first_diff(cs_out, dj_out))
                    for max_age in (None, 3600):
                        if cs_out is not None:
                            got, err = _try(lambda: dj.loads(cs_out, salt=salt, max_age=max_age))
                            if err or got != obj:
                                problems.append(f"django loads(csessions dumps, max_age={max_age}): "
                                                + (err or "dict differs"))
                        got, err = _try(lambda: cs.loads(dj_out, salt=salt, max_age=max_age))
                        if err or got != obj:
                            problems.append(f"csessions loads(django dumps, max_age={max_age}): "
                                            + (err or "dict differs"))
                records.append({
                    "payload": name, "compress": compress, "salt": salt,
                    "token_len": len(dj_out), "ok": not problems, "problems": problems,
                })
    return records


def time_codec(payloads, cfg, rng, compress_modes=(False, True), ops=("dumps", "loads"),
               progress=None, zlib_floor=False):
    """zlib_floor: with compress=True, also time the bare zlib call each side must make
    (zlib.compress of the compact JSON / zlib.decompress of it) as a third contender "zlib".
    Output must be byte-identical to Django's, so csessions cannot do less deflate work than
    that: django / zlib bounds the speed-up any implementation using stock zlib can reach."""
    from django.core import signing as dj

    _, cs, _ = common.import_csessions()
    out = []
    for name, obj in payloads.items():
        raw = json.dumps(obj, separators=(",", ":")).encode()
        packed = zlib.compress(raw)
        for compress in compress_modes:
            token = dj.dumps(obj, compress=compress)
            for op in ops:
                if op == "dumps":
                    contenders = {
                        "django": call_batch(bind(dj.dumps, obj, compress=compress)),
                        "csessions": call_batch(bind(cs.dumps, obj, compress=compress)),
                    }
                    floor = bind(zlib.compress, raw)
                else:
                    contenders = {
                        "django": call_batch(bind(dj.loads, token)),
                        "csessions": call_batch(bind(cs.loads, token)),
                    }
                    floor = bind(zlib.decompress, packed)
                if zlib_floor and compress:
                    contenders["zlib"] = call_batch(floor)
                r = measure(contenders, cfg, rng=rng)
                if "zlib" in r["contenders"]:
                    r["zlib_ceiling"] = {  # django / bare zlib call: the best speed-up possible
                        clk: common.med(r["contenders"]["django"], clk)
                        / common.med(r["contenders"]["zlib"], clk) for clk in common.CLOCKS}
                r.update(payload=name, compress=compress, op=op, size=common.compact_size(obj),
                         token_len=len(token))
                out.append(r)
                if progress:
                    progress(f"codec {op:5} {name:7} compress={compress!s:5} "
                             f"django {fmt_ns(r['contenders']['django']['median']):>10}  "
                             f"csessions {fmt_ns(r['contenders']['csessions']['median']):>10}  "
                             f"x{r['ratio']['median']:.2f} (cpu clock x{r['ratio_cpu']['median']:.2f})")
    return out


def time_hmac(cfg, rng, sizes=HMAC_SIZES, progress=None):
    """libsodium vs OpenSSL HMAC-SHA256 in C; ratio = openssl/sodium (>1: libsodium faster)."""
    _, _, core = common.import_csessions()
    bench = getattr(core, "hmac_bench", None)
    if bench is None:
        return {"available": False, "reason": "csessions._core.hmac_bench not available (not built yet?)",
                "sizes": []}
    backends, unavailable = [], {}
    for b in ("openssl", "sodium"):
        _, err = _try(lambda: bench(b, HMAC_KEY, b"x" * 64, 10))
        if err:
            unavailable[b] = err
        else:
            backends.append(b)
    cfg_h = common.Config(**{**cfg.as_dict(), "p99": False})  # C-internal timing: no per-call p99
    rows = []
    for size in sizes:
        msg = random.Random(size).randbytes(size)
        contenders = {b: (lambda n, b=b: bench(b, HMAC_KEY, msg, n) * 1e9) for b in backends}
        contenders["python-hmac.digest"] = call_batch(bind(py_hmac.digest, HMAC_KEY, msg, "sha256"))
        r = measure(contenders, cfg_h, baseline="openssl", subject="sodium", rng=rng)
        r["size"] = size
        for st in r["contenders"].values():
            st["MB_per_s"] = size / st["median"] * 1e3  # bytes/ns * 1e3 = MB/s (C-internal clock)
        rows.append(r)
        if progress:
            c = r["contenders"]
            progress(f"hmac {size:>6} B  " + "  ".join(f"{b} {fmt_ns(c[b]['median'])}" for b in c)
                     + (f"  openssl/sodium x{r['ratio']['median']:.2f}" if "ratio" in r else ""))
    return {"available": bool(backends), "backends": backends, "unavailable": unavailable,
            "sizes": rows, "ratio_of": "openssl/sodium (>1: libsodium faster)"}


def run(payloads, cfg, rng, progress=None):
    correctness = check_correctness(payloads)
    if progress:
        bad = [c for c in correctness if not c["ok"]]
        progress(f"codec correctness: {len(correctness) - len(bad)}/{len(correctness)} ok")
        for c in bad:
            progress(f"  FAIL {c['payload']} compress={c['compress']} salt={c['salt']}: "
                     + "; ".join(c["problems"]))
    return {
        "correctness": correctness,
        "timings": time_codec(payloads, cfg, rng, progress=progress, zlib_floor=True),
        "hmac": time_hmac(cfg, rng, progress=progress),
    }


def _speedup(r, clock=None):
    q = rat(r, clock)
    return f"{fmt_ratio(q['median'])} ({q['q1']:.2f}-{q['q3']:.2f})"


def _other(r):
    q = rat(r, other_clock())
    return fmt_ratio(q["median"]) if q else "-"


def codec_rows(timings, payload=None):
    rows = []
    for r in timings:
        if payload and r["payload"] != payload:
            continue
        d, c = r["contenders"]["django"], r["contenders"]["csessions"]
        rows.append([r["payload"], r["op"], "yes" if r["compress"] else "no",
                     fmt_ns(med(d)), fmt_ns(med(c)), _speedup(r), _other(r),
                     fmt_ns(d.get("p99")), fmt_ns(c.get("p99")), _floor(r)])
    return rows


def _floor(r):
    z = r["contenders"].get("zlib")
    if not z:
        return "-"
    return f"{fmt_ns(med(z))} (≤ {r['zlib_ceiling'][common.REPORT_CLOCK]:.1f}x)"


def codec_headers():
    return ["payload", "op", "compress", "django median", "csessions median",
            f"speed-up (IQR) [{common.REPORT_CLOCK}]", f"speed-up [{other_clock()}]",
            "django p99", "csessions p99", "bare zlib call (speed-up ceiling)"]


def hmac_table(h):
    if not h["sizes"]:
        return f"HMAC: not available ({h.get('reason')})"
    names = list(h["sizes"][0]["contenders"])
    headers = ["message"] + [f"{n} per HMAC" for n in names] + [f"{n} MB/s" for n in names]
    if "ratio" in h["sizes"][0]:
        headers.append("openssl/sodium (IQR)")
    rows = []
    for r in h["sizes"]:
        c = r["contenders"]
        row = [_size(r["size"])] + [fmt_ns(c[n]["median"]) for n in names] \
            + [f"{c[n]['MB_per_s']:.0f}" for n in names]
        if "ratio" in r:
            row.append(_speedup(r))
        rows.append(row)
    txt = table(headers, rows)
    if h.get("unavailable"):
        txt += "\n\nnot available: " + "; ".join(f"{k}: {v}" for k, v in h["unavailable"].items())
    return txt


def _size(n):
    return f"{n // 1024} KB" if n >= 1024 else f"{n} B"


def main(argv=None):
    cfg, payloads, rng = common.standalone(__doc__, argv)
    res = run(payloads, cfg, rng, progress=lambda s: print(s, flush=True))
    print()
    print(table(codec_headers(), codec_rows(res["timings"])))
    print()
    print(hmac_table(res["hmac"]))
    return 0 if all(c["ok"] for c in res["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(common.cli(main))
