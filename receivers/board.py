"""The arbiter's book-keeping without sockets: who is up, which requests are open, and how each one ends.

Spec (`serve` in arbiter.py feeds it frames and the clock; tests call it directly, time passed in):

* Peers (`Roster`, roster.py): senders and receivers announce themselves with heartbeats; a receiver serves the
  system when it is alive, serves the checkpoint of the sender most recently heard, and is proven: it answered a
  request id the arbiter issued. Heartbeats cost nothing to forge; an answer to a live id does.
* Probes (`probe`): while a receiver has announced itself but never answered, the arbiter sends a request of its
  own (one-token text, every PROBE_EVERY_S, one at a time, answered to nobody) for the sender to fan out; any
  answer to it, even late, proves its receiver. Until then it is `unproven` in the status and never waited for.
* Admission (`busy`, asked before `open`): at most `max_inflight` client requests in flight, and each client (its
  ROUTER envelope) at most an equal share of them among the clients in flight, itself included, with one share
  always left free: a flooding client hears `busy`, a client asking now and then gets in.
* Opening a request (`open`): it gets the arbiter's own id (unique across clients and arbiter restarts, and
  unguessable) and expects an answer from every model with a receiver that serves the system at that moment.
  None: it fails at once with `no_receivers`, saying why (receivers on another checkpoint, or yet to answer a
  probe). It goes to the live sender with the fewest requests in flight; with no live sender but one heard before
  (restarting), it waits up to SENDER_WAIT_S for one, then fails with `no_sender`.
* A sender that vanishes before reporting a request gets it taken away and given to another, up to MAX_RETRIES
  dispatches. Only the sender it was given to may report it, once, with byte counts a frame can hold.
* Joining: a request is complete when its sender reported it and every expected model answered (a reply or an
  error). It ends early when it waits only on receivers that are gone, and at its deadline (`timeout` s after it
  opened) with whatever arrived. Replies from unknown peers, or under another model's name, are counted
  (`forged`) and ignored; so are duplicates, late replies and replies to unknown ids.
* The answer (`finish`): the reply whose calibrated P(correct) wins (`calibration.pick`, with the calibration
  each receiver announced for the request's path), flagged `degraded` whenever fewer receivers answered than the
  system is configured with (the sender's fan-out), with the missing ones named in `errors`: `down`, or, when
  its receiver is up, `wrong_checkpoint: serving another checkpoint (fingerprint ...)` or `unproven`. No reply at
  all: an error, the receivers' common code when all refused the request for one reason. Every request is
  answered exactly once, and `finish` never raises.
* Everything held is bounded: peers (per role, expiring), pending requests (by `max_inflight`),
  finished ids (FINISHED_MEMORY) and counter names (fixed sets).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from latentwire import net
from latentwire.protocol import (
    DEFAULT_LIMITS,
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    Message,
    Reply,
    error_reply,
)
from latentwire.protocol.base import INT64_MAX
from latentwire.receivers.calibration import Calibration, agreement
from latentwire.receivers.calibration import pick as pick_answer
from latentwire.receivers.roster import (  # noqa: F401 - Peer and the peer limits are part of this module's API
    MAX_PEERS,
    PEER_MEMORY_S,
    ROLES,
    Peer,
    Readiness,
    Roster,
    bounded_count,
    calibration_from_info,
    is_num,
)

log = logging.getLogger("latentwire.arbiter")
FINISHED_MEMORY = 20_000  # finished request ids remembered to tell late replies from unknown ones
SENDER_WAIT_S = 30.0  # a request whose sender died waits this long for another (e.g. the restarted one)
MAX_RETRIES = 3  # dispatches of one request to senders that vanished before reporting it
PROBE_EVERY_S = 2.0  # a receiver yet to answer is probed this often (one probe in flight at a time)
PROBE_TIMEOUT_S = 10.0  # a probe waits this long; a later answer still proves its receiver
PROBE_QUESTION = "Are you there?"  # asked as text for one token: the cheapest request every receiver answers
UNPROVEN = "unproven: announced itself, but has yet to answer a request (not waited for)"
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
    absent: dict[str, str] = field(default_factory=dict)  # model -> why it was not expected although it is up
    probe: bool = False  # the arbiter's own request, to prove receivers; no client hears of it
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


def _explain(bad: dict[str, str]) -> str:
    """`model: why` for each model whose live receivers cannot serve the system."""
    return "; ".join(f"{m}: {why}" for m, why in bad.items())


def _add(counter: Counter, key: str, n: int) -> None:
    counter[key] = min(INT64_MAX, counter[key] + n)  # saturate: a frame field is int64, never overflow it


class Board(Roster):
    """Join state: live peers (the `Roster`), pending requests, counters. Time is passed in, so tests need no
    sleeping."""

    def __init__(
        self, pid: str, timeout: float = 60.0, dead_after: float = net.DEAD_AFTER_S, max_inflight: int = 256
    ) -> None:
        super().__init__(dead_after)
        self.pid, self.timeout, self.max_inflight = pid, timeout, max_inflight
        self.pending: dict[str, Pending] = {}
        self._asking: Counter[tuple[bytes, ...]] = Counter()  # client (ROUTER envelope) -> its requests in flight
        self.finished: OrderedDict[str, None] = OrderedDict()
        # 64 random bits: a request id must be unguessable, answering one proves a receiver (see Roster)
        self._prefix, self._seq = uuid.uuid4().hex[:16], 0
        self._next_probe = 0.0

    def status(self, now: float) -> Heartbeat:
        ready = self.receivers(now)
        receivers = sorted({p.name for p in ready.ok})
        senders = self.alive("sender", now)
        configured, _ = self.configured(now, len(receivers))
        info: dict[str, str | int | float] = {
            "receivers": ",".join(receivers),
            "n_receivers": len(receivers),
            "configured": configured,
            "senders": len(senders),
            "inflight": self.asked(),
            "clients": len(self._asking),
            "timeout": self.timeout,
            "peers": len(self.peers),
            **({"unproven": ",".join(sorted({p.name for p in ready.unproven}))} if ready.unproven else {}),
            **({"mismatch": _explain(ready.mismatched)} if ready.mismatched else {}),
            **{k: v for k, v in sorted(self.stats.items())[:40]},
        }
        limit = DEFAULT_LIMITS.max_str  # names come from peers: a status must always fit a frame
        info = {k: _clip(v, limit) if isinstance(v, str) else v for k, v in info.items()}
        return Heartbeat("", self.pid, "arbiter", "ready" if receivers and senders else "waiting", info)

    # ---- requests ----

    def asked(self) -> int:
        """Clients' requests in flight (the arbiter's probes left out)."""
        return sum(self._asking.values())

    def busy(self, client: tuple[bytes, ...]) -> str:
        """Why `client` may not open one more request now ("" when it may).

        At most `max_inflight` requests are in flight, and each client holds at most an equal share of them among
        the clients with requests in flight, itself included, with one share always left free: so however hard one
        client floods, a client asking now and then finds room (a lone client gets half the window).
        """
        total, own = self.asked(), self._asking[client]
        if total >= self.max_inflight:
            return f"{total} requests in flight, the most the arbiter takes"
        clients = len(self._asking) + (own == 0)
        share = max(1, self.max_inflight // (clients + 1))
        if own >= share:
            return f"this client has {own} requests in flight, its fair share ({clients} clients asking)"
        return ""

    def open(self, client: tuple[bytes, ...], ask: Ask, ask_bytes: int, now: float) -> tuple[Pending, Peer | None]:
        """Register a request and choose its sender (least in flight); a failure is set when none can serve.

        With no live sender but one heard from before (a sender restarting), the request waits for one.
        """
        ready = self.receivers(now)
        expected = frozenset(p.name for p in ready.ok)  # proven ones only: a forged heartbeat never holds an answer
        absent = {m: f"wrong_checkpoint: {why}" for m, why in ready.mismatched.items()}
        absent.update({q.name: UNPROVEN for q in ready.unproven})
        p = Pending(self._rid(), client, ask, expected, now, now + self.timeout, absent=absent)
        p.configured, p.models = self.configured(now, len(expected))
        _add(p.nbytes, "ask", ask_bytes)
        self.pending[p.rid] = p
        self._asking[client] += 1
        if not expected:
            p.failure = error_reply(ask.rid, self.pid, *self._none_ready(ready, now))
            return p, None
        sender = self.assign(p, now)
        if sender is None and not self._heard("sender"):
            p.failure = error_reply(ask.rid, self.pid, "no_sender", "no sender is ready (is everything up?)")
        return p, sender

    def _rid(self) -> str:
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    def _heard(self, role: str) -> bool:
        return any(q.role == role for q in self.peers.values())

    def _none_ready(self, ready: Readiness, now: float) -> tuple[str, str]:
        """The error code and message for a request that finds no receiver serving the system: say why."""
        why = []
        if ready.mismatched:
            sender = self._checkpoint(now)
            fp = f" (fingerprint {sender.fingerprint[:12]})" if sender and sender.fingerprint else ""
            why.append(f"no receiver serves the sender's checkpoint{fp}: {_explain(ready.mismatched)}")
        if ready.unproven and not self._heard("sender"):
            return "no_sender", "no sender is ready (is everything up?)"  # nothing can prove the receivers
        if ready.unproven:
            names = ",".join(sorted({q.name for q in ready.unproven}))
            why.append(f"{names} up, yet to answer a request (being probed: try again in a moment)")
        return "no_receivers", "; ".join(why) or "no receiver is ready (is everything up?)"

    def probe(self, now: float) -> tuple[Pending, Peer] | None:
        """A request of the arbiter's own for receivers that announced themselves but never answered (every
        PROBE_EVERY_S while there are any, one at a time): the sender fans it out to every receiver, and each
        one that answers it is proven. None when nothing is due, or no sender is live to carry it."""
        ready = self.receivers(now)
        if not ready.unproven or now < self._next_probe or any(p.probe for p in self.pending.values()):
            return None
        rid = self._rid()
        ask = Ask(rid, self.pid, PROBE_QUESTION, mode="text", max_new_tokens=1)
        expected = frozenset(q.name for q in ready.unproven)
        p = Pending(rid, (), ask, expected, now, now + min(self.timeout, PROBE_TIMEOUT_S), probe=True)
        sender = self.assign(p, now)
        if sender is None:  # no live sender to carry it: a later tick tries again
            return None
        self.pending[rid] = p
        self._next_probe = now + PROBE_EVERY_S
        self.stats["probes"] += 1
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
        counts = {k: bounded_count(report.get(k), limit) for k in _REPORT_BYTES}
        counts["fanout"] = bounded_count(report.get("fanout"), limit * net.MAX_FANOUT)
        reached = bounded_count(report.get("reached", 1), net.MAX_FANOUT)
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
        """A receiver's reply or error; late, duplicate, unknown and forged ones are counted and ignored.

        Any answer naming a request id the arbiter issued proves its receiver, even a late one or one from a receiver
        whose seat a flood took: only the receivers a sender fanned the request out to have seen that id.
        """
        p = self.pending.get(msg.rid)
        if p is not None or msg.rid in self.finished:
            self.prove(msg.sender)
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
        live = {p.name for p in self.receivers(now).ok}
        senders = {p.pid for p in self.alive("sender", now)}
        out = []
        for p in self.pending.values():
            if p.sender and not p.report and p.failure is None and p.sender not in senders:
                self.sender_lost(p, now, "stopped")
            # waiting only on the dead (a probe waits for receivers that are not proven, so not `live`, by design)
            gone = p.report and not p.probe and not (p.expected - p.answered()) & live
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
        if p.client:
            self._asking[p.client] -= 1
            if self._asking[p.client] <= 0:
                del self._asking[p.client]  # only clients with requests in flight count for the fair share
        sender = self.peers.get(p.sender)
        if sender is not None:
            sender.inflight = max(0, sender.inflight - 1)

    def finish(self, p: Pending, now: float, why: str = "") -> JointReply | ErrorReply | None:
        """Close a request: the joint answer from whoever answered, or an explicit error (None for a probe:
        nobody asked it).

        Never raises: a request that cannot be answered normally gets an `internal` error, counted.
        """
        self.forget(p)
        if p.probe:
            return None
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
                    # up (on another checkpoint, or yet to answer) is not down: say so, or the operator looks
                    # for a dead process
                    errors[m] = p.absent.get(m, "down: not ready when the request came in")
            if not errors:
                errors["missing"] = f"down: {len(p.replies)} of {p.configured} configured receivers answered"
        self.stats["served"] += 1
        self.stats["degraded"] += degraded
        durations = {"e2e": max(0.0, now - p.started)}
        durations.update(
            {
                f"sender.{k[:-2]}": max(0.0, float(v))
                for k, v in p.report.items()
                if k.endswith("_s") and is_num(v) and math.isfinite(v)
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
