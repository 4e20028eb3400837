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
import math
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import zmq

from latentwire import net
from latentwire.prompts import MODES
from latentwire.protocol import (
    DEFAULT_LIMITS,
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
    peek_rid,
)
from latentwire.protocol.base import INT32_MAX, INT64_MAX
from latentwire.receivers.calibration import Calibration, agreement
from latentwire.receivers.calibration import pick as pick_answer

log = logging.getLogger("latentwire.arbiter")
FINISHED_MEMORY = 20_000  # finished request ids remembered to tell late replies from unknown ones
PEER_MEMORY_S = 600.0  # a peer silent this long is forgotten (its name still explains a degraded answer until then)
MAX_PEERS = 64  # per role: heartbeats with ever new ids cannot grow the arbiter without bound
SENDER_WAIT_S = 30.0  # a request whose sender died waits this long for another (e.g. the restarted one)
MAX_RETRIES = 3  # dispatches of one request to senders that vanished before reporting it
TICK_S = 0.02  # how often deadlines, dead processes and requests waiting for a sender are looked at
ROLES = ("sender", "receiver")  # who may announce itself, each on its own socket
# error codes counted one by one in the status; anything else is counted as `error.other`
ERROR_CODES = frozenset(
    {
        "bad_frame", "bad_version", "bad_quant", "bad_shape", "bad_request", "wrong_checkpoint", "unexpected_kind",
        "too_large", "bad_output", "internal", "shutting_down", "busy",
    }
)  # fmt: skip
# receiver error codes that describe the request itself: when every receiver says the same, the client hears it
REQUEST_FAULTS = frozenset({"too_large", "bad_shape", "bad_frame", "bad_request"})
_REPORT_BYTES = ("request", "header", "payload", "scales")


def calibration_from_info(info: dict, path: str = "latent") -> Calibration:
    """The Platt map a receiver announced for a sender path (`cal.<path>.a`, ...; a bare `cal.a` is the
    latent's); identity when it announced none for that path."""
    known = {f.name for f in fields(Calibration)}
    prefixes = (f"cal.{path}.", "cal.") if path == "latent" else (f"cal.{path}.",)
    for prefix in prefixes:
        d = {
            k[len(prefix) :]: float(v)
            for k, v in info.items()
            if k.startswith(prefix) and k[len(prefix) :] in known and _is_num(v)
        }
        if d:
            break
    for k in ("n", "positives"):
        if k in d:
            d[k] = int(max(0.0, min(d[k], INT32_MAX)))
    return Calibration(**d)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float))  # heartbeat info may also hold str: never trust its type


def _count(v: object, hi: int) -> int | None:
    """An announced byte or receiver count, if it is an int in 0..hi (None otherwise: never trusted blindly)."""
    return v if isinstance(v, int) and 0 <= v <= hi else None


@dataclass
class Peer:
    """A sender or receiver the arbiter has heard from."""

    pid: str
    role: str
    name: str  # model name for receivers, the pid for senders
    last_seen: float
    status: str = "ready"
    route: bytes = b""  # ROUTER identity (senders)
    calibrations: dict[str, Calibration] = field(default_factory=dict)  # receivers: per sender path
    inflight: int = 0
    fingerprint: str = ""  # checkpoint it serves (announced)
    models: tuple[str, ...] = ()  # senders: the checkpoint's receiver models
    fanout: int = 0  # senders: receivers it is configured to fan out to


@dataclass
class Pending:
    """One request being joined."""

    rid: str  # the arbiter's id, unique across clients and arbiter restarts
    client: tuple[bytes, ...]  # ROUTER envelope of the client (identity, plus b"" for REQ clients)
    ask: Ask  # as the client sent it (its rid is the client's)
    expected: frozenset[str]  # model names alive when the request was opened
    started: float
    deadline: float
    sender: str = ""  # pid of the sender it was dispatched to ("" while waiting for one)
    report: dict = field(default_factory=dict)  # the sender's `sent` info
    replies: dict[str, Reply] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # model -> "code: message"
    arrived: dict[str, float] = field(default_factory=dict)
    nbytes: Counter = field(default_factory=Counter)
    failure: ErrorReply | None = None  # set when the request failed before reaching receivers
    configured: int = 0  # receivers the system is configured with: fewer answers means degraded
    models: tuple[str, ...] = ()  # the checkpoint's receiver models (to name the missing ones)
    dispatches: int = 0
    wait_until: float = 0.0  # while waiting for a sender: give up then

    def answered(self) -> set[str]:
        return set(self.replies) | set(self.errors)

    def complete(self) -> bool:
        return self.failure is not None or (bool(self.report) and self.expected <= self.answered())


