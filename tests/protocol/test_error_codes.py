"""The spec lists every error code the processes send: `ErrorCode` is the one list, SPEC.md names each member."""

from __future__ import annotations

from pathlib import Path

import latentwire.protocol as protocol
from latentwire.arbiter.board import ERROR_CODES as COUNTED
from latentwire.protocol import ERROR_CODES, ErrorCode

SPEC = Path(protocol.__file__).with_name("SPEC.md").read_text()


def test_spec_lists_every_error_code():
    missing = [c.value for c in ErrorCode if f"`{c.value}`" not in SPEC]
    assert not missing, f"SPEC.md does not list {missing}"


def test_the_arbiter_counts_the_one_list():
    assert COUNTED is ERROR_CODES and "too_large" in ERROR_CODES and str(ErrorCode.BUSY) == "busy"
