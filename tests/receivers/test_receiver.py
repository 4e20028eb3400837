"""A receiver's frame handling in-process (no sockets): bad frames get explicit errors and it keeps serving,
latents of another shape or out of range are refused, and batched answers equal one-at-a-time ones."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
from rxkit import answer, answers

from latentwire.protocol import ErrorReply, Heartbeat, Reply, TextRequest, encode_frame, latent_request


def test_receiver_refuses_bad_frames_and_keeps_serving(tiny_ckpt: Path, frame) -> None:
    from latentwire import checkpoint
    from latentwire.receivers.receiver import load_receiver

    rx = load_receiver("tiny-llama", tiny_ckpt, None, "rx", "cpu", "float32")
    fp = checkpoint.fingerprint(tiny_ckpt)
    cases = {
        b"\x00garbage": ("", "bad_frame"),
        frame(): ("r-1", "wrong_checkpoint"),
        frame(f=fp, v=1): ("r-1", "bad_version"),
        frame(f=fp, q="int2"): ("r-1", "bad_quant"),
        frame(f=fp, d=16, b=bytes(64), c=bytes(16)): ("r-1", "bad_frame"),  # zero scales
        encode_frame(Heartbeat("", "x", "sender")): ("", "unexpected_kind"),
    }
    for data, (rid, code) in cases.items():
        out = answer(rx, data)
        assert isinstance(out, ErrorReply) and (out.rid, out.code) == (rid, code), out
    good = answer(rx, frame(f=fp))
    assert isinstance(good, Reply) and good.model == "tiny-llama" and good.fingerprint == fp
    assert {"decode", "adapt", "generate", "total"} <= set(good.durations)
    text = answer(rx, encode_frame(TextRequest("t-1", "s", "Question: x\nContext: y", budget=4)))
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
        out = answer(rx, _latent(rx, m))
        assert isinstance(out, ErrorReply) and out.code == "bad_shape" and f"{m}x32" in out.message, out
    assert isinstance(answer(rx, _latent(rx, 4)), Reply)
    rx.m = None
    try:
        assert isinstance(answer(rx, _latent(rx, 3)), Reply)
    finally:
        rx.m = 4


def test_receiver_refuses_non_finite_and_extreme_latents(rx) -> None:
    x = np.ones((4, 32), np.float32)
    wire = msgpack.unpackb(encode_frame(latent_request("r-1", "test", rx.fingerprint, x, "fp32")), raw=False)
    x[1, 2] = np.nan  # an encoder refuses this; a foreign or broken one may still send it
    nan = msgpack.packb({**wire, "b": x.astype("<f4").tobytes()}, use_bin_type=True)
    out = answer(rx, nan)
    assert isinstance(out, ErrorReply) and out.code == "bad_frame" and "nan" in out.message.lower(), out
    # finite but extreme: refused, whether the adapter overflows or drops every row as matching no token
    out = answer(rx, _latent(rx, scale=3e37, scheme="fp32"))
    assert isinstance(out, ErrorReply) and out.code in ("bad_frame", "no_match") and "latent" in out.message, out


def test_receiver_refuses_empty_and_oversized_text(rx) -> None:
    cases = {
        TextRequest("t-1", "s", ""): "bad_frame",
        TextRequest("t-2", "s", "x" * (rx.max_slot_tokens + 10)): "too_large",
        TextRequest("t-3", "s", "Question: x", budget=rx.max_slot_tokens + 1): "too_large",
    }
    for msg, code in cases.items():
        out = answer(rx, encode_frame(msg))
        assert isinstance(out, ErrorReply) and (out.rid, out.code) == (msg.rid, code), out
    assert isinstance(answer(rx, encode_frame(TextRequest("t-4", "s", "x" * 50, budget=8, max_new_tokens=4))), Reply)


def test_batched_answers_equal_one_at_a_time(rx, same_replies) -> None:
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
    batched = answers(rx, frames)
    alone = [answer(rx, f) for f in frames]
    same_replies(batched, alone, rx.llm.engine)