def pick(replies: dict[str, Reply], calibration: Callable[[str], Calibration]) -> tuple[str, float]:
    """The model whose answer wins (`calibration.pick`) and its calibrated score."""
    cals = {m: calibration(m) for m in replies}
    best = pick_answer({m: (r.answer, r.score) for m, r in replies.items()}, cals)
    return best, cals[best](replies[best].score)


def agree(replies: dict[str, Reply]) -> int:
    """1 when at least two receivers answered and their normalised answers are all equal."""
    return int(agreement([r.answer for r in replies.values()]))


def _clip(s: str, max_bytes: int) -> str:
    """`s` cut to `max_bytes` of UTF-8 (on a character boundary), marked with "..." when cut."""
    b = s.encode("utf-8", "replace")
    return s if len(b) <= max_bytes else b[: max_bytes - 3].decode("utf-8", "ignore") + "..."


def _add(counter: Counter, key: str, n: int) -> None:
    counter[key] = min(INT64_MAX, counter[key] + n)  # saturate: a frame field is int64, never overflow it


class Board:
    """Join state: live peers, pending requests, counters. Time is passed in, so tests need no sleeping.

    Everything it holds is bounded: peers (per role, expiring), pending requests (by the caller's max in flight),
    finished ids and counter names (fixed sets).
    """

    def __init__(self, pid: str, timeout: float = 60.0, dead_after: float = net.DEAD_AFTER_S) -> None:
        self.pid, self.timeout, self.dead_after = pid, timeout, dead_after
        self.peers: dict[str, Peer] = {}
        self.pending: dict[str, Pending] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.stats: Counter = Counter()
        self._prefix, self._seq = uuid.uuid4().hex[:8], 0

    # ---- peers ----

    def heartbeat(self, hb: Heartbeat, now: float, route: bytes = b"", role: str | None = None) -> Peer | None:
        """Note a peer's heartbeat; refused (None) when its role is not the one its socket serves."""
        if hb.role not in ROLES or (role is not None and hb.role != role):
            self.stats["bad_role"] += 1
            return None
        peer = self.peers.get(hb.sender)
        if peer is not None and peer.role != hb.role:
            self.stats["bad_role"] += 1
            return None
        if peer is None:
            if not self._room(hb.role, now):
                self.stats["peers_full"] += 1
                return None
            name = str(hb.info.get("model", hb.sender)) if hb.role == "receiver" else hb.sender
            peer = self.peers[hb.sender] = Peer(hb.sender, hb.role, name or hb.sender, now)
            self.stats[f"joined.{hb.role}"] += 1
            log.info("%s %s joined (%s)", hb.role, peer.name, hb.sender)
        if hb.status == "stopping" and peer.status != "stopping":
            log.info("%s %s is stopping", hb.role, peer.name)
        peer.last_seen, peer.status = now, "stopping" if hb.status == "stopping" else "ready"
        peer.route = route or peer.route
        fp = hb.info.get("fingerprint")
        peer.fingerprint = fp if isinstance(fp, str) else ""
        if hb.role == "receiver":
            peer.calibrations = {path: calibration_from_info(hb.info, path) for path in MODES}
        else:
            models = hb.info.get("models")
            peer.models = tuple(sorted(m for m in models.split(",") if m)) if isinstance(models, str) else ()
            peer.fanout = _count(hb.info.get("receivers"), net.MAX_FANOUT) or 0
        return peer

    def _room(self, role: str, now: float) -> bool:
        """Whether one more peer of `role` fits, forgetting the longest-silent dead one if it must."""
        same = [p for p in self.peers.values() if p.role == role]
        if len(same) < MAX_PEERS:
            return True
        dead = [p for p in same if not self._alive(p, now) and not p.inflight]
        if not dead:
            return False
        del self.peers[min(dead, key=lambda p: p.last_seen).pid]
        return True

    def expire(self, now: float) -> None:
        """Forget peers silent for PEER_MEMORY_S (a restarted process comes back under a new id)."""
        for pid in [p.pid for p in self.peers.values() if now - p.last_seen > PEER_MEMORY_S and not p.inflight]:
            del self.peers[pid]

    def _alive(self, p: Peer, now: float) -> bool:
        return p.status != "stopping" and now - p.last_seen <= self.dead_after

    def alive(self, role: str, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if p.role == role and self._alive(p, now)]

    def _checkpoint(self, now: float) -> Peer | None:
        """The sender most recently heard, live or not (a restarting sender keeps the system's configuration):
        its checkpoint is the one receivers must serve, its fan-out the receivers the system is configured with."""
        senders = [p for p in self.peers.values() if p.role == "sender"]
        live = [p for p in senders if self._alive(p, now)]
        return max(live or senders, key=lambda p: p.last_seen) if senders else None

    def mismatch(self, peer: Peer, sender: Peer | None) -> str:
        """Why receiver `peer` cannot serve `sender`'s checkpoint ("" when it can, or when nothing is known)."""
        if sender is None:
            return ""
        if sender.models and peer.name not in sender.models:
            return f"{peer.name}: not a model of checkpoint {sender.fingerprint[:12]} ({','.join(sender.models)})"
        if sender.fingerprint and peer.fingerprint and peer.fingerprint != sender.fingerprint:
            return f"{peer.name}: serves checkpoint {peer.fingerprint[:12]}, the sender {sender.fingerprint[:12]}"
        return ""

    def receivers(self, now: float) -> tuple[list[Peer], list[str]]:
        """Live receivers that serve the sender's checkpoint, and why the other live ones do not."""
        sender = self._checkpoint(now)
        ok, bad = [], []
        for p in self.alive("receiver", now):
            why = self.mismatch(p, sender)
            (bad.append(why) if why else ok.append(p))
        return ok, sorted(set(bad))

    def calibration(self, model: str, path: str = "latent") -> Calibration:
        """The calibration for `path` the most recently heard receiver of `model` announced (identity if none)."""
        peers = [p for p in self.peers.values() if p.role == "receiver" and p.name == model]
        return max(peers, key=lambda p: p.last_seen).calibrations.get(path, Calibration()) if peers else Calibration()

    def configured(self, now: float, expected: int) -> tuple[int, tuple[str, ...]]:
        """How many receivers the system is configured with, and the checkpoint's models (from the sender)."""
        sender = self._checkpoint(now)
        if sender is None:
            return expected, ()
        return max(expected, sender.fanout), sender.models

    def status(self, now: float) -> Heartbeat:
        ok, bad = self.receivers(now)
        receivers = sorted({p.name for p in ok})
        senders = self.alive("sender", now)
        configured, _ = self.configured(now, len(receivers))
        info: dict[str, str | int | float] = {
            "receivers": ",".join(receivers),
            "n_receivers": len(receivers),
            "configured": configured,
            "senders": len(senders),
            "inflight": len(self.pending),
            "timeout": self.timeout,
            "peers": len(self.peers),
            **({"mismatch": "; ".join(bad)} if bad else {}),
            **{k: v for k, v in sorted(self.stats.items())[:40]},
        }
        limit = DEFAULT_LIMITS.max_str  # names come from peers: a status must always fit a frame
        info = {k: _clip(v, limit) if isinstance(v, str) else v for k, v in info.items()}
        return Heartbeat("", self.pid, "arbiter", "ready" if receivers and senders else "waiting", info)

    # ---- requests ----

    def open(self, client: tuple[bytes, ...], ask: Ask, ask_bytes: int, now: float) -> tuple[Pending, Peer | None]:
        """Register a request and choose its sender (least in flight); a failure is set when none can serve.

        With no live sender but one heard from before (a sender restarting), the request waits for one.
        """
        self._seq += 1
        rid = f"{self._prefix}-{self._seq}"
        ok, _ = self.receivers(now)
        expected = frozenset(p.name for p in ok)
        p = Pending(rid, client, ask, expected, now, now + self.timeout)
        p.configured, p.models = self.configured(now, len(expected))
        _add(p.nbytes, "ask", ask_bytes)
        self.pending[rid] = p
        if not expected:
            p.failure = error_reply(ask.rid, self.pid, "no_receivers", "no receiver is ready (is everything up?)")
            return p, None
        sender = self.assign(p, now)
        if sender is None and not any(q.role == "sender" for q in self.peers.values()):
            p.failure = error_reply(ask.rid, self.pid, "no_sender", "no sender is ready (is everything up?)")
        return p, sender

    def assign(self, p: Pending, now: float) -> Peer | None:
        """Give `p` to the live sender with the fewest requests in flight (None: it waits for one)."""
        senders = sorted(self.alive("sender", now), key=lambda s: (s.inflight, s.pid))
        if not senders:
            if not p.wait_until:
                p.wait_until = min(p.deadline, now + SENDER_WAIT_S)
            return None
        p.sender, p.wait_until = senders[0].pid, 0.0
        p.dispatches += 1
        senders[0].inflight += 1
        return senders[0]

    def waiting(self) -> list[Pending]:
        """Requests without a sender (theirs vanished, or none was live), oldest first."""
        return [p for p in self.pending.values() if not p.sender and p.failure is None and not p.report]

    def sender_lost(self, p: Pending, now: float, why: str) -> None:
        """`p`'s sender vanished before reporting it: dispatch it again (bounded), or fail it saying so."""
        peer = self.peers.get(p.sender)
        if peer is not None:
            peer.inflight = max(0, peer.inflight - 1)
        if p.answered():  # receivers got it, so the fan-out happened: only the report was lost
            p.report = {"report": "lost"}
            return
        self.stats["redispatched"] += 1
        lost = p.sender
        p.sender = ""
        if p.dispatches >= MAX_RETRIES:
            p.failure = error_reply(
                p.ask.rid, self.pid, "no_sender", f"sender {lost} {why} before sending (x{p.dispatches})"
            )

    def on_sender(self, msg: Heartbeat | ErrorReply, route: bytes = b"") -> Pending | None:
        """The sender's report (or refusal) for a request; returns the request if it is now complete.

        Only the sender the request was given to may report it, once, with byte counts a frame can have.
        """
        p = self.pending.get(msg.rid)
        if p is None:
            self._stray(msg)
            return None
        peer = self.peers.get(p.sender)
        if msg.sender != p.sender or peer is None or (route and route != peer.route):
            self.stats["forged"] += 1
            return None
        if p.report or p.failure is not None:
            self.stats["duplicate"] += 1
            return None
        if isinstance(msg, ErrorReply):
            p.failure = error_reply(p.ask.rid, self.pid, msg.code, msg.message)
            return p
        report = dict(msg.info)
        limit = DEFAULT_LIMITS.max_frame_bytes
        counts = {k: _count(report.get(k), limit) for k in _REPORT_BYTES}
        counts["fanout"] = _count(report.get("fanout"), limit * net.MAX_FANOUT)
        reached = _count(report.get("reached", 1), net.MAX_FANOUT)
        if reached is None or any(v is None for k, v in counts.items() if k in report):
            self.stats["bad_report"] += 1
            log.warning("sender %s reported impossible counts for %s: %s", msg.sender, p.rid, report)
            report = {k: v for k, v in report.items() if k not in counts and k != "reached"}
            reached = 1
        for k, v in counts.items():
            if k in report and v is not None:
                _add(p.nbytes, k, v)
        p.report = report or {"report": "empty"}
        if reached == 0:
            p.failure = error_reply(p.ask.rid, self.pid, "no_receivers", "the sender could reach no receiver")
        return p if p.complete() else None

    def on_receiver(self, msg: Reply | ErrorReply, nbytes: int, now: float) -> Pending | None:
        """A receiver's reply or error; late, duplicate, unknown and forged ones are counted and ignored."""
        p = self.pending.get(msg.rid)
        if p is None:
            self._stray(msg)
            return None
        peer = self.peers.get(msg.sender)
        if peer is None or peer.role != "receiver" or (isinstance(msg, Reply) and msg.model != peer.name):
            self.stats["forged"] += 1  # only a receiver that announced itself answers, under its own model name
            return None
        model = peer.name
        if model in p.answered():
            self.stats["duplicate"] += 1
            return None
        _add(p.nbytes, "replies", max(0, nbytes))
        p.arrived[model] = now
        if isinstance(msg, Reply):
            p.replies[model] = msg
        else:
            p.errors[model] = f"{msg.code}: {msg.message}"
            self._count_error(msg.code)
        return p if p.complete() else None

    def _count_error(self, code: str) -> None:
        self.stats[f"error.{code if code in ERROR_CODES else 'other'}"] += 1

    def _stray(self, msg: Message) -> None:
        if msg.rid in self.finished:
            self.stats["late"] += 1
        else:
            self.stats["unknown"] += 1
            if isinstance(msg, ErrorReply):  # e.g. a garbage frame sent straight to a receiver
                self._count_error(msg.code)

    def due(self, now: float) -> list[Pending]:
        """Requests to finish now: past their deadline, failed, waiting only on processes that are gone, or
        waiting for a sender too long. A request whose sender vanished before reporting it is dispatched again."""
        ok, _ = self.receivers(now)
        live = {p.name for p in ok}
        senders = {p.pid for p in self.alive("sender", now)}
        out = []
        for p in self.pending.values():
            if p.sender and not p.report and p.failure is None and p.sender not in senders:
                self.sender_lost(p, now, "stopped")
            gone = p.report and not (p.expected - p.answered()) & live  # waiting only on the dead
            if p.failure is not None or now >= p.deadline or gone:
                out.append(p)
            elif not p.sender and not p.report and p.wait_until and now >= p.wait_until:
                p.failure = error_reply(p.ask.rid, self.pid, "no_sender", f"no sender for {now - p.started:.1f} s")
                out.append(p)
        return out

    def forget(self, p: Pending) -> None:
        """Drop `p` from the join (answered, or failed); its sender has one request less in flight."""
        if self.pending.pop(p.rid, None) is None:
            return
        self.finished[p.rid] = None
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        sender = self.peers.get(p.sender)
        if sender is not None:
            sender.inflight = max(0, sender.inflight - 1)

    def finish(self, p: Pending, now: float, why: str = "") -> JointReply | ErrorReply:
        """Close a request: the joint answer from whoever answered, or an explicit error.

        Never raises: a request that cannot be answered normally gets an `internal` error, counted.
        """
        self.forget(p)
        try:
            return self._result(p, now, why)
        except Exception as e:  # noqa: BLE001 - the client must hear back whatever went wrong here
            self.stats["internal_error"] += 1
            log.exception("could not finish %s", p.rid)
            return error_reply(p.ask.rid, self.pid, "internal", f"arbiter: {type(e).__name__}: {e}")

    def _result(self, p: Pending, now: float, why: str) -> JointReply | ErrorReply:
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
            codes = {e.split(":", 1)[0] for e in p.errors.values()}
            if len(codes) == 1 and not missing and codes <= REQUEST_FAULTS:
                code = codes.pop()  # every receiver refused the request for the same reason: say which
            else:
                code = "all_failed" if p.errors else "shutting_down" if why == "shutting_down" else "no_answer"
            return error_reply(p.ask.rid, self.pid, code, detail)
        # each receiver's calibration for this path (fitted on val); paths without one compare raw scores
        mode = p.ask.mode
        calibration: Callable[[str], Calibration] = lambda m: self.calibration(m, mode)  # noqa: E731
        model, prob = pick(p.replies, calibration)
        # fewer answers than receivers configured, whatever the reason (missing, failed, down at the start)
        p.configured = max(p.configured, self.configured(now, len(p.expected))[0])
        degraded = int(len(p.replies) < p.configured)
        if degraded and len(p.replies) + len(errors) < p.configured:  # say who is missing, by name if known
            for m in p.models:
                if m not in p.expected and m not in errors and m not in p.replies:
                    errors[m] = "down: not ready when the request came in"
            if not errors:
                errors["missing"] = f"down: {len(p.replies)} of {p.configured} configured receivers answered"
        self.stats["served"] += 1
        self.stats["degraded"] += degraded
        durations = {"e2e": max(0.0, now - p.started)}
        durations.update(
            {
                f"sender.{k[:-2]}": max(0.0, float(v))
                for k, v in p.report.items()
                if k.endswith("_s") and _is_num(v) and math.isfinite(v)
            }
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
            errors=dict(list(errors.items())[:64]),
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
    """Run the arbiter until SIGINT/SIGTERM; then stop taking asks, wait up to `drain` s, answer the rest.

    Nothing a peer sends can stop it: every failure while handling a frame or a timeout is counted
    (`internal_error`) and answered, never fatal.
    """
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

    def close(p: Pending, now: float, why: str = "") -> None:
        answer(p, board.finish(p, now, why))

    def dispatch(p: Pending, peer: Peer | None) -> None:
        """Send `p` to `peer`, trying the other live senders if it has vanished; finish `p` if it failed."""
        now = time.monotonic()
        while peer is not None:
            forward = replace(p.ask, rid=p.rid, sender=pid)  # the arbiter's rid travels on; the client's stays here
            try:
                back.send_multipart([peer.route, encode_frame(forward)], zmq.NOBLOCK)
                return
            except zmq.ZMQError as e:  # gone (EHOSTUNREACH) or stuck (EAGAIN): it gets no more requests
                log.warning("sender %s unreachable (%s)", peer.pid, e)
                peer.status = "stopping"
                board.sender_lost(p, now, "unreachable")
                peer = board.assign(p, now) if p.failure is None else None
        if p.failure is not None:
            close(p, now)

    def on_front(envelope: tuple[bytes, ...], data: bytes) -> None:
        def reply(msg: Message) -> None:
            try:
                data = encode_frame(msg)
            except ProtocolError as e:  # a bug, but the client still hears back
                board.stats["internal_error"] += 1
                log.error("could not encode a reply to %r: %s", msg.rid, e)
                data = encode_frame(error_reply(msg.rid, pid, "internal", f"arbiter: {e}"))
            front.send_multipart([*envelope, data], zmq.NOBLOCK)

        now = time.monotonic()
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_client_frame"] += 1
            reply(error_reply(peek_rid(data), pid, "bad_frame", str(e)))
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
            board.stats["bad_sender_frame"] += 1
            log.warning("bad frame from a sender: %s", e)
            return
        if isinstance(msg, Heartbeat) and msg.status != "sent":
            board.heartbeat(msg, time.monotonic(), route=ident, role="sender")
        elif isinstance(msg, (Heartbeat, ErrorReply)):
            p = board.on_sender(msg, route=ident)
            if p is not None:
                close(p, time.monotonic())
        else:
            board.stats["bad_sender_frame"] += 1

    def on_pull(data: bytes) -> None:
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_reply_frame"] += 1
            log.warning("bad frame from a receiver: %s", e)
            return
        now = time.monotonic()
        if isinstance(msg, Heartbeat):
            board.heartbeat(msg, now, role="receiver")
        elif isinstance(msg, (Reply, ErrorReply)):
            p = board.on_receiver(msg, len(data), now)
            if p is not None:
                close(p, now)
        else:
            board.stats["bad_reply_frame"] += 1

    def handle(sock: zmq.Socket, parts: list[bytes]) -> None:
        if sock is pull and len(parts) == 1:
            on_pull(parts[0])
        elif sock is front and len(parts) in (2, 3):  # DEALER: [id, frame]; REQ: [id, b"", frame]
            on_front(tuple(parts[:-1]), parts[-1])
        elif sock is back and len(parts) == 2:
            on_back(parts[0], parts[1])
        else:
            board.stats["bad_envelope"] += 1

    def tick(now: float) -> None:
        for p in board.due(now):
            close(p, now)
        for p in board.waiting():
            peer = board.assign(p, now)
            if peer is None:
                break  # no live sender: they all keep waiting
            dispatch(p, peer)
        board.expire(now)

    drain_until = None
    next_tick = 0.0
    try:
        while True:
            try:
                for sock, _ in poller.poll(100):
                    for _ in range(1000):  # drain what is queued, bounded so no socket starves the others
                        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than raising zmq.Again
                            break
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                        try:
                            handle(sock, parts)
                        except Exception:  # a bug must cost one frame, not the arbiter and every request in flight
                            board.stats["internal_error"] += 1
                            log.exception("frame handling failed")
                now = time.monotonic()
                if now >= next_tick:  # deadlines and waiting requests, not after every frame: replies close
                    tick(now)  # their requests as they arrive, so this costs no request any latency
                    next_tick = now + TICK_S
            except zmq.ContextTerminated:
                raise
            except Exception:  # noqa: BLE001 - never fatal: count it, and keep serving
                board.stats["internal_error"] += 1
                log.exception("arbiter loop failed")
                now = time.monotonic()
            if stop and drain_until is None:
                drain_until = now + drain
                log.info("stopping: %d requests in flight, draining up to %.0f s", len(board.pending), drain)
            if drain_until is not None and (not board.pending or now >= drain_until):
                break
    finally:
        now = time.monotonic()
        for p in list(board.pending.values()):
            try:
                close(p, now, "shutting_down")
            except Exception:  # noqa: BLE001 - the others must still be answered
                log.exception("could not answer %s on the way out", p.rid)
        for sock in (front, back, pull):
            sock.close()
        if curve:
            curve.stop()
        ctx.term()
        log.info("arbiter stopped: %s", dict(board.stats))
