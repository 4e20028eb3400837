"""Property, golden-bytes and rejection tests for latentwire.protocol (numpy + msgpack only)."""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from latentwire.protocol import (
    DEFAULT_LIMITS,
    WIRE_PATHS,
    Ask,
    ErrorReply,
    Heartbeat,
    LatentRequest,
    Limits,
    ProtocolError,
    Quant,
    QuantizedLatent,
    Reply,
    Sent,
    TextRequest,
    decode_frame,
    dequantize,
    encode_frame,
    error_bound,
    error_reply,
    frame_size,
    latent_request,
    quantize,
    sample_messages,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32_MAX = float(np.finfo(np.float32).max)
MAGNITUDES = [0.0, 1e-40, 1e-30, 1e-3, 1.0, 1e3, 6e4, 1e30, F32_MAX / 2]


@st.composite
def latents(draw: st.DrawFn, max_abs: float = F32_MAX) -> np.ndarray:
    """(M, d_z) float32 arrays: random normals at one magnitude per row, or hypothesis-picked elements."""
    m, d = draw(st.integers(1, 16)), draw(st.integers(1, 64))
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        mags = np.array([draw(st.sampled_from(MAGNITUDES)) for _ in range(m)])[:, None]
        x = rng.standard_normal((m, d)) * mags
        return np.clip(x, -max_abs, max_abs).astype(np.float32)
    elements = st.floats(-max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(np.float32, (m, d), elements=elements))


def _divisor(draw: st.DrawFn, d: int) -> int | None:
    return draw(st.sampled_from([None] + [g for g in range(1, d + 1) if d % g == 0]))


def _check_round_trip(x: np.ndarray, q: QuantizedLatent) -> None:
    msg = LatentRequest("r", "s", "fp", q)
    back = decode_frame(encode_frame(msg))
    assert back == msg
    y = dequantize(back.latent)
    assert y.dtype == np.float32 and y.shape == x.shape and np.isfinite(y).all()
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert (err <= error_bound(back.latent)).all()
    m, d = x.shape
    assert len(q.body) == math.ceil(m * d * {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}[q.scheme] / 8)


@SETTINGS
@given(x=latents())
def test_fp32_round_trip_is_exact(x: np.ndarray) -> None:
    q = quantize(x, "fp32")
    _check_round_trip(x, q)
    assert np.array_equal(dequantize(q), x)


@SETTINGS
@given(x=latents(max_abs=65504.0))
def test_fp16_round_trip_within_relative_bound(x: np.ndarray) -> None:
    q = quantize(x, Quant.FP16)
    _check_round_trip(x, q)
    normal = np.abs(x) >= 2.0**-14
    rel = np.abs(x[normal] - dequantize(q)[normal]) / np.abs(x[normal])
    assert (rel <= 2.0**-11).all()


@SETTINGS
@given(data=st.data(), scheme=st.sampled_from(["int8", "int4"]))
def test_int_round_trip_within_half_scale(data: st.DataObject, scheme: str) -> None:
    x = data.draw(latents())
    g = _divisor(data.draw, x.shape[1])
    q = quantize(x, scheme, group_size=g)
    _check_round_trip(x, q)
    groups = x.shape[1] // (g or x.shape[1])
    scales = np.frombuffer(q.scales, "<f4").reshape(x.shape[0], groups)
    assert len(q.scales) == 4 * x.shape[0] * groups
    assert np.isfinite(scales).all() and (scales > 0).all()
    half = np.repeat(scales.astype(np.float64), x.shape[1] // groups, axis=1) / 2
    assert (np.abs(x.astype(np.float64) - dequantize(q)) <= half * (1 + 2**-13)).all()  # scale/2 + float32 rounding


@pytest.mark.parametrize("scheme", list(Quant))
def test_zero_and_extreme_rows(scheme: Quant) -> None:
    big, top = (1e30, F32_MAX) if scheme is not Quant.FP16 else (6e4, 65504.0)
    rows = [[0.0] * 4, [big, -big, 1.0, 0.0], [1e-30, -1e-30, 0.0, 1e-38], [top, -top, top / 3, 1e-45]]
    x = np.array(rows, dtype=np.float32)
    q = quantize(x, scheme)
    _check_round_trip(x, q)
    if scheme in (Quant.INT8, Quant.INT4):  # a zero row gets the smallest normal scale and all-zero codes
        assert np.frombuffer(q.scales, "<f4")[0] == np.finfo(np.float32).tiny
        assert not dequantize(q)[0].any()


@pytest.mark.parametrize("scheme", list(Quant))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_rejected_at_encode(scheme: Quant, bad: float) -> None:
    x = np.zeros((2, 3))
    x[1, 2] = bad
    with pytest.raises(ProtocolError, match=r"non-finite value\(s\).*first at \(1, 2\)"):
        quantize(x, scheme)


def test_quantize_rejects_bad_input() -> None:
    with pytest.raises(ProtocolError, match="fp16 range"):
        quantize(np.full((1, 2), 70000.0), "fp16")
    with pytest.raises(ProtocolError, match="2-D"):
        quantize(np.zeros(8), "int8")
    with pytest.raises(ProtocolError, match="2-D"):
        quantize(np.zeros((0, 8)), "int8")
    with pytest.raises(ProtocolError, match="unknown quant scheme"):
        quantize(np.zeros((1, 8)), "int3")
    with pytest.raises(ProtocolError, match="does not divide"):
        quantize(np.zeros((1, 8)), "int4", group_size=3)
    with pytest.raises(ProtocolError, match="int8/int4 only"):
        quantize(np.zeros((1, 8)), "fp16", group_size=4)
    with pytest.raises(ProtocolError, match="numeric"):
        quantize(np.array([["a"]]), "fp32")


def test_int4_nibble_order_and_padding() -> None:
    x = np.array([[1.0, -7.0, 7.0]], dtype=np.float32)  # scale 1: codes 1, -7, 7
    q = quantize(x, "int4")
    assert q.body == bytes([0x1 | (0x9 << 4), 0x7])  # low nibble first; -7 = 0x9; high pad nibble 0
    assert np.array_equal(dequantize(q), x)
    with pytest.raises(ProtocolError, match="padding nibble"):
        QuantizedLatent(Quant.INT4, (1, 3), bytes([0x91, 0x17]), q.scales)


@pytest.mark.parametrize(
    ("scheme", "body", "scales"), [("fp32", 8192, 0), ("fp16", 4096, 0), ("int8", 2048, 32), ("int4", 1024, 32)]
)
def test_exact_sizes_for_default_latent(scheme: str, body: int, scales: int) -> None:
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    msg = latent_request("rid-1", "sender", "ckpt", x, scheme)
    data = encode_frame(msg)
    size = frame_size(data)
    assert (size.body, size.scales) == (body, scales)
    assert size.total == len(data) == size.header + size.body
    assert size.header < 128  # short keys keep the header small (scales count as header)
    assert frame_size(msg) == size


def test_int4_group_scales_count() -> None:
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    assert len(quantize(x, "int4", group_size=64).scales) == 8 * 4 * 4


def test_every_sample_message_round_trips_and_sizes_add_up() -> None:
    for msg in sample_messages():
        data = encode_frame(msg)
        assert decode_frame(data) == msg
        assert decode_frame(bytearray(data)) == msg and decode_frame(memoryview(data)) == msg
        assert frame_size(data).total == len(data)


_text = st.text(max_size=40)
_name = st.text(min_size=1, max_size=20)
_pos = st.floats(0, 1e6, allow_nan=False)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@SETTINGS
@given(
    msg=st.one_of(
        st.builds(TextRequest, _name, _name, _text, st.none() | st.integers(1, 512), st.integers(1, 4096)),
        st.builds(
            Reply, _name, _name, _name, _text, _finite,
            st.dictionaries(_name, _pos, max_size=5), _text,
        ),
        st.builds(ErrorReply, _text, _name, _name, _text),
        st.builds(
            Heartbeat, _text, _name, _name, _name,
            st.dictionaries(_name, _text | st.integers(-(2**63), 2**63 - 1) | _finite, max_size=5),
            st.dictionaries(st.sampled_from(WIRE_PATHS), st.tuples(_finite, _finite), max_size=5),
        ),
    )
)  # fmt: skip
def test_message_round_trip(msg: Any) -> None:
    assert decode_frame(encode_frame(msg)) == msg


def test_numpy_scalars_are_normalised() -> None:
    r = Reply("r", "s", "m", "a", np.float32(-0.5), {"gen": np.float64(0.1)})
    assert type(r.score) is float and type(r.durations["gen"]) is float
    assert decode_frame(encode_frame(r)) == r
    h = Heartbeat("", "s", "receiver", info={"n": np.int64(3)})
    assert type(h.info["n"]) is int


def test_error_reply_helper_clips_to_limits() -> None:
    e = error_reply("", "recv", "boom", "é" * 5000)
    assert len(e.message.encode()) <= DEFAULT_LIMITS.max_str
    assert decode_frame(encode_frame(e)) == e


# Golden frames: if these fail, the wire format changed. Bump PROTOCOL_VERSION or fix the regression.
GOLDEN_LATENT = (
    "8da170aa6c6174656e7477697265a17602a16ba36c6174a169a67269642d3031a173a673656e646572a166a9636b7074"
    "2d30303031a17410a171a4696e7438a16d02a16404a167c0a163c4080402813c0402813da162c40840812000fc7f7ffc"
)
GOLDEN_REPLY = (
    "8aa170aa6c6174656e7477697265a17602a16ba3726570a169a67269642d3031a173aa726563762d6c6c616d61a16fa5"
    "6c6c616d61a161ac416461204c6f76656c616365a172cbbfd0000000000000a17582a6656e636f6465cb3f50624dd2f1"
    "a9fca867656e6572617465cb3fc999999999999aa166a9636b70742d30303031"
)
GOLDEN_ASK = (
    "8ca170aa6c6174656e7477697265a17602a16ba361736ba169a67269642d3031a173a6636c69656e74a178a457686f3fa163ad41646120"
    "77726f74652069742ea16da66c6174656e74a171a4696e7434a16704a16ec0a17408"
)
GOLDEN_HEARTBEAT = (
    "89a170aa6c6174656e7477697265a17602a16ba26862a169a0a173aa726563762d6c6c616d61a16ca87265636569766572a168a5"
    "616c697665a17981a56d6f64656ca56c6c616d61a16382a66c6174656e7492cbbfe0000000000000cbbff4000000000000a572"
    "656c617992cb3fe8000000000000cbbff8000000000000"
)
GOLDEN_SENT = (
    "8da170aa6c6174656e7477697265a17602a16ba3736e74a169a67269642d3031a173a673656e646572a17242a1682aa16218a16300"
    "a166cc84a16e02a16d02a17582a6656e636f6465cb3fe0000000000000a56672616d65cb3fd0000000000000"
)


def _golden_latent() -> LatentRequest:
    x = np.array([[1.0, -2.0, 0.5, 0.0], [-0.25, 8.0, 8.0, -0.25]], dtype=np.float32)
    return latent_request("rid-01", "sender", "ckpt-0001", x, "int8", max_new_tokens=16)


def _golden_reply() -> Reply:
    return Reply(
        "rid-01", "recv-llama", "llama", "Ada Lovelace", -0.25, {"encode": 0.001, "generate": 0.2}, "ckpt-0001"
    )


def _golden_ask() -> Ask:
    return Ask("rid-01", "client", "Who?", "Ada wrote it.", "latent", "int4", 4, None, 8)


def _golden_heartbeat() -> Heartbeat:
    cal = {"latent": (-0.5, -1.25), "relay": (0.75, -1.5)}
    return Heartbeat("", "recv-llama", "receiver", "alive", {"model": "llama"}, cal)


def _golden_sent() -> Sent:
    return Sent("rid-01", "sender", 66, 42, 24, 0, 132, 2, 2, {"encode": 0.5, "frame": 0.25})


@pytest.mark.parametrize(
    ("build", "golden"),
    [
        (_golden_latent, GOLDEN_LATENT),
        (_golden_reply, GOLDEN_REPLY),
        (_golden_ask, GOLDEN_ASK),
        (_golden_heartbeat, GOLDEN_HEARTBEAT),
        (_golden_sent, GOLDEN_SENT),
    ],
)
def test_golden_bytes(build: Any, golden: str) -> None:
    assert encode_frame(build()).hex() == golden
    assert decode_frame(bytes.fromhex(golden)) == build()


# ---- rejection: each rule, each with a message that says what was wrong ----

DELETE = object()


def _frame(msg: Any = None, **changes: Any) -> bytes:
    """A valid frame (the golden latent by default) with wire keys changed or deleted."""
    wire = msgpack.unpackb(encode_frame(msg or _golden_latent()), raw=False)
    for key, value in changes.items():
        if value is DELETE:
            del wire[key]
        else:
            wire[key] = value
    return msgpack.packb(wire, use_bin_type=True)


def _rejects(data: Any, pattern: str, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(ProtocolError, match=pattern):
        decode_frame(data, limits)


NAN_SCALE = np.array([math.nan, 1.0], "<f4").tobytes()
REJECTIONS = {
    "older version": (_frame(v=1), r"unsupported protocol version 1"),
    "newer version": (_frame(v=3), r"unsupported protocol version 3"),
    "version as bool": (_frame(v=True), r"unsupported protocol version True"),
    "wrong format": (_frame(p="otherwire"), r"not a latentwire frame"),
    "unknown kind": (_frame(k="video"), r"unknown message kind 'video'"),
    "missing body": (_frame(b=DELETE), r"lat frame: missing field 'b'"),
    "short body": (_frame(b=bytes(7)), r"latent.body: 7 bytes, int8 2x4 needs exactly 8"),
    "nan scale": (_frame(c=NAN_SCALE), r"latent.scales: scale nan must be finite"),
    "zero scale": (_frame(c=bytes(8)), r"latent.scales: scale 0.0"),
    "scales count": (_frame(c=bytes(4)), r"latent.scales: 4 bytes, expected 8"),
    "int8 -128": (_frame(b=b"\x80" + bytes(7)), r"code -128 is outside"),
    "unknown scheme": (_frame(q="int2"), r"unknown quant scheme 'int2'"),
    "group not dividing": (_frame(g=3), r"group_size: 3 does not divide d_z=4"),
    "zero M": (_frame(m=0), r"shape\[0\] \(M\): 0 is outside"),
    "too large M": (_frame(m=300, b=bytes(1200), c=np.ones(300, "<f4").tobytes()), r"exceeds the limit 256x8192"),
    "M as str": (_frame(m="2"), r"shape\[0\] \(M\): expected int, got str"),
    "rid as int": (_frame(i=5), r"rid: expected str, got int"),
    "empty rid": (_frame(i=""), r"rid: must not be empty"),
    "body as list": (_frame(b=[1, 2, 3]), r"latent.body: expected bytes, got list"),
    "fp16 nan body": (_frame(q="fp16", b=b"\x00\x7e" * 8, c=b"", g=None), r"fp16 body contains NaN or inf"),
    "fp32 scales": (_frame(q="fp32", b=bytes(32)), r"scales: must be empty for fp32"),
    "long rid": (_frame(i="x" * 2000), r"rid: 2000 UTF-8 bytes exceeds the limit 1024"),
    "ext type": (_frame(zz=msgpack.ExtType(3, b"x")), r"exceeds max_ext_len"),
    "too many keys": (_frame(**{f"x{i}": i for i in range(30)}), r"frame has 43 keys, over the limit 32"),
    "non-map top level": (msgpack.packb([1, 2]), r"frame must be a msgpack map, got list"),
    "trailing bytes": (encode_frame(_golden_latent()) + b"\x00", r"extra data"),
    "truncated": (encode_frame(_golden_latent())[:-3], r"malformed msgpack"),
    "int map key": (msgpack.packb({1: 2}), r"int is not allowed for map key"),
    "bad utf-8": (b"\x81\xa1p\xa2\xff\xfe", r"malformed msgpack: UnicodeDecodeError"),
    "deep nesting": (b"\x91" * 5000, r"Too nested"),
    "not bytes": ("text frame", r"frame must be bytes, got str"),
    "nan score": (_frame(_golden_reply(), r=math.nan), r"rep frame: score: nan must be finite"),
    "negative duration": (_frame(_golden_reply(), u={"gen": -1.0}), r"durations\['gen'\]: -1.0 must be finite"),
    "durations as list": (_frame(_golden_reply(), u=[1.0]), r"durations: expected map, got list"),
    "bool budget": (_frame(TextRequest("r", "s", "t"), n=True), r"budget: expected int, got bool"),
    "text as bin": (_frame(TextRequest("r", "s", "t"), x=b"t"), r"text: expected str, got bytes"),
    "info value list": (_frame(Heartbeat("", "s", "r"), y={"a": [1]}), r"info\['a'\]: expected str, int or float"),
    "error code empty": (_frame(ErrorReply("", "s", "c", "m"), e=""), r"code: must not be empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejections(case: str) -> None:
    _rejects(*REJECTIONS[case])


def test_oversized_frame_rejected_before_parsing() -> None:
    _rejects(bytes(DEFAULT_LIMITS.max_frame_bytes + 1), r"frame is 1048577 bytes, over the limit 1048576")
    data = encode_frame(_golden_latent())
    _rejects(data, rf"frame is {len(data)} bytes, over the limit 64", Limits(max_frame_bytes=64))


def test_custom_limits_apply_to_decode_and_encode() -> None:
    small = Limits(max_m=1, max_new_tokens=16)
    _rejects(encode_frame(_golden_latent()), r"latent.shape: 2x4 exceeds the limit 1x8192", small)
    with pytest.raises(ProtocolError, match="max_new_tokens: 17 exceeds the limit 16"):
        encode_frame(TextRequest("r", "s", "t", max_new_tokens=17), small)
    with pytest.raises(ProtocolError, match="answer: .* exceeds the limit"):
        encode_frame(Reply("r", "s", "m", "a" * 300_000, 0.0, {}))


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert decode_frame(_frame(zz=[1, 2], extra={"x": 1.5})) == _golden_latent()


def test_invalid_messages_cannot_be_built() -> None:
    with pytest.raises(ProtocolError, match="score: inf"):
        Reply("r", "s", "m", "a", math.inf, {})
    with pytest.raises(ProtocolError, match="sender: must not be empty"):
        TextRequest("r", "", "t")
    with pytest.raises(ProtocolError, match="not encodable as UTF-8"):
        TextRequest("r", "s", "\ud800")
    with pytest.raises(ProtocolError, match="latent: expected QuantizedLatent"):
        LatentRequest("r", "s", "fp", np.zeros((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a protocol message"):
        encode_frame({"k": "lat"})  # type: ignore[arg-type]


def test_error_messages_name_the_kind() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(_frame(_golden_reply(), o=3))
    assert re.fullmatch(r"rep frame: model: expected str, got int", str(info.value))
