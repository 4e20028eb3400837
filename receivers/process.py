"""The receiver process: a `Receiver` (`receiver.py`) behind sockets.

Frames come in on a PULL socket the receiver binds (so with CURVE it authenticates its senders); replies, errors
and heartbeats go out on a PUSH socket connected to the arbiter. A heartbeat thread keeps announcing the receiver
while it generates, and tells `Liveness` when it comes back from a silence.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import zmq

from latentwire.calibration import announced
from latentwire.checkpoint_config import load_config
from latentwire.processes import net
from latentwire.protocol import ErrorReply, Heartbeat, encode_frame, error_reply, peek_rid

from .adapter import adapter_schemas
from .backlog import Backlog
from .receiver import (
    MAX_BACKLOG,
    MAX_BATCH,
    MAX_BATCH_POSITIONS,
    MAX_SLOT_TOKENS,
    Liveness,
    Receiver,
    load_receiver,
    slot_cap,
)

log = logging.getLogger("latentwire.receiver")


class _Heartbeats(threading.Thread):
    """Sends "alive" on its own socket every HEARTBEAT_S, also while the main thread is generating."""

    def __init__(
        self, ctx: zmq.Context, replies: str, curve: net.Curve | None, hb: Heartbeat, liveness: Liveness
    ) -> None:
        super().__init__(daemon=True, name="heartbeats")
        self.sock = net.make_socket(ctx, zmq.PUSH)
        if curve:
            curve.client(self.sock, "arbiter")
        self.sock.connect(replies)
        self.hb, self.liveness, self.stop = hb, liveness, threading.Event()

    def run(self) -> None:
        frame = encode_frame(self.hb)
        while not self.stop.wait(net.HEARTBEAT_S):
            silences = self.liveness.silences
            self.liveness.beat()
            if self.liveness.silences > silences:
                log.warning("silent for over %.0f s (stopped?): dropping the work opened meanwhile", net.DEAD_AFTER_S)
            with contextlib.suppress(zmq.Again):  # no arbiter yet: it will hear the next one
                self.sock.send(frame, zmq.NOBLOCK)
        self.sock.close(0)


def _read(pull: zmq.Socket, rx: Receiver, backlog: Backlog, room: int) -> list[ErrorReply]:
    """Frames queued on `pull`, into `backlog` while it holds fewer than `room` requests (the rest stay on the
    socket: what is read is held in memory); the refusals among them."""
    refused = []
    while len(backlog) < room and pull.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        reply = rx.enqueue(pull.recv(zmq.NOBLOCK), backlog, None)
        if reply is not None:
            refused.append(reply)
    return refused


def open_receiver(
    model: str, ckpt: str | Path, name: str | None, pid: str, device: str, dtype: str, engine: str
) -> tuple[Receiver, dict]:
    """The receiver and its fitted score calibrations, from one parse of the checkpoint's config."""
    cfg = load_config(ckpt, adapters=adapter_schemas())
    rx = load_receiver(model, ckpt, name, pid, device, dtype, engine, cfg)
    return rx, cfg.models[rx.name].calibration


