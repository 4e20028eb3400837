"""Fuzz the running processes at their sockets: hostile frames at the arbiter's three sockets and at a receiver.

`python -m latentwire.bench.socket_fuzz [--frames 100000] [--receiver-frames 100000]` starts an arbiter and a
tiny-model receiver as processes and prints JSON: frames sent, answers, crashes (a process that exited),
hangs (a frame that the protocol promises an answer to and that got none), and the arbiter's resident memory
at its start, during the run and at its end.

What is checked: every frame at the arbiter's client socket is answered exactly once (a joint reply, an error
or a status) whatever arrives meanwhile at the senders' and receivers' sockets (mutated reports, forged and
duplicate replies, heartbeats of unknown peers and roles); every frame at a receiver gets exactly one reply or
error; and both still serve a real request at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from latentwire.processes import net
from latentwire.protocol import (
    DEFAULT_LIMITS,
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    Limits,
    ProtocolError,
    Reply,
    Sent,
    TextRequest,
    decode_frame,
    encode_frame,
    latent_request,
)
from latentwire.protocol.fuzz import mutate

FINGERPRINT = "f" * 64
MODELS = ("fuzz-a", "fuzz-b")
SENDER = "fuzz-sender"
MUTATED = 0.7  # share of frames mutated; the rest are valid frames of the peer that socket serves


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc; 0.0 where unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


@dataclass
class ArbiterFuzz:
    """Plays a client, a sender and two receivers around a running arbiter, mostly with hostile frames."""

    frontend: str
    backend: str
    replies: str
    seed: int = 0
    honest: float = 0.8  # share of forwarded asks the fake sender and receivers complete properly
    window: int = 64  # client frames in flight at most
    stats: dict[str, int] = field(default_factory=lambda: {"front": 0, "back": 0, "pull": 0, "answers": 0})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.ctx = zmq.Context()
        self.client = net.make_socket(self.ctx, zmq.DEALER)
        self.sender = net.make_socket(self.ctx, zmq.DEALER, identity=SENDER)
        self.push = net.make_socket(self.ctx, zmq.PUSH)
        self.client.connect(self.frontend)
        self.sender.connect(self.backend)
        self.push.connect(self.replies)
        self.rids: deque[str] = deque(maxlen=256)  # the arbiter's request ids seen by the fake sender
        self.answers: dict[str, Any] = {}  # client rid -> last answer (JointReply, ErrorReply or Heartbeat)
        self._beat_at = 0.0

    def close(self) -> None:
        for s in (self.client, self.sender, self.push):
            s.close(0)
        self.ctx.term()

    # ---- honest peers ----

    def beat(self, force: bool = False) -> None:
        """Keep the fake sender and receivers alive (every 0.5 s)."""
        now = time.monotonic()
        if not force and now - self._beat_at < 0.5:
            return
        self._beat_at = now
        info = {"fingerprint": FINGERPRINT, "models": ",".join(MODELS), "receivers": len(MODELS)}
        self.sender.send(encode_frame(Heartbeat("", SENDER, "sender", "alive", info)))
        for m in MODELS:
            self.push.send(encode_frame(Heartbeat("", f"rx-{m}", "receiver", "alive", {"model": m, **info})))

    def complete(self, rid: str) -> None:
        """Answer a forwarded ask the way the real sender and receivers would."""
        self.sender.send(encode_frame(Sent(rid, SENDER, 200, 72, 128, 0, 400, 2, 2, {"encode": 0.01})))
        for m in MODELS:
            reply = Reply(rid, f"rx-{m}", m, "Ada", -0.5 - self.rng.random(), {"generate": 0.01}, FINGERPRINT)
            self.push.send(encode_frame(reply))

    def drain(self) -> None:
        while self.sender.poll(0):
            try:
                msg = decode_frame(self.sender.recv())
            except ProtocolError:
                continue
            if isinstance(msg, Ask):
                self.rids.append(msg.rid)
                if self.rng.random() < self.honest:
                    self.complete(msg.rid)
        while self.client.poll(0):
            data = self.client.recv()
            self.stats["answers"] += 1
            try:
                msg = decode_frame(data)
                self.answers[msg.rid] = msg
            except ProtocolError:
                self.stats["bad_answers"] = self.stats.get("bad_answers", 0) + 1

    # ---- hostile frames ----

    def _front_seed(self) -> bytes:
        i = self.stats["front"]
        seeds = [
            Ask(f"fz-{i}", "client", "Who wrote it?", "Ada Lovelace wrote it.", "latent", "int4"),
            Ask(f"fz-{i}", "client", "Who?", "Ada.", "text", max_new_tokens=4),
            Heartbeat(f"fz-{i}", "client", "client", "ping"),
            ErrorReply(f"fz-{i}", "client", "x", "y"),
        ]
        return encode_frame(self.rng.choice(seeds))

    def _back_seed(self) -> bytes:
        rid = self.rng.choice(self.rids) if self.rids else "none"
        big = 2**63 - 1
        huge = Sent(rid, SENDER, big, big, 0, 0, big, 1, 2)  # a frame no peer accepts
        seeds = [
            Sent(rid, SENDER, 200, 72, 128, 0, 400, 2, 2),
            huge,
            Sent(rid, SENDER, 200, 72, 128, 0, 200 * 10**6, 10**6, 10**6),  # more receivers than a sender may have
            Sent(rid, "someone", 1, 1, 0, 0, 1, 1, 1),
            ErrorReply(rid, SENDER, "bad_request", "no"),
            Heartbeat("", f"s-{self.rng.randrange(10**9)}", "sender", "alive", {"receivers": 9}),
            Heartbeat("", SENDER, "receiver", "alive", {"model": "evil"}),
        ]
        msg = self.rng.choice(seeds)
        return encode_frame(msg, Limits(max_frame_bytes=big) if msg is huge else DEFAULT_LIMITS)

    def _pull_seed(self) -> bytes:
        rid = self.rng.choice(self.rids) if self.rids else "none"
        m = self.rng.choice(MODELS)
        seeds = [
            Reply(rid, f"rx-{m}", m, "forged", 0.0, {"generate": 1.0}),
            Reply(rid, "rx-evil", "evil", "forged", 0.0, {}),
            ErrorReply(rid, f"rx-{m}", f"code{self.rng.randrange(10**9)}", "unique code"),
            ErrorReply(rid, f"rx-{m}", "too_large", "no"),
            Heartbeat("", f"r-{self.rng.randrange(10**9)}", "receiver", "alive", {"model": "evil"}),
            Heartbeat("", f"r-{m}-x", "receiver", "alive", {"model": m}, {"latent": (50.0, 50.0)}),  # tilt the pick
            Heartbeat("", f"r-{self.rng.randrange(10**9)}", "sender", "alive"),
            Heartbeat("", "rx-evil", f"role{self.rng.randrange(10**9)}", "alive"),
        ]
        return encode_frame(self.rng.choice(seeds))

    def frame(self, seed: bytes) -> bytes:
        return mutate(self.rng, seed) if self.rng.random() < MUTATED else seed

    def run(self, n: int, on_progress: Any = None) -> dict[str, Any]:
        """Send n frames spread over the three sockets, then wait for every client frame's answer."""
        self.beat(force=True)
        time.sleep(0.2)  # let the connections and the first heartbeats land
        for i in range(n):
            r = self.rng.random()
            if r < 0.4:
                end = time.monotonic() + 5.0
                while self.stats["front"] - self.stats["answers"] >= self.window and time.monotonic() < end:
                    self.client.poll(10)  # a client keeps a bounded window in flight; the others do not wait
                    self.drain()
                self.client.send(self.frame(self._front_seed()))
                self.stats["front"] += 1
            elif r < 0.7:
                self.sender.send(self.frame(self._back_seed()))
                self.stats["back"] += 1
            else:
                self.push.send(self.frame(self._pull_seed()))
                self.stats["pull"] += 1
            self.beat()
            self.drain()
            if on_progress and (i + 1) % 10_000 == 0:
                on_progress(i + 1)
        return self.finish()

    def finish(self, wait_s: float = 60.0) -> dict[str, Any]:
        """Wait for the answers still owed, then ask one real question and read the arbiter's counters."""
        end = time.monotonic() + wait_s
        while self.stats["answers"] < self.stats["front"] and time.monotonic() < end:
            self.beat()
            self.client.poll(50)
            self.drain()
        self.honest = 1.0
        final = self.ask(Ask("final", "client", "Who wrote it?", "Ada Lovelace wrote it."))
        status = self.ask(Heartbeat("final-status", "client", "client", "ping"))
        return {
            **self.stats,
            "hangs": self.stats["front"] - self.stats["answers"],
            "final_ok": isinstance(final, JointReply) and not final.degraded and len(final.answers) == len(MODELS),
            "arbiter_stats": dict(status.info) if isinstance(status, Heartbeat) else None,
        }

    def ask(self, msg: Ask | Heartbeat, wait_s: float = 30.0) -> Any:
        self.beat(force=True)
        self.client.send(encode_frame(msg))
        self.stats["front"] += 1
        end = time.monotonic() + wait_s
        while msg.rid not in self.answers and time.monotonic() < end:
            self.beat()
            self.client.poll(50)
            self.drain()
        return self.answers.get(msg.rid)


