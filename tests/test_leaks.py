"""Reference / memory leaks in the C paths, success and error paths alike.

Each operation runs 100,000 times in a fresh interpreter (after a warm-up); the growth of
sys.getallocatedblocks() (Python objects and PyMem allocations) and of the RSS (C mallocs:
buffers, zlib/HMAC state) must stay small. One leaked object or 32-byte malloc per call
would show as >= 100,000 blocks or >= 3 MB. Operations are measured one at a time so a
failure names the leaking path.
"""

import atexit
import json
import os
import subprocess
import sys
import textwrap

import pytest

import csessions

pytestmark = pytest.mark.skipif(
    os.environ.get("CSESSIONS_SANITIZED") == "1",
    reason="AddressSanitizer build: ASan's quarantine and shadow memory inflate RSS, so the "
    "RSS bounds are meaningless there (ASan itself checks memory errors in that run)",
)

ROUNDS = 100_000
WARMUP = 2_000
# Slow operations (deep recursion, Django's Python session code) run fewer times; still far
# more calls than MAX_BLOCKS, so one leaked block per call fails them too.
ROUNDS_FOR = {
    "dumps_deep": 5_000,
    "loads_deep": 20_000,
    "loads_bigint_limit": 50_000,
    "cookie_roundtrip": 20_000,
    "cookie_garbage": 50_000,
    "cookie_oversize": 10_000,
}
MAX_BLOCKS = 1_000  # growth of sys.getallocatedblocks() over the calls of one operation
MAX_RSS = 1536 * 1024  # bytes of RSS growth over the calls of one operation

