"""The shipped design through the live processes, beyond the latent path `test_live.py` covers: the sender's text
paths (relay, evidence) answered by every receiver, a sharer that reads for longer than the arbiter's silence limit
without its request being sent twice, a codebook receiver given a latent it can read nothing from, and CURVE on the
sender -> receiver link without root (loopback, no network namespace).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq
from rxkit import answer

from latentwire.processes import net
from latentwire.protocol import ErrorReply, Reply, encode_frame, latent_request

pytestmark = pytest.mark.slow  # whole-system or packaging tests: `make test-fast` skips them

LATENTWIRE = str(Path(sys.executable).parent / "latentwire")
TINY = {"llama": "tiny-llama", "qwen": "tiny-qwen"}  # process name -> model spec (the tiny checkpoint's names)
QUESTION = "Who wrote the Analytical Engine notes?"
# three `Title: text` paragraphs (what a client sends), so the selector has a choice to make on the evidence path
CONTEXT = "\n".join(
    [
        "Ada Lovelace: Ada Lovelace wrote the notes on the Analytical Engine. She published them in 1843.",
        "Charles Babbage: Charles Babbage designed the Analytical Engine. He never finished building it.",
        "London: London is the capital of England. It lies on the Thames.",
    ]
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LATENTWIRE_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _loopback(n: int) -> list[str]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(net.free_port())
    return [f"tcp://127.0.0.1:{p}" for p in sorted(ports)]


def _assert_full(answer, models: set[str]) -> None:
    """A joint answer every receiver took part in: each answered (no error), with a finite score and its timings."""
    assert answer.ok and not answer.degraded, answer.error or answer.reply.errors
    r = answer.reply
    assert set(r.answers) == models and not r.errors, r
    for m in models:
        assert isinstance(r.answers[m], str) and math.isfinite(r.scores[m]), r
        assert r.durations[f"{m}.generate"] > 0 and r.durations[f"{m}.rtt"] > 0, r.durations
    assert r.model in models


# ---- the sender's text paths, through `up` ----


@pytest.fixture(scope="module")
def system(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from latentwire.processes.up import LocalSystem

    s = LocalSystem(tiny_ckpt, TINY, log=tmp_path_factory.mktemp("up") / "up.log", timeout=30)
    with s:
        yield s
    assert s.proc.returncode == 0, s.log.read_text()


@pytest.mark.parametrize("path", ["relay", "evidence"])
def test_sender_text_paths_get_full_answers_from_every_receiver(system, path: str) -> None:
    with system.client() as c:
        a = c.ask(QUESTION, CONTEXT, path=path, max_new_tokens=4)
    _assert_full(a, set(TINY.values()))
    b = a.reply.nbytes
    # one txt frame, fanned out to both: no quantisation scales; the sender read (relay) or selected (evidence)
    assert b["payload"] > 0 and b["scales"] == 0 and b["fanout"] == 2 * b["request"], b
    assert a.reply.durations["sender.encode"] > 0, a.reply.durations
    if path == "evidence":  # the slot is the question and the selected paragraphs: at least the question's bytes
        assert b["payload"] > len(QUESTION.encode()), b


# ---- a sharer slower than the arbiter's silence limit ----


@contextmanager
def _processes(cmds: dict[str, list[str]], env: dict[str, str], logs: Path) -> Iterator[dict[str, subprocess.Popen]]:
    """Start each command with its own log; SIGTERM all on the way out (each must stop cleanly)."""
    procs = {}
    try:
        for name, cmd in cmds.items():
            with (logs / f"{name}.log").open("w") as out:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        yield procs
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                assert p.wait(30) == 0, (logs / f"{name}.log").read_text()
            except subprocess.TimeoutExpired:
                p.kill()
                raise


def test_a_sharer_reading_longer_than_the_silence_limit_is_not_sent_twice(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender runs in this process with its sharer's reading slowed past net.DEAD_AFTER_S; its heartbeats go on
    from the serving thread meanwhile, so the arbiter neither forgets it nor re-dispatches the request."""
    from latentwire.processes.client import Client
    from latentwire.sender import process
    from latentwire.sender.sharer import SharerEncoder

    slow_s = net.DEAD_AFTER_S + 2.0
    read = SharerEncoder.read
    reads: list[float] = []

    def slow_read(self, *args, **kwargs):
        time.sleep(slow_s)  # holds no lock the heartbeat loop needs, like a real forward pass releasing the GIL
        reads.append(slow_s)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(SharerEncoder, "read", slow_read)
    front, back, rep, *rx = _loopback(5)
    env = _env(LATENTWIRE_ARBITER=front, LATENTWIRE_BACKEND=back, LATENTWIRE_REPLIES=rep, LATENTWIRE_TIMEOUT="60")
    ck = ["--ckpt", str(tiny_ckpt), "--device", "cpu", "--dtype", "float32"]
    cmds = {"arbiter": [LATENTWIRE, "arbiter"]} | {
        name: [LATENTWIRE, "receiver", "--model", spec, "--bind", addr, *ck]
        for (name, spec), addr in zip(TINY.items(), rx, strict=True)
    }
    stop = net.StopFlag(install=False)
    sender = threading.Thread(
        target=process.serve, args=(tiny_ckpt,), kwargs=dict(backend=back, receivers=",".join(rx), stop=stop)
    )
    with _processes(cmds, env, tmp_path):
        sender.start()
        try:
            with Client(front, timeout=120) as c:
                c.wait_ready(300, receivers=2)
                before = c.status().info
                a = c.ask(QUESTION, CONTEXT, path="latent", quant="int8", max_new_tokens=4)
                after = c.status().info
        finally:
            stop.set()
            sender.join(60)
    assert not sender.is_alive()
    assert reads, "the sharer never read: the slow path was not exercised"
    # the arbiter never took the sender for dead: no re-dispatch, no second sender, nothing late or duplicated
    for counter in ("redispatched", "late", "duplicate", "forged"):
        assert after.get(counter, 0) == before.get(counter, 0), (counter, before, after)
    assert after["senders"] == 1 and after["served"] == before.get("served", 0) + 1, after
    _assert_full(a, set(TINY.values()))
    assert a.reply.durations.get("sender.encode", 0) >= slow_s > net.DEAD_AFTER_S, a.reply.durations