def receiver_seeds(fingerprint: str, m: int, d_z: int) -> list[bytes]:
    """Valid frames a receiver of this checkpoint answers (the fuzzer mutates them)."""
    x = np.random.default_rng(0).standard_normal((m, d_z)).astype(np.float32)
    lat = [latent_request("r", "s", fingerprint, x, q, max_new_tokens=2) for q in ("fp32", "fp16", "int8", "int4")]
    text = [
        TextRequest("t", "s", "Question: Who?\nContext: Ada wrote it.", max_new_tokens=2),
        TextRequest("b", "s", "Question: Who?\nContext: Ada wrote it.", budget=4, max_new_tokens=2),
    ]
    return [encode_frame(msg) for msg in [*lat, *text]]


def fuzz_receiver(
    bind: str, pull: zmq.Socket, seeds: list[bytes], n: int, seed: int = 0, window: int = 32
) -> dict[str, Any]:
    """Send n frames (mostly mutated) to the receiver at `bind`; its replies arrive on `pull`; one each."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    push = net.make_socket(ctx, zmq.PUSH)
    push.connect(bind)
    sent = replies = answered = 0

    def read(timeout_ms: int) -> None:
        nonlocal replies, answered
        if not pull.poll(timeout_ms):
            return
        while pull.poll(0):
            try:
                msg = decode_frame(pull.recv())
            except ProtocolError:
                continue
            if isinstance(msg, (Reply, ErrorReply)):
                replies += 1
                answered += isinstance(msg, Reply)

    try:
        for _ in range(n):
            while sent - replies >= window:
                before = replies
                read(30_000)
                if replies == before:
                    break  # a hang: counted below
            push.send(mutate(rng, rng.choice(seeds)) if rng.random() < MUTATED else rng.choice(seeds))
            sent += 1
            read(0)
        end = time.monotonic() + 60
        while replies < sent and time.monotonic() < end:
            read(100)
        before = answered
        push.send(seeds[2])  # a valid int8 latent: must be answered
        end = time.monotonic() + 30
        while replies < sent + 1 and time.monotonic() < end:
            read(100)
    finally:
        push.close(0)
    return {
        "sent": sent,
        "replies": replies,
        "answers": answered,
        "hangs": sent + 1 - replies,
        "final_ok": answered > before,
    }


def _latentwire() -> str:
    return str(Path(sys.executable).parent / "latentwire")


def run(frames: int = 100_000, receiver_frames: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """The arbiter and a tiny receiver as processes, each fuzzed; memory of the arbiter sampled along."""
    addr = [f"tcp://127.0.0.1:{net.free_port()}" for _ in range(3)]
    env = {**os.environ, "LATENTWIRE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {"frames": frames, "receiver_frames": receiver_frames, "seed": seed}
    arb = subprocess.Popen(
        [_latentwire(), "arbiter", "--arbiter", addr[0], "--backend", addr[1], "--replies", addr[2], "--timeout", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fz = ArbiterFuzz(*addr, seed=seed)
        try:
            fz.ask(Heartbeat("warm", "client", "client", "ping"))
            mem = {"start": rss_mb(arb.pid)}
            t0 = time.perf_counter()
            progress: dict[str, float] = {}
            res = fz.run(frames, on_progress=lambda i: progress.__setitem__(str(i), rss_mb(arb.pid)))
            mem["end"] = rss_mb(arb.pid)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            time.sleep(3.0)  # idle
            mem["idle"] = rss_mb(arb.pid)
            mem["during"] = progress
            mem["growth"] = round(mem["end"] / mem["start"] - 1, 3) if mem["start"] else None
        finally:
            fz.close()
        out["arbiter"] = {**res, "rss_mb": mem, "crashed": arb.poll() is not None}
        print(json.dumps({"arbiter": out["arbiter"]}), file=sys.stderr, flush=True)  # the receiver run is long
    finally:
        arb.terminate()
        arb.wait(30)
    if receiver_frames:
        out["receiver"] = _run_receiver(receiver_frames, seed, env)
    return out


def _run_receiver(n: int, seed: int, env: dict[str, str]) -> dict[str, Any]:
    from latentwire import checkpoint
    from latentwire.trainer.tiny import tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        cfg = checkpoint.read_config(ckpt)
        bind = f"tcp://127.0.0.1:{net.free_port()}"
        ctx = zmq.Context.instance()
        pull = net.make_socket(ctx, zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        cmd = [_latentwire(), "receiver", "--model", "tiny-llama", "--ckpt", str(ckpt), "--bind", bind]
        cmd += [
            "--replies",
            f"tcp://127.0.0.1:{port}",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-new-tokens",
            "2",
        ]
        rx = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 120
            while time.monotonic() < end and rx.poll() is None:  # wait for its `ready`
                if pull.poll(200) and isinstance(msg := decode_frame(pull.recv()), Heartbeat) and msg.status == "ready":
                    break
            seeds = receiver_seeds(checkpoint.fingerprint(ckpt), int(cfg["encoder"]["m"]), int(cfg["encoder"]["d_z"]))
            t0 = time.perf_counter()
            res = fuzz_receiver(bind, pull, seeds, n, seed)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["rss_mb_end"] = rss_mb(rx.pid)
            res["crashed"] = rx.poll() is not None
        finally:
            rx.terminate()
            rx.wait(30)
            pull.close(0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames at the arbiter's sockets")
    ap.add_argument("--receiver-frames", type=int, default=100_000, help="frames at a receiver (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(run(a.frames, a.receiver_frames, a.seed), indent=2))


if __name__ == "__main__":
    main()
