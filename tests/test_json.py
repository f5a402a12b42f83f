"""csessions._core.json_dumps / json_loads against CPython's json, the oracle.

json_dumps(obj) must be byte-identical to ``json.dumps(obj, separators=(",", ":")).encode("latin-1")``
(what Django's JSONSerializer.dumps does) and raise the same exception type where that raises.
json_loads(data) must return what ``json.loads(data.decode("latin-1"))`` returns (types included),
raise ValueError where json rejects the input, and never crash.
"""

import collections
import datetime
import decimal
import enum
import json
import math
import random
import struct
import sys
import types

import pytest
from django.contrib.sessions import serializers as django_session_serializers
from django.core import signing as django_signing
from hypothesis import example, given
from hypothesis import strategies as st

from csessions import _core
from csessions.serializers import JSONSerializer

INF = float("inf")
NAN = float("nan")


def _id(obj, width=30):
    try:
        text = repr(obj)
    except (ValueError, RecursionError):  # huge ints (digit limit), very deep nesting
        text = "<unprintable>"
    return type(obj).__name__ + ":" + text[:width]


def oracle_dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode("latin-1")


def oracle_loads(data):
    return json.loads(data.decode("latin-1"))


def check_dumps(obj, run, same_outcome):
    expected = run(oracle_dumps, obj)
    got = run(_core.json_dumps, obj)
    same_outcome(expected, got, what=f"json_dumps({_id(obj)})")
    if got[0] == "ok":
        assert type(got[1]) is bytes


def check_loads(data, run, strict_equal):
    """json_loads(data) must match json.loads(data.decode('latin-1'))."""
    assert isinstance(data, bytes)
    expected = run(oracle_loads, data)
    got = run(_core.json_loads, data)
    if expected[0] == "ok":
        assert got[0] == "ok", f"json_loads({data!r:.300}) raised {got[1]!r:.300}, json returned {expected[1]!r:.200}"
        strict_equal(got[1], expected[1])
    elif isinstance(expected[1], RecursionError):
        # Too deep for json's recursion limit; any clean rejection is fine (Django catches both).
        assert got[0] == "exc", f"json_loads({data!r:.300}) returned {got[1]!r:.200}, json raised RecursionError"
        assert isinstance(got[1], (RecursionError, ValueError)), repr(got[1])
    else:
        assert isinstance(expected[1], ValueError), f"oracle raised an unexpected {expected[1]!r}"
        assert got[0] == "exc", (
            f"json_loads({data!r:.300}) returned {got[1]!r:.200}, json raised {expected[1]!r:.200}"
        )
        assert isinstance(got[1], ValueError), (
            f"json_loads({data!r:.300}) raised {type(got[1]).__name__}({got[1]}), expected a ValueError"
        )


# ------------------------------------------------------------------------------------------
# Fixtures of odd-but-valid Python objects
# ------------------------------------------------------------------------------------------


class IntSub(int):
    def __repr__(self):
        return "IntSub!"

    __str__ = __repr__


class FloatSub(float):
    def __repr__(self):
        return "FloatSub!"

    __str__ = __repr__


class StrSub(str):
    def __str__(self):
        return "StrSub!"

    def __repr__(self):
        return "StrSub!"


class DictSub(dict):
    pass


class ListSub(list):
    def __iter__(self):  # json uses the list storage, not __iter__
        return iter(["ListSub.__iter__ must not be used"])

    def __len__(self):
        return 0


class ListSubPlain(list):
    pass


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class FloatEnum(float, enum.Enum):
    HALF = 0.5


class StrEnumLike(str, enum.Enum):
    A = "a-value"


Point = collections.namedtuple("Point", "x y")

SPECIAL_CHARS = (
    "".join(map(chr, range(0x20)))
    + '"\\/\x7f\x80\x9f\xa0\xff\u0100\u07ff\u0800\u2028\u2029\ufeff\ufffd\uffff'
    + "\U00010000\U0001f600\U0010ffff\ud800\udbff\udc00\udfff"
)


def _nested_lists(depth):
    root = cur = []
    for _ in range(depth - 1):
        nxt = []
        cur.append(nxt)
        cur = nxt
    return root


def _nested_dicts(depth):
    root = cur = {}
    for _ in range(depth - 1):
        nxt = {}
        cur["k"] = nxt
        cur = nxt
    return root


