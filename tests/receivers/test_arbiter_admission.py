"""Fair admission keys on what a flooder cannot multiply for free: the peer's address on plain TCP (the CURVE key
with CURVE), never the ROUTER identity. A polite client beside 300 flooding sockets from another host, or beside a
socket rotating its envelope, is still answered; an envelope that is not [identity] or [identity, b""] is dropped
and never held."""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from arbkit import LiveArbiter, recv

from latentwire.protocol import Ask, JointReply, encode_frame


@pytest.fixture
def live():
    arb = LiveArbiter(timeout=3.0).start()
    done = threading.Event()

    def play_sender() -> None:  # answers the polite client's asks only: the flood's hold their slots to the end
        while not done.is_set():
            fwd = arb.forwarded(0.05)
            if fwd is not None and fwd.question.startswith("polite"):
                arb.answer(fwd.rid)

    t = threading.Thread(target=play_sender, daemon=True)
    t.start()
    yield arb
    done.set()
    t.join(5)
    arb.close()


def _polite(live: LiveArbiter, n: int, every: float) -> int:
    """Asks `n` questions one at a time from 127.0.0.1; how many were answered."""
    c = live.socket(zmq.DEALER, live.front)
    answered = 0
    try:
        for i in range(n):
            c.send(encode_frame(Ask(f"p-{i}", "polite", f"polite {i}?", "Ada wrote it.", mode="text")))
            msg = recv(c, 5.0)
            answered += isinstance(msg, JointReply)
            time.sleep(every)
    finally:
        c.close(0)
    return answered


def _from(live: LiveArbiter, source: str) -> zmq.Socket:
    s = live.ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(f"tcp://{source}:0;{live.front.removeprefix('tcp://')}")
    return s


def test_300_identities_from_one_host_hold_one_fair_share(live):
    flood = [_from(live, "127.0.0.2") for _ in range(300)]
    try:
        for i, s in enumerate(flood):
            s.send(encode_frame(Ask(f"f-{i}", "flood", "flood?", "Ada wrote it.", mode="text")))
        time.sleep(0.5)
        st = live.status().info
        assert st["inflight"] <= 128 and st["clients"] == 1, st  # one host: one client, half the window at most
        assert _polite(live, 20, 0.05) >= 19
    finally:
        for s in flood:
            s.close(0)


def test_a_rotating_envelope_is_dropped_not_held(live):
    rotating = live.socket(zmq.DEALER, live.front)
    try:
        ask = encode_frame(Ask("r", "rot", "rotate?", "Ada wrote it.", mode="text"))
        for i in range(300):
            rotating.send_multipart([i.to_bytes(4, "big") * 256, ask])  # a new 1 KiB "client" per ask
        for _ in range(4):
            rotating.send_multipart([b"\x01" * (1 << 20), ask])  # a 1 MiB tag: the socket's limit
        assert _polite(live, 10, 0.05) == 10
        st = live.status().info
        assert st["bad_envelope"] == 304 and st["inflight"] == 0 and st["clients"] == 0, st
        assert recv(rotating, 0.2) is None  # nothing to answer: not an envelope the arbiter can reply to
    finally:
        rotating.close(0)
