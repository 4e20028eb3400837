"""The optional deadline keys of `lat`, `txt` and `ask` (`e`: deadline, `o`: opened; SPEC.md "Deadlines"):
golden bytes with them, no bytes for them without them, absent or nil read as None, and bad values refused."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire.protocol import (
    Ask,
    LatentRequest,
    ProtocolError,
    TextRequest,
    decode_frame,
    encode_frame,
    frame_size,
    latent_request,
)

DEADLINE, OPENED = 1700000060.5, 1700000000.25
X = np.array([[1.0, -2.0, 0.5, 0.0], [-0.25, 8.0, 8.0, -0.25]], dtype=np.float32)
# test_protocol.py's GOLDEN_LATENT / GOLDEN_ASK: requests without a deadline, so without its keys
GOLDEN_LATENT = (
    "8da170aa6c6174656e7477697265a17602a16ba36c6174a169a67269642d3031a173a673656e646572a166a9636b7074"
    "2d30303031a17410a171a4696e7438a16d02a16404a167c0a163c4080402813c0402813da162c40840812000fc7f7ffc"
)
GOLDEN_ASK = (
    "8ca170aa6c6174656e7477697265a17602a16ba361736ba169a67269642d3031a173a6636c69656e74a178a457686f3fa163ad41646120"
    "77726f74652069742ea16da66c6174656e74a171a4696e7434a16704a16ec0a17408"
)
# the same with `e` (and `o`): two float64 keys after `t`, the latent body still last
TIMES = "a165cb41d954fc4f200000a16fcb41d954fc40100000"  # "e": 1700000060.5, "o": 1700000000.25
GOLDEN_LATENT_DEADLINE = (
    "8fa170aa6c6174656e7477697265a17602a16ba36c6174a169a67269642d3031a173a673656e646572a166a9636b7074"
    "2d30303031a17410" + TIMES + "a171a4696e7438a16d02a16404a167c0a163c4080402813c0402813da162c40840812000fc7f7ffc"
)
GOLDEN_TEXT_DEADLINE = (
    "8aa170aa6c6174656e7477697265a17602a16ba3747874a169a67269642d3032a173a673656e646572a178bc5175657374696f6e3a2057"
    "686f3f0a436f6e746578743a204164612ea16ec0a17408" + TIMES
)
GOLDEN_ASK_DEADLINE = (
    "8da170aa6c6174656e7477697265a17602a16ba361736ba169a67269642d3031a173a6636c69656e74a178a457686f3fa163ad41646120"
    "77726f74652069742ea16da66c6174656e74a171a4696e7434a16704a16ec0a17408a165cb41d954fc4f200000"
)


def _latent(**times: float | None) -> LatentRequest:
    return latent_request("rid-01", "sender", "ckpt-0001", X, "int8", max_new_tokens=16, **times)


def _text(**times: float | None) -> TextRequest:
    return TextRequest("rid-02", "sender", "Question: Who?\nContext: Ada.", None, 8, **times)


def _ask(**times: float | None) -> Ask:
    return Ask("rid-01", "client", "Who?", "Ada wrote it.", "latent", "int4", 4, None, 8, **times)


GOLDEN = {
    "lat": (lambda: _latent(deadline=DEADLINE, opened=OPENED), GOLDEN_LATENT_DEADLINE),
    "txt": (lambda: _text(deadline=DEADLINE, opened=OPENED), GOLDEN_TEXT_DEADLINE),
    "ask": (lambda: _ask(deadline=DEADLINE), GOLDEN_ASK_DEADLINE),
}


@pytest.mark.parametrize("kind", list(GOLDEN))
def test_golden_bytes_with_a_deadline(kind: str) -> None:
    build, golden = GOLDEN[kind]
    assert encode_frame(build()).hex() == golden
    assert decode_frame(bytes.fromhex(golden)) == build()


def test_a_request_without_a_deadline_pays_no_bytes_for_it() -> None:
    assert encode_frame(_latent()).hex() == GOLDEN_LATENT
    assert encode_frame(_ask()).hex() == GOLDEN_ASK
    plain = decode_frame(bytes.fromhex(GOLDEN_LATENT))
    assert isinstance(plain, LatentRequest) and plain.deadline is None and plain.opened is None
    assert decode_frame(bytes.fromhex(GOLDEN_ASK)) == _ask()


def _wire(msg: Any, **changes: Any) -> bytes:
    wire = msgpack.unpackb(encode_frame(msg), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


@pytest.mark.parametrize("build", [_latent, _text, _ask])
def test_nil_reads_as_no_deadline_and_an_int_as_a_float(build: Any) -> None:
    assert decode_frame(_wire(build(), e=None, o=None)) == build()
    msg = decode_frame(_wire(build(), e=1700000060, o=0))
    assert (msg.deadline, msg.opened) == (1700000060.0, 0.0) and type(msg.deadline) is float


def test_the_keys_change_nothing_else_in_the_frame() -> None:
    """Without its deadline keys, a frame is the same request without a deadline."""
    wire = msgpack.unpackb(bytes.fromhex(GOLDEN_LATENT_DEADLINE), raw=False)
    del wire["e"], wire["o"]
    assert decode_frame(msgpack.packb(wire, use_bin_type=True)) == _latent()


def test_the_deadline_keys_count_as_header_bytes() -> None:
    size, base = frame_size(_latent(deadline=DEADLINE, opened=OPENED)), frame_size(_latent())
    assert size.total - base.total == len(TIMES) // 2 and size.body == base.body


BAD = {
    "negative": (-1.0, r"deadline: -1.0 must be finite and >= 0"),
    "nan": (math.nan, r"deadline: nan must be finite"),
    "inf": (math.inf, r"deadline: inf must be finite"),
    "str": ("soon", r"deadline: expected float, got str"),
    "bool": (True, r"deadline: expected float, got bool"),
    "bin": (b"\x00", r"deadline: expected float, got bytes"),
    "list": ([1.0], r"deadline: expected float, got list"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("build", [_latent, _text, _ask])
def test_bad_deadlines_are_refused(case: str, build: Any) -> None:
    value, pattern = BAD[case]
    with pytest.raises(ProtocolError, match=pattern):
        decode_frame(_wire(build(), e=value))
    with pytest.raises(ProtocolError, match=pattern.replace("deadline", "opened")):
        decode_frame(_wire(build(), o=value))
    with pytest.raises(ProtocolError, match=pattern):
        build(deadline=value)


_times = st.none() | st.floats(0, 4e9, allow_nan=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deadline=_times, opened=_times, which=st.sampled_from([_latent, _text, _ask]))
def test_round_trip(deadline: float | None, opened: float | None, which: Any) -> None:
    msg = which(deadline=deadline, opened=opened)
    assert decode_frame(encode_frame(msg)) == msg