# ------------------------------------------------------------------------------------------
# json_dumps
# ------------------------------------------------------------------------------------------

DUMPS_CASES = [
    None, True, False, 0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63),
    -(2**63) - 1, -(2**64), 10**300, -(10**300), 10**4300 - 1, -(10**4300 - 1),
    0.0, -0.0, 1.0, -1.5, 0.1, 0.1 + 0.2, 1 / 3, 1e16, 1e-5, 1e-7, 1e22, 1e23, 123456789012345678.0,
    5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 9007199254740993.0,
    1e100, 1.5e300, 100.0, 12345.678, INF, -INF, NAN,
    "", "a", "ascii", "\x00", "\x1f", "\x7f", "\x80", "é", "\u2028\u2029", "\ud800", "\udfff",
    "\ud83d\ude00", "\U0001f600", "\U0010ffff", SPECIAL_CHARS, "x" * 100_000, "é" * 10_000,
    "\U0001f600" * 10_000, '"' * 1000, "\\" * 1000,
    [], {}, [[]], [{}], {"": {}}, {"a": []}, (), (1, 2), [1, (2, (3,))],
    {"a": 1, "b": [1, 2.5, "x", None, True, False], "c": {"d": {}}},
    {1: "int key", 2.5: "float key", True: "bool key", None: "none key"},
    {False: 0, -0.0: 1, INF: 2, -INF: 3, NAN: 4, 2**70: 5, -7: 6},
    {1: "a", "1": "b"},
    {"b": 1, "a": 2, "c": 3},
    {"\U0001f600": "\ud800", "\x7f": "\x00"},
    {str(i): i for i in range(1000)},
    list(range(-500, 500)),
    [0.1 * i for i in range(200)],
    IntSub(5), FloatSub(2.5), FloatSub(NAN), FloatSub(-INF), StrSub("abc\u00e9"),
    DictSub(a=1, b=DictSub(c=2)), ListSub([1, 2, 3]), ListSubPlain([1, [2]]),
    collections.OrderedDict([("z", 1), ("a", 2)]), collections.defaultdict(list, x=[1]),
    collections.Counter("hello"),
    {IntSub(3): 1, FloatSub(0.25): 2, StrSub("k"): 3},
    [Color.RED, {Color.BLUE: Color.RED}], [FloatEnum.HALF, {FloatEnum.HALF: 1}],
    [StrEnumLike.A, {StrEnumLike.A: 1}],
    Point(1, 2), [Point(Point(1, 2), "x")],
    [True, 1, 1.0, "1"],
    _nested_lists(50), _nested_dicts(50),
]


@pytest.mark.parametrize("obj", DUMPS_CASES, ids=_id)
def test_dumps_matches_json(obj, run, same_outcome):
    check_dumps(obj, run, same_outcome)


def test_dumps_shared_not_circular(run, same_outcome):
    """The same object twice is not a cycle (json's markers are per path)."""
    a = [1, {"x": "y"}]
    d = {"k": a}
    check_dumps([a, a, d, d, {"p": d, "q": d}], run, same_outcome)
    assert _core.json_dumps([a, a]) == b'[[1,{"x":"y"}],[1,{"x":"y"}]]' == oracle_dumps([a, a])


def test_dumps_every_bmp_char(run, same_outcome):
    s = "".join(chr(c) for c in range(0x10000))
    check_dumps(s, run, same_outcome)
    check_dumps({s: s}, run, same_outcome)


def test_dumps_astral_sample(run, same_outcome):
    s = "".join(chr(c) for c in range(0x10000, 0x110000, 97))
    check_dumps([s, {s: 1}], run, same_outcome)


