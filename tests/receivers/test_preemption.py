"""Token-level preemption in a receiver, without sockets: a generate call runs as steps (`lm.Decoding`: a span of
the prompt, then a token), the receiver reads what arrived between two steps (`generate_next(..., read)`, as the
process does off its socket) and runs much shorter work to completion before it resumes the long call. Every
answer is the one it gets alone, bit for bit (a tiny random Llama, text asks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from rxkit import answer

from latentwire.protocol import ErrorReply, Reply, TextRequest, encode_frame
from latentwire.receivers.backlog import Backlog
from latentwire.receivers.receiver import MAX_PAUSED, Receiver

CAP = 4  # tokens each ask may generate
CHUNK = 64  # prompt positions a step reads: a ~650-token prompt is ten steps


@pytest.fixture
def rx(tiny_llama) -> Receiver:
    return Receiver(tiny_llama, adapter=None, name="tiny-llama", fingerprint="fp", pid="rx", prefill_chunk=CHUNK)  # type: ignore[arg-type]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the receiver did, in order: `start:<slot length>` as a generate call starts, `step:<slot length>` for
    each of its steps (the real decoding runs)."""
    import latentwire.lm

    seen: list[str] = []

    class Recording(latentwire.lm.Decoding):
        def __init__(self, llm, slots: Sequence, *args, **kw) -> None:
            self.label = str(max(int(s.shape[0]) for s in slots))
            seen.append(f"start:{self.label}")
            super().__init__(llm, slots, *args, **kw)

        def step(self) -> bool:
            seen.append(f"step:{self.label}")
            return super().step()

    monkeypatch.setattr(latentwire.lm, "Decoding", Recording)
    return seen


def _ask(rid: str, chars: int) -> bytes:
    """A text ask of about `chars` slot tokens (the tiny tokenizer is one token a byte)."""
    text = f"Question: who is {rid}?\nContext: " + ("Ada wrote it. " * chars)[:chars]
    return encode_frame(TextRequest(rid, "s", text, max_new_tokens=CAP))


LONG, MEDIUM, SHORT = _ask("long", 600), _ask("medium", 200), _ask("short", 10)


def _serve(rx: Receiver, backlog: Backlog, arrivals: dict[int, list[tuple[str, bytes]]]) -> Iterator[tuple[str, Reply]]:
    """Everything in `backlog`, then what arrives: `arrivals[n]` is queued at the n-th read between two steps."""
    reads = 0

    def read() -> list[tuple[str, ErrorReply]]:
        nonlocal reads
        reads += 1
        for tag, frame in arrivals.pop(reads, []):
            assert rx.enqueue(frame, backlog, tag) is None
        return []

    while backlog or arrivals:
        if not backlog:  # idle until the next arrival (not hit in these tests: something always runs)
            read()
        yield from rx.generate_next(backlog, read)


def _alone(rx: Receiver, frames: dict[str, bytes]) -> dict[str, Reply]:
    return {tag: answer(rx, f) for tag, f in frames.items()}


def _same_bits(got: dict[str, Reply], alone: dict[str, Reply]) -> None:
    assert got.keys() == alone.keys()
    for tag, reply in got.items():
        assert isinstance(reply, Reply), reply
        assert (reply.answer, reply.score) == (alone[tag].answer, alone[tag].score), tag  # exactly: resumed, not redone


def test_a_short_ask_finishes_before_a_long_one_that_arrived_first_and_is_running(
    rx: Receiver, events: list[str]
) -> None:
    backlog: Backlog = Backlog(rx.max_batch_positions)
    assert rx.enqueue(LONG, backlog, "long") is None
    out = list(_serve(rx, backlog, {2: [("short", SHORT)]}))  # arrives after the long call's second step
    assert [tag for tag, _ in out] == ["short", "long"]
    long, short = events[0][len("start:") :], next(e for e in events if e.startswith("start:") and e != events[0])[6:]
    assert events[:4] == [f"start:{long}", f"step:{long}", f"step:{long}", f"start:{short}"], events  # paused
    last_short = max(i for i, e in enumerate(events) if e == f"step:{short}")
    assert events[last_short + 1 :].count(f"step:{long}") > 1, events  # resumed once the short one was done
    _same_bits(dict(out), _alone(rx, {"long": LONG, "short": SHORT}))


def test_shorter_work_nests_and_equal_work_waits(rx: Receiver) -> None:
    """A medium ask pauses the long call, a short one pauses the medium; a second long ask (as long, so not at
    most half) waits for the first."""
    backlog: Backlog = Backlog(rx.max_batch_positions)
    assert rx.enqueue(LONG, backlog, "long") is None
    arrivals = {2: [("medium", MEDIUM), ("long-2", _ask("long-2", 600))], 4: [("short", SHORT)]}
    out = list(_serve(rx, backlog, arrivals))
    assert [tag for tag, _ in out] == ["short", "medium", "long", "long-2"]
    frames = {"long": LONG, "medium": MEDIUM, "short": SHORT, "long-2": _ask("long-2", 600)}
    _same_bits(dict(out), _alone(rx, frames))


def test_a_stream_of_short_asks_pauses_a_long_call_a_bounded_number_of_times(rx: Receiver) -> None:
    backlog: Backlog = Backlog(rx.max_batch_positions, max_count=1, max_passed=3)
    assert rx.enqueue(LONG, backlog, "long") is None
    arrivals = {n: [(f"short-{n}", _ask(f"s{n}", 10))] for n in range(1, 40)}  # one at every read
    out = [tag for tag, _ in _serve(rx, backlog, arrivals)]
    assert out.index("long") == 3, out  # three short calls ran between its steps, then it finished
    assert len(out) == 40


def test_the_depth_of_paused_calls_is_bounded(rx: Receiver) -> None:
    """Ever shorter asks, each arriving while the one before runs: at most MAX_PAUSED calls wait paused."""
    backlog: Backlog = Backlog(rx.max_batch_positions)
    assert rx.enqueue(_ask("x0", 2000), backlog, "x0") is None
    sizes = [800, 300, 100, 10]  # each at most half the one before
    arrivals = {2 * (i + 1): [(f"x{i + 1}", _ask(f"x{i + 1}", n))] for i, n in enumerate(sizes)}
    out = [tag for tag, _ in _serve(rx, backlog, arrivals)]
    # x1 pauses x0, x2 pauses x1 (two paused: the bound); x3 and x4 arrive while x2 runs and wait for it (else they
    # would answer first), then run between two steps of x1 (one call: they fit one batch)
    assert MAX_PAUSED == 2 and out == ["x2", "x3", "x4", "x1", "x0"], out