# ---- a latent the receiver can read nothing from ----


@pytest.fixture(scope="module")
def rx(tiny_ckpt: Path):
    from latentwire.receivers.receiver import load_receiver

    return load_receiver("tiny-llama", tiny_ckpt, None, "rx", "cpu", "float32")


def _readable(rx) -> np.ndarray:
    """A latent every row of which the adapter keeps: codes of this receiver's own tokens, bound as the sender
    binds them (`codebook.pack`)."""
    import torch

    from latentwire.codebook import pack, vocabulary_codes

    cfg = rx.adapter.cfg
    codes = vocabulary_codes(rx.llm.tokenizer, cfg.d_z, cfg.code_seed)
    ids = torch.nonzero(codes.norm(dim=-1) > 0).flatten()[: rx.m * cfg.tokens_per_row]
    return pack(codes[ids], rx.m, cfg.tokens_per_row, cfg.code_seed).numpy().astype(np.float32)


def _slot_rows(rx, frame: bytes) -> int:
    """How many slot rows the adapter makes of a latent frame (its trained prompt included)."""
    import torch

    from latentwire.protocol import decode_frame, dequantize

    with torch.no_grad():
        return int(rx.adapter(torch.from_numpy(dequantize(decode_frame(frame).latent))).shape[0])


EMPTY = np.zeros((4, 32), np.float32)  # zero rows match no code: the adapter drops every one


