"""The arbiter's book-keeping without sockets: who is up, which requests are open, and how each one ends.

Spec (`Arbiter` in process.py feeds it frames and the clock; tests call it directly, time passed in):

* Peers (`Roster`, roster.py): senders and receivers announce themselves with heartbeats; a receiver serves the
  system when it is alive, serves the checkpoint of the sender most recently heard, and is proven: it answered a
  request id the arbiter issued. Heartbeats cost nothing to forge; an answer to a live id does.
* Probes (`probe`): while a receiver has announced itself but never answered, the arbiter sends a request of its
  own (one-token text, every PROBE_EVERY_S, one at a time, answered to nobody) for the sender to fan out; any
  answer to it, even late, proves its receiver. Until then it is `unproven` in the status and never waited for.
* Admission (`busy`, asked before `open`): at most `max_inflight` client requests in flight, and each client (its
  admission key: what a flooder cannot multiply for free, see arbiter.py) at most an equal share of them among the
  clients in flight, itself included, with one share always left free: a flooding client hears `busy`, a client
  asking now and then gets in.
* Opening a request (`open`): it gets the arbiter's own id (unique across clients and arbiter restarts, and
  unguessable) and expects an answer from every model with a receiver that serves the system at that moment, until
  its deadline: `timeout` s, or sooner when the client's ask says it stops waiting sooner.
  None: it fails at once with `no_receivers`, saying why (receivers on another checkpoint, or yet to answer a
  probe). It goes to the live sender with the fewest requests in flight; with no live sender but one heard before
  (restarting), it waits up to SENDER_WAIT_S for one, then fails with `no_sender`. The ask the sender gets
  (`forward`) carries the deadline and the opening time on the wall clock, which the sender copies into the frames
  it fans out: a receiver drops the work nobody waits for any more (`expired`, SPEC.md "Deadlines").
* A sender that vanishes before reporting a request gets it taken away and given to another, up to MAX_RETRIES
  dispatches. Only the sender it was given to may report it, once, with byte counts a frame can hold.
* Joining: a request is complete when its sender reported it and every expected model answered (a reply or an
  error). It ends early when it waits only on receivers that are gone, and at its deadline (`timeout` s after it
  opened) with whatever arrived. Replies from unknown peers, or under another model's name, are counted
  (`forged`) and ignored; so are duplicates, late replies and replies to unknown ids.
* The answer (`finish`, built by `joint.outcome`): the reply whose calibrated P(correct) wins (`calibration.pick`,
  with the calibration each proven receiver announced for the request's path), flagged `degraded` whenever fewer
  receivers answered than the system is configured with (the sender's fan-out), with the missing ones named in
  `errors`: `down`, or, when its receiver is up, `wrong_checkpoint: serving another checkpoint (fingerprint ...)` or
  `unproven`. No reply at all: an error, the receivers' common code when all refused the request for one reason.
  Every request is answered exactly once, and `finish` never raises.
* Everything held is bounded: peers (per role, expiring), pending requests (by `max_inflight`), finished ids
  (FINISHED_MEMORY) and counter names (fixed sets).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, OrderedDict
from dataclasses import replace

from latentwire.arbiter.joint import Pending, add, agree, outcome, pick  # noqa: F401 - pick, agree: re-exported
from latentwire.arbiter.roster import (  # noqa: F401 - the peer limits: re-exported
    MAX_PEERS,
    PEER_MEMORY_S,
    Peer,
    Readiness,
    Roster,
)
from latentwire.processes import net
from latentwire.protocol import (
    DEFAULT_LIMITS,
    ERROR_CODES,  # counted one by one in the status; anything else is counted as `error.other`
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    Message,
    Reply,
    Sent,
    error_reply,
)
from latentwire.protocol.base import clip

log = logging.getLogger("latentwire.arbiter")
FINISHED_MEMORY = 20_000  # finished request ids remembered to tell late replies from unknown ones
SENDER_WAIT_S = 30.0  # a request whose sender died waits this long for another (e.g. the restarted one)
MAX_RETRIES = 3  # dispatches of one request to senders that vanished before reporting it
PROBE_EVERY_S = 2.0  # a receiver yet to answer is probed this often (one probe in flight at a time)
PROBE_TIMEOUT_S = 10.0  # a probe waits this long; a later answer still proves its receiver
PROBE_QUESTION = "Are you there?"  # asked as text for one token: the cheapest request every receiver answers
UNPROVEN = "unproven: announced itself, but has yet to answer a request (not waited for)"
_REPORT_BYTES = ("request", "header", "payload", "scales", "fanout")  # a Sent's byte counts, kept per request


def _explain(bad: dict[str, str]) -> str:
    """`model: why` for each model whose live receivers cannot serve the system."""
    return "; ".join(f"{m}: {why}" for m, why in bad.items())


class Board:
    """Join state: the peers (its `Roster`), pending requests, counters. Time is passed in, so tests need no
    sleeping."""

    def __init__(
        self, pid: str, timeout: float = 60.0, dead_after: float = net.DEAD_AFTER_S, max_inflight: int = 256
    ) -> None:
        self.stats: Counter[str] = Counter()  # one set of counters for the status: the roster counts into it too
        self.roster = Roster(dead_after, self.stats)
        self.pid, self.timeout, self.max_inflight = pid, timeout, max_inflight
        self.pending: dict[str, Pending] = {}
        self._asking: Counter[object] = Counter()  # client (its admission key) -> its requests in flight
        self.finished: OrderedDict[str, bool] = OrderedDict()  # rid -> a probe? (their late replies are the norm)
        # 64 random bits: a request id must be unguessable, answering one proves a receiver (see Roster)
        self._prefix, self._seq = uuid.uuid4().hex[:16], 0
        self._next_probe = 0.0

    def status(self, now: float) -> Heartbeat:
        ready = self.roster.receivers(now)
        receivers = sorted({p.name for p in ready.ok})
        senders = self.roster.alive("sender", now)
        configured, _ = self.roster.configured(now, len(receivers))
        info: dict[str, str | int | float] = {
            "receivers": ",".join(receivers),
            "n_receivers": len(receivers),
            "configured": configured,
            "senders": len(senders),
            "inflight": self.asked(),
            "clients": len(self._asking),
            "timeout": self.timeout,
            "peers": len(self.roster.peers),
            **({"unproven": ",".join(sorted({p.name for p in ready.unproven}))} if ready.unproven else {}),
            **({"mismatch": _explain(ready.mismatched)} if ready.mismatched else {}),
            **({"mismatch_unproven": len(ready.foreign)} if ready.foreign else {}),
            **{k: v for k, v in sorted(self.stats.items())[:40]},
        }
        limit = DEFAULT_LIMITS.max_str  # names come from peers: a status must always fit a frame
        info = {k: clip(v, limit, "...") if isinstance(v, str) else v for k, v in info.items()}
        return Heartbeat("", self.pid, "arbiter", "ready" if receivers and senders else "waiting", info)

    # ---- requests ----

    def asked(self) -> int:
        """Clients' requests in flight (the arbiter's probes left out)."""
        return sum(self._asking.values())

    def busy(self, client: object) -> str:
        """Why `client` (its admission key: see `serve`, what costs a flooder to multiply) may not open one more
        request now ("" when it may).

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

    def open(
        self,
        client: tuple[bytes, ...],
        ask: Ask,
        ask_bytes: int,
        now: float,
        wall: float | None = None,
        admission: object = None,
    ) -> tuple[Pending, Peer | None]:
        """Register a request and choose its sender (least in flight); a failure is set when none can serve.

        `client` is the envelope its answer goes back to, `admission` the key `busy` was asked with (default: the
        envelope). With no live sender but one heard from before (a sender restarting), the request waits for one.
        `wall` is the Unix time at `now`: with it, an ask's own deadline (a Unix time) shortens the request's.
        """
        ready = self.roster.receivers(now)
        expected = frozenset(p.name for p in ready.ok)  # proven ones only: a forged heartbeat never holds an answer
        absent = {m: f"wrong_checkpoint: {why}" for m, why in ready.mismatched.items()}
        absent.update({q.name: UNPROVEN for q in ready.unproven})
        deadline = now + self.timeout
        if ask.deadline is not None and wall is not None:  # the client stops waiting sooner: so does everyone
            deadline = min(deadline, now + max(0.0, ask.deadline - wall))
        key = client if admission is None else admission
        p = Pending(self._rid(), client, ask, expected, now, deadline, absent=absent, admission=key)
        p.configured, p.models = self.roster.configured(now, len(expected))
        add(p.nbytes, "ask", ask_bytes)
        self.pending[p.rid] = p
        self._asking[key] += 1
        if not expected:
            p.failure = error_reply(ask.rid, self.pid, *self._none_ready(ready, now))
            return p, None
        sender = self.assign(p, now)
        if sender is None and not self._heard("sender"):
            p.failure = error_reply(ask.rid, self.pid, "no_sender", "no sender is ready (is everything up?)")
        return p, sender

    def forward(self, p: Pending, now: float, wall: float) -> Ask:
        """The ask as `p`'s sender gets it: the arbiter's rid (the client's stays here), and the request's deadline
        and opening time as Unix times (`wall` is the Unix time at `now`) for the sender to copy into its frames."""
        deadline, opened = wall + max(0.0, p.deadline - now), max(0.0, wall - (now - p.started))
        return replace(p.ask, rid=p.rid, sender=self.pid, deadline=deadline, opened=opened)

    def stale(self, p: Pending, now: float) -> bool:
        """Whether `p`'s deadline has passed before it went to a sender (counted: `expired_unsent`); then it is
        answered as it stands (`no_answer`) instead of being forwarded."""
        if now < p.deadline or p.failure is not None:
            return False
        self.stats["expired_unsent"] += 1
        return True

    def _rid(self) -> str:
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    def _heard(self, role: str) -> bool:
        return any(q.role == role for q in self.roster.peers.values())

    def _none_ready(self, ready: Readiness, now: float) -> tuple[str, str]:
        """The error code and message for a request that finds no receiver serving the system: say why."""
        why = []
        if ready.mismatched:
            sender = self.roster.checkpoint(now)
            fp = f" (fingerprint {sender.fingerprint[:12]})" if sender and sender.fingerprint else ""
            why.append(f"no receiver serves the sender's checkpoint{fp}: {_explain(ready.mismatched)}")
        if ready.foreign:  # counted, not named: until they answer, their names are anyone's text
            why.append(f"{len(ready.foreign)} receiver(s) announced another checkpoint, yet to answer a request")
        if (ready.unproven or ready.foreign) and not self._heard("sender"):
            return "no_sender", "no sender is ready (is everything up?)"  # nothing can prove the receivers
        if ready.unproven:
            names = ",".join(sorted({q.name for q in ready.unproven}))
            why.append(f"{names} up, yet to answer a request (being probed: try again in a moment)")
        return "no_receivers", "; ".join(why) or "no receiver is ready (is everything up?)"

    def probe(self, now: float) -> tuple[Pending, Peer] | None:
        """A request of the arbiter's own for receivers that announced themselves but never answered (every
        PROBE_EVERY_S while there are any, one at a time): the sender fans it out to every receiver, and each
        one that answers it is proven. None when nothing is due, or no sender is live to carry it."""
        if now < self._next_probe or any(p.probe for p in self.pending.values()):
            return None
        ready = self.roster.receivers(now)
        targets = ready.unproven + ready.foreign  # a real receiver on another checkpoint answers text: then named
        if not targets:
            return None
        rid = self._rid()
        ask = Ask(rid, self.pid, PROBE_QUESTION, mode="text", max_new_tokens=1)
        expected = frozenset(q.name for q in targets)
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
        senders = sorted(self.roster.alive("sender", now), key=lambda s: (s.inflight, s.pid))
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
        return [p for p in self.pending.values() if not p.sender and p.failure is None and not p.reported]

    def sender_lost(self, p: Pending, now: float, why: str) -> None:
        """`p`'s sender vanished before reporting it: dispatch it again (bounded), or fail it saying so."""
        peer = self.roster.peers.get(p.sender)
        if peer is not None:
            peer.inflight = max(0, peer.inflight - 1)
        if p.answered():  # receivers got it, so the fan-out happened: only the report was lost
            p.reported = True
            return
        self.stats["redispatched"] += 1
        lost = p.sender
        p.sender = ""
        if p.dispatches >= MAX_RETRIES:
            p.failure = error_reply(
                p.ask.rid, self.pid, "no_sender", f"sender {lost} {why} before sending (x{p.dispatches})"
            )

    def on_sender(self, msg: Sent | ErrorReply, route: bytes = b"") -> Pending | None:
        """The sender's report (or refusal) for a request; returns the request if it is now complete.

        Only the sender the request was given to may report it, once, with byte counts a frame can have.
        """
        p = self.pending.get(msg.rid)
        if p is None:
            self._stray(msg)
            return None
        peer = self.roster.peers.get(p.sender)
        if msg.sender != p.sender or peer is None or (route and route != peer.route):
            self.stats["forged"] += 1
            return None
        if p.reported or p.failure is not None:
            self.stats["duplicate"] += 1
            return None
        if isinstance(msg, ErrorReply):  # dropped at its deadline: to the client, not answered in time (as receivers)
            code = "no_answer" if msg.code == "expired" else msg.code
            p.failure = error_reply(p.ask.rid, self.pid, code, msg.message)
            return p
        p.reported = True
        if msg.request > DEFAULT_LIMITS.max_frame_bytes or msg.receivers > net.MAX_FANOUT:
            self.stats["bad_report"] += 1  # consistent, but no frame or fan-out that large goes out: not believed
            log.warning("sender %s reported impossible counts for %s: %s", msg.sender, p.rid, msg)
            p.sent = Sent(msg.rid, msg.sender, durations=msg.durations)  # its timings alone
            return p if p.complete() else None
        p.sent = msg
        for k in _REPORT_BYTES:
            add(p.nbytes, k, getattr(msg, k))
        if msg.reached == 0:
            p.failure = error_reply(p.ask.rid, self.pid, "no_receivers", "the sender could reach no receiver")
        return p if p.complete() else None

    def on_receiver(self, msg: Reply | ErrorReply, nbytes: int, now: float, key: bytes = b"") -> Pending | None:
        """A receiver's reply or error; late, duplicate, unknown and forged ones are counted and ignored.

        Any answer naming a request id the arbiter issued proves its receiver, even a late one or one from a receiver
        whose seat a flood took: only the receivers a sender fanned the request out to have seen that id.
        """
        if not self.roster.speaks_for(self.roster.peers.get(msg.sender), key):  # CURVE: another receiver's key
            return None
        p = self.pending.get(msg.rid)
        if p is not None or msg.rid in self.finished:
            self.roster.prove(msg.sender)
        if p is None:
            self._stray(msg)
            return None
        peer = self.roster.peers.get(msg.sender)
        if peer is None or peer.role != "receiver" or (isinstance(msg, Reply) and msg.model != peer.name):
            self.stats["forged"] += 1  # only a receiver that announced itself answers, under its own model name
            return None
        model = peer.name
        if model in p.answered():
            self.stats["duplicate"] += 1
            return None
        add(p.nbytes, "replies", max(0, nbytes))
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
            if isinstance(msg, Reply) and not self.finished[msg.rid]:  # generated after it closed: what deadlines save
                self.stats["late_reply"] += 1
            elif isinstance(msg, ErrorReply) and msg.code == "expired":  # dropped instead: counted like any error
                self._count_error(msg.code)
        else:
            self.stats["unknown"] += 1
            if isinstance(msg, ErrorReply):  # e.g. a garbage frame sent straight to a receiver
                self._count_error(msg.code)

    def due(self, now: float) -> list[Pending]:
        """Requests to finish now: past their deadline, failed, waiting only on processes that are gone, or
        waiting for a sender too long. A request whose sender vanished before reporting it is dispatched again."""
        live = {p.name for p in self.roster.receivers(now).ok}
        senders = {p.pid for p in self.roster.alive("sender", now)}
        out = []
        for p in self.pending.values():
            if p.sender and not p.reported and p.failure is None and p.sender not in senders:
                self.sender_lost(p, now, "stopped")
            # waiting only on the dead (a probe waits for receivers that are not proven, so not `live`, by design)
            gone = p.reported and not p.probe and not (p.expected - p.answered()) & live
            if p.failure is not None or now >= p.deadline or gone:
                out.append(p)
            elif not p.sender and not p.reported and p.wait_until and now >= p.wait_until:
                p.failure = error_reply(p.ask.rid, self.pid, "no_sender", f"no sender for {now - p.started:.1f} s")
                out.append(p)
        return out

    def forget(self, p: Pending) -> None:
        """Drop `p` from the join (answered, or failed); its sender has one request less in flight."""
        if self.pending.pop(p.rid, None) is None:
            return
        self.finished[p.rid] = p.probe
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        if p.client:
            self._asking[p.admission] -= 1
            if self._asking[p.admission] <= 0:
                del self._asking[p.admission]  # only clients with requests in flight count for the fair share
        sender = self.roster.peers.get(p.sender)
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
            path = p.ask.path  # each receiver's calibration for this path (fitted on val); none: raw scores
            configured, _ = self.roster.configured(now, len(p.expected))
            msg = outcome(p, self.pid, now, why, lambda m: self.roster.calibration(m, path), configured)
        except Exception as e:  # noqa: BLE001 - the client must hear back whatever went wrong here
            self.stats["internal_error"] += 1
            log.exception("could not finish %s", p.rid)
            return error_reply(p.ask.rid, self.pid, "internal", f"arbiter: {type(e).__name__}: {e}")
        if isinstance(msg, ErrorReply):
            self.stats["failed"] += 1
        else:
            self.stats["served"] += 1
            self.stats["degraded"] += msg.degraded
        return msg
