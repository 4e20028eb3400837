"""Work nobody waits for is dropped (SPEC.md "Deadlines"): the arbiter forwards its deadline and the request's
opening time, the sender copies them into its frames, and a receiver answers `expired` instead of generating when
the deadline has passed, or when the request was opened before it came back from a silence the arbiter took for
death (a stopped process). Receivers here are a tiny random Llama on text frames, clocks are fakes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from rxkit import answer, answers

from latentwire.arbiter.board import ERROR_CODES, Board
from latentwire.protocol import Ask, ErrorReply, Heartbeat, Reply, Sent, TextRequest, decode_frame, encode_frame
from latentwire.receivers.receiver import Liveness, Receiver

WALL = 1_700_000_000.0  # the fake Unix time "now"
TEXT = "Question: Who wrote it?\nContext: Ada wrote it."


class Clock:
    """A settable clock (call it for the time)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wall() -> Clock:
    return Clock(WALL)


@pytest.fixture
def rx(tiny_llama, wall: Clock) -> Receiver:
    return Receiver(tiny_llama, adapter=None, name="tiny-llama", fingerprint="fp", pid="rx", wall=wall)  # type: ignore[arg-type]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests each generate call decoded (the real decoding still runs)."""
    return _on_each_call(monkeypatch, lambda slots, seen: seen.append(len(slots)))


def _on_each_call(monkeypatch: pytest.MonkeyPatch, hook: Callable[[Sequence, list[int]], None]) -> list[int]:
    """Run `hook(slots, seen)` as each generate call starts (`lm.Decoding`, which then runs for real); `seen`."""
    import latentwire.lm

    seen: list[int] = []

    class Hooked(latentwire.lm.Decoding):
        def __init__(self, llm, slots: Sequence, *args, **kw) -> None:
            hook(slots, seen)
            super().__init__(llm, slots, *args, **kw)

    monkeypatch.setattr(latentwire.lm, "Decoding", Hooked)
    return seen


def _text(rid: str, deadline: float | None = None, opened: float | None = None, chars: int = 0) -> bytes:
    return encode_frame(TextRequest(rid, "s", TEXT + "x" * chars, None, 2, deadline=deadline, opened=opened))


# ---- the receiver ----


def test_a_frame_past_its_deadline_is_dropped_before_any_work(rx: Receiver, calls: list[int]) -> None:
    out = answer(rx, _text("late", deadline=WALL - 3.0))
    assert isinstance(out, ErrorReply) and (out.rid, out.code) == ("late", "expired"), out
    assert "deadline passed 3.0 s ago" in out.message and calls == []


def test_frames_within_their_deadline_or_without_one_are_served(rx: Receiver) -> None:
    for frame in (_text("soon", deadline=WALL + 5.0), _text("none"), _text("opened", opened=WALL - 60.0)):
        assert isinstance(answer(rx, frame), Reply)


def test_the_deadline_is_checked_again_before_each_sub_batch(
    rx: Receiver, wall: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sub-batches (each request alone): the first one's generate takes the clock past the second's deadline,
    which is then never generated."""

    def slow(slots: Sequence, seen: list[int]) -> None:
        wall.t += 10.0
        seen.append(len(slots))

    calls = _on_each_call(monkeypatch, slow)
    rx.max_batch_positions = 1  # every request alone, shortest first
    short, long = _text("short", deadline=WALL + 20.0), _text("long", deadline=WALL + 5.0, chars=40)
    replies = {r.rid: r for r in answers(rx, [long, short])}
    assert isinstance(replies["short"], Reply) and calls == [1]
    assert isinstance(replies["long"], ErrorReply) and replies["long"].code == "expired"
    assert "deadline passed 5.0 s ago" in replies["long"].message


def test_work_opened_before_a_silence_is_dropped_and_later_work_served(rx: Receiver, wall: Clock) -> None:
    mono = Clock(100.0)
    rx.liveness = Liveness(dead_after=4.0, clock=mono, wall=wall, grace=0.5)
    before = _text("before", opened=WALL - 1.0)
    assert isinstance(answer(rx, before), Reply)  # no silence yet: served
    mono.t += 10.0  # stopped for 10 s: no heartbeat went out
    wall.t += 10.0
    out = answer(rx, before)  # the serving thread notices first: everything opened up to now is gone
    assert isinstance(out, ErrorReply) and out.code == "expired" and "silence" in out.message, out
    rx.liveness.beat()  # the heartbeat that ends the silence: the arbiter waits for this receiver once it hears it
    assert rx.liveness.silences == 1 and rx.liveness.back() == wall.t + 0.5
    assert answer(rx, _text("meanwhile", opened=wall.t - 0.5)).code == "expired"  # opened while it was taken for dead
    assert answer(rx, _text("hearing", opened=wall.t + 0.25)).code == "expired"  # maybe before the arbiter heard it
    wall.t += 1.0
    mono.t += 1.0
    assert isinstance(answer(rx, _text("after", opened=wall.t - 0.25)), Reply)


def test_a_reply_generated_across_a_silence_goes_out_as_expired(
    rx: Receiver, wall: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped mid-generate: the answer would reach an arbiter that stopped waiting for it."""
    mono = Clock(100.0)
    rx.liveness = Liveness(dead_after=4.0, clock=mono, wall=wall)

    def stopped(slots: Sequence, seen: list[int]) -> None:
        mono.t += 10.0
        wall.t += 10.0

    _on_each_call(monkeypatch, stopped)
    out = answer(rx, _text("mid", opened=WALL))
    assert isinstance(out, ErrorReply) and out.code == "expired", out


def test_liveness_without_a_silence_never_moves() -> None:
    mono, wall = Clock(0.0), Clock(WALL)
    live = Liveness(dead_after=4.0, clock=mono, wall=wall)
    for _ in range(10):
        mono.t += 1.0
        wall.t += 1.0
        live.beat()
    assert live.back() == 0.0 and live.silences == 0


# ---- the arbiter: what it forwards, and what it counts ----


def _board(timeout: float = 10.0) -> Board:
    """Sender s1 and a proven receiver r-llama, heard at t=0."""
    b = Board("arb", timeout=timeout, dead_after=4.0)
    b.roster.heartbeat(
        Heartbeat("", "s1", "sender", "ready", {"models": "llama,qwen", "receivers": 1}), 0.0, b"s1", "sender"
    )
    b.roster.heartbeat(Heartbeat("", "r-llama", "receiver", "ready", {"model": "llama"}), 0.0, role="receiver")
    b.roster.prove("r-llama")
    return b


def test_the_forwarded_ask_carries_the_deadline_and_opening_time_as_unix_times() -> None:
    b = _board(timeout=10.0)
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, now=5.0, wall=WALL)
    fwd = b.forward(p, now=7.0, wall=WALL + 2.0)  # dispatched 2 s later (e.g. after waiting for a sender)
    assert (fwd.rid, fwd.sender, fwd.question) == (p.rid, "arb", "Q?")
    assert fwd.deadline == pytest.approx(WALL + 10.0) and fwd.opened == pytest.approx(WALL)
    assert decode_frame(encode_frame(fwd)) == fwd