def test_dumps_many_floats_repr():
    # Floats are written from std::to_chars's shortest digits in float.__repr__'s layout
    # (src/float_repr.h): digits and layout must both be repr's, on any bit pattern.
    rnd = random.Random(1234)
    values = [v for v in struct.unpack(f"<{200_000}d", rnd.randbytes(8 * 200_000)) if math.isfinite(v)]
    values += [rnd.uniform(-1e6, 1e6) for _ in range(2000)]
    values += [float(rnd.randint(-(2**60), 2**60)) for _ in range(1000)]
    values += [round(rnd.random() * 10 ** rnd.randrange(-8, 22), rnd.randrange(18)) for _ in range(5000)]
    # Where the layout changes (decimal exponent -4 and 16), the ends of the range, and
    # every power of two and of ten with its neighbours.
    edges = [0.0, -0.0, 1e16, 1e16 - 2, 1.5e16, 9999999999999998.0, 1e-4, 1e-5, 9.999999999999999e-05,
             5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e22, 1e23]
    edges += [2.0**e for e in range(-1074, 1024)] + [10.0**e for e in range(-323, 309)]
    edges += [f(x, d) for x in list(edges) for f, d in ((math.nextafter, math.inf), (math.nextafter, -math.inf))]
    values += [x for x in edges if math.isfinite(x)] + [-x for x in edges if math.isfinite(x)]
    assert _core.json_dumps(values) == oracle_dumps(values)
    keys = {v: 0 for v in values[::7] + edges}  # a float key is written as its repr, quoted
    assert _core.json_dumps(keys) == oracle_dumps(keys)


def test_dumps_dict_subclass_items_override(run, same_outcome):
    """CPython's json iterates a dict *subclass* through its items() (PyMapping_Items)."""

    class ItemsDict(dict):
        def items(self):
            return [("from_items", 1)]

    check_dumps(ItemsDict(a=2), run, same_outcome)


# --- rejections: same exception type as json.dumps ---


class Unserializable:
    pass


DUMPS_REJECT = [
    set(), {1, 2}, frozenset([1]), b"bytes", bytearray(b"x"), memoryview(b"x"),
    datetime.datetime(2020, 1, 1), datetime.date(2020, 1, 1), datetime.timedelta(1),
    decimal.Decimal("1.5"), object(), Unserializable(), 1j, range(3), len, (x for x in ()),
    types.MappingProxyType({"a": 1}), {"a": {1, 2}}, [1, 2, [3, b"x"]], {"ok": 1, "bad": object()},
    {(1, 2): "tuple key"}, {"a": {b"k": 1}}, {frozenset(): 1}, {decimal.Decimal(1): 2},
    {datetime.date(2020, 1, 1): 1},
    10**4300, [1, -(10**4300)], {10**4300: 1},  # 4301 digits: over the int/str conversion limit
]


@pytest.mark.parametrize("obj", DUMPS_REJECT, ids=_id)
def test_dumps_rejects_like_json(obj, run, same_outcome):
    expected = run(oracle_dumps, obj)
    assert expected[0] == "exc"
    check_dumps(obj, run, same_outcome)


def test_dumps_circular_list(run, same_outcome):
    a = [1, 2]
    a.append(a)
    check_dumps(a, run, same_outcome)
    assert isinstance(run(_core.json_dumps, a)[1], ValueError)


def test_dumps_circular_dict(run, same_outcome):
    d = {"a": 1}
    d["self"] = d
    check_dumps(d, run, same_outcome)
    assert isinstance(run(_core.json_dumps, d)[1], ValueError)


def test_dumps_circular_indirect(run, same_outcome):
    d = {"a": []}
    d["a"].append({"b": d})
    check_dumps([d], run, same_outcome)


@pytest.mark.parametrize("builder", [_nested_lists, _nested_dicts])
def test_dumps_very_deep(builder, run, same_outcome):
    obj = builder(100_000)
    expected = run(oracle_dumps, obj)
    assert isinstance(expected[1], RecursionError)
    check_dumps(obj, run, same_outcome)


def test_dumps_moderately_deep(run, same_outcome):
    for depth in (100, 300):
        check_dumps(_nested_lists(depth), run, same_outcome)
        check_dumps(_nested_dicts(depth), run, same_outcome)


def test_dumps_error_leaves_no_state(run, same_outcome):
    """After a failure (error mid-container), the next call must be unaffected."""
    for bad in ([1, set()], {"a": [1, 2, object()]}, {(1,): 2}):
        with pytest.raises(TypeError):
            _core.json_dumps(bad)
        check_dumps({"after": [1, 2, "x"]}, run, same_outcome)


def test_dumps_bad_arguments():
    with pytest.raises(TypeError):
        _core.json_dumps()
    with pytest.raises(TypeError):
        _core.json_dumps(1, 2)


# --- hypothesis ---

