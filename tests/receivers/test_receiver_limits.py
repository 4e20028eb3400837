"""A receiver's batch is bounded by padded positions, not by count: sub-batches shortest first, a request over the
budget alone, and every reply the one it would get alone (on a tiny random Llama, text requests only)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import pytest
from rxkit import answer, answers

from latentwire.protocol import Reply, TextRequest, encode_frame
from latentwire.receivers import process as receiver_process
from latentwire.receivers.receiver import MAX_BATCH_POSITIONS, Receiver, positions, sub_batches

CAP = 4  # tokens each request may generate


@pytest.fixture
def rx(tiny_llama) -> Receiver:
    return Receiver(tiny_llama, adapter=None, name="tiny-llama", fingerprint="fp", pid="rx")  # type: ignore[arg-type]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Each generate call's slot lengths (the real decoding still runs)."""
    import latentwire.lm

    seen = []

    class Recording(latentwire.lm.Decoding):
        def __init__(self, llm, slots: Sequence, *args, **kw) -> None:
            seen.append([int(s.shape[0]) for s in slots])
            super().__init__(llm, slots, *args, **kw)

    monkeypatch.setattr(latentwire.lm, "Decoding", Recording)
    return seen


def _ask(rid: str, chars: int) -> bytes:
    """A text ask of about `chars` slot tokens (the tiny tokenizer is one token a byte)."""
    text = f"Question: who is {rid}?\nContext: " + ("Ada wrote it. " * chars)[:chars]
    return encode_frame(TextRequest(rid, "s", text, max_new_tokens=CAP))


LONG, SHORT = 600, 20
MIX = [_ask("long-0", LONG), _ask("short-0", SHORT), _ask("long-1", LONG), _ask("short-1", SHORT)]
MIX += [_ask("short-2", SHORT), _ask("long-2", LONG), _ask("short-3", SHORT)]
SHORTS = {"short-0", "short-1", "short-2", "short-3"}


def test_sub_batches_are_shortest_first_and_padded_within_the_budget() -> None:
    assert sub_batches([5000, 100, 100, 5000, 100], 8192) == [[1, 2, 4], [0], [3]]
    assert sub_batches([4000] * 5, 8192) == [[0, 1], [2, 3], [4]]
    # eight text asks at the slot cap: ~10 GB as one call; now eight calls of one
    assert sub_batches([16384 + 64] * 8, MAX_BATCH_POSITIONS) == [[i] for i in range(8)]
    assert sub_batches([], 8192) == []
    assert sub_batches([10, 3000, 20], 100) == [[0, 2], [1]]  # over the budget: alone, after the short ones


def test_a_long_and_short_mix_keeps_the_short_ones_in_their_own_batch(rx: Receiver, calls: list[list[int]]) -> None:
    rx.max_batch_positions = 1000  # all four short ones fit; two long ones (2 x ~650) do not
    replies = answers(rx, MIX)
    assert [r.rid for r in replies] == [_rid(f) for f in MIX]  # in the frames' order
    assert all(isinstance(r, Reply) for r in replies), replies
    assert [len(c) for c in calls] == [4, 1, 1, 1], calls  # the short ones together, first; each long one alone
    assert max(calls[0]) < 100 and min(min(c) for c in calls[1:]) > LONG
    for c in calls:
        assert len(c) == 1 or len(c) * (max(c) + CAP) <= rx.max_batch_positions


def test_short_replies_are_ready_before_the_long_ones_are_decoded(rx: Receiver, calls: list[list[int]]) -> None:
    rx.max_batch_positions = 1000
    order = [MIX[i] for i, _ in rx.replies(MIX)]
    assert {_rid(f) for f in order[:4]} == SHORTS


def test_a_request_over_the_budget_runs_alone(rx: Receiver, calls: list[list[int]]) -> None:
    rx.max_batch_positions = 10  # under even a short ask's positions
    replies = answers(rx, MIX[:4])
    assert all(isinstance(r, Reply) for r in replies) and [len(c) for c in calls] == [1, 1, 1, 1]


@pytest.mark.parametrize("budget", [1, 1000, MAX_BATCH_POSITIONS])
def test_replies_are_the_ones_each_would_get_alone(rx: Receiver, budget: int, same_replies) -> None:
    frames = [*MIX, b"garbage", encode_frame(TextRequest("empty", "s", ""))]
    rx.max_batch_positions = budget
    batched = answers(rx, frames)
    alone = [answer(rx, f) for f in frames]
    same_replies(batched, alone, rx.llm.engine)


def test_latents_and_texts_mixed_get_the_replies_they_would_get_alone(tiny_llama, calls: list[list[int]]) -> None:
    """Latents through a codebook adapter (rows that are this vocabulary's own codes, so none is dropped) beside
    text asks: each path is batched apart, and each sub-batch within the budget."""
    from latentwire.codebook import vocabulary_codes
    from latentwire.protocol import latent_request
    from latentwire.receivers.adapter import build_adapter

    adapter = build_adapter({"kind": "codebook", "d_z": 32, "hidden_size": tiny_llama.hidden_size}, tiny_llama)
    rx = Receiver(tiny_llama, adapter, "tiny-llama", "fp", "rx", max_batch_positions=200)
    codes = vocabulary_codes(tiny_llama.tokenizer, 32).numpy()
    rows = [codes[65 + i : 65 + i + m] for i, m in enumerate((3, 12, 5, 40))]
    latents = [
        encode_frame(latent_request(f"lat-{i}", "s", "fp", x, "fp16", max_new_tokens=CAP)) for i, x in enumerate(rows)
    ]
    frames = [latents[0], MIX[1], latents[1], MIX[0], latents[2], MIX[3], latents[3]]
    batched = answers(rx, frames)
    sizes = list(calls)
    alone = [answer(rx, f) for f in frames]
    assert all(isinstance(r, Reply) for r in batched), batched
    for b, a in zip(batched, alone, strict=True):
        assert (b.rid, b.answer) == (a.rid, a.answer) and b.score == pytest.approx(a.score, abs=1e-4)
    assert sum(len(c) for c in sizes) == len(frames) and len(sizes) < len(frames)  # some batched, none lost
    for c in sizes:
        assert len(c) == 1 or len(c) * (max(c) + CAP) <= rx.max_batch_positions


def test_positions_count_the_slot_and_the_answer(tiny_llama) -> None:
    import torch

    assert positions(torch.zeros(37, tiny_llama.hidden_size), 16) == 53


def test_the_cli_default_is_the_modules() -> None:
    from latentwire import proc_cli

    assert inspect.signature(proc_cli.receiver).parameters["max_batch_positions"].default == MAX_BATCH_POSITIONS
    assert inspect.signature(receiver_process.serve).parameters["max_batch_positions"].default == MAX_BATCH_POSITIONS


def _rid(frame: bytes) -> str:
    from latentwire.protocol import decode_frame

    return decode_frame(frame).rid