def test_every_row_dropped_leaves_only_the_trained_prompt(rx) -> None:
    """The premise of the next test, so it cannot pass or fail for another reason: the hostile frame is a valid
    frame of this checkpoint whose latent part of the slot is empty; the readable one fills the slot."""
    hostile = encode_frame(latent_request("r-empty", "test", rx.fingerprint, EMPTY, "fp16"))
    readable = encode_frame(latent_request("r-good", "test", rx.fingerprint, _readable(rx), "int8"))
    prompt = rx.adapter.cfg.prompt_len
    assert _slot_rows(rx, hostile) == prompt
    assert _slot_rows(rx, readable) >= prompt + rx.m


def test_a_latent_with_every_row_dropped_is_refused_and_the_receiver_serves_on(rx) -> None:
    out = answer(rx, encode_frame(latent_request("r-empty", "test", rx.fingerprint, EMPTY, "fp16")))
    good = answer(rx, encode_frame(latent_request("r-good", "test", rx.fingerprint, _readable(rx), "int8")))
    assert isinstance(good, Reply) and good.rid == "r-good", good  # it keeps serving
    assert isinstance(out, ErrorReply), out
    # a well-formed frame that says nothing this receiver can read: its own code, not a malformed frame's
    assert out.rid == "r-empty" and out.code == "no_match" and "no row matches a token" in out.message, out


# ---- CURVE on every link, without root ----


def _push(address: str, server_key: bytes, public: bytes, secret: bytes, frame: bytes) -> int:
    """Connect a PUSH with the given CURVE key pair, send `frame` once the handshake succeeds; returns its outcome
    (EVENT_HANDSHAKE_SUCCEEDED, EVENT_HANDSHAKE_FAILED_AUTH, or 0 when none came)."""
    from zmq.utils.monitor import recv_monitor_message

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.linger = 2000
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = public, secret, server_key
    mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)  # before connecting
    try:
        s.connect(address)
        event = int(recv_monitor_message(mon)["event"]) if mon.poll(15_000) else 0
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            s.send(frame)
        return event
    finally:
        s.disable_monitor()
        mon.close(0)
        s.close()
        ctx.term()


def test_curve_link_answers_known_senders_and_refuses_an_unknown_key(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame
) -> None:
    import zmq.auth
    from typer.testing import CliRunner

    from latentwire.cli import app
    from latentwire.processes.up import LocalSystem

    keys = tmp_path / "keys"
    res = CliRunner().invoke(app, ["keygen", str(keys)])
    assert res.exit_code == 0, res.output
    assert {p.name for p in keys.iterdir()} == {f"{r}.key{s}" for r in net.ROLES for s in ("", "_secret")}
    monkeypatch.setenv(net.CURVE_ENV, str(keys))  # every process `up` starts, and the client, read it
    system = LocalSystem(tiny_ckpt, TINY, log=tmp_path / "up.log", timeout=30)
    with system, system.client() as c:
        a = c.ask(QUESTION, CONTEXT, path="latent", quant="int4", max_new_tokens=4)
        _assert_full(a, set(TINY.values()))
        server = zmq.auth.load_certificate(str(keys / "receiver.key"))[0]
        target = system.receiver_address("llama")
        before = c.status().info.get("error.wrong_checkpoint", 0)
        # a stranger's key: the receiver refuses the handshake, so its frame never arrives
        assert _push(target, server, *zmq.curve_keypair(), frame()) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        time.sleep(1.0)
        assert c.status().info.get("error.wrong_checkpoint", 0) == before
        # the same frame from the sender's key arrives, and is answered (another checkpoint's: wrong_checkpoint)
        known = zmq.auth.load_certificate(str(keys / "sender.key_secret"))
        assert _push(target, server, *known, frame()) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        end = time.monotonic() + 30
        while c.status().info.get("error.wrong_checkpoint", 0) == before and time.monotonic() < end:
            time.sleep(0.2)
        assert c.status().info.get("error.wrong_checkpoint", 0) == before + 1
        again = c.ask(QUESTION, CONTEXT, path="latent", quant="int8", max_new_tokens=4)
        _assert_full(again, set(TINY.values()))
    assert system.proc.returncode == 0 and "refused a sender connection with unknown key" in system.log.read_text()
