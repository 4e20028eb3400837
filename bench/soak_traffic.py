"""The soak's traffic roles (`soak.py` runs them side by side): normal, oversized and flooding clients, contexts
over the sender's bounds, many identities and rotating envelopes, asks past their deadline, a small ask beside long
text asks, garbage frames, forged heartbeats and replies, stopped receivers, and the memory sampler. Each takes the
running `Soak`, is bounded in rate, and stops when the run ends. The run's shared state (`Soak`, each role's
`Tally`) lives here, beside the roles that write it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from latentwire.processes import net
from latentwire.processes.client import Answer, Client
from latentwire.protocol import DEFAULT_LIMITS, Ask, ErrorReply, Heartbeat, Reply, decode_frame, encode_frame
from latentwire.protocol.fuzz import mutate

RECEIVERS = {"llama": "tiny-llama", "qwen": "tiny-qwen"}
PROCESSES = ("arbiter", "sender", *RECEIVERS)
TIMEOUT_S = 30.0  # the arbiter's timeout: a client gives up (lost) GRACE_S after it
READY_S = 900.0  # models load in seconds, but a machine busy with other work may take minutes to start the processes
PATH_QUANTS = (("latent", "int8"), ("latent", "int4"), ("text", "int8"), ("token-budget", "int8"))
CONTEXT = "Ada Lovelace wrote the notes on the Analytical Engine in 1843. "
OVERSIZED = (3_000, 100_000, 2_000_000)  # text ask sizes: served, refused by receivers, refused by the client
OVERSIZED_EVERY_S = 2.0
FLOOD_EVERY_S, FLOOD_ASKS, FLOOD_WINDOW = 60.0, 150, 150
FLOOD_HOST = "127.0.0.2"  # the flood's source address (all of 127/8 is loopback on Linux)
GARBAGE_PER_S = 10.0  # frames per second at each arbiter socket (receivers get a fifth of it)
FORGED_PER_S = 5.0
STOP_EVERY_S, STOP_S = 60.0, net.DEAD_AFTER_S + 1.5  # a stop long enough to be taken for dead
FIRST_STOP_S, QUIET_END_S = 5.0, 8.0  # no stop starts before the first, or ends within the last seconds
# latent asks the sender must refuse before any work: over 65,536 characters, 5,000 one-line paragraphs, empty
CONTEXTS = ((CONTEXT * 1600)[:100_000], "Ada Lovelace wrote the notes.\n" * 5_000, "")
CONTEXTS_EVERY_S = 2.0
IDENTITIES, IDENTITIES_EVERY_S = 100, 5.0  # sockets of one host, each asking once a round: one fair share
IDENTITY_HOST, ENVELOPE_HOST, LONG_HOST = "127.0.0.3", "127.0.0.4", "127.0.0.5"
EXPIRED_PER_S = 20.0  # asks whose deadline has passed: answered at once, never forwarded
LONG_CONTEXT = CONTEXT * 64  # ~4,000 byte-level tokens: one long text ask per generate call
LONG_WINDOW, SMALL_EVERY_S = 8, 2.0


@dataclass
class Tally:
    """What one traffic role sent and heard back."""

    sent: int = 0
    answered: int = 0
    lost: int = 0  # no answer at all
    failed: int = 0  # an explicit error (busy, too_large, bad_request, ...)
    degraded: int = 0
    latencies: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, a: Answer) -> None:
        with self._lock:
            self.sent += 1
            if a.error is not None and a.error.code == "timeout":
                self.lost += 1
                return
            self.answered += 1
            self.latencies.append(a.latency_s)
            self.failed += a.reply is None
            self.degraded += a.reply is not None and bool(a.reply.degraded)

    def summary(self) -> dict[str, Any]:
        p50 = round(statistics.median(self.latencies), 3) if self.latencies else None
        p95 = round(statistics.quantiles(self.latencies, n=20)[-1], 3) if len(self.latencies) > 1 else p50
        keys = ("sent", "answered", "lost", "failed", "degraded")
        return {**{k: getattr(self, k) for k in keys}, "p50_s": p50, "p95_s": p95}


@dataclass
class Soak:
    """The running system, the end of the run, and what each role counted."""

    system: Any  # latentwire.processes.up.LocalSystem, started
    end: float  # monotonic time the roles stop starting new work
    rng: random.Random
    seeds: list[bytes]  # valid request frames of the checkpoint (the receivers' garbage is made from them)
    tallies: dict[str, Tally] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)  # process role -> peak RSS in MiB
    stops: list[str] = field(default_factory=list)

    def tally(self, role: str) -> Tally:
        return self.tallies.setdefault(role, Tally())

    def running(self) -> bool:
        return time.monotonic() < self.end

    def pace(self, per_s: float) -> None:
        time.sleep(min(1.0 / per_s, max(0.0, self.end - time.monotonic())))


def _question(i: int) -> tuple[int, str, str]:
    return i, f"Who wrote note {i}?", CONTEXT * (1 + i % 3)


def normal(s: Soak) -> None:
    """Two asks in flight at all times, the path rotating every eight asks."""
    with s.system.client() as c:
        i = 0
        while s.running():
            path, quant = PATH_QUANTS[(i // 8) % len(PATH_QUANTS)]
            chunk = [_question(j) for j in range(i, i + 8)]
            for a in c.ask_many(chunk, window=2, path=path, quant=quant, max_new_tokens=4):
                s.tally("normal").add(a)
            i += 8


def oversized(s: Soak) -> None:
    with s.system.client() as c:
        i = 0
        while s.running():
            size = OVERSIZED[i % len(OVERSIZED)]
            s.tally("oversized").add(c.ask("Who wrote it?", (CONTEXT * (size // len(CONTEXT) + 1))[:size], path="text"))
            i += 1
            s.pace(1.0 / OVERSIZED_EVERY_S)


def flood(s: Soak) -> None:
    """Bursts far over the client's fair share of the arbiter's window: most are refused with `busy`, none lost.

    From another loopback address: on plain TCP the arbiter's fair share is per peer address (one host, one
    client), so a flood from the normal clients' own address would take their share too."""
    with Client(_from(s, FLOOD_HOST)) as c:
        while s.running():
            burst = [(i, f"Flood {i}?", "Ada.") for i in range(FLOOD_ASKS)]
            for a in c.ask_many(burst, window=FLOOD_WINDOW, path="text", max_new_tokens=2):
                s.tally("flood").add(a)
            _sleep_until(s, time.monotonic() + FLOOD_EVERY_S)