def test_a_client_deadline_shortens_the_request() -> None:
    b = _board(timeout=10.0)
    p, _ = b.open((b"c",), Ask("c-1", "client", "Q?", deadline=WALL + 3.0), 10, now=5.0, wall=WALL)
    assert p.deadline == pytest.approx(8.0) and b.forward(p, 5.0, WALL).deadline == pytest.approx(WALL + 3.0)
    p, _ = b.open((b"c",), Ask("c-2", "client", "Q?", deadline=WALL + 99.0), 10, now=5.0, wall=WALL)
    assert p.deadline == pytest.approx(15.0)  # never longer than the arbiter's own timeout


def test_expired_errors_are_counted_and_late_replies_told_apart() -> None:
    assert "expired" in ERROR_CODES
    b = _board()
    p1, _ = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    p2, _ = b.open((b"c",), Ask("c-2", "client", "Q?"), 10, 0.0)
    for p in (p1, p2):
        b.finish(p, 20.0)  # timed out
    b.on_receiver(ErrorReply(p1.rid, "r-llama", "expired", "dropped"), 10, 21.0)
    b.on_receiver(Reply(p2.rid, "r-llama", "llama", "Ada", -0.1, {}), 10, 21.0)
    assert (b.stats["late"], b.stats["error.expired"], b.stats["late_reply"]) == (2, 1, 1)


def test_a_late_reply_to_a_probe_is_no_wasted_work() -> None:
    """A probe waits only for the receivers yet to answer one; every receiver gets it, so the others answer late."""
    b = _board()
    b.roster.heartbeat(Heartbeat("", "r-new", "receiver", "ready", {"model": "qwen"}), 0.0, role="receiver")
    p, sender = b.probe(0.0)
    assert p.expected == {"qwen"}
    b.on_sender(Sent(p.rid, "s1", reached=2, receivers=2), route=sender.route)
    assert b.on_receiver(Reply(p.rid, "r-new", "qwen", "yes", -0.1, {}), 10, 0.5) is p
    b.finish(p, 0.5)
    b.on_receiver(Reply(p.rid, "r-llama", "llama", "yes", -0.1, {}), 10, 0.6)
    assert (b.stats["late"], b.stats["late_reply"]) == (1, 0)


# ---- the sender copies them into the frame it fans out ----


@pytest.mark.parametrize("mode", ["text", "token-budget", "latent"])
def test_the_sender_copies_the_deadline_into_its_frame(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentwire.sender import paths
    from latentwire.sender.process import Sender

    monkeypatch.setattr(paths, "payload", lambda *a: np.zeros((4, 32), np.float32))  # no encoder needed
    sender = Sender(encoder=None, fingerprint="fp", m=4, pid="s1")  # type: ignore[arg-type]
    ask = Ask("rid-1", "arb", "Who?", "Ada wrote it.", mode=mode, deadline=WALL + 60.0, opened=WALL)
    doc = (ask.question, []) if mode == "latent" else None
    frame, _ = sender._build_one(ask, doc)
    msg = decode_frame(frame)
    assert (msg.rid, msg.deadline, msg.opened) == ("rid-1", WALL + 60.0, WALL)
    plain, _ = sender._build_one(Ask("rid-2", "arb", "Who?", "Ada.", mode=mode), doc)
    assert decode_frame(plain).deadline is None and b"\xa1e" not in plain  # no deadline: the old frame