json_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(exclude_categories=())),  # lone surrogates too
    st.text(alphabet=st.sampled_from(SPECIAL_CHARS)),
)
json_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**64) - 5, max_value=2**64 + 5),
    st.integers(min_value=-(10**200), max_value=10**200),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), json_ints, st.floats(), json_text,
)
dump_keys = st.one_of(json_text, json_ints, st.floats(), st.booleans(), st.none())


def _wrap_subclass(x):
    if type(x) is int:
        return IntSub(x)
    if type(x) is float:
        return FloatSub(x)
    if type(x) is str:
        return StrSub(x)
    if type(x) is dict:
        return DictSub(x)
    if type(x) is list:
        return ListSubPlain(x)
    return x


dumpable = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(dump_keys, children, max_size=6),
        children.map(_wrap_subclass),
    ),
    max_leaves=40,
)


@given(dumpable)
@example(["\x7f", "\ud800", "\U0001f600", NAN, INF, -INF, 2**64, -0.0])
def test_dumps_property(obj):
    assert _core.json_dumps(obj) == oracle_dumps(obj)


@given(st.floats())
def test_dumps_float_property(x):
    assert _core.json_dumps(x) == oracle_dumps(x)
    assert _core.json_dumps([x, {x: x}]) == oracle_dumps([x, {x: x}])


def test_serializer_class():
    assert issubclass(JSONSerializer, django_signing.JSONSerializer)
    obj = {"a": [1, 2.5, "é\U0001f600", None], 3: True}
    assert JSONSerializer().dumps(obj) == django_signing.JSONSerializer().dumps(obj)
    assert JSONSerializer().dumps(obj) == django_session_serializers.JSONSerializer().dumps(obj)
    data = django_signing.JSONSerializer().dumps(obj)
    assert JSONSerializer().loads(data) == django_signing.JSONSerializer().loads(data)
    with pytest.raises(TypeError):
        JSONSerializer().dumps({"a": {1}})
    with pytest.raises(ValueError):
        JSONSerializer().loads(b"{bad")


# ------------------------------------------------------------------------------------------
# json_loads
# ------------------------------------------------------------------------------------------

LOADS_VALID = [
    b"null", b"true", b"false", b"0", b"-0", b"-0.0", b"0.0", b"1", b"-1", b"1.5", b"-1.5e-3",
    b"1e400", b"-1e400", b"1e-400", b"-1e-400", b"1E5", b"1e+5", b"1.0E-5", b"0e0", b"-0e-0",
    b"123456789012345678901234567890", b"-123456789012345678901234567890",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b"-18446744073709551616",
    b"4294967295", b"4294967296", b"2147483648", b"-2147483649",
    b"9007199254740993", b"9007199254740993.0", b"0.1", b"0.30000000000000004",
    b"2.2250738585072011e-308", b"2.2250738585072012e-308", b"4.9406564584124654e-324",
    b"2.4703282292062327e-324", b"2.4703282292062328e-324", b"1.7976931348623157e308",
    b"1.7976931348623158e308", b"1.7976931348623159e308",
    b"0.1000000000000000055511151231257827021181583404541015625",
    b"123.456e-789", b"1" + b"0" * 400 + b".0", b"0." + b"0" * 400 + b"1",
    b"1" * 4300, b"-" + b"1" * 4300,
    b"NaN", b"Infinity", b"-Infinity", b"[NaN,Infinity,-Infinity]", b'{"n":NaN}',
    b'""', b'"a"', b'"\\u0000"', b'"\\u007f"', b'"\\ud800"', b'"\\udfff"', b'"\\udc00\\ud800"',
    b'"\\ud83d\\ude00"', b'"\\uD83D\\uDE00"', b'"\\ud83d"', b'"\\ud83dx"', b'"\\ud83d\\u0041"',
    b'"\\ud83d\\ud83d\\ude00"', b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', b'"\\u00e9\\u00E9"',
    b'"\xe9"', b'"\xc3\xa9"', b'"\xf0\x9f\x98\x80"', b'"\xff\xfe\x80"', b'"\x7f"',
    b'{"\xe9":"\xe9"}',
    b"[]", b"{}", b"[[]]", b"[{}]", b'{"":{}}', b"[1,2,3]", b'{"a":1,"b":[true,false,null]}',
    b'{"a":1,"b":2,"a":3}', b'{"a":1,"b":2,"a":3,"c":4,"b":5}', b'{"x":{"y":1},"x":[2]}',
    b'{"a":1,"a":1.0,"a":true}',
    b" \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ \t\r\n\"k\" \t\r\n: \t\r\n2 \t\r\n} \t\r\n] \t\r\n",
    b" 1 ", b"\n\"s\"\n", b"\t{}\t",
    b"[" * 900 + b"]" * 900,
    b'{"a":' * 450 + b"1" + b"}" * 450,
    b"[" + b",".join([b"1.5", b"-2", b'"s"', b"null"] * 5000) + b"]",
    b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(5000)) + b"}",
    b'"' + b"x" * 1_000_000 + b'"',
    b'"' + b"\\u00e9" * 10_000 + b'"',
    # one string past the decoder's inline scratch buffer, with every kind of escape in runs
    b'"' + b"ab\\u00e9\\u4f1a\\ud83d\\ude00\\n\\\"" * 3000 + b'"',
    # mantissas around 19 significant digits, leading zeros not counted
    b"0.00060795512980330903", b"-0.0000000000000000000012345678901234567891",
    b"1234567890123456789.5", b"123456789012345678.5", b"12345678901234567.5e-3",
    b"0.1234567890123456789", b"0.12345678901234567891", b"1.234567890123456789e-300",
    b"123456789012345678", b"1234567890123456789", b"-123456789012345678", b"-1234567890123456789",
    b"12345678", b"123456789.123456789", b"1e000000001", b"1e0000000001",
    b"[1.25,12345678,1234567890123456,0.5e1]",
]


