"""The sender process: Ask in (from the arbiter), one latent or text frame out to every receiver.

It connects a DEALER to the arbiter's backend (so several senders can share the load) and one PUSH per
receiver address (fan-out; each receiver binds, and with CURVE accepts only known senders). PUSH sockets use
ZMQ_IMMEDIATE, so a receiver that is down is skipped at once instead of queuing stale work for it. After the
fan-out it reports to the arbiter what it sent (a `Sent`: the frame's bytes, the receivers reached, its timings),
or an ErrorReply when the request cannot be built.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from latentwire.processes import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    Message,
    ProtocolError,
    Sent,
    TextRequest,
    decode_frame,
    encode_frame,
    error_reply,
    frame_size,
    latent_request,
    path_spec,
    peek_rid,
)

from .bounds import Refused, bounded_paragraphs, bounded_question

if TYPE_CHECKING:
    from latentwire.checkpoint_config import CheckpointConfig

    from .sharer import SharerEncoder

log = logging.getLogger("latentwire.sender")
MAX_BATCH = 8  # asks read together by the sharer (those that queued while it read the last batch)


@dataclass
class Sender:
    """Builds the request frame for an Ask: encoder + quantiser for latents, the slot text otherwise."""

    encoder: SharerEncoder  # selects, reads with the sharer, writes the latent (`paths.payload` dispatches)
    fingerprint: str
    m: int
    pid: str
    expired: int = 0  # asks dropped unread because their deadline had passed (in the heartbeats' info)

    def build_many(self, asks: Sequence[Ask]) -> list[tuple[bytes, dict[str, float]] | Exception]:
        """Frames for asks that arrived together: the sharer reads all of their evidence in one batch (its greedy
        steps cost about what one question's do), the rest is per ask. Each item is (frame, durations) or the
        exception that ask alone raised (a ProtocolError when it cannot be expressed)."""
        from .paths import needs_reading

        t0, cpu0 = time.perf_counter(), time.process_time()
        docs: dict[int, tuple | Exception] = {}  # each sender path's (question, paragraphs), parsed once
        for i, a in enumerate(asks):
            if path_spec(a.path).sender:
                try:
                    docs[i] = (bounded_question(a.question), bounded_paragraphs(a.context))
                except Exception as e:  # noqa: BLE001 - this ask alone fails with it (Refused: over a bound)
                    docs[i] = e
        evidence: dict[int, str] = {}  # the selection of each ask the sharer reads, made once
        for i, d in docs.items():
            if needs_reading(asks[i].path) and not isinstance(d, Exception):
                try:
                    evidence[i] = self.encoder.evidence(d)
                    self.encoder.prompt_ids(d[0], evidence[i])  # Refused over the sharer's token cap, unread
                except Exception as e:  # noqa: BLE001 - this ask alone fails with it
                    docs[i] = e
                    evidence.pop(i, None)
        shared = list(evidence)
        readings: dict[int, object] = {}
        if shared:
            try:
                got = self.encoder.read(
                    [docs[i] for i in shared], batch_size=len(shared), evidence=[evidence[i] for i in shared]
                )
                readings = dict(zip(shared, got, strict=True))
            except Exception:  # noqa: BLE001 - one bad ask must not fail the batch: read each alone instead
                log.exception("batched reading failed; reading one at a time")
        shared_s = (time.perf_counter() - t0) / max(1, len(shared))
        out: list[tuple[bytes, dict[str, float]] | Exception] = []
        for i, ask in enumerate(asks):
            try:
                frame, durations = self._build_one(ask, docs.get(i), readings.get(i))
                if i in readings:
                    durations["encode"] += shared_s  # its share of the batched reading
                out.append((frame, durations))
            except Exception as e:  # noqa: BLE001 - reported per ask by the caller
                out.append(e)
        cpu_share = (time.process_time() - cpu0) / len(asks)  # every thread of this process: the cost of a question
        for item in out:
            if not isinstance(item, Exception):
                item[1]["cpu"] = cpu_share
        return out

    def _build_one(
        self, ask: Ask, doc: tuple | Exception | None, reading: object | None = None
    ) -> tuple[bytes, dict[str, float]]:
        """One ask's frame from its parsed `doc` (sender paths); `reading` is the sharer's when the batch read it."""
        from latentwire.prompts import slot_text

        from .paths import payload

        if isinstance(doc, Exception):
            raise doc
        t0 = time.perf_counter()
        durations: dict[str, float] = {}
        times = {"deadline": ask.deadline, "opened": ask.opened}  # the arbiter's: receivers drop what nobody awaits
        msg: Message
        if doc is not None:
            out = payload(self.encoder, ask.path, doc, reading)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            durations["encode"] = t1 - t0
            if isinstance(out, str):
                msg = TextRequest(ask.rid, self.pid, out, None, ask.max_new_tokens, **times)
            else:
                msg = latent_request(
                    ask.rid,
                    self.pid,
                    self.fingerprint,
                    out,
                    ask.quant,
                    ask.group_size,
                    max_new_tokens=ask.max_new_tokens,
                    **times,
                )
        else:
            t1 = t0
            budget = (ask.budget or self.m) if path_spec(ask.path).budget else None
            text = slot_text(ask.question, ask.context)
            msg = TextRequest(ask.rid, self.pid, text, budget, ask.max_new_tokens, **times)
        frame = encode_frame(msg)
        durations["frame"] = time.perf_counter() - t1
        return frame, durations


def report(rid: str, pid: str, frame: bytes, reached: int, total: int, durations: dict[str, float]) -> Sent:
    """The report for the arbiter: exact bytes of the frame as sent (per receiver) and how many receivers got it."""
    size = frame_size(frame)
    return Sent(
        rid, pid, size.total, size.header, size.body, size.scales, size.total * reached, reached, total, durations
    )


def open_sender(ckpt: str | Path, device: str, engine: str, pid: str) -> tuple[Sender, CheckpointConfig]:
    """The sender and its checkpoint's config, from one parse of config.json."""
    # imported here, not at the top: both bring torch, which importing this module (the frame building) needs not
    from latentwire import checkpoint

    from .encoder import load_encoder

    cfg = checkpoint.load_config(ckpt)
    encoder = load_encoder(ckpt, device, engine=engine, config=cfg)
    return Sender(encoder, checkpoint.fingerprint(ckpt), int(cfg.encoder["m"]), pid), cfg


def serve(
    ckpt: str | Path,
    *,
    backend: str | None = None,
    receivers: str | None = None,
    curve_dir: str | None = None,
    device: str = "cpu",
    engine: str = "auto",
    stop: net.StopFlag | None = None,
    max_batch: int = MAX_BATCH,
) -> None:
    """Run a sender until SIGINT/SIGTERM (the requests being encoded are finished and reported first); its sharer
    runs on `engine` (`latentwire.engine`)."""
    backend, targets = net.address("backend", backend), net.address_list("receivers", receivers)
    pid = net.process_id("sender")
    curve = net.Curve.from_env("sender", curve_dir)
    t0 = time.perf_counter()
    sender, cfg = open_sender(ckpt, device, engine, pid)
    load_s = time.perf_counter() - t0
    stop = stop if stop is not None else net.StopFlag()  # a signal while loading just ends the process

    ctx = zmq.Context()
    dealer = net.make_socket(ctx, zmq.DEALER, identity=pid)
    if curve:
        curve.client(dealer, "arbiter")
    dealer.connect(backend)
    pushes = []
    for addr in targets:
        s = net.make_socket(ctx, zmq.PUSH)
        s.immediate = True  # only queue to a receiver that is connected now
        s.reconnect_ivl_max = 500  # a restarted receiver is back within half a second
        if curve:
            curve.client(s, "receiver")
        s.connect(addr)
        pushes.append(s)
    info: dict[str, str | int | float] = {
        "fingerprint": sender.fingerprint,
        "m": sender.m,
        "d_z": int(cfg.encoder["d_z"]),
        "receivers": len(pushes),
        "models": ",".join(sorted(cfg.models))[:1000],  # receivers must serve these (checked at readiness)
        "load_s": round(load_s, 3),
        "engine": getattr(getattr(sender.encoder, "llm", None), "engine", "float32"),  # the sharer's, if any
    }
    dealer.send(encode_frame(Heartbeat("", pid, "sender", "ready", info)))
    log.info("sender ready (%d receivers, load %.1f s)", len(pushes), load_s)
    last_beat = time.monotonic()
    worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    try:

        def alive() -> bytes:
            return encode_frame(Heartbeat("", pid, "sender", "alive", {**info, "expired": sender.expired}))

        while not stop:
            if dealer.poll(200):
                # a sharer reads for seconds: the work runs on a worker thread (the PUSH sockets go with it, one
                # request at a time) while this thread keeps the heartbeats going, so the arbiter never takes a
                # busy sender for a dead one and re-sends its request
                batch = [dealer.recv()]
                while len(batch) < max(1, max_batch) and dealer.poll(0):  # what queued meanwhile is read together
                    batch.append(dealer.recv())
                job = worker.submit(_handle_many, sender, batch, pushes)
                while not futures.wait([job], timeout=net.HEARTBEAT_S / 2).done:
                    last_beat = _beat(dealer, alive, last_beat)
                for reply in job.result():
                    dealer.send(encode_frame(reply))
            last_beat = _beat(dealer, alive, last_beat)
    finally:
        worker.shutdown(wait=True)
        with contextlib.suppress(zmq.ZMQError):
            dealer.send(encode_frame(Heartbeat("", pid, "sender", "stopping", info)), zmq.NOBLOCK)
        for s in [dealer, *pushes]:
            s.close()
        if curve:
            curve.stop()
        ctx.term()
        log.info("sender stopped")


def _beat(dealer: zmq.Socket, alive: Callable[[], bytes], last: float) -> float:
    """Send an `alive` heartbeat if one is due; returns when the last one was sent."""
    if time.monotonic() - last < net.HEARTBEAT_S:
        return last
    with contextlib.suppress(zmq.Again):  # no arbiter yet: it hears the next one
        dealer.send(alive(), zmq.NOBLOCK)
    return time.monotonic()


def _handle_many(sender: Sender, batch: Sequence[bytes], pushes: list[zmq.Socket]) -> list[Sent | ErrorReply]:
    """Asks from the arbiter -> fan-out -> one report each (never raises; one bad ask fails alone)."""
    replies: list[Sent | ErrorReply | None] = [None] * len(batch)
    asks: list[tuple[int, Ask]] = []
    for i, data in enumerate(batch):
        try:
            ask = decode_frame(data)
        except ProtocolError as e:
            replies[i] = error_reply(peek_rid(data), sender.pid, "bad_request", str(e))
            continue
        if not isinstance(ask, Ask):
            why = f"a sender takes ask frames, not {type(ask).__name__}"
            replies[i] = error_reply(ask.rid, sender.pid, "unexpected_kind", why)
        elif ask.deadline is not None and (late := time.time() - ask.deadline) >= 0:
            sender.expired += 1  # before any reading: an ask nobody waits for costs nothing
            why = f"dropped unread, nobody waits for it: deadline passed {late:.1f} s ago"
            replies[i] = error_reply(ask.rid, sender.pid, "expired", why)
        else:
            asks.append((i, ask))
    built = sender.build_many([a for _, a in asks]) if asks else []
    for (i, ask), result in zip(asks, built, strict=True):
        if isinstance(result, Refused):
            replies[i] = error_reply(ask.rid, sender.pid, result.code, str(result))
        elif isinstance(result, ProtocolError):
            replies[i] = error_reply(ask.rid, sender.pid, "bad_request", str(result))
        elif isinstance(result, Exception):
            log.error("encode failed: %s: %s", type(result).__name__, result)
            replies[i] = error_reply(ask.rid, sender.pid, "internal", f"{type(result).__name__}: {result}")
        else:
            replies[i] = _fan_out(sender, ask, *result, pushes)
    return [r for r in replies if r is not None]


def _fan_out(sender: Sender, ask: Ask, frame: bytes, durations: dict[str, float], pushes: list[zmq.Socket]) -> Sent:
    reached = 0
    for s in pushes:
        try:
            s.send(frame, zmq.NOBLOCK)
            reached += 1
        except zmq.Again:
            pass  # not connected (down or restarting) or its queue is full: the arbiter's join handles it
    return report(ask.rid, sender.pid, frame, reached, len(pushes), durations)
