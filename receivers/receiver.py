"""A receiver process: one frozen LLM + its adapter, answering latent and text frames.

Frames come in on a PULL socket the receiver binds (so with CURVE it authenticates its senders); replies,
errors and heartbeats go out on a PUSH socket connected to the arbiter. `Receiver.handle` is the whole
per-frame logic and never raises: a bad frame gets an ErrorReply and the loop keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import zmq

from latentwire import net
from latentwire.protocol import (
    ErrorReply,
    Heartbeat,
    LatentRequest,
    ProtocolError,
    Reply,
    TextRequest,
    decode_frame,
    dequantize,
    encode_frame,
    error_reply,
    peek_rid,
)

log = logging.getLogger("latentwire.receiver")


def error_code(e: ProtocolError) -> str:
    """A machine-readable code for why a frame was refused (the message stays human-readable)."""
    text = str(e)
    if "unsupported protocol version" in text:
        return "bad_version"
    if "unknown quant scheme" in text:
        return "bad_quant"
    return "bad_frame"


@dataclass
class Receiver:
    """Frame in, Reply or ErrorReply out; holds the LLM, the adapter and the checkpoint's fingerprint."""

    llm: object  # latentwire.models.LLM
    adapter: torch.nn.Module
    name: str  # the model's name in the checkpoint (what the arbiter calibrates and reports by)
    fingerprint: str
    pid: str  # this process's id, the `sender` of its frames
    max_new_tokens: int = 64  # cap on what a request may ask for (generation time is the receiver's cost)

    def handle(self, data: bytes) -> Reply | ErrorReply:
        t0 = time.perf_counter()
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            return error_reply(peek_rid(data), self.pid, error_code(e), str(e))
        try:
            if isinstance(msg, LatentRequest):
                return self._latent(msg, t0)
            if isinstance(msg, TextRequest):
                return self._text(msg, t0)
            return error_reply(
                msg.rid, self.pid, "unexpected_kind", f"a receiver answers lat and txt frames, not {type(msg).__name__}"
            )
        except Exception as e:  # noqa: BLE001 - one failed request must not take the receiver down
            log.exception("request %s failed", getattr(msg, "rid", ""))
            return error_reply(getattr(msg, "rid", ""), self.pid, "internal", f"{type(e).__name__}: {e}")

    def _latent(self, msg: LatentRequest, t0: float) -> Reply | ErrorReply:
        if msg.fingerprint != self.fingerprint:
            return error_reply(
                msg.rid,
                self.pid,
                "wrong_checkpoint",
                f"latent from checkpoint {msg.fingerprint[:12]}, this receiver serves {self.fingerprint[:12]}",
            )
        d_z = int(self.adapter.cfg.d_z)
        if msg.latent.shape[1] != d_z:
            why = f"latent width {msg.latent.shape[1]}, the adapter takes {d_z}"
            return error_reply(msg.rid, self.pid, "bad_shape", why)
        z = torch.from_numpy(dequantize(msg.latent)).to(self.llm.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            slot = self.adapter.to_slots(z[None])[0].to(self.llm.model.dtype)
        t2 = time.perf_counter()
        return self._answer(msg, [slot], {"decode": t1 - t0, "adapt": t2 - t1}, t2, self.fingerprint)

    def _text(self, msg: TextRequest, t0: float) -> Reply | ErrorReply:
        from latentwire.lm import text_slots

        slots = text_slots(self.llm, [msg.text], msg.budget)
        t1 = time.perf_counter()
        return self._answer(msg, slots, {"tokenize": t1 - t0}, t1, "")

    def _answer(self, msg, slots, durations: dict[str, float], t_start: float, fingerprint: str) -> Reply:
        from latentwire.lm import generate
        from latentwire.metrics import postprocess

        gen = generate(self.llm, slots, min(msg.max_new_tokens, self.max_new_tokens))[0]
        t_end = time.perf_counter()
        durations = {**durations, "generate": t_end - t_start, "total": t_end - t_start + sum(durations.values())}
        return Reply(msg.rid, self.pid, self.name, postprocess(gen.text), gen.score, durations, fingerprint)


def load_receiver(model: str, ckpt: str | Path, name: str | None, pid: str, device: str, dtype: str) -> Receiver:
    """Load the frozen LLM and the checkpoint's adapter for it (refused if they do not match)."""
    from latentwire import checkpoint
    from latentwire.models import load_llm

    from .adapter import load_adapter

    llm = load_llm(model, device=device, dtype=dtype)
    name = name or model
    adapter = load_adapter(ckpt, name, llm)
    return Receiver(llm, adapter, name, checkpoint.fingerprint(ckpt), pid)


class _Heartbeats(threading.Thread):
    """Sends "alive" on its own socket every HEARTBEAT_S, also while the main thread is generating."""

    def __init__(self, ctx: zmq.Context, replies: str, curve: net.Curve | None, hb: Heartbeat) -> None:
        super().__init__(daemon=True, name="heartbeats")
        self.sock = net.make_socket(ctx, zmq.PUSH)
        if curve:
            curve.client(self.sock, "arbiter")
        self.sock.connect(replies)
        self.hb, self.stop = hb, threading.Event()

    def run(self) -> None:
        frame = encode_frame(self.hb)
        while not self.stop.wait(net.HEARTBEAT_S):
            with contextlib.suppress(zmq.Again):  # no arbiter yet: it will hear the next one
                self.sock.send(frame, zmq.NOBLOCK)
        self.sock.close(0)


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
    max_new_tokens: int = 64,
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
        rx = load_receiver(model, ckpt, name, pid, device, dtype)
        from latentwire.checkpoint import read_config

        cal = read_config(ckpt)["models"][rx.name].get("calibration") or {}
    except BaseException:
        pull.close(0)
        out.close(0)
        if curve:
            curve.stop()
        ctx.term()
        raise
    rx.max_new_tokens = max_new_tokens
    load_s = time.perf_counter() - t0
    stop = stop if stop is not None else net.StopFlag()  # from here on a signal lets the request finish
    info: dict[str, str | int | float] = {
        "model": rx.name,
        "spec": model,
        "fingerprint": rx.fingerprint,
        "addr": bind,
        "load_s": round(load_s, 3),
        "threads": torch.get_num_threads(),
        **{f"cal.{k}": float(v) for k, v in cal.items() if isinstance(v, (int, float))},
    }
    time.sleep(max(0.0, bound_at + 1.0 - time.monotonic()))  # let senders' reconnects land first
    stale = 0
    while pull.poll(0):  # sent while we were loading: their requests were opened without us, so they do not wait
        pull.recv()
        stale += 1
    if stale:
        log.info("dropped %d frames that arrived before this receiver was ready", stale)
    ready = Heartbeat("", pid, "receiver", "ready", info)
    out.send(encode_frame(ready))
    beats = _Heartbeats(ctx, replies, curve, Heartbeat("", pid, "receiver", "alive", info))
    beats.start()
    log.info("receiver %s ready on %s (load %.1f s)", rx.name, bind, load_s)
    try:
        while not stop:
            if not pull.poll(200):
                continue
            out.send(encode_frame(rx.handle(pull.recv())))
        while pull.poll(0):  # explicit failures for everything already queued here
            data = pull.recv()
            out.send(encode_frame(error_reply(peek_rid(data), pid, "shutting_down", f"receiver {rx.name} stopping")))
    finally:
        beats.stop.set()
        beats.join(2)
        with contextlib.suppress(zmq.ZMQError):
            out.send(encode_frame(Heartbeat("", pid, "receiver", "stopping", info)), zmq.NOBLOCK)
        pull.close()
        out.close()
        if curve:
            curve.stop()
        ctx.term()
        log.info("receiver %s stopped", rx.name)