def _from(s: Soak, host: str) -> str:
    """The arbiter's address, connected from another loopback `host` (another client for fair admission)."""
    source, _, rest = s.system.address.partition("://")
    return f"{source}://{host}:0;{rest}"


def contexts(s: Soak) -> None:
    """Latent asks over the sender's bounds (`too_large`) or with no context (`bad_request`): refused, never lost,
    and the sender keeps its memory (its peak is reported)."""
    with s.system.client() as c:
        i = 0
        while s.running():
            s.tally("contexts").add(c.ask("Who wrote it?", CONTEXTS[i % len(CONTEXTS)], path="latent"))
            i += 1
            s.pace(1.0 / CONTEXTS_EVERY_S)


def identities(s: Soak) -> None:
    """IDENTITIES sockets from one host, each asking once a round (a ROUTER identity costs nothing: they share one
    fair share), and a socket that tags every ask with a new envelope part (dropped unanswered, `bad_envelope`)."""
    ctx = zmq.Context()
    socks = [net.make_socket(ctx, zmq.DEALER) for _ in range(IDENTITIES)]
    for sock in socks:
        sock.connect(_from(s, IDENTITY_HOST))
    tagger = net.make_socket(ctx, zmq.DEALER)
    tagger.connect(_from(s, ENVELOPE_HOST))
    tally, r = s.tally("identities"), 0
    try:
        while s.running():
            t0 = time.monotonic()
            for k, sock in enumerate(socks):
                sock.send(encode_frame(Ask(f"id-{r}-{k}", "soak", "Who?", "Ada.", "text", max_new_tokens=1)))
                tagged = Ask(f"tag-{r}-{k}", "soak", "Who?", "Ada.", "text", max_new_tokens=1)
                with contextlib.suppress(zmq.Again):  # a new tag per ask: a new client per ask, were it taken
                    tagger.send_multipart([os.urandom(1024), encode_frame(tagged)], zmq.NOBLOCK)
            end = time.monotonic() + TIMEOUT_S + 5.0  # as long as a client would wait
            for sock in socks:
                got = sock.poll(int(max(0.0, end - time.monotonic()) * 1000))
                if got:
                    tally.failed += isinstance(decode_frame(sock.recv()), ErrorReply)  # `busy` over the share
                tally.sent += 1
                tally.answered += bool(got)
                tally.lost += not got
                tally.latencies.append(time.monotonic() - t0)
            _sleep_until(s, t0 + IDENTITIES_EVERY_S)
    finally:
        for sock in (*socks, tagger):
            sock.close(0)
        ctx.term()