@pytest.mark.parametrize("data", LOADS_VALID, ids=lambda d: repr(d)[:40])
def test_loads_valid(data, run, strict_equal):
    assert run(oracle_loads, data)[0] == "ok", "test input must be valid JSON for the oracle"
    check_loads(data, run, strict_equal)


def test_loads_duplicate_keys_order(strict_equal):
    got = _core.json_loads(b'{"a":1,"b":2,"a":3}')
    assert list(got.items()) == [("a", 3), ("b", 2)]
    strict_equal(got, oracle_loads(b'{"a":1,"b":2,"a":3}'))


def test_loads_repeated_short_strings(strict_equal):
    """Keys and short values come from per-document memos keyed by their escaped text: texts
    that differ in one byte, in length only, or around the memo's 48-byte limit each keep
    their own str, and two escaped texts of one str ("\\u0041", "A") give equal strs."""
    words = ["", "a", "b", "ab", "ba", "\u00e9", "\u0435", "\u4f1a\u8bdd", "x" * 47, "x" * 48, "x" * 49,
             "y" * 48, "\U0001f600", "tab\t\"\\", "k1", "k2", "1k", "\u00e9" * 8, "\u00e9" * 9,
             "\u00e9" * 7 + "ab", "\u00e9" * 7 + "abc", "A",
             "a" * 8 + "bbbb" + "a" * 8, "a" * 8 + "cccc" + "a" * 8]  # the same first and last 8 bytes
    rng = random.Random(5)
    items = words * 40
    rng.shuffle(items)
    # ASCII JSON (non-ASCII input goes to json.loads itself, not through the memos); keys and
    # values both meet texts of the same length in the same slot ("k1" and "ba"; the two that
    # differ only in their middle hash alike).
    doc = {"items": [{"w": w, w: i, w + "!": -i, "pair": [w, w + "!"]} for i, w in enumerate(items)]}
    data = json.dumps(doc).encode().replace(b'"w": "A"', b'"w": "\\u0041"', 20)
    assert b"\\u0041" in data
    got = _core.json_loads(data)
    strict_equal(got, oracle_loads(data))
    assert got == doc