SCRIPT = textwrap.dedent(
    r"""
    import datetime, gc, json, os, sys, time, zlib
    sys.path.insert(0, sys.argv[1])
    ROUNDS, WARMUP = int(sys.argv[2]), int(sys.argv[3])
    only = set(sys.argv[4].split(",")) if sys.argv[4] else None
    ROUNDS_FOR = json.loads(sys.argv[5])

    import django
    from django.conf import settings
    settings.configure(
        SECRET_KEY="leak-test-key", SECRET_KEY_FALLBACKS=["old-key"], USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
        SESSION_ENGINE="csessions.backends.signed_cookies",
    )
    django.setup()
    from django.core import signing as dj
    import csessions
    from csessions import _core, signing
    from csessions.backends.signed_cookies import SessionStore
    from csessions.exceptions import SessionCookieTooLarge
    assert csessions.__file__.startswith(sys.argv[1]), csessions.__file__

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def expect(exc, fn, *a, **kw):
        try:
            fn(*a, **kw)
        except exc:
            return
        raise AssertionError(f"{fn.__name__}{a!r:.80} did not raise {exc.__name__}")

    OBJ = {"user": "42", "cart": [1, 2.5, None, True, "é\U0001f600", 2**70], "n": {"x": -0.0}}
    BIG = {"blob": "ab" * 500, "l": list(range(50))}
    JSON = json.dumps(OBJ).encode()
    circ = []
    circ.append(circ)
    circd = {}
    circd["d"] = circd
    GOOD = signing.dumps(OBJ)
    GOOD_C = signing.dumps(BIG, compress=True)
    OLD = dj.dumps(OBJ, key="old-key")
    TAMPERED = GOOD[:-3] + ("AAA" if not GOOD.endswith("AAA") else "BBB")
    def sign_raw(payload, ts="1vb66i"):
        return dj.Signer(salt="django.core.signing").sign(f"{payload}:{ts}")
    b64 = lambda b: dj.b64_encode(b).decode()
    S_BADJSON = sign_raw(b64(b'{"a":[1,2,{"b":'))
    S_BADB64 = sign_raw("A")
    S_NOTZLIB = sign_raw("." + b64(b"definitely not zlib data"))
    S_TRUNCZ = sign_raw("." + b64(zlib.compress(JSON)[:-6]))
    S_TRUNCQ = sign_raw("." + b64(_core.deflate(JSON * 40, _core.DEFLATE_QUICK)[:-9]))
    QUICK_DAMAGED = _core.deflate(JSON * 40, _core.DEFLATE_QUICK)[:-9]
    S_BADTS = sign_raw(b64(JSON), "!!")
    S_NOTS = dj.Signer(salt="django.core.signing").sign(b64(JSON))
    COOKIE = SessionStore()
    COOKIE.update(OBJ)
    COOKIE.save()
    COOKIE = COOKIE.session_key
    HUGE = {"blob": b64(os.urandom(6000))}

    STORE = _core.ShmStore("csessions-leaks-%d" % os.getpid(), 4 << 20)
    _core.shm_unlink(STORE.name)  # mapped until exit, nothing left behind
    BIG_PACKABLE = {"blob": "é" * 3000, "l": list(range(50))}  # past the inline buffers

    def shm_packed():
        now = int(time.time())
        for i, d in enumerate((PACKABLE, BIG_PACKABLE)):
            assert STORE.put_packed(str(i) * 32, d, now + 60, now, 0, 1 << 20)
            STORE.get_unpacked(str(i) * 32, now)
        assert STORE.put_packed("2" * 32, {1: 2}, now + 60, now, 0, 1 << 20) is None
        assert STORE.put_packed("2" * 32, {"l": [1] * 2000 + [{1}]}, now + 60, now, 0, 1 << 20) is None
        assert type(STORE.put_packed("2" * 32, BIG_PACKABLE, now + 60, now, 0, 100)) is bytes
        expect(TypeError, STORE.put_packed, "\u00e9" * 32, BIG_PACKABLE, now + 60, now, 0, 1 << 20)
        STORE.put("3" * 32, PACKED[:-3], now + 60, now, 0)
        assert type(STORE.get_unpacked("3" * 32, now)) is str  # malformed: handed back
        assert STORE.get_unpacked("4" * 32, now) is None
        for k in ("1" * 32, "\u00e9" * 32, "k" * 300, b"1" * 32, 42, None):
            STORE.prefetch(k)  # errors are swallowed: nothing may leak with them

    def cookie_roundtrip():
        s = SessionStore(COOKIE)
        s["k"] = s["user"]
        s.save()

    def cookie_garbage():
        s = SessionStore("garbage:cookie:value")
        assert dict(s.items()) == {}

    def cookie_oversize():
        s = SessionStore()
        s.update(HUGE)
        expect(SessionCookieTooLarge, s.save)

    PACKABLE = {"user": "42", "cart": [1, 2.5, None, True, "é\U0001f600", (2**62,)], "n": {"x": -0.0}}
    PACKED = _core.pack(PACKABLE)
    OPS = {
        "dumps_ok": lambda: _core.json_dumps(OBJ),
        "dumps_keys": lambda: _core.json_dumps({1: 2, 2.5: None, True: [], None: "x", "s": float("nan")}),
        "dumps_set": lambda: expect(TypeError, _core.json_dumps, [1, {"a": {1, 2}}]),
        "dumps_badkey": lambda: expect(TypeError, _core.json_dumps, {"a": 1, (1, 2): 3}),
        "dumps_circular": lambda: expect(ValueError, _core.json_dumps, [circ, circd]),
        "dumps_object": lambda: expect(TypeError, _core.json_dumps, {"x": [object()]}),
        "dumps_deep": lambda: expect(RecursionError, _core.json_dumps, DEEP),
        "loads_ok": lambda: _core.json_loads(JSON),
        "loads_dupes": lambda: _core.json_loads(b'{"a":1,"b":[2],"a":{"c":3},"b":4}'),
        "loads_garbage": lambda: expect(ValueError, _core.json_loads, b'{"a":[1,2,{"b":tru'),
        "loads_badstr": lambda: expect(ValueError, _core.json_loads, b'["ok", "\\ud800\\x"]'),
        "loads_bigint_limit": lambda: expect(ValueError, _core.json_loads, b"[1," + b"9" * 5000 + b"]"),
        "loads_deep": lambda: expect((ValueError, RecursionError), _core.json_loads, b"[" * 5000),
        "sign": lambda: signing.dumps(OBJ),
        "sign_compress": lambda: signing.dumps(BIG, compress=True),
        "sign_bytes_key": lambda: signing.dumps(OBJ, key=b"\xffkey", salt="s\u00e9"),
        "sign_typeerror": lambda: expect(TypeError, signing.dumps, {"a": {1}}),
        "unsign": lambda: signing.loads(GOOD),
        "unsign_compressed": lambda: signing.loads(GOOD_C, max_age=10**9),
        "unsign_fallback": lambda: signing.loads(OLD),
        "unsign_tampered": lambda: expect(dj.BadSignature, signing.loads, TAMPERED),
        "unsign_nocolon": lambda: expect(dj.BadSignature, signing.loads, "nocolon"),
        "unsign_expired": lambda: expect(dj.SignatureExpired, signing.loads, GOOD, max_age=-1),
        "unsign_expired_td": lambda: expect(dj.SignatureExpired, signing.loads, GOOD,
                                            max_age=datetime.timedelta(seconds=-1)),
        "unsign_badjson": lambda: expect(ValueError, signing.loads, S_BADJSON),
        "unsign_badb64": lambda: expect(ValueError, signing.loads, S_BADB64),
        "unsign_badts": lambda: expect(ValueError, signing.loads, S_BADTS),
        "unsign_nots": lambda: expect(ValueError, signing.loads, S_NOTS),
        "unsign_notzlib": lambda: expect(zlib.error, signing.loads, S_NOTZLIB),
        "unsign_truncated_zlib": lambda: expect(zlib.error, signing.loads, S_TRUNCZ),
        "unsign_truncated_quick": lambda: expect(zlib.error, signing.loads, S_TRUNCQ),
        "pack": lambda: _core.unpack(_core.pack(PACKABLE)),
        "pack_unpack_str": lambda: _core.unpack(PACKED.decode("latin-1")),
        "pack_declines": lambda: _core.pack({"a": [1, (2, {3: 4})]}),
        "unpack_malformed": lambda: expect(ValueError, _core.unpack, PACKED[:-3]),
        "unpack_bad_codepoint": lambda: expect(ValueError, _core.unpack,
                                               b"l\x01\x00\x00\x00u\x04\x01\x00\x00\x00\xff\xff\xff\xff"),
        "deflate_inflate": lambda: _core.inflate(_core.deflate(JSON, 1)),
        "deflate_inflate_quick": lambda: _core.inflate(_core.deflate(JSON * 40, _core.DEFLATE_QUICK)),
        "inflate_quick_damaged": lambda: expect(ValueError, _core.inflate, QUICK_DAMAGED),
        "inflate_quick_alone": lambda: (_core.inflate_quick(QUICK_DAMAGED), _core.inflate_quick(JSON)),
        "inflate_bad": lambda: expect(ValueError, _core.inflate, b"x\x9cgarbage"),
        "new_session_key": _core.new_session_key,
        "shm_packed": shm_packed,
        "cookie_roundtrip": cookie_roundtrip,
        "cookie_garbage": cookie_garbage,
        "cookie_oversize": cookie_oversize,
    }
    DEEP = []
    cur = DEEP
    for _ in range(100_000):  # past the recursion limit of every supported CPython
        cur.append([])
        cur = cur[0]

    results = {}
    for name, op in OPS.items():
        if only and name not in only:
            continue
        for _ in range(WARMUP):
            op()
        gc.collect()
        b0, r0, t0 = sys.getallocatedblocks(), rss(), time.perf_counter()
        for _ in range(min(ROUNDS, ROUNDS_FOR.get(name, ROUNDS))):
            op()
        gc.collect()
        results[name] = (sys.getallocatedblocks() - b0, rss() - r0)
        print(name, *results[name], "%.2fs" % (time.perf_counter() - t0), file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(results))
    """
)


