"""Conformance: SPEC.md as a contract. A client written from the spec alone, with pyzmq and msgpack, speaks to a
live system on the tiny models (`latentwire up` on loopback). Nothing of the package is used but `LocalSystem`,
to start the system, and the golden ask's bytes; every other frame is built by hand from SPEC.md, and every frame
that comes back is checked against it."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq
from test_protocol import GOLDEN_ASK

pytestmark = pytest.mark.slow  # the whole system started as processes

SPEC = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text()
HEADER = ("p", "v", "k", "i", "s")
JREP_KEYS = {*HEADER, "a", "o", "r", "g", "z", "w", "c", "j", "e", "u", "b"}
JREP_BYTES = {"ask", "request", "header", "payload", "scales", "fanout", "replies"}
WIRE_PATHS = ("latent", "text", "token-budget", "evidence", "relay")  # SPEC.md, `ask`.`m`
CONTEXT = "Ada Lovelace wrote the notes in 1843.\nCharles Babbage designed the engine."


@pytest.fixture(scope="module")
def address(tiny_trained, tmp_path_factory) -> str:
    from latentwire.processes.up import LocalSystem

    system = LocalSystem(
        tiny_trained[0], {"llama": "tiny-llama", "qwen": "tiny-qwen"}, log=tmp_path_factory.mktemp("spec") / "up.log"
    )
    with system:
        yield system.address


@pytest.fixture
def dealer(address: str):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    yield sock
    sock.close(0)
    ctx.term()


def ask(rid: str, question: str = "Who wrote the notes?", context: str = CONTEXT, **keys: object) -> bytes:
    """An `ask` frame as SPEC.md lists it: header first, every required key, in the listed order."""
    frame = {"p": "latentwire", "v": 2, "k": "ask", "i": rid, "s": "spec-client", "x": question, "c": context}
    frame.update({"m": "text", "q": "fp16", "g": None, "n": None, "t": 8})
    frame.update(keys)
    return msgpack.packb(frame, use_bin_type=True)


def receive(sock: zmq.Socket, timeout: float = 30.0) -> dict:
    assert sock.poll(int(timeout * 1000)), "no answer"
    parts = sock.recv_multipart()
    assert len(parts) == 1, "a DEALER client gets the bare answer frame"
    frame = msgpack.unpackb(parts[0], raw=False)
    assert isinstance(frame, dict) and frame["p"] == "latentwire" and frame["v"] == 2, frame
    assert all(isinstance(frame[k], str) for k in ("k", "i", "s")) and frame["s"], frame
    return frame


def check_err(frame: dict, rid: str, code: str) -> None:
    assert frame["k"] == "err" and frame["i"] == rid and frame["e"] == code, frame
    assert f"`{code}`" in SPEC, f"{code} is not in SPEC.md"
    assert isinstance(frame["x"], str)


def check_jrep(frame: dict, rid: str) -> None:
    assert frame["k"] == "jrep" and frame["i"] == rid, frame
    assert set(frame) >= JREP_KEYS, frame
    assert isinstance(frame["a"], str) and isinstance(frame["o"], str) and frame["o"] in frame["w"], frame
    assert 0.0 <= frame["r"] <= 1.0 and frame["g"] in (0, 1) and frame["z"] in (0, 1), frame
    assert all(0.0 <= p <= 1.0 for p in frame["j"].values()) and set(frame["j"]) == set(frame["w"]), frame
    assert all(math.isfinite(v) and v >= 0 for v in frame["u"].values()), frame
    assert set(frame["b"]) <= JREP_BYTES and all(isinstance(n, int) and n >= 0 for n in frame["b"].values()), frame


def ping(sock: zmq.Socket, rid: str) -> dict:
    hb = {"p": "latentwire", "v": 2, "k": "hb", "i": rid, "s": "spec-client", "l": "client", "h": "ping"}
    sock.send(msgpack.packb({**hb, "y": {}, "c": {}}, use_bin_type=True))
    return receive(sock, 5.0)


def test_the_golden_ask_is_answered(dealer) -> None:
    end = time.monotonic() + 60
    while (st := ping(dealer, "ready?"))["h"] != "ready" or st["y"].get("n_receivers", 0) < 2:
        assert time.monotonic() < end, st
        time.sleep(0.2)
    dealer.send(bytes.fromhex(GOLDEN_ASK))
    check_jrep(receive(dealer), "rid-01")


def test_the_status_ping_is_answered_under_its_id(dealer, address: str) -> None:
    st = ping(dealer, "p-1")
    assert (st["k"], st["i"], st["l"], st["h"]) == ("hb", "p-1", "arbiter", "ready"), st
    info = st["y"]
    assert info["n_receivers"] == 2 and info["senders"] >= 1 and info["timeout"] > 0, info
    assert set(info["receivers"].split(",")) == {"tiny-llama", "tiny-qwen"}, info
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)  # a REQ client: the empty delimiter travels with the answer
    req.connect(address)
    try:
        req.send(ask("req-1"))
        check_jrep(receive(req), "req-1")
    finally:
        req.close(0)
        ctx.term()


@pytest.mark.parametrize("mode", WIRE_PATHS)
def test_every_wire_path_is_answered(dealer, mode: str) -> None:
    extra = {"q": "int8", "g": None} if mode == "latent" else {}
    dealer.send(ask(f"m-{mode}", m=mode, n=4 if mode == "token-budget" else None, **extra))
    check_jrep(receive(dealer), f"m-{mode}")


def test_many_asks_on_one_socket_are_each_answered_once_matched_by_id(dealer) -> None:
    rids = [f"multi-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    long_context = "Ada Lovelace wrote the notes on the Analytical Engine in 1843. " * 40
    for n, rid in enumerate(rids):  # a long one first: answers come as they are ready
        dealer.send(ask(rid, context=long_context if n == 0 else CONTEXT, t=32 if n == 0 else 4))
    got = [receive(dealer)["i"] for _ in rids]
    assert sorted(got) == sorted(rids), got
    assert not dealer.poll(500), "an ask answered twice"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ask("e-version", v=3), "bad_version"),
        (ask("e-quant", q="int3"), "bad_quant"),
        (ask("e-mode", m="telepathy"), "bad_frame"),
        (ask("e-empty", question=""), "bad_frame"),
        (ask("e-over", context="x" * (300 * 1024)), "bad_frame"),  # over max_text_bytes, under max_frame_bytes
        (ask("e-late", e=time.time() - 10.0), "no_answer"),  # its deadline has passed: never worked on
        (ask("e-context", m="latent", c=""), "bad_request"),  # a sender path needs a context
    ],
    ids=["version", "quant", "mode", "empty-question", "over-limit", "late", "no-context"],
)
def test_refusals_carry_the_ask_id_and_a_code_the_spec_lists(dealer, frame: bytes, code: str) -> None:
    rid = msgpack.unpackb(frame, raw=False)["i"]
    dealer.send(frame)
    check_err(receive(dealer), rid, code)


def test_a_frame_of_another_kind_is_unexpected(dealer) -> None:
    txt = {"p": "latentwire", "v": 2, "k": "txt", "i": "t-1", "s": "spec-client", "x": "Question: Who?", "n": None}
    dealer.send(msgpack.packb({**txt, "t": 4}, use_bin_type=True))
    check_err(receive(dealer), "t-1", "unexpected_kind")


def test_an_envelope_of_another_shape_is_dropped_unanswered(dealer) -> None:
    dealer.send_multipart([b"a-tag", ask("tagged")])
    assert not dealer.poll(1000)
    assert ping(dealer, "after")["i"] == "after"  # and the socket still serves
