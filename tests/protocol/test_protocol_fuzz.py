"""Seeded fuzz of decode_frame: mutated and truncated frames must decode or raise ProtocolError only."""

from __future__ import annotations

import pytest

from latentwire.protocol import Limits, fuzz


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_only_protocol_errors_escape(seed: int) -> None:
    stats = fuzz(10_000, seed=seed)
    assert stats.failures == []
    assert stats.count == stats.accepted + stats.rejected == 10_000
    assert stats.rejected > 5_000 and stats.accepted > 100  # the mutations reach both outcomes


def test_fuzz_is_deterministic() -> None:
    assert fuzz(500, seed=7) == fuzz(500, seed=7)


def test_fuzz_with_tight_limits() -> None:
    stats = fuzz(5_000, seed=3, limits=Limits(max_frame_bytes=3000, max_str=16, max_items=2, max_text_bytes=40))
    assert stats.failures == []
    assert stats.accepted > 0  # small frames still pass; oversized ones are refused, not crashed on
