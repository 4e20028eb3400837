"""The arbiter: front door for clients, owner of request ids and timeouts, joiner of the receivers' replies.

    client DEALER -> [frontend ROUTER] arbiter [backend ROUTER] <- sender DEALER (load-balanced)
                                         [replies PULL]   <- receivers PUSH (replies, errors, heartbeats)

`Board` (board.py; the peers in roster.py, the answer in joint.py) is the whole join/pick/timeout logic without
sockets (unit-tested directly); `Arbiter` wires it to ZeroMQ, as the ZeroMQ guide's Majordomo broker does: explicit
state, one handler per socket (clients, senders, receivers' replies) and one for the timer.

Raw log-probs of two models are not comparable, so answers are picked on each receiver's calibrated P(correct)
(Platt parameters from the checkpoint config, announced by the receiver in its heartbeats' `calibration`), ties
broken by model name. Every Ask is answered exactly once: a JointReply, or an ErrorReply saying why.

What the plain-TCP default trusts (`LATENTWIRE_CURVE` unset; with CURVE every peer is known by its key): whoever can
reach a port gets the role of its socket. A client may ask (a fair share of the in-flight window per client
identity) and read the status. A process on the backend is a sender: it is given questions and its reports are
believed. A process pushing to the replies socket may announce receivers, and reply. What a forger there can do is
bounded by the Board: a receiver is waited for, and its announced calibration used, only after it answered a request
id the arbiter issued (ids are unguessable and travel only from the sender to its receivers; the arbiter probes new
receivers to that end), so a forged heartbeat neither delays an answer nor tilts the pick, and forged peers give up
their seats to real ones; a reply counts only from an announced receiver, under its own model name, once per
request. Nothing here stops a forged sender, or anyone who reads the traffic: the defaults bind loopback only;
across hosts use CURVE. With CURVE a receiver's id is bound to the key it was first heard with (`Roster.speaks_for`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from latentwire.arbiter.board import Board, Peer, Pending

# Re-exported for code that imports them from here (tests of other parts, the socket fuzz bench)
from latentwire.arbiter.roster import MAX_PEERS
from latentwire.processes import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    Message,
    ProtocolError,
    Reply,
    Sent,
    decode_frame,
    encode_frame,
    error_reply,
    peek_rid,
    refusal_code,
)

__all__ = ["MAX_PEERS", "TICK_S", "Arbiter", "Board", "serve"]

log = logging.getLogger("latentwire.arbiter")
TICK_S = 0.02  # how often deadlines, dead processes and requests waiting for a sender are looked at
POLL_MS = 100  # the longest a poll waits, so a stop signal is seen soon even with no traffic
MAX_BURST = 1000  # frames read from one socket per turn: no socket starves the others


def client_key(frame: zmq.Frame, curve: bool) -> bytes | None:
    """Who sent `frame`, for fair admission: its CURVE public key (the ZAP user id) with CURVE, else the peer's IP
    address; None where the transport has neither (ipc, inproc: then its ROUTER identity, local peers only).

    Not the ROUTER identity: a client gets a new one with every socket it opens, for free, and 300 sockets held
    every slot. A key costs a flooder a key the arbiter accepts, an address costs it a host; on plain TCP clients
    behind one address (one host, one NAT) share one fair share.
    """
    prop = "User-Id" if curve else "Peer-Address"
    try:
        value = frame.get(prop)
    except zmq.ZMQError:
        return None
    return f"{prop}:{value}".encode() if value else None


class Arbiter:
    """The arbiter's process: three sockets over one `Board`, each socket with its handler.

    Nothing a peer sends can stop it: every failure while handling a frame or a timeout is counted
    (`internal_error`) and answered, never fatal.
    """

    def __init__(
        self,
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
        self.stop = stop if stop is not None else net.StopFlag()
        self.drain = drain
        self.pid = net.process_id("arbiter")
        self.board = Board(self.pid, timeout, max_inflight=max_inflight)
        self.curve = net.Curve.from_env("arbiter", curve_dir)
        self.ctx = zmq.Context()
        self.front, self.back, self.pull = (net.make_socket(self.ctx, k) for k in (zmq.ROUTER, zmq.ROUTER, zmq.PULL))
        self.back.router_mandatory = True  # a vanished sender raises instead of swallowing the request
        self.handlers = {self.front: self.on_client, self.back: self.on_sender, self.pull: self.on_receiver}
        self.poller = zmq.Poller()
        for sock, allowed, addr in (
            (self.front, "client", net.address("arbiter", frontend)),
            (self.back, "sender", net.address("backend", backend)),
            (self.pull, "receiver", net.address("replies", replies)),
        ):
            if self.curve:
                self.curve.server(sock, allowed)
            sock.bind(addr)
            self.poller.register(sock, zmq.POLLIN)
        self.next_tick = 0.0
        self.drain_until: float | None = None  # set once stopping: the last moment to wait for open requests
        ends = (s.last_endpoint.decode() for s in (self.front, self.back, self.pull))
        log.info("arbiter up: clients %s, senders %s, replies %s", *ends)

    # ---- the loop ----

    def run(self) -> None:
        """Serve until stopped; then stop taking asks, wait up to `drain` s, answer the rest."""
        try:
            while not self.done(self.turn()):
                pass
        finally:
            self.close()

    def turn(self) -> float:
        """Read what every ready socket holds, then run the timer when due; returns the time it ended."""
        try:
            for sock, _ in self.poller.poll(POLL_MS):
                self.read(sock)
            now = time.monotonic()
            if now >= self.next_tick:  # deadlines and waiting requests, not after every frame: replies close
                self.on_timer(now)  # their requests as they arrive, so this costs no request any latency
                self.next_tick = now + TICK_S
            return now
        except zmq.ContextTerminated:
            raise
        except Exception:  # noqa: BLE001 - never fatal: count it, and keep serving
            self.board.stats["internal_error"] += 1
            log.exception("arbiter loop failed")
            return time.monotonic()

    def read(self, sock: zmq.Socket) -> None:
        """Hand what `sock` has queued to its handler, up to MAX_BURST frames."""
        handler = self.handlers[sock]
        for _ in range(MAX_BURST):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than raising zmq.Again
                return
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)  # frames: the peer's properties
            try:
                handler(frames)
            except Exception:  # a bug must cost one frame, not the arbiter and every request in flight
                self.board.stats["internal_error"] += 1
                log.exception("frame handling failed")

    def done(self, now: float) -> bool:
        """Whether to leave the loop: stopping, and nothing left to wait for (a probe need not finish)."""
        if self.stop and self.drain_until is None:
            self.drain_until = now + self.drain
            log.info("stopping: %d requests in flight, draining up to %.0f s", self.board.asked(), self.drain)
        return self.drain_until is not None and (not self.board.asked() or now >= self.drain_until)

    def close(self) -> None:
        """Answer every open request (`shutting_down`), then release the sockets."""
        now = time.monotonic()
        for p in list(self.board.pending.values()):
            try:
                self.finish(p, now, "shutting_down")
            except Exception:  # noqa: BLE001 - the others must still be answered
                log.exception("could not answer %s on the way out", p.rid)
        for sock in (self.front, self.back, self.pull):
            sock.close()
        if self.curve:
            self.curve.stop()
        self.ctx.term()
        log.info("arbiter stopped: %s", dict(self.board.stats))

    # ---- one handler per socket ----

    def on_client(self, frames: list[zmq.Frame]) -> None:
        """The frontend: [identity, ask] from a DEALER, [identity, b"", ask] from a REQ."""
        parts = [f.bytes for f in frames]
        if not (len(parts) == 2 or (len(parts) == 3 and not parts[1])):
            # e.g. [id, tag, ask] from a DEALER: a tag per ask would be a new client per ask, and held with it
            self.board.stats["bad_envelope"] += 1
            return
        envelope, data = tuple(parts[:-1]), parts[-1]
        msg = self.client_message(envelope, data)
        if msg is None:
            return
        key = client_key(frames[-1], self.curve is not None)
        admission = envelope if key is None else key
        why = self.board.busy(admission)  # a fair share of the window per client: a flood cannot lock others out
        if why:
            self.board.stats["busy"] += 1
            self.reply(envelope, error_reply(msg.rid, self.pid, "busy", f"arbiter busy: {why}"))
            return
        now = time.monotonic()
        self.dispatch(*self.board.open(envelope, msg, len(data), now, time.time(), admission=admission))

    def client_message(self, envelope: tuple[bytes, ...], data: bytes) -> Ask | None:
        """The client's ask, if it is one the arbiter takes now; anything else is answered here (None)."""
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            self.board.stats["bad_client_frame"] += 1
            self.reply(envelope, error_reply(peek_rid(data), self.pid, refusal_code(e).value, str(e)))
            return None
        if isinstance(msg, Heartbeat):  # a client's readiness / stats probe
            st = self.board.status(time.monotonic())
            # its CPU-seconds so far: a bench adds the arbiter's share to the cost of a question
            info = {**st.info, "cpu_s": time.process_time()}
            self.reply(envelope, Heartbeat(msg.rid, self.pid, st.role, st.status, info))
        elif not isinstance(msg, Ask):
            self.reply(envelope, error_reply(msg.rid, self.pid, "unexpected_kind", "send ask"))
        elif self.stop:
            self.reply(envelope, error_reply(msg.rid, self.pid, "shutting_down", "arbiter shutting_down"))
        else:
            return msg
        return None

    def on_sender(self, frames: list[zmq.Frame]) -> None:
        """The backend: [identity, frame] from a sender's DEALER: its heartbeats, reports and refusals."""
        parts = [f.bytes for f in frames]
        if len(parts) != 2:
            self.board.stats["bad_envelope"] += 1
            return
        ident, data = parts
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            self.board.stats["bad_sender_frame"] += 1
            log.warning("bad frame from a sender: %s", e)
            return
        if isinstance(msg, Heartbeat):
            self.board.roster.heartbeat(msg, time.monotonic(), route=ident, role="sender")
        elif isinstance(msg, (Sent, ErrorReply)):
            p = self.board.on_sender(msg, route=ident)
            if p is not None:
                self.finish(p, time.monotonic())
        else:
            self.board.stats["bad_sender_frame"] += 1

    def on_receiver(self, frames: list[zmq.Frame]) -> None:
        """The replies socket: one frame per message from a receiver's PUSH: heartbeats, replies, errors."""
        if len(frames) != 1:
            self.board.stats["bad_envelope"] += 1
            return
        data = frames[0].bytes
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            self.board.stats["bad_reply_frame"] += 1
            log.warning("bad frame from a receiver: %s", e)
            return
        key = (self.curve is not None and client_key(frames[0], True)) or b""
        now = time.monotonic()
        if isinstance(msg, Heartbeat):
            self.board.roster.heartbeat(msg, now, role="receiver", key=key)
        elif isinstance(msg, (Reply, ErrorReply)):
            p = self.board.on_receiver(msg, len(data), now, key=key)
            if p is not None:
                self.finish(p, now)
        else:
            self.board.stats["bad_reply_frame"] += 1

    def on_timer(self, now: float) -> None:
        """Deadlines, requests waiting for a sender, probes of receivers yet to answer, peers long silent."""
        for p in self.board.due(now):
            self.finish(p, now)
        for p in self.board.waiting():
            peer = self.board.assign(p, now)
            if peer is None:
                break  # no live sender: they all keep waiting
            self.dispatch(p, peer)
        if not self.stop and (probe := self.board.probe(now)) is not None:  # receivers that only announced themselves
            self.dispatch(*probe)
        self.board.roster.expire(now)

    # ---- requests out ----

    def dispatch(self, p: Pending, peer: Peer | None) -> None:
        """Send `p` to `peer`, trying the other live senders if it has vanished; finish `p` if it failed."""
        now = time.monotonic()
        if self.board.stale(p, now):  # nobody waits for it any more: the sender must not spend a second on it
            self.finish(p, now)
            return
        while peer is not None:
            forward = self.board.forward(p, now, time.time())  # the arbiter's rid, deadline and opening time travel on
            try:
                self.back.send_multipart([peer.route, encode_frame(forward)], zmq.NOBLOCK)
                return
            except zmq.ZMQError as e:  # gone (EHOSTUNREACH) or stuck (EAGAIN): it gets no more requests
                log.warning("sender %s unreachable (%s)", peer.pid, e)
                peer.status = "stopping"
                self.board.sender_lost(p, now, "unreachable")
                peer = self.board.assign(p, now) if p.failure is None else None
        if p.failure is not None:
            self.finish(p, now)

    def finish(self, p: Pending, now: float, why: str = "") -> None:
        """Close `p` and answer its client (a probe has none to answer)."""
        msg = self.board.finish(p, now, why)
        if msg is None:
            return
        try:
            data = encode_frame(msg)
        except ProtocolError as e:  # e.g. answers too large for one frame: still answer, explicitly
            data = encode_frame(error_reply(p.ask.rid, self.pid, "too_large", f"joint reply does not fit a frame: {e}"))
        try:
            self.front.send_multipart([*p.client, data], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the client is gone
            self.board.stats["unsent"] += 1
            log.warning("could not answer %s: %s", p.ask.rid, e)

    def reply(self, envelope: tuple[bytes, ...], msg: Message) -> None:
        """Answer a client at once (its status probe, or a refusal)."""
        try:
            data = encode_frame(msg)
        except ProtocolError as e:  # a bug, but the client still hears back
            self.board.stats["internal_error"] += 1
            log.error("could not encode a reply to %r: %s", msg.rid, e)
            data = encode_frame(error_reply(msg.rid, self.pid, "internal", f"arbiter: {e}"))
        self.front.send_multipart([*envelope, data], zmq.NOBLOCK)


def serve(**options: Any) -> None:
    """Run the arbiter (`Arbiter`'s keyword options) until SIGINT/SIGTERM; then stop taking asks, wait up to
    `drain` s, answer the rest."""
    Arbiter(**options).run()
