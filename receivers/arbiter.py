"""The arbiter: front door for clients, owner of request ids and timeouts, joiner of the receivers' replies.

    client DEALER -> [frontend ROUTER] arbiter [backend ROUTER] <- sender DEALER (load-balanced)
                                         [replies PULL]   <- receivers PUSH (replies, errors, heartbeats)

`Board` is the whole join/pick/timeout logic without sockets (unit-tested directly); `serve` wires it to
ZeroMQ. Raw log-probs of two models are not comparable, so answers are picked on each receiver's calibrated
P(correct) (Platt parameters from the checkpoint config, announced by the receiver in its heartbeat), ties
broken by model name. Every Ask is answered exactly once: a JointReply, or an ErrorReply saying why.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import zmq

from latentwire import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    Message,
    ProtocolError,
    Reply,
    decode_frame,
    encode_frame,
    error_reply,
    frame_size,
)
from latentwire.receivers.calibration import Calibration, agreement
from latentwire.receivers.calibration import pick as pick_answer

log = logging.getLogger("latentwire.arbiter")
FINISHED_MEMORY = 100_000  # finished request ids remembered to tell late replies from unknown ones


def calibration_from_info(info: dict) -> Calibration:
    """The Platt map a receiver announced (`cal.a`, `cal.b`, ...); identity when it announced none."""
    known = {f.name for f in fields(Calibration)}
    d = {k[4:]: float(v) for k, v in info.items() if k.startswith("cal.") and k[4:] in known and _is_num(v)}
    for k in ("n", "positives"):
        if k in d:
            d[k] = int(d[k])
    return Calibration(**d)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float))  # heartbeat info may also hold str: never trust its type


@dataclass
class Peer:
    """A sender or receiver the arbiter has heard from."""

    pid: str
    role: str
    name: str  # model name for receivers, the pid for senders
    last_seen: float
    status: str = "ready"
    route: bytes = b""  # ROUTER identity (senders)
    calibration: Calibration = field(default_factory=Calibration)
    inflight: int = 0


@dataclass
class Pending:
    """One request being joined."""

    rid: str  # the arbiter's id, unique across clients and arbiter restarts
    client: tuple[bytes, ...]  # ROUTER envelope of the client (identity, plus b"" for REQ clients)
    ask: Ask  # as the client sent it (its rid is the client's)
    expected: frozenset[str]  # model names alive when the request was opened
    started: float
    deadline: float
    sender: str = ""  # pid of the sender it was dispatched to
    report: dict = field(default_factory=dict)  # the sender's `sent` info
    replies: dict[str, Reply] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # model -> "code: message"
    arrived: dict[str, float] = field(default_factory=dict)
    nbytes: Counter = field(default_factory=Counter)
    failure: ErrorReply | None = None  # set when the request failed before reaching receivers

    def answered(self) -> set[str]:
        return set(self.replies) | set(self.errors)

    def complete(self) -> bool:
        return self.failure is not None or (bool(self.report) and self.expected <= self.answered())


def pick(replies: dict[str, Reply], calibration: Callable[[str], Calibration]) -> tuple[str, float]:
    """The model whose answer wins: non-empty answers first, then calibrated score, then model name."""
    cals = {m: calibration(m) for m in replies}
    best = pick_answer({m: (r.answer, r.score) for m, r in replies.items()}, cals)
    return best, cals[best](replies[best].score)


def agree(replies: dict[str, Reply]) -> int:
    """1 when at least two receivers answered and their normalised answers are all equal."""
    return int(agreement([r.answer for r in replies.values()]))


class Board:
    """Join state: live peers, pending requests, counters. Time is passed in, so tests need no sleeping."""

    def __init__(self, pid: str, timeout: float = 60.0, dead_after: float = net.DEAD_AFTER_S) -> None:
        self.pid, self.timeout, self.dead_after = pid, timeout, dead_after
        self.peers: dict[str, Peer] = {}
        self.pending: dict[str, Pending] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.stats: Counter = Counter()
        self._prefix, self._seq = uuid.uuid4().hex[:8], 0

    # ---- peers ----

    def heartbeat(self, hb: Heartbeat, now: float, route: bytes = b"") -> None:
        name = str(hb.info.get("model", hb.sender)) if hb.role == "receiver" else hb.sender
        peer = self.peers.get(hb.sender)
        if peer is None:
            peer = self.peers[hb.sender] = Peer(hb.sender, hb.role, name, now)
            self.stats[f"joined.{hb.role}"] += 1
            log.info("%s %s joined (%s)", hb.role, name, hb.sender)
        peer.last_seen, peer.status = now, hb.status
        peer.route = route or peer.route
        if hb.role == "receiver":
            peer.calibration = calibration_from_info(hb.info)
        if hb.status == "stopping":
            log.info("%s %s is stopping", hb.role, name)

    def alive(self, role: str, now: float) -> list[Peer]:
        return [
            p
            for p in self.peers.values()
            if p.role == role and p.status != "stopping" and now - p.last_seen <= self.dead_after
        ]

    def calibration(self, model: str) -> Calibration:
        """The calibration the most recently heard receiver of `model` announced."""
        peers = [p for p in self.peers.values() if p.role == "receiver" and p.name == model]
        return max(peers, key=lambda p: p.last_seen).calibration if peers else Calibration()

    def status(self, now: float) -> Heartbeat:
        receivers = sorted({p.name for p in self.alive("receiver", now)})
        senders = self.alive("sender", now)
        info: dict[str, str | int | float] = {
            "receivers": ",".join(receivers),
            "n_receivers": len(receivers),
            "senders": len(senders),
            "inflight": len(self.pending),
            "timeout": self.timeout,
            **{k: v for k, v in sorted(self.stats.items())[:48]},
        }
        return Heartbeat("", self.pid, "arbiter", "ready" if receivers and senders else "waiting", info)

    # ---- requests ----

    def open(self, client: tuple[bytes, ...], ask: Ask, ask_bytes: int, now: float) -> tuple[Pending, Peer | None]:
        """Register a request and choose its sender (least in flight); a failure is set when none can serve."""
        self._seq += 1
        rid = f"{self._prefix}-{self._seq}"
        expected = frozenset(p.name for p in self.alive("receiver", now))
        p = Pending(rid, client, ask, expected, now, now + self.timeout)
        p.nbytes["ask"] = ask_bytes
        self.pending[rid] = p
        senders = sorted(self.alive("sender", now), key=lambda s: (s.inflight, s.pid))
        if not expected:
            p.failure = error_reply(ask.rid, self.pid, "no_receivers", "no receiver is ready (is everything up?)")
        elif not senders:
            p.failure = error_reply(ask.rid, self.pid, "no_sender", "no sender is ready (is everything up?)")
        else:
            p.sender = senders[0].pid
            senders[0].inflight += 1
            return p, senders[0]
        return p, None

    def on_sender(self, msg: Heartbeat | ErrorReply) -> Pending | None:
        """The sender's report (or refusal) for a request; returns the request if it is now complete."""
        p = self.pending.get(msg.rid)
        if p is None:
            self._stray(msg)
            return None
        if isinstance(msg, ErrorReply):
            p.failure = error_reply(p.ask.rid, self.pid, msg.code, msg.message)
        else:
            p.report = dict(msg.info)
            for k in ("request", "header", "payload", "scales", "fanout"):
                if _is_num(msg.info.get(k)):
                    p.nbytes[k] += max(0, int(msg.info[k]))
            if msg.info.get("reached", 1) == 0:
                p.failure = error_reply(p.ask.rid, self.pid, "no_receivers", "the sender could reach no receiver")
        return p if p.complete() else None

    def on_receiver(self, msg: Reply | ErrorReply, nbytes: int, now: float) -> Pending | None:
        """A receiver's reply or error; late, duplicate and unknown ones are counted and ignored."""
        p = self.pending.get(msg.rid)
        if p is None:
            self._stray(msg)
            return None
        model = msg.model if isinstance(msg, Reply) else self._model_of(msg.sender)
        if model in p.answered():
            self.stats["duplicate"] += 1
            return None
        p.nbytes["replies"] += nbytes
        p.arrived[model] = now
        if isinstance(msg, Reply):
            p.replies[model] = msg
        else:
            p.errors[model] = f"{msg.code}: {msg.message}"
        return p if p.complete() else None

    def _model_of(self, pid: str) -> str:
        peer = self.peers.get(pid)
        return peer.name if peer else pid

    def _stray(self, msg: Message) -> None:
        if msg.rid in self.finished:
            self.stats["late"] += 1
        else:
            self.stats["unknown"] += 1
            if isinstance(msg, ErrorReply):  # e.g. a garbage frame sent straight to a receiver
                self.stats[f"error.{msg.code}"] += 1

    def due(self, now: float) -> list[Pending]:
        """Requests to finish now: past their deadline, or waiting only on processes that are gone."""
        live = {p.name for p in self.alive("receiver", now)}
        senders = {p.pid for p in self.alive("sender", now)}
        out = []
        for p in self.pending.values():
            waiting_on = p.expected - p.answered()
            sender_gone = not p.report and p.sender not in senders
            if now >= p.deadline or (p.report and not waiting_on & live) or (sender_gone and not p.answered()):
                out.append(p)
        return out

    def finish(self, p: Pending, now: float, why: str = "") -> JointReply | ErrorReply:
        """Close a request: the joint answer from whoever answered, or an explicit error."""
        self.pending.pop(p.rid, None)
        self.finished[p.rid] = None
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        sender = self.peers.get(p.sender)
        if sender is not None:
            sender.inflight = max(0, sender.inflight - 1)
        missing = sorted(p.expected - p.answered())
        why = why or ("timeout" if now >= p.deadline else "gone")
        errors = dict(p.errors)
        for m in missing:
            errors[m] = f"{why}: no reply after {now - p.started:.1f} s"
        if p.failure is not None:
            self.stats["failed"] += 1
            return p.failure
        if not p.replies:
            self.stats["failed"] += 1
            detail = "; ".join(f"{m}: {e}" for m, e in sorted(errors.items())) or "no receiver answered"
            code = "all_failed" if p.errors else "shutting_down" if why == "shutting_down" else "no_answer"
            return error_reply(p.ask.rid, self.pid, code, detail)
        # calibration was fitted on latent answers; text paths compare raw scores (identity calibration)
        calibration = self.calibration if p.ask.mode == "latent" else (lambda m: Calibration())
        model, prob = pick(p.replies, calibration)
        degraded = int(not p.expected <= set(p.replies))  # an expected model gave no answer
        self.stats["served"] += 1
        self.stats["degraded"] += degraded
        durations = {"e2e": now - p.started}
        durations.update(
            {f"sender.{k[:-2]}": max(0.0, float(v)) for k, v in p.report.items() if k.endswith("_s") and _is_num(v)}
        )
        for m, r in p.replies.items():
            durations.update({f"{m}.{k}": v for k, v in r.durations.items()})
            durations[f"{m}.rtt"] = max(0.0, p.arrived[m] - p.started)  # ask in -> this reply in
        return JointReply(
            p.ask.rid,
            self.pid,
            p.replies[model].answer,
            model,
            prob,
            agree(p.replies),
            degraded,
            answers={m: r.answer for m, r in p.replies.items()},
            scores={m: r.score for m, r in p.replies.items()},
            calibrated={m: calibration(m)(r.score) for m, r in p.replies.items()},
            errors=errors,
            durations=dict(list(durations.items())[:64]),
            nbytes=dict(p.nbytes),
        )


