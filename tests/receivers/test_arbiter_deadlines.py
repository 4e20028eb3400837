"""An ask whose deadline has passed before it reaches a sender is answered at once and never forwarded: nobody
spends a CPU-second on it (counted as `expired_unsent`)."""

from __future__ import annotations

import time

import pytest
import zmq
from arbkit import LiveArbiter, recv

from latentwire.protocol import Ask, ErrorReply, JointReply, encode_frame


@pytest.fixture
def live():
    arb = LiveArbiter().start()
    yield arb
    arb.close()


def test_an_ask_past_its_deadline_is_answered_and_not_forwarded(live):
    client = live.socket(zmq.DEALER, live.front)
    try:
        client.send(encode_frame(Ask("late", "c", "Who?", "Ada wrote it.", mode="text", deadline=time.time() - 1)))
        t0 = time.monotonic()
        msg = recv(client)
        assert isinstance(msg, ErrorReply) and msg.rid == "late" and msg.code == "no_answer", msg
        assert time.monotonic() - t0 < 1.0
        assert live.forwarded(0.5) is None  # the sender never saw it
        assert live.status().info.get("expired_unsent") == 1

        client.send(encode_frame(Ask("on-time", "c", "Who?", "Ada wrote it.", mode="text", deadline=time.time() + 5)))
        fwd = live.forwarded(5.0)
        assert fwd is not None and fwd.deadline is not None
        live.answer(fwd.rid)
        msg = recv(client)
        assert isinstance(msg, JointReply) and msg.rid == "on-time" and msg.answer == "Ada"
    finally:
        client.close(0)


def test_an_ask_over_a_limit_is_refused_under_its_own_id():
    """The id is read before the limits are applied: a context over max_text_bytes (in a frame under 1 MiB) is
    refused naming the request, the `i` key last in the frame."""
    import msgpack

    from latentwire.protocol import DEFAULT_LIMITS, peek_rid

    wire = {
        "p": "latentwire",
        "v": 2,
        "k": "ask",
        "s": "c",
        "x": "Who?",
        "c": "x" * (DEFAULT_LIMITS.max_text_bytes + 1),
    }
    wire |= {"m": "text", "q": "int8", "g": None, "n": None, "t": 8, "i": "big-1"}
    data = msgpack.packb(wire)
    assert peek_rid(data) == "big-1"
    live = LiveArbiter().start(prove=False)
    client = live.socket(zmq.DEALER, live.front)
    try:
        client.send(data)
        msg = recv(client)
        assert isinstance(msg, ErrorReply) and msg.rid == "big-1" and msg.code == "bad_frame", msg
    finally:
        client.close(0)
        live.close()
