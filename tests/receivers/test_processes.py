"""The multi-process system: arbiter join logic (no sockets), receiver frame handling, then real processes.

End-to-end tests start `latentwire up` on free loopback ports with tiny random models and a tiny checkpoint
made here, and talk to it with the Python client; one more runs a receiver in its own network namespace
(root only) with CURVE, to exercise the cross-host path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest

from latentwire import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    Reply,
    TextRequest,
    encode_frame,
    latent_request,
)
from latentwire.receivers.board import Board, agree, calibration_from_info, pick
from latentwire.receivers.calibration import Calibration
from latentwire.receivers.calibration import pick as calibration_pick

LATENTWIRE = str(Path(sys.executable).parent / "latentwire")


# ---- arbiter logic, no sockets ----


def _hb(pid: str, role: str, model: str = "", status: str = "ready", **cal: float) -> Heartbeat:
    info = {"model": model, **{f"cal.{k}": v for k, v in cal.items()}} if role == "receiver" else {}
    return Heartbeat("", pid, role, status, info)


def _board(timeout: float = 10.0, **cals: dict) -> Board:
    b = Board("arb", timeout=timeout, dead_after=4.0)
    b.heartbeat(_hb("s1", "sender"), 0.0, route=b"s1")
    for name in ("llama", "qwen"):
        b.heartbeat(_hb(f"r-{name}", "receiver", name, **cals.get(name, {})), 0.0)
    return b


def _open(b: Board, now: float = 0.0, rid: str = "c-1"):
    p, sender = b.open((b"client",), Ask(rid, "client", "Who?", "Ada wrote it."), 100, now)
    assert sender is not None and sender.pid == "s1"
    assert b.on_sender(Heartbeat(p.rid, "s1", "sender", "sent", {"request": 150, "payload": 128, "reached": 2})) is None
    return p


def _reply(p, model: str, answer: str, score: float) -> Reply:
    return Reply(p.rid, f"r-{model}", model, answer, score, {"generate": 0.1})


def test_join_two_replies_picks_on_calibrated_score() -> None:
    # raw scores favour llama, but qwen's calibration says it is more often right at that score
    b = _board(llama={"a": 1.0, "b": -3.0}, qwen={"a": 1.0, "b": 0.0})
    p = _open(b)
    assert b.on_receiver(_reply(p, "llama", "Ada Lovelace", -0.1), 90, 0.2) is None
    done = b.on_receiver(_reply(p, "qwen", "ada lovelace.", -0.5), 90, 0.3)
    assert done is p
    j = b.finish(p, 0.3)
    assert isinstance(j, JointReply)
    assert (j.model, j.answer, j.rid, j.degraded, j.agreement) == ("qwen", "ada lovelace.", "c-1", 0, 1)
    assert j.score == pytest.approx(Calibration(1.0, 0.0)(-0.5))
    assert j.nbytes == {"ask": 100, "request": 150, "payload": 128, "replies": 180}
    assert j.durations["e2e"] == pytest.approx(0.3) and j.durations["llama.rtt"] == pytest.approx(0.2)
    assert b.stats["served"] == 1 and not b.pending


def test_ties_break_by_model_name_and_empty_answers_lose() -> None:
    r = {m: Reply("x", m, m, a, -1.0, {}) for m, a in (("qwen", "Paris"), ("llama", "Rome"))}
    assert pick(r, lambda m: Calibration())[0] == "llama"
    r["llama"] = Reply("x", "llama", "llama", "  ", 0.0, {})  # higher score but empty
    assert pick(r, lambda m: Calibration())[0] == "qwen"
    assert agree(r) == 0 and agree({"qwen": r["qwen"]}) == 0


def test_calibration_from_heartbeat_info() -> None:
    cal = calibration_from_info({"model": "llama", "cal.a": 2.0, "cal.b": -1.0, "cal.n": 200.0, "cal.zz": 1.0})
    assert cal == Calibration(2.0, -1.0, 200, 0)
    assert calibration_from_info({}) == Calibration()
    # one map per sender path; a bare `cal.*` is the latent's, and no other path falls back to it
    info = {"cal.a": 2.0, "cal.latent.a": 3.0, "cal.relay.a": 0.5, "cal.relay.b": 1.0}
    assert calibration_from_info(info) == Calibration(3.0, 0.0)
    assert calibration_from_info(info, "relay") == Calibration(0.5, 1.0)
    assert calibration_from_info({"cal.a": 2.0}, "relay") == calibration_from_info({}, "text") == Calibration()


def test_the_arbiter_picks_with_the_calibration_of_the_request_path() -> None:
    # for relay, qwen's calibration says its answer is the better one; for the latent, llama's does
    b = _board(llama={"latent.b": 2.0, "relay.b": -3.0}, qwen={"latent.b": -3.0, "relay.b": 2.0})
    for mode, winner in (("latent", "llama"), ("relay", "qwen"), ("text", "llama")):
        p, _ = b.open((b"client",), Ask(f"c-{mode}", "client", "Who?", "Ada wrote it.", mode=mode), 100, 0.0)
        b.on_sender(Heartbeat(p.rid, "s1", "sender", "sent", {"request": 150, "payload": 128, "reached": 2}))
        b.on_receiver(_reply(p, "llama", "Ada", -0.5), 90, 0.1)
        b.on_receiver(_reply(p, "qwen", "Bob", -0.6), 90, 0.1)
        assert b.finish(p, 0.2).model == winner, mode


def test_joint_pick_is_a_soft_vote_over_calibrated_scores() -> None:
    cals = {m: Calibration() for m in ("gemma", "llama", "qwen")}
    # qwen alone is the surest, but llama and gemma agree (after normalisation) and together outweigh it
    answers = {"qwen": ("Bob", 1.0), "llama": ("Ada Lovelace", -0.2), "gemma": ("ada lovelace.", -0.3)}
    assert calibration_pick(answers, cals) == "llama"
    # a sure one beats a weak agreement
    answers = {"qwen": ("Bob", 5.0), "llama": ("Ada", -3.0), "gemma": ("Ada", -3.0)}
    assert calibration_pick(answers, cals) == "qwen"
    # two receivers: the higher calibrated score, whatever the raw scores say
    two = {"qwen": ("Bob", -1.0), "llama": ("Ada", -0.5)}
    assert calibration_pick(two, {"qwen": Calibration(1.0, 3.0), "llama": Calibration()}) == "qwen"


def test_timeout_answers_from_those_that_did_and_counts_late_and_duplicates() -> None:
    b = _board(timeout=5.0)
    p = _open(b)
    assert b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 1.0) is None
    assert b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 1.1) is None  # duplicate
    for t in (2.0, 3.0):  # both receivers still alive: keep waiting until the deadline
        b.heartbeat(_hb("r-llama", "receiver", "llama"), t)
        b.heartbeat(_hb("r-qwen", "receiver", "qwen"), t)
        b.heartbeat(_hb("s1", "sender"), t, route=b"s1")
        assert b.due(t) == []
    assert b.due(5.0) == [p]
    j = b.finish(p, 5.0)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.answer == "Ada"
    assert j.errors["qwen"].startswith("timeout")
    b.on_receiver(_reply(p, "qwen", "Ada", -0.3), 90, 6.0)  # late
    assert (b.stats["duplicate"], b.stats["late"], b.stats["degraded"]) == (1, 1, 1)


def test_no_reply_at_all_is_an_explicit_error() -> None:
    b = _board(timeout=5.0)
    p = _open(b)
    e = b.finish(p, 5.0)
    assert isinstance(e, ErrorReply) and e.code == "no_answer" and e.rid == "c-1"
    assert "llama: timeout" in e.message and "qwen: timeout" in e.message


def test_receiver_errors_degrade_or_fail() -> None:
    b = _board()
    p = _open(b)
    b.on_receiver(ErrorReply(p.rid, "r-llama", "internal", "boom"), 60, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen", "Paris", -1.0), 60, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors == {"llama": "internal: boom"}
    p = _open(b, rid="c-2")
    b.on_receiver(ErrorReply(p.rid, "r-llama", "wrong_checkpoint", "x"), 60, 0.1)
    e = b.finish(b.on_receiver(ErrorReply(p.rid, "r-qwen", "wrong_checkpoint", "y"), 60, 0.2), 0.2)
    assert isinstance(e, ErrorReply) and e.code == "all_failed"


def test_dead_or_stopping_receiver_finishes_early_and_leaves_the_expected_set() -> None:
    b = _board(timeout=60.0)
    p = _open(b)
    b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 0.5)
    b.heartbeat(_hb("r-qwen", "receiver", "qwen", status="stopping"), 1.0)
    assert b.due(1.0) == [p]
    assert b.finish(p, 1.0).errors["qwen"].startswith("gone")
    b.heartbeat(_hb("s1", "sender"), 1.0, route=b"s1")
    b.heartbeat(_hb("r-llama", "receiver", "llama"), 1.0)
    assert _open(b, now=1.5, rid="c-2").expected == {"llama"}
    assert b.status(1.5).info["receivers"] == "llama"
    assert _board().status(10.0).status == "waiting"  # nobody heard from for 10 s


def test_open_without_processes_and_sender_failures() -> None:
    b = Board("arb")
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_receivers"
    assert b.finish(p, 0.0).rid == "c-1"
    b.heartbeat(_hb("r-llama", "receiver", "llama"), 0.0)
    p, sender = b.open((b"c",), Ask("c-2", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_sender"
    b = _board()
    p, _ = b.open((b"c",), Ask("c-3", "client", "Q?", quant="fp16"), 10, 0.0)
    done = b.on_sender(ErrorReply(p.rid, "s1", "bad_request", "value exceeds the fp16 range"))
    assert done is p and b.finish(p, 0.0).code == "bad_request"
    p, _ = b.open((b"c",), Ask("c-4", "client", "Q?"), 10, 0.0)
    assert b.on_sender(Heartbeat(p.rid, "s1", "sender", "sent", {"reached": 0})) is p
    assert b.finish(p, 0.0).code == "no_receivers"


def test_arbiter_loop_answers_in_flight_requests_on_stop() -> None:
    """The real arbiter loop in a thread; the test plays sender and a receiver that never answers."""
    import threading

    import zmq

    from latentwire.client import Client
    from latentwire.protocol import decode_frame
    from latentwire.receivers import arbiter

    front, back, replies = (f"tcp://127.0.0.1:{p}" for p in _ports(3))
    stop = net.StopFlag(install=False)
    t = threading.Thread(
        target=arbiter.serve,
        kwargs=dict(frontend=front, backend=back, replies=replies, timeout=30, drain=0.5, stop=stop),
    )
    t.start()
    ctx = zmq.Context()
    snd, rcv = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
    try:
        snd.connect(back)
        rcv.connect(replies)
        snd.send(encode_frame(_hb("s1", "sender")))
        rcv.send(encode_frame(_hb("r1", "receiver", "llama")))
        with Client(front, timeout=10) as c:
            c.wait_ready(10)
            req = ctx.socket(zmq.REQ)  # the plainest ZeroMQ client works too
            req.connect(front)
            req.send(encode_frame(Heartbeat("p-1", "req-client", "client", "ping")))
            assert req.poll(5000)
            pong = decode_frame(req.recv())
            req.close(0)
            assert isinstance(pong, Heartbeat) and (pong.rid, pong.status) == ("p-1", "ready")
            answers: list = []
            asking = threading.Thread(target=lambda: answers.extend(c.ask_many([(0, "Q?", "C.")])))
            asking.start()
            assert snd.poll(5000)
            ask = decode_frame(snd.recv())
            assert isinstance(ask, Ask) and ask.question == "Q?"
            snd.send(encode_frame(Heartbeat(ask.rid, "s1", "sender", "sent", {"request": 10, "reached": 1})))
            time.sleep(0.3)  # the receiver stays silent: the request is in flight when the arbiter stops
            stop.set()
            asking.join(10)
            (a,) = answers
            assert not a.ok and a.error.code == "shutting_down" and "llama" in a.error.message
        t.join(10)
        assert not t.is_alive()
    finally:
        stop.set()
        snd.close(0)
        rcv.close(0)
        ctx.term()


# ---- a tiny checkpoint, and the receiver's frame handling in-process ----


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from latentwire import checkpoint
    from latentwire.device import set_threads
    from latentwire.models import load_llm
    from latentwire.sender.encoder import EncoderConfig
    from latentwire.trainer.config import TrainConfig
    from latentwire.trainer.train import build_wire, checkpoint_config

    set_threads(1)
    llms = {"tiny-llama": load_llm("tiny-llama"), "tiny-qwen": load_llm("tiny-qwen")}
    enc = EncoderConfig(backbone="bytes", d_model=64, d_z=32, m=4, max_bytes=512, byte_layers=1, pool_layers=1)
    cfg = TrainConfig(models=list(llms), encoder=enc)
    wire = build_wire(cfg, llms)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    checkpoint.save(path, wire.encoder, dict(wire.adapters), checkpoint_config(cfg, wire, llms))
    return path


def _frame(**changes) -> bytes:
    """A valid latent frame (d_z = 32) with wire keys changed: what a broken or foreign sender might send."""
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    wire = msgpack.unpackb(encode_frame(latent_request("r-1", "test", "fp-test", x, "int8")), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


def test_receiver_refuses_bad_frames_and_keeps_serving(tiny_ckpt: Path) -> None:
    from latentwire import checkpoint
    from latentwire.receivers.receiver import load_receiver

    rx = load_receiver("tiny-llama", tiny_ckpt, None, "rx", "cpu", "float32")
    fp = checkpoint.fingerprint(tiny_ckpt)
    cases = {
        b"\x00garbage": ("", "bad_frame"),
        _frame(): ("r-1", "wrong_checkpoint"),
        _frame(f=fp, v=2): ("r-1", "bad_version"),
        _frame(f=fp, q="int2"): ("r-1", "bad_quant"),
        _frame(f=fp, d=16, b=bytes(64), c=bytes(16)): ("r-1", "bad_frame"),  # zero scales
        encode_frame(Heartbeat("", "x", "sender")): ("", "unexpected_kind"),
    }
    for data, (rid, code) in cases.items():
        out = rx.handle(data)
        assert isinstance(out, ErrorReply) and (out.rid, out.code) == (rid, code), out
    good = rx.handle(_frame(f=fp))
    assert isinstance(good, Reply) and good.model == "tiny-llama" and good.fingerprint == fp
    assert {"decode", "adapt", "generate", "total"} <= set(good.durations)
    text = rx.handle(encode_frame(TextRequest("t-1", "s", "Question: x\nContext: y", budget=4)))
    assert isinstance(text, Reply) and text.fingerprint == ""


@pytest.fixture(scope="module")
def rx(tiny_ckpt: Path):
    from latentwire.receivers.receiver import load_receiver

    return load_receiver("tiny-llama", tiny_ckpt, None, "rx", "cpu", "float32")


def _latent(rx, m: int = 4, scale: float = 1.0, scheme: str = "int8", seed: int = 0, rid: str = "r-1") -> bytes:
    x = np.random.default_rng(seed).standard_normal((m, 32)).astype(np.float32) * scale
    return encode_frame(latent_request(rid, "test", rx.fingerprint, x, scheme, max_new_tokens=6))


def test_receiver_refuses_latents_of_another_m_and_accepts_any_when_unknown(rx) -> None:
    assert rx.m == 4  # from the checkpoint's encoder config
    for m in (1, 64, 256):
        out = rx.handle(_latent(rx, m))
        assert isinstance(out, ErrorReply) and out.code == "bad_shape" and f"{m}x32" in out.message, out
    assert isinstance(rx.handle(_latent(rx, 4)), Reply)
    rx.m = None
    try:
        assert isinstance(rx.handle(_latent(rx, 3)), Reply)
    finally:
        rx.m = 4


def test_receiver_refuses_non_finite_and_extreme_latents_as_bad_frames(rx) -> None:
    x = np.ones((4, 32), np.float32)
    wire = msgpack.unpackb(encode_frame(latent_request("r-1", "test", rx.fingerprint, x, "fp32")), raw=False)
    x[1, 2] = np.nan  # an encoder refuses this; a foreign or broken one may still send it
    nan = msgpack.packb({**wire, "b": x.astype("<f4").tobytes()}, use_bin_type=True)
    for data in (nan, _latent(rx, scale=3e37, scheme="fp32")):
        out = rx.handle(data)
        assert isinstance(out, ErrorReply) and out.code == "bad_frame" and "latent" in out.message, out


def test_receiver_refuses_empty_and_oversized_text(rx) -> None:
    cases = {
        TextRequest("t-1", "s", ""): "bad_frame",
        TextRequest("t-2", "s", "x" * (rx.max_slot_tokens + 10)): "too_large",
        TextRequest("t-3", "s", "Question: x", budget=rx.max_slot_tokens + 1): "too_large",
    }
    for msg, code in cases.items():
        out = rx.handle(encode_frame(msg))
        assert isinstance(out, ErrorReply) and (out.rid, out.code) == (msg.rid, code), out
    assert isinstance(rx.handle(encode_frame(TextRequest("t-4", "s", "x" * 50, budget=8, max_new_tokens=4))), Reply)


def test_batched_answers_equal_one_at_a_time(rx) -> None:
    frames = [
        _latent(rx, seed=1, rid="a"),
        b"garbage",
        _latent(rx, seed=2, rid="b"),
        encode_frame(TextRequest("c", "s", "Question: Who?\nContext: Ada wrote it.", max_new_tokens=6)),
        _latent(rx, seed=3, rid="d"),
        encode_frame(TextRequest("e", "s", "Question: Where?\nContext: in Paris, long ago.", max_new_tokens=6)),
        _latent(rx, m=7, rid="f"),
        encode_frame(TextRequest("g", "s", "Question: When?\nContext: 1843.", budget=5, max_new_tokens=6)),
    ]
    batched = rx.handle_many(frames)
    alone = [rx.handle(f) for f in frames]
    assert [type(r) for r in batched] == [type(r) for r in alone]
    for b, a in zip(batched, alone, strict=True):
        assert b.rid == a.rid
        if isinstance(a, Reply):
            assert b.answer == a.answer and b.score == pytest.approx(a.score, abs=1e-4)
        else:
            assert b.code == a.code


# ---- real processes ----


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(net.free_port())
    return sorted(ports)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LATENTWIRE_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def system(tiny_ckpt: Path, tmp_path_factory):
    from latentwire.up import LocalSystem

    s = LocalSystem(
        tiny_ckpt, llama="tiny-llama", qwen="tiny-qwen", log=tmp_path_factory.mktemp("up") / "up.log", timeout=20
    )
    with s:
        yield s
    log = s.log.read_text()
    assert s.proc.returncode == 0, log
    for name in ("sender", "llama", "qwen", "arbiter"):
        assert f"{name} stopped (rc=0)" in log, log


QUESTIONS = [(i, f"Who wrote book {i}?", f"Book {i} was written by Ada Lovelace in 18{40 + i}.") for i in range(6)]


def test_every_request_answered_with_bytes_counted(system) -> None:
    with system.client() as c:
        rows = []
        for mode, quant, payload in (("latent", "fp16", 256), ("latent", "int8", 128), ("latent", "int4", 64)):
            answers = list(c.ask_many(QUESTIONS[:3], window=2, mode=mode, quant=quant))
            assert sorted(a.tag for a in answers) == [0, 1, 2]
            for a in answers:
                assert a.ok and not a.degraded, a.error
                assert set(a.reply.answers) == {"tiny-llama", "tiny-qwen"}
                assert a.reply.nbytes["payload"] == payload  # M x d_z = 4 x 32 at 16/8/4 bits
                assert a.reply.nbytes["fanout"] == 2 * a.reply.nbytes["request"]
                assert a.reply.nbytes["scales"] == (0 if quant == "fp16" else 16)
                rows.append(a.to_row())
        _, q, ctx = QUESTIONS[3]
        budget = c.ask(q, ctx, mode="token-budget")
        assert budget.ok and budget.reply.nbytes["payload"] == len(f"Question: {q}\nContext: {ctx}".encode())
        text = c.ask(*QUESTIONS[4][1:], mode="text", max_new_tokens=4)
        assert text.ok and text.reply.model in {"tiny-llama", "tiny-qwen"}
        bad = c.ask("Q?", "x" * 10, mode="latent", quant="int8", group_size=3)  # 3 does not divide d_z
        assert not bad.ok and bad.error.code == "bad_request"
    assert all(r["bytes"]["request"] > r["bytes"]["payload"] for r in rows)


def test_receiver_answers_garbage_with_errors_and_keeps_serving(system) -> None:
    import zmq

    with system.client() as c:
        before = c.status().info
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(system.env["LATENTWIRE_LLAMA"])
        push.send(b"\xc1 not a frame")
        push.send(_frame())  # another checkpoint's fingerprint
        push.close()
        ctx.term()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            info = c.status().info
            if info.get("error.wrong_checkpoint", 0) > before.get("error.wrong_checkpoint", 0):
                break
            time.sleep(0.2)
        assert info.get("error.bad_frame", 0) == before.get("error.bad_frame", 0) + 1
        assert info.get("error.wrong_checkpoint", 0) == before.get("error.wrong_checkpoint", 0) + 1
        a = c.ask(*QUESTIONS[0][1:])
        assert a.ok and not a.degraded


def test_killed_receiver_degrades_then_rejoins(system) -> None:
    with system.client() as c:
        joined = c.status().info["joined.receiver"]
        items = [(i, f"Question {i}?", f"Context {i}.") for i in range(10)]
        answers = []
        for a in c.ask_many(items, window=2, quant="int8"):
            answers.append(a)
            if len(answers) == 2:
                os.kill(system.pid("llama"), signal.SIGKILL)
        assert sorted(a.tag for a in answers) == list(range(10))  # zero lost ids
        assert all(a.ok for a in answers), [a.error for a in answers if not a.ok]
        degraded = [a for a in answers if a.degraded]
        assert degraded and all(set(a.reply.answers) == {"tiny-qwen"} for a in degraded)
        assert all("tiny-llama" in a.reply.errors for a in degraded)
        # `up` restarts it; it rejoins without restarting the others
        end = time.monotonic() + 90
        while time.monotonic() < end:
            st = c.status()
            if st and st.info["joined.receiver"] > joined and st.info["receivers"] == "tiny-llama,tiny-qwen":
                break
            time.sleep(0.5)
        assert st.info["joined.receiver"] == joined + 1 and st.info["receivers"] == "tiny-llama,tiny-qwen", st
        a = c.ask("Who rejoined?", "The llama receiver.")
        assert a.ok and not a.degraded and set(a.reply.answers) == {"tiny-llama", "tiny-qwen"}
    assert "llama exited" in system.log.read_text() and len(re.findall(r"sender started", system.log.read_text())) == 1


def test_oversized_prompts_and_items_fail_alone_and_clearly(system) -> None:
    with system.client() as c:
        items = [
            (0, "Who wrote it?", "Ada Lovelace wrote it."),
            (1, "Who wrote it?", "Ada. " * 1_000_000),  # 5 MB: over the frame limit, refused by the client
            (2, "Who wrote it?", "x" * 100_000),  # 100 KB: fits a frame, over the receivers' slot-token cap
            (3, "Who wrote it?", "Ada Lovelace wrote it."),
        ]
        answers = {a.tag: a for a in c.ask_many(items, window=4, mode="text", max_new_tokens=4)}
        assert sorted(answers) == [0, 1, 2, 3]
        assert answers[0].ok and answers[3].ok
        assert answers[1].error.code == "bad_request"
        assert answers[2].error.code == "too_large" and "cap" in answers[2].error.message


def test_foreign_receivers_are_visible_at_readiness_and_never_awaited(system, tiny_ckpt: Path) -> None:
    import zmq

    with system.client() as c:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(system.env["LATENTWIRE_REPLIES"])
        for pid, model, fp in (("r-old", "tiny-llama", "0" * 64), ("r-evil", "evil", c.status().info.get("fp", ""))):
            push.send(encode_frame(Heartbeat("", pid, "receiver", "alive", {"model": model, "fingerprint": fp})))
        push.send(encode_frame(Heartbeat("", "s-fake", "sender", "alive")))  # a sender on the receivers' socket
        push.close()
        ctx.term()
        end = time.monotonic() + 20
        want = ("evil: not a model", "tiny-llama: serves checkpoint")  # heartbeats are handled one by one
        while not all(w in (st := c.status().info).get("mismatch", "") for w in want) and time.monotonic() < end:
            time.sleep(0.1)
        assert "evil: not a model of checkpoint" in st["mismatch"], st
        assert "tiny-llama: serves checkpoint 000000000000" in st["mismatch"], st
        assert st["n_receivers"] == 2 and st["senders"] == 1 and st.get("bad_role", 0) >= 1
        answers = list(c.ask_many([(i, f"Q{i}?", "Ada.") for i in range(5)], window=5))
        assert all(a.ok and not a.degraded for a in answers), [a.error or a.reply.errors for a in answers]


def test_chaos_receiver_and_sender_killed_under_load(system) -> None:
    """Kill a receiver, then the sender, while asks are in flight: every ask is answered, and `degraded` is
    set exactly on the answers that fewer receivers than configured gave."""
    with system.client() as c:
        items = [(i, f"Who wrote book {i}?", f"Book {i} was written by Ada.") for i in range(40)]
        answers = []
        for a in c.ask_many(items, window=4, quant="int8"):
            answers.append(a)
            if len(answers) == 4:
                os.kill(system.pid("qwen"), signal.SIGKILL)
            if len(answers) == 12:
                os.kill(system.pid("sender"), signal.SIGKILL)
        assert sorted(a.tag for a in answers) == list(range(40))  # zero lost: each answered exactly once
        # a request waiting for the restarted sender may run out of time on a very loaded machine: it must
        # then say so explicitly (on an idle one, every answer is ok)
        failed = [a.error for a in answers if not a.ok]
        assert all(e.code in ("no_sender", "no_answer") for e in failed), failed
        for a in (a for a in answers if a.ok):
            assert a.reply.degraded == (len(a.reply.answers) < 2), a.reply
            assert not a.reply.degraded or a.reply.errors  # a degraded answer says why
        assert any(a.ok and a.degraded for a in answers)
        end = time.monotonic() + 90  # `up` restarts both; they rejoin
        while time.monotonic() < end:
            st = c.status()
            if st and st.status == "ready" and st.info["receivers"] == "tiny-llama,tiny-qwen":
                break
            time.sleep(0.5)
        a = c.ask("Who came back?", "Everyone.")
        assert a.ok and not a.degraded and len(a.reply.answers) == 2
    log = system.log.read_text()
    assert "qwen exited" in log and "sender exited" in log


# ---- cross-host: a receiver in its own network namespace, CURVE on every link ----


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("ip netns not permitted: needs root")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"lw{tag}", f"lwa{tag}", f"lwb{tag}"
    subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    try:
        _sh("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"ip netns not permitted: {getattr(e, 'stderr', e)}")
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{subnet}.1/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        for cmd in (["ip", "addr", "add", f"{subnet}.2/24", "dev", ns_if], ["ip", "link", "set", ns_if, "up"]):
            _sh("ip", "netns", "exec", ns, *cmd)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, f"{subnet}.1", f"{subnet}.2"
    except subprocess.CalledProcessError as e:
        pytest.skip(f"ip netns not permitted: {e.stderr}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def test_receiver_in_another_namespace_over_curve(netns, tiny_ckpt: Path, tmp_path: Path) -> None:
    import zmq
    import zmq.auth

    from latentwire.client import Client

    ns, host_ip, ns_ip = netns
    keys = tmp_path / "keys"
    net.keygen(keys)
    pa, pb, pr, p = _ports(4)
    addr = {
        "LATENTWIRE_ARBITER": f"tcp://127.0.0.1:{pa}",
        "LATENTWIRE_BACKEND": f"tcp://127.0.0.1:{pb}",
        "LATENTWIRE_REPLIES": f"tcp://{host_ip}:{pr}",
        "LATENTWIRE_RECEIVERS": f"tcp://{ns_ip}:{p}",
        "LATENTWIRE_CURVE": str(keys),
        "LATENTWIRE_TIMEOUT": "20",
    }
    env = _env(**addr)
    ck = ["--ckpt", str(tiny_ckpt)]
    rx_cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        LATENTWIRE,
        "receiver",
        "--model",
        "tiny-llama",
        "--bind",
        f"tcp://{ns_ip}:{p}",
    ]
    logs = {n: (tmp_path / f"{n}.log").open("w") for n in ("arbiter", "sender", "receiver")}
    cmds = {"arbiter": [LATENTWIRE, "arbiter"], "sender": [LATENTWIRE, "sender", *ck], "receiver": [*rx_cmd, *ck]}
    procs = {n: subprocess.Popen(c, env=env, stdout=logs[n], stderr=subprocess.STDOUT) for n, c in cmds.items()}
    try:
        with Client(addr["LATENTWIRE_ARBITER"], curve_dir=str(keys)) as c:
            c.wait_ready(120, receivers=1)
            a = c.ask("Who wrote it?", "Ada Lovelace wrote it.", quant="int4")
            assert a.ok and not a.degraded and list(a.reply.answers) == ["tiny-llama"], a.error
            before = c.status().info.get("error.wrong_checkpoint", 0)

            def push_from(public: bytes, secret: bytes) -> None:
                ctx = zmq.Context()
                s = ctx.socket(zmq.PUSH)
                s.linger = 2000
                s.curve_publickey, s.curve_secretkey = public, secret
                s.curve_serverkey = zmq.auth.load_certificate(str(keys / "receiver.key"))[0]
                s.connect(addr["LATENTWIRE_RECEIVERS"])
                s.send(_frame())  # answered with wrong_checkpoint if the receiver accepts the connection
                s.close()
                ctx.term()

            push_from(*zmq.curve_keypair())  # a stranger's key: refused during the handshake
            time.sleep(2.0)
            assert c.status().info.get("error.wrong_checkpoint", 0) == before
            push_from(*zmq.auth.load_certificate(str(keys / "sender.key_secret")))  # a known sender's key
            end = time.monotonic() + 15
            while c.status().info.get("error.wrong_checkpoint", 0) == before and time.monotonic() < end:
                time.sleep(0.2)
            assert c.status().info.get("error.wrong_checkpoint", 0) == before + 1
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                assert proc.wait(30) == 0, (tmp_path / f"{name}.log").read_text()
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
