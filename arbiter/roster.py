"""The arbiter's roster: the senders and receivers it has heard from, and which of them can serve.

Peers announce themselves with heartbeats (`hb` frames): a sender on the backend socket, a receiver on the replies
socket, each refused on the other's. A peer is alive while it is not `stopping` and was heard within `dead_after`
seconds; it is forgotten after PEER_MEMORY_S of silence. A receiver serves the system when it is alive, its model
is one of the checkpoint's, it announced the sender's fingerprint (the sender most recently heard defines the
checkpoint), and it is *proven*: it has answered a request the arbiter issued (a reply or an error naming the
request's id, which only the receivers a sender fanned the request out to ever see). A heartbeat costs nothing to
forge on plain TCP; an answer to a live request id cannot be forged without seeing the traffic. So a receiver
that only beats is never waited for, never supplies a calibration and is never named in the status or an answer
(a receiver that announces another checkpoint is counted until it has answered), and the arbiter probes it
(`Board.probe`).
At most MAX_PEERS peers per role are kept; when full, a dead peer gives up its seat first, then a receiver that
never answered, so forged heartbeats never keep a proven receiver out. Socket-free: time is passed in. A `Board`
holds one.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from latentwire.calibration import Calibration
from latentwire.processes import net
from latentwire.protocol import Heartbeat

log = logging.getLogger("latentwire.arbiter")
PEER_MEMORY_S = 600.0  # a peer silent this long is forgotten (its name still explains a degraded answer until then)
MAX_PEERS = 64  # per role: heartbeats with ever new ids cannot grow the arbiter without bound
ROLES = ("sender", "receiver")  # who may announce itself, each on its own socket
PROVEN_MEMORY = 4 * MAX_PEERS  # receiver ids remembered as proven (most recently answering kept)


def bounded_count(v: object, hi: int) -> int | None:
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
    key: bytes = b""  # with CURVE, the public key it was first heard with: no other key speaks for it


@dataclass
class Readiness:
    """The live receivers, sorted by whether the join waits for them."""

    ok: list[Peer]  # serve the system: of the sender's checkpoint and proven
    unproven: list[Peer]  # of the checkpoint, but yet to answer a request: not waited for, probed
    mismatched: dict[str, str]  # model -> why its live proven receivers cannot serve the system
    # announced another checkpoint or model, yet to answer a request: probed, and until one answers only counted,
    # never named (a heartbeat costs nothing to forge, so its model name and fingerprint are anyone's text)
    foreign: list[Peer] = field(default_factory=list)


class Roster:
    """Peers by process id, with the counters the arbiter reports (shared with the join)."""

    def __init__(self, dead_after: float = net.DEAD_AFTER_S, stats: Counter[str] | None = None) -> None:
        self.dead_after = dead_after
        self.peers: dict[str, Peer] = {}
        self.stats: Counter[str] = Counter() if stats is None else stats
        # kept apart from `peers`: a proof outlives the receiver's seat, so a proven receiver pushed out by a flood
        # of forged heartbeats takes a seat back with its next heartbeat
        self.proven: OrderedDict[str, None] = OrderedDict()

    def prove(self, pid: str) -> None:
        """Receiver `pid` answered a request the arbiter issued: it is a real receiver of the system."""
        self.proven[pid] = None
        self.proven.move_to_end(pid)
        while len(self.proven) > PROVEN_MEMORY:
            self.proven.popitem(last=False)

    def speaks_for(self, peer: Peer | None, key: bytes) -> bool:
        """Whether a frame sent with CURVE key `key` (b"": plain TCP, no key known) may speak for `peer`: with CURVE,
        a peer's id is bound to the key it was first heard with, so another key's frames under it are refused
        (`impostor`). Plain TCP trusts the network: the id is all there is."""
        if peer is None or not key or not peer.key or key == peer.key:
            return True
        self.stats["impostor"] += 1
        return False

    def heartbeat(
        self, hb: Heartbeat, now: float, route: bytes = b"", role: str | None = None, key: bytes = b""
    ) -> Peer | None:
        """Note a peer's heartbeat; refused (None) when its role is not the one its socket serves, or (CURVE) when
        `key` is not the key the peer was first heard with."""
        if hb.role not in ROLES or (role is not None and hb.role != role):
            self.stats["bad_role"] += 1
            return None
        peer = self.peers.get(hb.sender)
        if peer is not None and peer.role != hb.role:
            self.stats["bad_role"] += 1
            return None
        if not self.speaks_for(peer, key):
            return None
        if peer is None:
            if not self._room(hb.role, now):
                self.stats["peers_full"] += 1
                return None
            name = str(hb.info.get("model", hb.sender)) if hb.role == "receiver" else hb.sender
            peer = self.peers[hb.sender] = Peer(hb.sender, hb.role, name or hb.sender, now, key=key)
            self.stats[f"joined.{hb.role}"] += 1
            log.info("%s %s joined (%s)", hb.role, peer.name, hb.sender)
        if hb.status == "stopping" and peer.status != "stopping":
            log.info("%s %s is stopping", hb.role, peer.name)
        peer.last_seen, peer.status = now, "stopping" if hb.status == "stopping" else "ready"
        peer.route = route or peer.route
        fp = hb.info.get("fingerprint")
        peer.fingerprint = fp if isinstance(fp, str) else ""
        if hb.role == "receiver":
            peer.calibrations = {path: Calibration(a, b) for path, (a, b) in hb.calibration.items()}
        else:
            models = hb.info.get("models")
            peer.models = tuple(sorted(m for m in models.split(",") if m)) if isinstance(models, str) else ()
            peer.fanout = bounded_count(hb.info.get("receivers"), net.MAX_FANOUT) or 0
        return peer

    def _room(self, role: str, now: float) -> bool:
        """Whether one more peer of `role` fits, forgetting one if it must: the longest-silent dead one, else the
        longest-silent receiver that never answered (a forged heartbeat must not hold a seat a real one needs)."""
        same = [p for p in self.peers.values() if p.role == role]
        if len(same) < MAX_PEERS:
            return True
        idle = [p for p in same if not self._alive(p, now) and not p.inflight]
        idle = idle or [p for p in same if p.role == "receiver" and p.pid not in self.proven]
        if not idle:
            return False
        self.stats["evicted"] += 1
        del self.peers[min(idle, key=lambda p: p.last_seen).pid]
        return True

    def expire(self, now: float) -> None:
        """Forget peers silent for PEER_MEMORY_S (a restarted process comes back under a new id)."""
        for pid in [p.pid for p in self.peers.values() if now - p.last_seen > PEER_MEMORY_S and not p.inflight]:
            del self.peers[pid]

    def _alive(self, p: Peer, now: float) -> bool:
        return p.status != "stopping" and now - p.last_seen <= self.dead_after

    def alive(self, role: str, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if p.role == role and self._alive(p, now)]

    def checkpoint(self, now: float) -> Peer | None:
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
            return f"not a model of checkpoint {sender.fingerprint[:12]} ({','.join(sender.models)})"
        if sender.fingerprint and peer.fingerprint and peer.fingerprint != sender.fingerprint:
            return f"serving another checkpoint (fingerprint {peer.fingerprint[:12]})"
        return ""

    def receivers(self, now: float) -> Readiness:
        """The live receivers: those that serve the system, those yet to prove it, and why the others cannot (by
        model name: that is how answers and the status name receivers)."""
        sender = self.checkpoint(now)
        ok, unproven, foreign, bad = [], [], [], {}
        for p in self.alive("receiver", now):
            why = self.mismatch(p, sender)
            if why and p.pid in self.proven:
                bad.setdefault(p.name, set()).add(why)
            elif why:
                foreign.append(p)
            else:
                (ok if p.pid in self.proven else unproven).append(p)
        explained = {name: "; ".join(sorted(whys)) for name, whys in sorted(bad.items())}
        return Readiness(ok, unproven, explained, foreign)

    def calibration(self, model: str, path: str = "latent") -> Calibration:
        """The calibration for `path` the most recently heard proven receiver of `model` announced (identity if
        none): anyone can announce a model's name, only a real receiver may decide how its answers are weighed."""
        sender = self.checkpoint(float("inf"))  # the sender most recently heard (at no time is one alive)
        peers = [
            p
            for p in self.peers.values()
            if p.role == "receiver" and p.name == model and p.pid in self.proven and not self.mismatch(p, sender)
        ]
        return max(peers, key=lambda p: p.last_seen).calibrations.get(path, Calibration()) if peers else Calibration()

    def configured(self, now: float, expected: int) -> tuple[int, tuple[str, ...]]:
        """How many receivers the system is configured with, and the checkpoint's models (from the sender)."""
        sender = self.checkpoint(now)
        if sender is None:
            return expected, ()
        return max(expected, sender.fanout), sender.models