def serve(
    model: str,
    ckpt: str | Path,
    *,
    name: str | None = None,
    bind: str | None = None,
    replies: str | None = None,
    curve_dir: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    engine: str = "auto",
    max_new_tokens: int = 64,
    max_slot_tokens: int = MAX_SLOT_TOKENS,
    max_batch: int = MAX_BATCH,
    max_batch_positions: int = MAX_BATCH_POSITIONS,
    stop: net.StopFlag | None = None,
) -> None:
    """Run a receiver until SIGINT/SIGTERM; queued frames are answered with `shutting_down` on the way out."""
    bind, replies = net.address("receiver", bind), net.address("replies", replies)
    pid = net.process_id("receiver", name or model)
    curve = net.Curve.from_env("receiver", curve_dir)
    ctx = zmq.Context()
    pull = net.make_socket(ctx, zmq.PULL)
    if curve:
        curve.server(pull, "sender")
    pull.bind(bind)  # before the slow load, so senders are connected by the time we announce readiness
    bound_at = time.monotonic()
    out = net.make_socket(ctx, zmq.PUSH)
    if curve:
        curve.client(out, "arbiter")
    out.connect(replies)
    t0 = time.perf_counter()
    try:
        rx, fitted = open_receiver(model, ckpt, name, pid, device, dtype, engine)
    except BaseException:
        pull.close(0)
        out.close(0)
        if curve:
            curve.stop()
        ctx.term()
        raise
    rx.max_new_tokens, rx.max_slot_tokens = max_new_tokens, slot_cap(rx.llm, max_slot_tokens)
    rx.max_batch_positions = max_batch_positions
    load_s = time.perf_counter() - t0
    stop = stop if stop is not None else net.StopFlag()  # from here on a signal lets the request finish
    info: dict[str, str | int | float] = {
        "model": rx.name,
        "spec": model,
        "fingerprint": rx.fingerprint,
        "addr": bind,
        "load_s": round(load_s, 3),
        "threads": torch.get_num_threads(),
        "engine": rx.llm.engine,
    }
    cal = announced(fitted)  # each path's score calibration, for the arbiter's joint pick
    time.sleep(max(0.0, bound_at + 1.0 - time.monotonic()))  # let senders' reconnects land first
    stale = 0
    while pull.poll(0):  # sent while we were loading: their requests were opened without us, so they do not wait
        pull.recv()
        stale += 1
    if stale:
        log.info("dropped %d frames that arrived before this receiver was ready", stale)
    ready = Heartbeat("", pid, "receiver", "ready", info, cal)
    rx.liveness = Liveness()  # from the first heartbeat on, a silence means the arbiter took this one for dead
    out.send(encode_frame(ready))
    beats = _Heartbeats(ctx, replies, curve, Heartbeat("", pid, "receiver", "alive", info, cal), rx.liveness)
    beats.start()
    log.info("receiver %s ready on %s (load %.1f s)", rx.name, bind, load_s)
    backlog: Backlog[tuple[None, object]] = Backlog(rx.max_batch_positions, max_batch)

    def read() -> Iterator[tuple[None, ErrorReply]]:
        """What arrived, into the backlog (its refusals out); nothing once stopping: what runs is finished."""
        if not stop:
            yield from ((None, reply) for reply in _read(pull, rx, backlog, MAX_BACKLOG))

    dropped = 0  # expired frames of the current backlog
    try:
        while not stop:
            if not backlog and not pull.poll(200):
                continue
            # read again between the steps of every generate call (a span of the prompt, a token), so what arrived
            # meanwhile competes by size (`Backlog`): a short ask runs between two steps of a long call, not after
            # it, nor after every long ask read before it (`Receiver.generate_next`)
            expired = 0
            for _, reply in itertools.chain(read(), rx.generate_next(backlog, read)):
                out.send(encode_frame(reply))
                expired += isinstance(reply, ErrorReply) and reply.code == "expired"
            dropped += expired
            if dropped and not expired:  # one line per backlog, when it is through
                log.info("dropped %d frames unanswered: nobody waited for them any more", dropped)
                dropped = 0
        for _, reply in rx.refuse_all(backlog, f"receiver {rx.name} stopping"):  # read, never generated
            out.send(encode_frame(reply))
        while pull.poll(0):  # explicit failures for everything already queued here
            data = pull.recv()
            out.send(encode_frame(error_reply(peek_rid(data), pid, "shutting_down", f"receiver {rx.name} stopping")))
    finally:
        beats.stop.set()
        beats.join(2)
        with contextlib.suppress(zmq.ZMQError):
            out.send(encode_frame(Heartbeat("", pid, "receiver", "stopping", info, cal)), zmq.NOBLOCK)
        pull.close()
        out.close()
        if curve:
            curve.stop()
        ctx.term()
        log.info("receiver %s stopped", rx.name)