def test_loads_memo_lookup_before_decoding(strict_equal):
    """A short string is looked up in the memo before its escapes are decoded, which needs its
    closing quote first: an escaped quote (an odd run of backslashes before it) is not one.
    Strings whose escaped text ends just inside or just past the memo's 48 bytes, with escaped
    quotes and backslash runs at that edge, repeated as keys and values and as each other's
    prefixes, decode as json.loads decodes them."""
    tails = ['"', "\\", '\\"', '\\\\"', '"\\', "\u00e9", "\n", "\u043f\u0440", '"x"']
    words = []
    for size in range(36, 54):
        for tail in tails:
            escaped = "a" * max(0, size - len(json.dumps(tail)) + 2) + json.dumps(tail)[1:-1]
            words.append(json.loads('"' + escaped + '"'))
    words += [w[: len(w) // 2] for w in words]  # prefixes that share the escaped text's start
    rng = random.Random(7)
    items = words * 3
    rng.shuffle(items)
    doc = [{w: w, "v": [w, w + "!", w]} for w in items]
    data = json.dumps(doc).encode()
    got = _core.json_loads(data)
    strict_equal(got, oracle_loads(data))
    assert got == doc


# The widest character decides a str's storage (Latin-1, UCS-2, UCS-4) and a str stored
# wider than it needs compares unequal to the canonical one: the edges of each width.
KIND_EDGES = [0x7F, 0x80, 0xFF, 0x100, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_loads_strings_at_every_width_edge(ensure_ascii, strict_equal):
    values = [chr(c) for c in KIND_EDGES]
    values += ["a" + chr(c) + "é" for c in KIND_EDGES]
    values += [chr(a) + chr(b) for a in KIND_EDGES for b in KIND_EDGES]
    doc = {v: [v, v * 40] for v in values}
    data = json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    got = _core.json_loads(data)
    strict_equal(got, oracle_loads(data))
    if ensure_ascii:
        assert got == doc


def test_loads_negative_zero():
    z = _core.json_loads(b"-0")
    assert type(z) is int and z == 0
    f = _core.json_loads(b"-0.0")
    assert type(f) is float and math.copysign(1.0, f) == -1.0


def test_loads_big_ints_exact():
    for n in (2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**100, -(2**63) - 1, -(2**64) - 1):
        got = _core.json_loads(str(n).encode())
        assert type(got) is int and got == n


LOADS_INVALID = [
    b"", b" ", b"\n", b"nul", b"tru", b"fals", b"nulll", b"True", b"None", b"nan", b"inf",
    b"-nan", b"+1", b"01", b"-01", b"00", b"1.", b".5", b"-", b"1e", b"1e+", b"1.e5", b"-.5",
    b"0x10", b"1_000", b"\xef\xbb\xbf1", b"NaNx", b"Infinityy", b"-Infinit", b"Infinit", b"-NaN",
    b"[", b"]", b"[1", b"[1,", b"[1,]", b"[,1]", b"[1 2]", b"{", b"}", b'{"a"', b'{"a":', b'{"a":1',
    b'{"a":1,}', b'{"a" 1}', b"{1:2}", b"{'a':1}", b'{"a":1 "b":2}', b"{,}", b'{"a"}',
    b'"', b'"abc', b"'abc'", b'"\\"', b'"\\x41"', b'"\\u12"', b'"\\u12g4"', b'"\\U0001f600"',
    b'"\\a"', b'"\\', b'"\x00"', b'"\x1f"', b'"\n"', b'"\t"', b'"a\rb"',
    b"1 2", b"[] []", b"{}x", b"1\x00", b"\x00", b"[1]]", b'"a""b"', b"nullnull", b"truefalse",
    b"/* c */ 1", b"// c\n1", b"[1,2,3]//", b"\x0b1", b"\x0c1", b"\xa01", b"1\xa0", b"\xff",
    b"\xc3\xa9", b"[\xe9]", b"1" * 4301, b"-" + b"1" * 4301, b"[" + b"9" * 5000 + b"]",
    b"[" * 900 + b"]" * 899, b"{" * 10, b'{"a":{"b":[1,{"c":}]}}',
]


@pytest.mark.parametrize("data", LOADS_INVALID, ids=lambda d: repr(d)[:40])
def test_loads_invalid(data, run, strict_equal):
    expected = run(oracle_loads, data)
    assert expected[0] == "exc" and isinstance(expected[1], ValueError), "oracle must reject it"
    check_loads(data, run, strict_equal)


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_loads_too_deep(depth, run, strict_equal):
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth):
        check_loads(data, run, strict_equal)


def test_loads_bad_argument_types_do_not_crash():
    with pytest.raises(TypeError):
        _core.json_loads()
    for arg in (None, 1, 1.5, [], {}, object()):
        with pytest.raises(Exception):
            _core.json_loads(arg)
    # str / bytearray / memoryview: either refused or parsed right; never a crash.
    for arg in ('{"a":1}', bytearray(b'{"a":1}'), memoryview(b'{"a":1}')):
        try:
            result = _core.json_loads(arg)
        except Exception:
            continue
        assert result == {"a": 1}


def test_loads_every_truncation(run, strict_equal):
    doc = json.dumps(
        {
            "a": [1, -2.5e-3, 1e400, "x\u00e9\U0001f600\ud800", None, True, False, {}],
            "b": {"c": [[], [[]]], "big": 2**70, "neg": -(2**64)},
            "esc": '\\"\n\t\x00',
            "n": float("nan"),
            "i": float("-inf"),
        },
        separators=(", ", ": "),
    ).encode()
    for i in range(len(doc) + 1):
        check_loads(doc[:i], run, strict_equal)
        check_loads(doc[i:], run, strict_equal)


def test_loads_random_bytes(run, strict_equal):
    rnd = random.Random(20240607)
    alphabet = b'[]{}",:0123456789.eE+-tfnrueasl NaInfiy\\u\x00\x80\xff\n'
    for _ in range(3000):
        n = rnd.randint(0, 40)
        check_loads(bytes(rnd.getrandbits(8) for _ in range(n)), run, strict_equal)
        check_loads(bytes(rnd.choice(alphabet) for _ in range(n)), run, strict_equal)


def test_loads_error_then_success(run, strict_equal):
    """A rejected input (incl. one failing deep inside) must not poison later calls."""
    for bad in (b'{"a":[1,2,{"b":', b'"\\ud800\\', b"[" * 100_000, b"1" * 5000, b"[1e5x]"):
        with pytest.raises(Exception):
            _core.json_loads(bad)
        check_loads(b'{"ok":[1,2.5,"\\u00e9"]}', run, strict_equal)


# --- hypothesis ---

loadable = st.recursive(
    st.one_of(st.none(), st.booleans(), json_ints, st.floats(), json_text),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(json_text, children, max_size=6),
    ),
    max_leaves=40,
)
whitespace = st.text(alphabet=" \t\r\n", max_size=3)


@given(
    value=loadable,
    ensure_ascii=st.booleans(),
    ws=st.tuples(whitespace, whitespace, whitespace, whitespace, whitespace),
    encoding=st.sampled_from(["utf-8", "latin-1"]),
)
def test_loads_roundtrip_property(value, ensure_ascii, ws, encoding, strict_equal):
    w1, w2, w3, w4, w5 = ws
    text = w5 + json.dumps(value, ensure_ascii=ensure_ascii, separators=(w1 + "," + w2, w3 + ":" + w4)) + w5
    data = text.encode(encoding, "surrogatepass" if encoding == "utf-8" else "replace")
    expected = oracle_loads(data)
    strict_equal(_core.json_loads(data), expected)


@given(st.floats(allow_nan=False))
def test_loads_float_roundtrip_exact(x):
    got = _core.json_loads(oracle_dumps(x))
    assert type(got) is float and got == x and math.copysign(1, got) == math.copysign(1, x)


@given(
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)
)
@example("2.4703282292062327208828439643411068618252990130716238221279284125033775364e-324")
@example("1.00000000000000011102230246251565404236316680908203125")
@example("9007199254740992.9999999999")
def test_loads_number_text_property(text):
    data = text.encode()
    expected = oracle_loads(data)
    got = _core.json_loads(data)
    assert type(got) is type(expected), (text, got, expected)
    if isinstance(expected, float):
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (text, got, expected)
        assert math.copysign(1, got) == math.copysign(1, expected), (text, got, expected)
    else:
        assert got == expected


@given(data=st.binary(max_size=300))
def test_loads_fuzz_bytes(data, run, strict_equal):
    check_loads(data, run, strict_equal)


_JSONISH = st.sampled_from(
    list(b'[]{}",:-+.0123456789eE \t\n\\/ubfnrtNaIiy') + [0x00, 0x1F, 0x7F, 0x80, 0xE9, 0xFF]
)


@given(
    value=loadable,
    mutations=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), _JSONISH), max_size=4),
)
def test_loads_fuzz_mutations(value, mutations, run, strict_equal):
    data = bytearray(json.dumps(value).encode())
    for pos, op, byte in mutations:
        pos = pos % (len(data) + 1)
        if op == 0:
            data.insert(pos, byte)
        elif op == 1 and pos < len(data):
            del data[pos]
        elif op == 2 and pos < len(data):
            data[pos] = byte
        else:
            del data[pos:]
    check_loads(bytes(data), run, strict_equal)