def serve(
    *,
    frontend: str | None = None,
    backend: str | None = None,
    replies: str | None = None,
    timeout: float = 60.0,
    max_inflight: int = 256,
    drain: float = 5.0,
    curve_dir: str | None = None,
    stop: net.StopFlag | None = None,
) -> None:
    """Run the arbiter until SIGINT/SIGTERM; then stop taking asks, wait up to `drain` s, answer the rest."""
    stop = stop if stop is not None else net.StopFlag()
    pid = net.process_id("arbiter")
    board = Board(pid, timeout)
    curve = net.Curve.from_env("arbiter", curve_dir)
    ctx = zmq.Context()
    front, back, pull = (net.make_socket(ctx, k) for k in (zmq.ROUTER, zmq.ROUTER, zmq.PULL))
    back.router_mandatory = True  # a vanished sender raises instead of swallowing the request
    for sock, allowed, addr in (
        (front, "client", net.address("arbiter", frontend)),
        (back, "sender", net.address("backend", backend)),
        (pull, "receiver", net.address("replies", replies)),
    ):
        if curve:
            curve.server(sock, allowed)
        sock.bind(addr)
    poller = zmq.Poller()
    for sock in (front, back, pull):
        poller.register(sock, zmq.POLLIN)
    log.info("arbiter up: clients %s, senders %s, replies %s", *(s.last_endpoint.decode() for s in (front, back, pull)))

    def answer(p: Pending, msg: JointReply | ErrorReply) -> None:
        try:
            data = encode_frame(msg)
        except ProtocolError as e:  # e.g. answers too large for one frame: still answer, explicitly
            data = encode_frame(error_reply(p.ask.rid, pid, "too_large", f"joint reply does not fit a frame: {e}"))
        try:
            front.send_multipart([*p.client, data], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the client is gone
            board.stats["unsent"] += 1
            log.warning("could not answer %s: %s", p.ask.rid, e)

    def dispatch(p: Pending, peer: Peer | None) -> None:
        if peer is None:
            answer(p, board.finish(p, time.monotonic()))
            return
        forward = replace(p.ask, rid=p.rid, sender=pid)  # the arbiter's rid travels on; the client's stays here
        try:
            back.send_multipart([peer.route, encode_frame(forward)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            p.failure = error_reply(p.ask.rid, pid, "no_sender", f"sender {peer.pid} unreachable ({e})")
            answer(p, board.finish(p, time.monotonic()))

    def on_front(envelope: tuple[bytes, ...], data: bytes) -> None:
        def reply(msg: Message) -> None:
            front.send_multipart([*envelope, encode_frame(msg)], zmq.NOBLOCK)

        now = time.monotonic()
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_client_frame"] += 1
            reply(error_reply("", pid, "bad_frame", str(e)))
            return
        if isinstance(msg, Heartbeat):  # a client's readiness / stats probe
            st = board.status(now)
            reply(Heartbeat(msg.rid, pid, st.role, st.status, st.info))
            return
        if not isinstance(msg, Ask):
            reply(error_reply(msg.rid, pid, "unexpected_kind", "send ask"))
            return
        if stop or len(board.pending) >= max_inflight:
            code = "shutting_down" if stop else "busy"
            reply(error_reply(msg.rid, pid, code, f"arbiter {code}"))
            return
        dispatch(*board.open(envelope, msg, len(data), now))

    def on_back(ident: bytes, data: bytes) -> None:
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            log.warning("bad frame from a sender: %s", e)
            return
        if isinstance(msg, Heartbeat) and msg.status != "sent":
            board.heartbeat(msg, time.monotonic(), route=ident)
        elif isinstance(msg, (Heartbeat, ErrorReply)):
            p = board.on_sender(msg)
            if p is not None:
                answer(p, board.finish(p, time.monotonic()))

    def on_pull(data: bytes) -> None:
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_reply_frame"] += 1
            log.warning("bad frame from a receiver: %s", e)
            return
        now = time.monotonic()
        if isinstance(msg, Heartbeat):
            board.heartbeat(msg, now)
        elif isinstance(msg, (Reply, ErrorReply)):
            p = board.on_receiver(msg, frame_size(data).total, now)
            if p is not None:
                answer(p, board.finish(p, now))

    drain_until = None
    try:
        while True:
            for sock, _ in poller.poll(100):
                for _ in range(1000):  # drain what is queued, bounded so no socket starves the others
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        if sock is pull:
                            on_pull(parts[-1])
                        elif sock is front and len(parts) in (2, 3):  # DEALER: [id, frame]; REQ: [id, b"", frame]
                            on_front(tuple(parts[:-1]), parts[-1])
                        elif sock is back and len(parts) == 2:
                            on_back(parts[0], parts[1])
                    except Exception:  # a bug must cost one frame, not the arbiter and every request in flight
                        board.stats["internal_error"] += 1
                        log.exception("frame handling failed")
            now = time.monotonic()
            for p in board.due(now):
                answer(p, board.finish(p, now))
            if stop and drain_until is None:
                drain_until = now + drain
                log.info("stopping: %d requests in flight, draining up to %.0f s", len(board.pending), drain)
            if drain_until is not None and (not board.pending or now >= drain_until):
                break
    finally:
        now = time.monotonic()
        for p in list(board.pending.values()):
            answer(p, board.finish(p, now, "shutting_down"))
        for sock in (front, back, pull):
            sock.close()
        if curve:
            curve.stop()
        ctx.term()
        log.info("arbiter stopped: %s", dict(board.stats))