def _start(script=SCRIPT, rounds=ROUNDS, warmup=WARMUP, only=()):
    root = os.path.dirname(os.path.dirname(os.path.abspath(csessions.__file__)))
    return subprocess.Popen(
        [sys.executable, "-c", script, root, str(rounds), str(warmup), ",".join(only),
         json.dumps(ROUNDS_FOR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=600):
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"leak script timed out after {timeout}s; stderr:\n{stderr[-3000:]}")
    assert proc.returncode == 0, (
        f"leak script failed (exit {proc.returncode}; negative = killed by that signal)\n"
        f"stdout:\n{stdout[-3000:]}\nstderr (each finished op is listed as: name blocks rss time;"
        f" the one after the last listed is the one that failed):\n{stderr[-5000:]}"
    )
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


_background = None


def start_in_background():
    """Called by conftest once tests are collected: the slow run overlaps the rest of the suite
    (it is a separate process, so it uses the second core)."""
    global _background
    if _background is None and os.environ.get("CSESSIONS_SANITIZED") != "1":
        _background = _start()
        atexit.register(lambda p=_background: p.poll() is None and p.kill())


def test_no_leaks():
    start_in_background()
    results = _finish(_background)
    assert len(results) >= 30
    bad = {
        name: {"blocks": blocks, "rss_kib": rss // 1024}
        for name, (blocks, rss) in results.items()
        if blocks > MAX_BLOCKS or rss > MAX_RSS
    }
    assert not bad, (
        f"growth over {ROUNDS} calls (fewer for {sorted(ROUNDS_FOR)}) beyond {MAX_BLOCKS} blocks / "
        f"{MAX_RSS // 1024} KiB RSS: {bad}"
    )


def test_detector_sees_a_leak():
    """The harness itself detects a leak of one small object per call (guards the bounds)."""
    script = SCRIPT.replace(
        '"new_session_key": _core.new_session_key,',
        '"new_session_key": _core.new_session_key,\n'
        '        "leaky": lambda: LEAK.append(_core.json_dumps([1])),\n',
    ).replace("\nresults = {}", "\nLEAK = []\nresults = {}")
    assert "LEAK = []" in script and '"leaky"' in script
    results = _finish(_start(script, rounds=20_000, warmup=100, only=("leaky",)), timeout=300)
    blocks, rss = results["leaky"]
    assert blocks > 20_000 * 0.9  # ~1 block per call, far above MAX_BLOCKS