def expired(s: Soak) -> None:
    """Asks whose deadline passed before they were sent: each answered (`no_answer`) without costing a sender a
    CPU-second (the arbiter's `expired_unsent`)."""
    with s.system.client() as c:
        i = 0
        while s.running():
            batch = [(j, f"Late {j}?", "Ada wrote it.") for j in range(i, i + 10)]
            for a in c.ask_many(batch, window=10, path="latent", deadline=time.time() - 1.0):
                s.tally("expired").add(a)
            i += 10
            s.pace(EXPIRED_PER_S / 10)


def long_asks(s: Soak) -> None:
    """Another client keeping LONG_WINDOW long text asks in flight, from its own address."""
    with Client(_from(s, LONG_HOST)) as c:
        running = itertools.takewhile(lambda _: s.running(), itertools.count())
        items = ((i, f"Who wrote long note {i}?", LONG_CONTEXT) for i in running)
        for a in c.ask_many(items, window=LONG_WINDOW, path="text", max_new_tokens=16):
            s.tally("long").add(a)


def small_asks(s: Soak) -> None:
    """A small latent ask every SMALL_EVERY_S beside `long_asks`: its latency is bounded by one long generate call,
    not by the long asks the receivers have queued."""
    with s.system.client() as c:
        while s.running():
            s.tally("small").add(c.ask("Who wrote the notes?", "Ada Lovelace wrote the notes.", max_new_tokens=4))
            s.pace(1.0 / SMALL_EVERY_S)


def _sleep_until(s: Soak, t: float) -> None:
    while s.running() and time.monotonic() < t:
        time.sleep(min(0.5, t - time.monotonic()))


def _front_seed(rng: random.Random, i: int) -> bytes:
    seeds = [
        Ask(f"g-{i}", "garbage", "Who wrote it?", "Ada wrote it.", "text", max_new_tokens=1),
        Heartbeat(f"g-{i}", "garbage", "client", "ping"),
        ErrorReply(f"g-{i}", "garbage", "x", "y"),
    ]
    return encode_frame(rng.choice(seeds))


