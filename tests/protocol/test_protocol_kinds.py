"""The kinds beyond requests and replies: what a client speaks to the arbiter (ask, jrep), a receiver's calibration in
its heartbeat (hb), the sender's report (snt). Round trips, sizes and each rejection (their golden bytes are with
the others, in test_protocol.py)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire.protocol import (
    WIRE_PATHS,
    Ask,
    Heartbeat,
    JointReply,
    Limits,
    ProtocolError,
    Sent,
    decode_frame,
    encode_frame,
    frame_size,
    peek_rid,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_text = st.text(max_size=40)
_name = st.text(min_size=1, max_size=20)
_pos = st.floats(0, 1e6, allow_nan=False)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_maps = st.dictionaries(_name, _finite, max_size=4)
_pair = st.tuples(_finite, _finite) | st.lists(_finite, min_size=2, max_size=2)  # a Platt map [a, b]


def _frame(msg: Any, **changes: Any) -> bytes:
    """`msg`'s frame with wire keys changed: what a broken or hostile peer might send."""
    wire = msgpack.unpackb(encode_frame(msg), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


def _rejects(data: bytes, pattern: str) -> None:
    with pytest.raises(ProtocolError, match=pattern):
        decode_frame(data)


def _ask() -> Ask:
    return Ask("rid-01", "client", "Who?", "Ada wrote it.", "latent", "int4", 4, None, 8)


def _joint(**kw: Any) -> JointReply:
    args = dict(
        rid="rid-01", sender="arbiter", answer="Ada", model="llama", score=0.5, agreement=1, degraded=0,
        answers={"llama": "Ada", "qwen": "ada"}, scores={"llama": -0.5, "qwen": -1.0},
        calibrated={"llama": 0.5, "qwen": 0.25}, errors={}, durations={"e2e": 0.25}, nbytes={"request": 90},
    )  # fmt: skip
    return JointReply(**{**args, **kw})


def _beat(**cal: Any) -> Heartbeat:
    return Heartbeat("", "recv-llama", "receiver", "alive", {"model": "llama"}, cal or {"latent": (0.5, -1.0)})


def _sent(**kw: Any) -> Sent:
    args = dict(request=66, header=42, payload=24, scales=8, fanout=132, reached=2, receivers=3)
    return Sent("rid-01", "sender", **{**args, **kw}, durations={"encode": 0.5})


# ---- ask (client -> arbiter -> sender) and jrep (arbiter -> client) ----


@SETTINGS
@given(
    msg=st.one_of(
        st.builds(
            Ask, _name, _name, _name, _text, st.sampled_from(["latent", "text", "token-budget"]),
            st.sampled_from(["fp32", "fp16"]), st.none(), st.none() | st.integers(1, 512), st.integers(1, 4096),
        ),
        st.builds(
            Ask, _name, _name, _name, _text, st.just("latent"), st.sampled_from(["int8", "int4"]),
            st.none() | st.integers(1, 256),
        ),
        st.builds(
            JointReply, _name, _name, _text, _name, st.floats(0, 1), st.integers(0, 1), st.integers(0, 1),
            st.dictionaries(_name, _text, max_size=4), _maps,
            st.dictionaries(_name, st.floats(0, 1), max_size=4), st.dictionaries(_name, _text, max_size=4),
            st.dictionaries(_name, _pos, max_size=4), st.dictionaries(_name, st.integers(0, 2**63 - 1), max_size=4),
        ),
    )
)  # fmt: skip
def test_client_kinds_round_trip(msg: Any) -> None:
    data = encode_frame(msg)
    assert decode_frame(data) == msg
    assert frame_size(data).total == len(data)


def test_client_kinds_sizes_and_rid_peek() -> None:
    ask, joint = _ask(), _joint()
    assert frame_size(ask).body == len("Who?") + len("Ada wrote it.")
    assert frame_size(joint).body == len("Ada")
    assert peek_rid(encode_frame(joint)) == "rid-01"
    assert peek_rid(_frame(ask, v=1)) == "rid-01"  # refused by decode_frame, rid still readable for the error reply
    for junk in (b"", b"\xc1", msgpack.packb([1]), msgpack.packb({"i": 5}), b"\x91" * 5000, _frame(ask, i="x" * 2000)):
        assert peek_rid(junk) == ""


def test_client_kinds_respect_text_limits() -> None:
    long = "a" * 2000  # over max_str, under max_text_bytes: allowed in question, context and answers
    assert decode_frame(encode_frame(Ask("r", "c", long, long))).question == long
    assert decode_frame(encode_frame(_joint(answers={"llama": long}))).answers["llama"] == long
    with pytest.raises(ProtocolError, match=r"errors\['llama'\]: 2000 UTF-8 bytes exceeds the limit 1024"):
        encode_frame(_joint(errors={"llama": long}))
    with pytest.raises(ProtocolError, match="max_new_tokens: 5000 exceeds the limit 4096"):
        encode_frame(Ask("r", "c", "q", max_new_tokens=5000))


# ---- hb's calibration and the sender's snt report ----


@SETTINGS
@given(
    msg=st.one_of(
        st.builds(
            Heartbeat, _text, _name, _name, _name, st.just({}),
            st.dictionaries(st.sampled_from(WIRE_PATHS), _pair),
        ),
        st.builds(
            lambda header, payload, reached, extra, durations: Sent(
                "r", "s", header + payload, header, payload, header // 2, (header + payload) * reached, reached,
                reached + extra, durations,
            ),
            st.integers(0, 2**19), st.integers(0, 2**19), st.integers(0, 256), st.integers(0, 4),
            st.dictionaries(_name, _pos, max_size=4),
        ),
    )
)  # fmt: skip
def test_heartbeat_calibration_and_sent_round_trip(msg: Any) -> None:
    data = encode_frame(msg)
    assert decode_frame(data) == msg
    assert frame_size(data) == frame_size(msg) and frame_size(data).body == 0


def test_calibration_reads_as_pairs_of_floats_whatever_numbers_the_wire_holds() -> None:
    hb = decode_frame(_frame(_beat(), c={"latent": [1, -2], "text": [0.5, 2**62]}))
    assert hb.calibration == {"latent": (1.0, -2.0), "text": (0.5, float(2**62))}
    assert all(type(v) is float for pair in hb.calibration.values() for v in pair)
    assert Heartbeat("", "s", "sender").calibration == {}  # only receivers announce one


def test_an_array_is_bounded_by_the_limits_at_both_ends() -> None:
    tight = Limits(max_items=1)
    with pytest.raises(ProtocolError, match=r"calibration\['latent'\]: 2 items exceeds the limit 1"):
        encode_frame(_beat(), tight)
    with pytest.raises(ProtocolError, match="exceeds max_array_len"):
        decode_frame(encode_frame(_beat()), tight)


KIND_REJECTIONS = {
    # client kinds
    "unknown mode": (_frame(_ask(), m="video"), r"ask frame: mode: unknown mode 'video'"),
    "empty question": (_frame(_ask(), x=""), r"ask frame: question: must not be empty"),
    "group for fp16": (_frame(_ask(), q="fp16"), r"ask frame: group_size: must be None for fp16"),
    "unknown quant": (_frame(_ask(), q="int3"), r"ask frame: quant: unknown quant scheme 'int3'"),
    "zero budget": (_frame(_ask(), n=0), r"ask frame: budget: 0 is outside"),
    "degraded 2": (_frame(_joint(), z=2), r"jrep frame: degraded: 2 is outside 0..1"),
    "agreement bool": (_frame(_joint(), g=True), r"jrep frame: agreement: expected int, got bool"),
    "probability > 1": (_frame(_joint(), j={"llama": 1.5}), r"calibrated\['llama'\]: 1.5 is a probability"),
    "score > 1": (_frame(_joint(), r=2.0), r"jrep frame: score: 2.0 is a probability"),
    "negative bytes": (_frame(_joint(), b={"request": -1}), r"nbytes\['request'\]: -1 is outside"),
    "answers as list": (_frame(_joint(), w=["Ada"]), r"answers: expected map, got list"),
    "empty model": (_frame(_joint(), o=""), r"jrep frame: model: must not be empty"),
    # a receiver's calibration
    "calibration nan": (_frame(_beat(), c={"latent": [math.nan, 1.0]}), r"hb frame: calibration\['latent'\]\[0\]: nan"),
    "calibration inf": (_frame(_beat(), c={"relay": [1.0, -math.inf]}), r"calibration\['relay'\]\[1\]: -inf must be"),
    "calibration of no wire path": (_frame(_beat(), c={"latent-closed": [1.0, 0.0]}), r"unknown path 'latent-closed'"),
    "calibration of an unknown path": (_frame(_beat(), c={"video": [1.0, 0.0]}), r"calibration key: unknown path"),
    "calibration of one number": (_frame(_beat(), c={"latent": 1.0}), r"expected a pair \[a, b\], got float"),
    "calibration of three": (_frame(_beat(), c={"latent": [1.0, 2.0, 3.0]}), r"expected a pair \[a, b\], got 3 items"),
    "calibration as a map": (_frame(_beat(), c={"latent": {"a": 1.0, "b": 0.0}}), r"pair \[a, b\], got dict"),
    "calibration of str": (_frame(_beat(), c={"latent": ["1", "0"]}), r"calibration\['latent'\]\[0\]: expected float"),
    "calibration as list": (_frame(_beat(), c=[[1.0, 0.0]]), r"hb frame: calibration: expected map, got list"),
    "calibration missing": (_frame(_beat(), c=None), r"hb frame: calibration: expected map, got NoneType"),
    # the sender's report
    "report without rid": (_frame(_sent(), i=""), r"snt frame: rid: must not be empty"),
    "report missing bytes": (_frame(_sent(), r=None), r"snt frame: request: expected int, got NoneType"),
    "report negative bytes": (_frame(_sent(), h=-1), r"snt frame: header: -1 is outside"),
    "report bytes as float": (_frame(_sent(), b=24.0), r"snt frame: payload: expected int, got float"),
    "report not adding up": (_frame(_sent(), r=67), r"request: 67 is not header \+ payload \(42 \+ 24\)"),
    "report scales over header": (_frame(_sent(), c=43), r"scales: 43 exceeds the header \(42\)"),
    "report fanout off": (_frame(_sent(), f=133), r"fanout: 133 is not request \* reached \(66 \* 2\)"),
    "report reached too many": (_frame(_sent(), n=4, f=264), r"reached: 4 exceeds receivers \(3\)"),
    "report negative duration": (_frame(_sent(), u={"encode": -1.0}), r"durations\['encode'\]: -1.0 must be"),
    "report durations as list": (_frame(_sent(), u=[0.5]), r"snt frame: durations: expected map, got list"),
    "report of an oversized frame": (
        _frame(_sent(), r=2**21, h=2**21 - 24, f=2**22), r"snt frame: request: 2097152 bytes exceeds the limit 1048576"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(KIND_REJECTIONS))
def test_kind_rejections(case: str) -> None:
    _rejects(*KIND_REJECTIONS[case])


def test_invalid_reports_and_calibrations_cannot_be_built() -> None:
    with pytest.raises(ProtocolError, match=r"unknown path 'evidence-x'"):
        Heartbeat("", "r", "receiver", calibration={"evidence-x": (1.0, 0.0)})
    with pytest.raises(ProtocolError, match="fanout: 0 is not request"):
        Sent("r", "s", 10, 10, 0, 0, 0, 1, 1)
    with pytest.raises(ProtocolError, match="reached: expected int, got bool"):
        Sent("r", "s", reached=True, receivers=1)
    with pytest.raises(ProtocolError, match="sender: must not be empty"):
        Sent("r", "")
