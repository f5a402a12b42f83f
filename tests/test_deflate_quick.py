"""The C core's quick deflate (src/deflate_quick.h), which compresses what the server-side
engines store above 8 KiB: zlib (so Django) reads every stream it makes, its own decoder
gives exactly what zlib gives, and anything that decoder does not take whole goes to zlib,
errors included."""

import json
import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csessions import _core

QUICK = _core.DEFLATE_QUICK
DATA = Path(__file__).resolve().parents[1] / "bench" / "data"  # the reference payloads


def inputs():
    """Inputs that reach every code path: literals of all 256 values, 258-byte matches,
    matches at every distance class up to the 32 KiB window and just beyond it, short tails."""
    rng = random.Random(7)
    yield b""
    yield bytes(range(256))
    yield b"a" * 100_000
    yield b"ab" * 40_000
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 257, 258, 259, 1000):
        yield bytes(rng.getrandbits(8) for _ in range(n))
        yield b"x" * n
    block = bytes(rng.getrandbits(8) for _ in range(300))
    for gap in (1, 4, 5, 100, 4096, 24_577, 32_768 - 300, 32_768, 40_000):
        yield block + bytes(rng.getrandbits(8) for _ in range(gap)) + block
    for alphabet in (2, 4, 16):
        letters = bytes(rng.sample(range(256), alphabet))
        yield bytes(rng.choice(letters) for _ in range(70_000))
    for name in ("small", "typical", "large", "huge"):
        obj = json.loads((DATA / f"session-{name}.json").read_text())
        yield json.dumps(obj, separators=(",", ":")).encode()


@pytest.mark.parametrize("data", list(inputs()), ids=lambda d: f"{len(d)}B")
def test_zlib_reads_it_and_so_does_our_decoder(data):
    packed = _core.deflate(data, QUICK)
    assert packed[:2] == b"\x78\x01" and packed[2] & 7 == 3  # one final block, fixed codes
    assert zlib.decompress(packed) == data
    assert _core.inflate_quick(packed) == data  # decoded by our decoder, not handed to zlib
    assert _core.inflate(packed) == data == _core.inflate(packed.decode("latin-1"))
    assert _core.inflate(packed + b"after the end") == data  # ignored, as zlib does
    assert len(packed) <= len(data) + len(data) // 8 + 32


@given(st.binary(max_size=5000) | st.text(alphabet="ab{}\":,0123", max_size=5000).map(str.encode))
def test_any_bytes_round_trip(data):
    packed = _core.deflate(data, QUICK)
    assert zlib.decompress(packed) == data == _core.inflate(packed) == _core.inflate_quick(packed)


def zlib_or_none(data):
    try:
        return zlib.decompress(data)
    except zlib.error:
        return None


def inflate_or_none(data):
    try:
        return _core.inflate(data)
    except ValueError:
        return None


def test_damaged_streams_give_what_zlib_gives():
    """Flipped bits anywhere and every truncation: what our decoder takes, zlib gives the same
    bytes for; what it does not, inflate hands to zlib, which accepts or refuses it."""
    rng = random.Random(11)
    data = json.dumps({"feed": [{"id": i, "t": "x" * (i % 40)} for i in range(400)]}).encode()
    packed = _core.deflate(data, QUICK)
    taken = 0
    for _ in range(3000):
        bad = bytearray(packed)
        for _ in range(rng.choice((1, 1, 2, 8))):
            i = rng.randrange(len(bad))
            bad[i] ^= 1 << rng.randrange(8)
        bad = bytes(bad)
        want = zlib_or_none(bad)
        ours = _core.inflate_quick(bad)
        if ours is not None:
            taken += 1
            assert ours == want
        assert inflate_or_none(bad) == want
    assert taken > 0  # flips in the padding, or that turn a literal into another, decode
    for cut in range(len(packed)):
        assert _core.inflate_quick(packed[:cut]) is None
        assert inflate_or_none(packed[:cut]) is None


def test_zlibs_own_fixed_streams_decode():
    rng = random.Random(3)
    for n in (0, 10, 1000, 20_000):
        data = bytes(rng.choice(b"abcde ") for _ in range(n))
        z = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_FIXED)
        packed = z.compress(data) + z.flush()
        assert _core.inflate(packed) == data
        if n <= 1000:  # one final fixed block: ours to decode (longer input: several blocks)
            assert _core.inflate_quick(packed) == data
    assert _core.inflate_quick(zlib.compress(b"abc" * 100, 6)) is None  # dynamic codes: zlib's


def test_levels_outside_zlibs_and_quick_are_refused():
    for level in (-2, 11, 100):
        with pytest.raises(ValueError, match="DEFLATE_QUICK"):
            _core.deflate(b"data", level)
        with pytest.raises(ValueError, match="DEFLATE_QUICK"):
            _core.sign_object({}, "k", "s", 0, level, 0)
