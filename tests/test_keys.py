"""csessions._core.new_session_key(): 32 characters of [a-z0-9], unique, uniform, CSPRNG-backed.

The statistical checks use thresholds with a false-failure probability below ~1e-9 each
(Wilson-Hilferty approximation of the chi-square quantile), while any real bias of the usual
kinds (modulo bias of byte % 36, a position that draws from a subset, repeated/correlated
characters) is hundreds of standard deviations away.
"""

import math
import os
import random
import re
import string
import warnings
from collections import Counter

import pytest
from django.contrib.sessions.backends.base import VALID_KEY_CHARS

from csessions import _core
from csessions.backends.signed_cookies import SessionStore

N_KEYS = 20_000
KEY_LEN = 32
ALPHABET = string.ascii_lowercase + string.digits
KEY_RE = re.compile(r"[a-z0-9]{32}\Z")
Z_1E9 = 6.0  # one-sided normal quantile for p ~ 1e-9


def chi2_threshold(df, z=Z_1E9):
    """Upper chi-square quantile (Wilson-Hilferty), p ~ 1e-9 for z = 6."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(counts, expected):
    return sum((c - expected) ** 2 / expected for c in counts)


@pytest.fixture(scope="module")
def keys():
    return [_core.new_session_key() for _ in range(N_KEYS)]


def test_alphabet_is_djangos():
    assert sorted(VALID_KEY_CHARS) == sorted(ALPHABET)


def test_format(keys):
    for k in keys:
        assert type(k) is str
        assert KEY_RE.match(k), repr(k)
        assert k.isascii()


def test_unique(keys):
    assert len(set(keys)) == len(keys)
    more = {_core.new_session_key() for _ in range(2000)}
    assert not more & set(keys)


def test_character_frequencies_uniform(keys):
    counts = Counter("".join(keys))
    assert set(counts) <= set(ALPHABET)
    total = N_KEYS * KEY_LEN
    expected = total / len(ALPHABET)
    stat = chi2([counts.get(c, 0) for c in ALPHABET], expected)
    assert stat < chi2_threshold(len(ALPHABET) - 1), (stat, counts.most_common(5), counts.most_common()[-5:])


def test_every_position_uniform(keys):
    """Summed per-position chi-square: catches a position drawing from a subset or biased."""
    expected = N_KEYS / len(ALPHABET)
    total = 0.0
    worst = (0.0, None)
    for pos in range(KEY_LEN):
        counts = Counter(k[pos] for k in keys)
        stat = chi2([counts.get(c, 0) for c in ALPHABET], expected)
        total += stat
        worst = max(worst, (stat, pos))
        # a single position grossly off (e.g. only 32 of 36 characters) fails on its own
        assert stat < chi2_threshold(len(ALPHABET) - 1, z=8.0), (pos, stat, counts)
    assert total < chi2_threshold(KEY_LEN * (len(ALPHABET) - 1)), (total, worst)


def test_adjacent_pairs_independent(keys):
    """Bigram frequencies: catches correlated neighbours (e.g. one random byte reused)."""
    pairs = Counter()
    for k in keys:
        for i in range(KEY_LEN - 1):
            pairs[k[i : i + 2]] += 1
    cells = len(ALPHABET) ** 2
    expected = N_KEYS * (KEY_LEN - 1) / cells
    stat = chi2([pairs.get(a + b, 0) for a in ALPHABET for b in ALPHABET], expected)
    assert stat < chi2_threshold(cells - 1), stat


def test_keys_not_correlated_across_calls(keys):
    """Same position in consecutive keys: catches a generator that repeats or shifts state."""
    pairs = Counter()
    for a, b in zip(keys, keys[1:]):
        pairs[a[0] + b[0]] += 1
        pairs[a[-1] + b[-1]] += 1
    cells = len(ALPHABET) ** 2
    expected = 2 * (N_KEYS - 1) / cells
    stat = chi2([pairs.get(a + b, 0) for a in ALPHABET for b in ALPHABET], expected)
    assert stat < chi2_threshold(cells - 1), stat


def test_detector_is_sensitive():
    """The uniformity test above does catch modulo bias (byte % 36), the classic mistake."""
    rng = random.Random(7)
    biased = "".join(ALPHABET[b % 36] for b in rng.randbytes(N_KEYS * KEY_LEN))
    counts = Counter(biased)
    stat = chi2([counts.get(c, 0) for c in ALPHABET], N_KEYS * KEY_LEN / 36)
    assert stat > chi2_threshold(35)
    fair = "".join(rng.choices(ALPHABET, k=N_KEYS * KEY_LEN))
    counts = Counter(fair)
    assert chi2([counts.get(c, 0) for c in ALPHABET], N_KEYS * KEY_LEN / 36) < chi2_threshold(35)


def test_not_seeded_by_random_module():
    random.seed(12345)
    a = [_core.new_session_key() for _ in range(5)]
    random.seed(12345)
    b = [_core.new_session_key() for _ in range(5)]
    assert not set(a) & set(b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_safe():
    """Parent and child must not produce the same keys after fork (no copied PRNG state)."""
    _core.new_session_key()  # make sure any lazy generator state exists before the fork
    r, w = os.pipe()
    with warnings.catch_warnings():  # 3.12+: DeprecationWarning if other threads exist
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.write(w, ",".join(_core.new_session_key() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    child = b"".join(chunks).decode().split(",")
    parent = [_core.new_session_key() for _ in range(20)]
    assert len(child) == 20 and all(KEY_RE.match(k) for k in child)
    assert not set(child) & set(parent)


def test_bad_arguments():
    with pytest.raises(TypeError):
        _core.new_session_key(32)


def test_engine_uses_it():
    key = SessionStore()._get_new_session_key()
    assert KEY_RE.match(key)
