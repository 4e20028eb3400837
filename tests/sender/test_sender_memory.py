"""The sender's peak memory under the worst legal asks, measured on the tiny random sharer in a fresh process
(`python -m latentwire.bench.sender_memory --tiny`): the kernel's high-water mark of resident memory, reset before
each ask, minus the memory before. It must stay under the design bound: the longest reading (the sharer's 16,384
token cap, read 1,024 positions a pass) and the selection of the most pairs (2,016) over the longest context."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from latentwire.sender.bounds import MAX_PARAGRAPHS, MAX_READ_TOKENS

pytestmark = pytest.mark.slow  # a sender in a fresh process, its worst legal asks


@pytest.fixture(scope="module")
def measured() -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "latentwire.bench.sender_memory", "--tiny", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_worst_legal_asks_are_served(measured: dict) -> None:
    pairs, reading = measured["asks"]["pairs"], measured["asks"]["reading"]
    assert pairs["paragraphs"] == MAX_PARAGRAPHS and pairs["frame_bytes"] > 0
    assert MAX_READ_TOKENS - 64 <= reading["read_tokens"] <= MAX_READ_TOKENS and reading["frame_bytes"] > 0


def test_the_sender_s_memory_under_them_stays_under_the_design_bound(measured: dict) -> None:
    print(json.dumps(measured))
    # the bound is linear in the token cap: reading the whole prompt in one pass held ~8x this one (1,327 MiB for the
    # reading ask), the attention mask alone quadratic in the prompt
    assert 0 < measured["growth_mib"] <= measured["design_bound_mib"], measured
