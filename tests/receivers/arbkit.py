"""A live arbiter (its `serve` on a thread, loopback ports) with a scripted sender and receiver speaking raw frames:
what the arbiter does at its sockets, without any model."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from latentwire.arbiter import process as arbiter
from latentwire.processes import net
from latentwire.protocol import Ask, Heartbeat, Message, Reply, Sent, decode_frame, encode_frame

FP = "f" * 64


def addr() -> str:
    return f"tcp://127.0.0.1:{net.free_port()}"


@dataclass
class LiveArbiter:
    """`start()` runs the arbiter and a sender (DEALER) plus one receiver (PUSH, model `qwen`) proven by the
    arbiter's probe; `serve_asks` plays the sender and the receiver for whatever the arbiter forwards."""

    timeout: float = 5.0
    curve_dir: str | None = None
    front: str = field(default_factory=addr)
    back: str = field(default_factory=addr)
    replies: str = field(default_factory=addr)
    ctx: zmq.Context = field(default_factory=zmq.Context)
    stop: net.StopFlag = field(default_factory=lambda: net.StopFlag(install=False))

    def start(self, prove: bool = True) -> LiveArbiter:
        kw = dict(frontend=self.front, backend=self.back, replies=self.replies, timeout=self.timeout, drain=0.2)
        self.thread = threading.Thread(
            target=arbiter.serve, kwargs={**kw, "stop": self.stop, "curve_dir": self.curve_dir}
        )
        self.thread.start()
        self.sender = self.socket(zmq.DEALER, self.back, "sender", "s1")
        self.receiver = self.socket(zmq.PUSH, self.replies, "receiver")
        if prove:
            self.beat()
            rid = self.forwarded(10.0).rid  # the arbiter's probe
            self.answer(rid)
            assert wait_for(lambda: self.status().info.get("n_receivers") == 1), "the receiver was not proven"
        return self

    def socket(self, kind: int, address: str, role: str = "client", identity: str | None = None) -> zmq.Socket:
        """A socket connected to the arbiter as `role` (with CURVE, holding that role's key)."""
        s = net.make_socket(self.ctx, kind, identity=identity)
        if self.curve_dir:
            net.Curve(Path(self.curve_dir), role).client(s, "arbiter")
        s.connect(address)
        return s

    def beat(self, receiver_pid: str = "r-qwen", push: zmq.Socket | None = None) -> None:
        self.sender.send(
            encode_frame(Heartbeat("", "s1", "sender", "ready", {"fingerprint": FP, "models": "qwen", "receivers": 1}))
        )
        hb = Heartbeat("", receiver_pid, "receiver", "ready", {"model": "qwen", "fingerprint": FP})
        (push or self.receiver).send(encode_frame(hb))

    def forwarded(self, timeout: float = 1.0) -> Ask | None:
        """The next ask the arbiter forwards to the sender (None: none within `timeout`)."""
        if not self.sender.poll(int(timeout * 1000)):
            return None
        msg = decode_frame(self.sender.recv())
        assert isinstance(msg, Ask)
        return msg

    def answer(self, rid: str, answer: str = "Ada", pid: str = "r-qwen") -> None:
        self.sender.send(encode_frame(Sent(rid, "s1", 100, 50, 50, 0, 100, 1, 1, {})))
        self.receiver.send(encode_frame(Reply(rid, pid, "qwen", answer, -0.5, {"generate": 0.01})))

    def status(self) -> Heartbeat:
        c = self.socket(zmq.DEALER, self.front)
        try:
            c.send(encode_frame(Heartbeat("st", "client", "client", "ping")))
            assert c.poll(5000)
            msg = decode_frame(c.recv())
            assert isinstance(msg, Heartbeat)
            return msg
        finally:
            c.close(0)

    def close(self) -> None:
        for s in (self.sender, self.receiver):
            s.close(0)
        self.stop.set()
        self.thread.join(10)
        self.ctx.term()


def recv(sock: zmq.Socket, timeout: float = 5.0) -> Message | None:
    return decode_frame(sock.recv()) if sock.poll(int(timeout * 1000)) else None


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False