def garbage(s: Soak) -> None:
    """Mutated frames at every socket; each one at the client socket must be answered (counted by the dealer)."""
    env, ctx = s.system.env, zmq.Context()
    front = net.make_socket(ctx, zmq.DEALER)
    front.connect(env["LATENTWIRE_ARBITER"])
    pushes = {k: net.make_socket(ctx, zmq.PUSH) for k in ("replies", *RECEIVERS)}
    back = net.make_socket(ctx, zmq.DEALER)
    back.connect(env["LATENTWIRE_BACKEND"])
    pushes["replies"].connect(env["LATENTWIRE_REPLIES"])
    for name in RECEIVERS:
        pushes[name].connect(s.system.receiver_address(name))
    raw = ctx.socket(zmq.PUSH)  # no MAXMSGSIZE of its own: one message over the limit now and then, to a receiver
    raw.linger = 0
    for name in RECEIVERS:
        raw.connect(s.system.receiver_address(name))  # it drops the connection; ZeroMQ reconnects
    tally, sent, heard, i = s.tally("garbage"), 0, 0, 0
    try:
        while s.running():
            if sent - heard < 64:
                front.send(_maybe_mutate(s.rng, _front_seed(s.rng, i)))
                sent += 1
            _send(back, _maybe_mutate(s.rng, _front_seed(s.rng, i)))
            _send(pushes["replies"], _maybe_mutate(s.rng, encode_frame(Reply(f"g-{i}", "rx-g", "x", "x", 0.0, {}))))
            if i % 5 == 0:
                name = list(RECEIVERS)[(i // 5) % len(RECEIVERS)]
                _send(pushes[name], _maybe_mutate(s.rng, s.rng.choice(s.seeds)))
            if i % 200 == 0:
                _send(raw, b"\x00" * (DEFAULT_LIMITS.max_frame_bytes + 1))
            heard += _drain(front)
            i += 1
            s.pace(GARBAGE_PER_S)
        end = time.monotonic() + TIMEOUT_S + 5.0  # what is still owed: as long as a client would wait
        while heard < sent and time.monotonic() < end:
            heard += _drain(front, 100)
    finally:
        for sock in (front, back, raw, *pushes.values()):
            sock.close(0)
        ctx.term()
    tally.sent, tally.answered, tally.lost = sent, heard, max(0, sent - heard)  # answers are not matched: no p50


def _maybe_mutate(rng: random.Random, frame: bytes) -> bytes:
    return mutate(rng, frame) if rng.random() < 0.7 else frame


def _send(sock: zmq.Socket, data: bytes) -> None:
    with contextlib.suppress(zmq.Again):  # the peer is not reading (stopped): hostile traffic never waits
        sock.send(data, zmq.NOBLOCK)


def _drain(sock: zmq.Socket, timeout_ms: int = 0) -> int:
    n = 0
    if sock.poll(timeout_ms):
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            sock.recv(zmq.NOBLOCK)
            n += 1
    return n


def forged(s: Soak) -> None:
    """Heartbeats nobody should believe, and replies to ids nobody issued."""
    env, ctx = s.system.env, zmq.Context()
    replies, back = net.make_socket(ctx, zmq.PUSH), net.make_socket(ctx, zmq.DEALER)
    replies.connect(env["LATENTWIRE_REPLIES"])
    back.connect(env["LATENTWIRE_BACKEND"])
    tally, i = s.tally("forged"), 0
    try:
        while s.running():
            pid, model = f"forged-{s.rng.randrange(10**9)}", s.rng.choice([*RECEIVERS.values(), "evil"])
            fp = s.rng.choice(["0" * 64, ""])
            frames = [
                (replies, Heartbeat("", pid, "receiver", "alive", {"model": model, "fingerprint": fp})),
                (replies, Heartbeat("", pid, "sender", "alive", {"receivers": 9})),  # wrong socket for the role
                (back, Heartbeat("", pid, "receiver", "alive", {"model": model})),
                (replies, Reply(f"nobody-{i}", pid, model, "forged", 0.0, {})),
            ]
            sock, msg = frames[i % len(frames)]
            _send(sock, encode_frame(msg))
            tally.sent += 1
            i += 1
            s.pace(FORGED_PER_S)
    finally:
        replies.close(0)
        back.close(0)
        ctx.term()


def stop_receivers(s: Soak, start: float) -> None:
    """Every STOP_EVERY_S one receiver in turn is stopped for STOP_S and resumed (always resumed)."""
    k = 0
    while True:
        at = start + FIRST_STOP_S + k * STOP_EVERY_S
        if at + STOP_S + QUIET_END_S > s.end:
            return
        _sleep_until(s, at)
        name = list(RECEIVERS)[k % len(RECEIVERS)]
        pid = s.system.pid(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(STOP_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        s.stops.append(name)
        k += 1


def sample_memory(s: Soak) -> None:
    """Peak resident memory of each process role, sampled every second (a restarted process is followed)."""
    while s.running():
        for name in PROCESSES:
            try:
                rss = psutil.Process(s.system.pid(name)).memory_info().rss / 2**20
            except (KeyError, psutil.Error):
                continue
            s.peaks[name] = max(s.peaks.get(name, 0.0), round(rss, 1))
        time.sleep(1.0)
