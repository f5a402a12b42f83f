"""bench/data is a copy of the shared reference payloads; it must not drift from them."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
NAMES = ["small", "typical", "large", "huge"]
# Compact JSON sizes quoted by the shared README.
SIZES = {"small": 172, "typical": 596}


@pytest.mark.parametrize("name", NAMES)
def test_copy_matches_reference(name):
    copy = (REPO / "bench" / "data" / f"session-{name}.json").read_bytes()
    if name in SIZES:
        assert len(json.dumps(json.loads(copy), separators=(",", ":"))) == SIZES[name]
    reference = SHARED / f"session-{name}.json"
    if reference.exists():  # beside the main checkout; a clean clone elsewhere has only the copy
        assert copy == reference.read_bytes()
