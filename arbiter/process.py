"""The arbiter: front door for clients, owner of request ids and timeouts, joiner of the receivers' replies.

    client DEALER -> [frontend ROUTER] arbiter [backend ROUTER] <- sender DEALER (load-balanced)
                                         [replies PULL]   <- receivers PUSH (replies, errors, heartbeats)

`Board` (board.py; the peers in roster.py, the answer in joint.py) is the whole join/pick/timeout logic without
sockets (unit-tested directly); `serve` wires it to ZeroMQ. Raw log-probs of two models are not comparable, so
answers are picked on each receiver's calibrated P(correct) (Platt parameters from the checkpoint config, announced
by the receiver in its heartbeats' `calibration`), ties broken by model name. Every Ask is answered exactly once: a
JointReply, or an ErrorReply saying why.

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

import zmq

from latentwire.arbiter.board import Board, Peer, Pending

# Re-exported for code that imports them from here (tests of other parts, the socket fuzz bench)
from latentwire.arbiter.roster import MAX_PEERS
from latentwire.processes import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
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

__all__ = ["MAX_PEERS", "TICK_S", "Board", "serve"]

log = logging.getLogger("latentwire.arbiter")
TICK_S = 0.02  # how often deadlines, dead processes and requests waiting for a sender are looked at


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
    board = Board(pid, timeout, max_inflight=max_inflight)
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
        msg = board.finish(p, now, why)
        if msg is not None:  # None: one of the arbiter's own probes, nobody to answer
            answer(p, msg)

    def dispatch(p: Pending, peer: Peer | None) -> None:
        """Send `p` to `peer`, trying the other live senders if it has vanished; finish `p` if it failed."""
        now = time.monotonic()
        if board.stale(p, now):  # nobody waits for it any more: the sender must not spend a second on it
            close(p, now)
            return
        while peer is not None:
            forward = board.forward(p, now, time.time())  # the arbiter's rid, deadline and opening time travel on
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

    def on_front(envelope: tuple[bytes, ...], data: bytes, key: bytes | None) -> None:
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
            reply(error_reply(peek_rid(data), pid, refusal_code(e).value, str(e)))
            return
        if isinstance(msg, Heartbeat):  # a client's readiness / stats probe
            st = board.status(now)
            # its CPU-seconds so far: a bench adds the arbiter's share to the cost of a question
            reply(Heartbeat(msg.rid, pid, st.role, st.status, {**st.info, "cpu_s": time.process_time()}))
            return
        if not isinstance(msg, Ask):
            reply(error_reply(msg.rid, pid, "unexpected_kind", "send ask"))
            return
        if stop:
            reply(error_reply(msg.rid, pid, "shutting_down", "arbiter shutting_down"))
            return
        admission = envelope if key is None else key
        why = board.busy(admission)  # a fair share of the window per client: a flood cannot lock others out
        if why:
            board.stats["busy"] += 1
            reply(error_reply(msg.rid, pid, "busy", f"arbiter busy: {why}"))
            return
        dispatch(*board.open(envelope, msg, len(data), now, time.time(), admission=admission))

    def on_back(ident: bytes, data: bytes) -> None:
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_sender_frame"] += 1
            log.warning("bad frame from a sender: %s", e)
            return
        if isinstance(msg, Heartbeat):
            board.heartbeat(msg, time.monotonic(), route=ident, role="sender")
        elif isinstance(msg, (Sent, ErrorReply)):
            p = board.on_sender(msg, route=ident)
            if p is not None:
                close(p, time.monotonic())
        else:
            board.stats["bad_sender_frame"] += 1

    def on_pull(data: bytes, key: bytes) -> None:
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            board.stats["bad_reply_frame"] += 1
            log.warning("bad frame from a receiver: %s", e)
            return
        now = time.monotonic()
        if isinstance(msg, Heartbeat):
            board.heartbeat(msg, now, role="receiver", key=key)
        elif isinstance(msg, (Reply, ErrorReply)):
            p = board.on_receiver(msg, len(data), now, key=key)
            if p is not None:
                close(p, now)
        else:
            board.stats["bad_reply_frame"] += 1

    def handle(sock: zmq.Socket, frames: list[zmq.Frame]) -> None:
        parts = [f.bytes for f in frames]
        if sock is pull and len(parts) == 1:
            on_pull(parts[0], (curve is not None and client_key(frames[0], True)) or b"")
        elif sock is front and (len(parts) == 2 or (len(parts) == 3 and not parts[1])):
            on_front(tuple(parts[:-1]), parts[-1], client_key(frames[-1], curve is not None))
        elif sock is back and len(parts) == 2:
            on_back(parts[0], parts[1])
        else:  # e.g. [id, tag, ask] from a DEALER: a tag per ask would be a new client per ask, and held with it
            board.stats["bad_envelope"] += 1

    def tick(now: float) -> None:
        for p in board.due(now):
            close(p, now)
        for p in board.waiting():
            peer = board.assign(p, now)
            if peer is None:
                break  # no live sender: they all keep waiting
            dispatch(p, peer)
        if not stop and (probe := board.probe(now)) is not None:  # receivers that only announced themselves
            dispatch(*probe)
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
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)  # frames: the peer's properties
                        try:
                            handle(sock, frames)
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
                log.info("stopping: %d requests in flight, draining up to %.0f s", board.asked(), drain)
            if drain_until is not None and (not board.asked() or now >= drain_until):  # a probe need not finish
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
