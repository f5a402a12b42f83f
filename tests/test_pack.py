"""csessions._core.pack/unpack (src/pack.h), the shm engine's stored form: for every value,
either pack declines (None) or unpack(pack(v)) is exactly json.loads(json.dumps(v)), types
included; and no input makes unpack crash."""

import json
import math
import random
import struct
import zlib

import pytest
from hypothesis import example, given
from test_json import FloatSub, IntSub, StrSub, dumpable

from csessions import _core

NAN, INF = float("nan"), float("inf")


def json_round_trip(v):
    return json.loads(json.dumps(v, separators=(",", ":")))


@given(v=dumpable)
@example(v={"a": [1, 2.5, None, True, False, "é", "\U0001f600", -0.0, NAN, INF, 2**63 - 1]})
@example(v=["\ud83d\ude00"])  # a surrogate pair as two code points: JSON joins them
@example(v={1: "int key"})
@example(v=(1, [2, (3,)]))
def test_declines_or_matches_json(v, strict_equal):
    packed = _core.pack(v)
    try:
        expected = json_round_trip(v)
    except (TypeError, ValueError, RecursionError):
        assert packed is None  # JSON refuses it: the caller's JSON path raises the error
        return
    if packed is not None:
        strict_equal(_core.unpack(packed), expected)
        strict_equal(_core.unpack(packed.decode("latin-1")), expected)  # as the store gives it


@pytest.mark.parametrize("v", [
    {1: 2}, {None: 1}, ["\ud800"], ["a\udfff"], [2**64], [-(2**63) - 1], [IntSub(1)],
    [FloatSub(1.5)], [StrSub("s")], {"k": StrSub("s")}, {StrSub("k"): 1},
])
def test_declines_what_json_changes(v):
    assert _core.pack(v) is None


def test_exact_values():
    values = [0, -1, 127, 128, -128, -129, 2**63 - 1, -(2**63), 1.5, -0.0, INF, -INF,
              "", "a" * 255, "a" * 256, "é" * 300, "€", "\U0001f600" * 3, True, False, None,
              [], {}, [[[]]], {"": {"": ""}}]
    for v in values:
        got = _core.unpack(_core.pack(v))
        assert got == v and type(got) is type(v)
        if isinstance(v, float) and v == 0:
            assert math.copysign(1, got) == math.copysign(1, v)
    assert math.isnan(_core.unpack(_core.pack(NAN)))
    # canonical str forms: an ASCII str read back equals (and hashes like) a literal
    d = _core.unpack(_core.pack({"sku": "A000"}))
    assert d == {"sku": "A000"} and hash(next(iter(d))) == hash("sku")


def test_nesting_limit():
    deep = []
    for _ in range(63):
        deep = [deep]
    assert _core.unpack(_core.pack(deep)) == deep
    assert _core.pack([deep]) is None  # 65 levels: left to JSON
    cyclic = []
    cyclic.append(cyclic)
    assert _core.pack(cyclic) is None  # JSON's encoder raises "Circular reference detected"


def test_short_strs_read_back_exactly_whatever_was_read_before():
    # Short ASCII strs come from a memo of earlier reads (pack.c): two strs that differ in a
    # single byte, at any position of any memo'd length, must never be taken for each other,
    # whichever of them was read last, and however many others went through the table.
    rng = random.Random(7)
    for n in range(1, 70):
        base = "".join(rng.choice("abcxyz_") for _ in range(n))
        for p in range(n):
            other = base[:p] + ("Q" if base[p] != "Q" else "R") + base[p + 1:]
            v = {base: other, other: [base, other]}
            packed = _core.pack(v)
            for _ in range(2):
                got = _core.unpack(packed)
                assert got == v and list(got) == [base, other]
    many = {f"k{i}": f"v{i}" for i in range(5000)}  # more strs than the memo holds
    assert _core.unpack(_core.pack(many)) == many


@pytest.mark.parametrize("n", [1, 3, 4, 7, 8, 9, 64, 65])
def test_non_ascii_byte_in_short_ascii_str(n):
    good = "a" * n
    assert _core.unpack(_core.pack([good])) == [good]  # now in the memo
    for p in range(n):
        data = bytearray(_core.pack([good]))
        data[len(data) - n + p] = 0xE1
        with pytest.raises(ValueError, match="non-ASCII byte"):
            _core.unpack(bytes(data))


@pytest.mark.parametrize("data", [
    b"", b"x", b"o", b"o\x01\x00\x00\x00", b"A\x05ab", b"a\xff\xff\xff\xff", b"u\x03\x01\x00\x00\x00a",
    b"u\x04\x01\x00\x00\x00\x00\x00\x11\x00",  # U+110000
    b"A\x01\x80",  # non-ASCII byte in an ASCII str
    b"l\xff\xff\xff\xff", b"o\x01\x00\x00\x00jx", b"NN", b"i\x01", b"d\x00",
    b"l\x01\x00\x00\x00" * 70 + b"N",  # deeper than the encoder ever writes
])
def test_malformed_is_value_error(data):
    with pytest.raises(ValueError, match="malformed packed session"):
        _core.unpack(data)


def test_random_damage_never_crashes():
    base = _core.pack({"_auth_user_id": "42", "cart": [{"sku": "A1", "qty": 2, "price": 9.99}],
                       "name": "Zoë 😀", "big": 10**12, "flags": [True, False, None]})
    rng = random.Random(1234)
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        try:
            _core.unpack(bytes(data))
        except ValueError:
            pass
    for n in range(len(base)):
        with pytest.raises(ValueError):
            _core.unpack(base[:n])


def test_layout_is_documented():
    # pack.h's layout, spelled out for one value: a reader of the segment can rely on it.
    assert _core.pack({"a": [1, 300, 2.5, "é"]}) == (
        b"o" + struct.pack("=I", 1) + b"A\x01a" + b"l" + struct.pack("=I", 4)
        + b"j\x01" + b"i" + struct.pack("=q", 300) + b"d" + struct.pack("=d", 2.5)
        + b"u\x01" + struct.pack("=I", 1) + "é".encode("latin-1"))


def test_bad_arguments():
    with pytest.raises(ValueError):
        _core.unpack("\u20ac")  # a str must hold latin-1 code points only
    with pytest.raises(TypeError):
        _core.unpack(12)


@pytest.mark.parametrize("level", [-1, 1, 9])
def test_deflate_inflate_are_zlibs(level):
    data = json.dumps({"k": list(range(500))}).encode()
    packed = _core.deflate(data, level)
    assert packed == zlib.compress(data, level)
    assert _core.inflate(packed) == data == _core.inflate(packed.decode("latin-1"))
    for bad in (b"", b"x\x9c", packed[:-3], b"garbage"):
        with pytest.raises(ValueError):
            _core.inflate(bad)
    with pytest.raises(ValueError):
        _core.deflate(data, 11)
