"""Frame codec: one msgpack map per message, short keys, raw bin bodies. Layout in SPEC.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from .base import DEFAULT_LIMITS, PROTOCOL_NAME, PROTOCOL_VERSION, Limits, ProtocolError
from .codes import ErrorCode
from .messages import (
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    LatentRequest,
    Message,
    Reply,
    Sent,
    TextRequest,
    check_limits,
)
from .quant import QuantizedLatent

# wire key -> message attribute, in wire order (after the header keys p, v, k)
_COMMON = {"i": "rid", "s": "sender"}
_KEYS: dict[type, tuple[str, dict[str, str]]] = {
    LatentRequest: ("lat", {**_COMMON, "f": "fingerprint", "t": "max_new_tokens"}),  # + the latent's keys
    TextRequest: ("txt", {**_COMMON, "x": "text", "n": "budget", "t": "max_new_tokens"}),
    Reply: ("rep", {**_COMMON, "o": "model", "a": "answer", "r": "score", "u": "durations", "f": "fingerprint"}),
    ErrorReply: ("err", {**_COMMON, "e": "code", "x": "message"}),
    Heartbeat: ("hb", {**_COMMON, "l": "role", "h": "status", "y": "info", "c": "calibration"}),
    Sent: (
        "snt",
        {**_COMMON, "r": "request", "h": "header", "b": "payload", "c": "scales", "f": "fanout", "n": "reached"}
        | {"m": "receivers", "u": "durations"},
    ),
    Ask: (
        "ask",
        {**_COMMON, "x": "question", "c": "context", "m": "mode", "q": "quant", "g": "group_size", "n": "budget"}
        | {"t": "max_new_tokens"},
    ),
    JointReply: (
        "jrep",
        {**_COMMON, "a": "answer", "o": "model", "r": "score", "g": "agreement", "z": "degraded", "w": "answers"}
        | {"c": "scores", "j": "calibrated", "e": "errors", "u": "durations", "b": "nbytes"},
    ),
}
_CLASSES = {kind: (cls, keys) for cls, (kind, keys) in _KEYS.items()}
# optional keys: written only when set (most requests carry no deadline, and a frame should not pay for what it does
# not say); absent or nil reads as None
_TIMES = {"e": "deadline", "o": "opened"}
_OPTIONAL: dict[type, dict[str, str]] = {LatentRequest: _TIMES, TextRequest: _TIMES, Ask: _TIMES}
MAX_KEYS = 32  # top-level keys, known and unknown (the largest kind uses 16: room for keys a later minor adds)


def _get(w: dict[str, Any], key: str) -> Any:
    try:
        return w[key]
    except KeyError:
        raise ProtocolError(f"missing field {key!r}") from None


def encode_frame(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Pack a message; raises ProtocolError if a decoder with the same `limits` would refuse it."""
    if type(msg) not in _KEYS:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    check_limits(msg, limits)
    kind, keys = _KEYS[type(msg)]
    wire = {"p": PROTOCOL_NAME, "v": PROTOCOL_VERSION, "k": kind}
    wire.update({key: getattr(msg, attr) for key, attr in keys.items()})
    for key, attr in _OPTIONAL.get(type(msg), {}).items():
        if getattr(msg, attr) is not None:
            wire[key] = getattr(msg, attr)
    if isinstance(msg, LatentRequest):
        q = msg.latent  # body last, so a reader can inspect the header before the body
        wire.update(q=q.scheme.value, m=q.shape[0], d=q.shape[1], g=q.group_size, c=q.scales, b=q.body)
    data = msgpack.packb(wire, use_bin_type=True)
    if len(data) > limits.max_frame_bytes:
        raise ProtocolError(f"frame is {len(data)} bytes, over the limit {limits.max_frame_bytes}")
    return data


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse and fully validate a frame; raises ProtocolError (only) on any problem."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"frame must be bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > limits.max_frame_bytes:
        raise ProtocolError(f"frame is {size} bytes, over the limit {limits.max_frame_bytes}")
    try:
        wire = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=min(limits.max_frame_bytes, limits.max_m * limits.max_dz * 4),
            max_str_len=max(limits.max_text_bytes, limits.max_str),
            max_array_len=limits.max_items,
            max_map_len=max(limits.max_items, MAX_KEYS),
            max_ext_len=0,  # no ext types (and so no Timestamp) anywhere in a frame
        )
    except (ValueError, TypeError, BufferError, msgpack.UnpackException) as e:  # UnicodeDecodeError: ValueError
        why = str(e) or (type(e).__doc__ or "").strip()  # FormatError and StackError have no message
        raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {why}") from None
    if not isinstance(wire, dict):
        raise ProtocolError(f"frame must be a msgpack map, got {type(wire).__name__}")
    if len(wire) > MAX_KEYS:
        raise ProtocolError(f"frame has {len(wire)} keys, over the limit {MAX_KEYS}")
    name, version, kind = wire.get("p"), wire.get("v"), wire.get("k")
    if name != PROTOCOL_NAME or not isinstance(name, str):
        raise ProtocolError(f"not a {PROTOCOL_NAME} frame: format name 'p' is {name!r}")
    if version != PROTOCOL_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this decoder speaks {PROTOCOL_VERSION})", ErrorCode.BAD_VERSION
        )
    if not isinstance(kind, str) or kind not in _CLASSES:
        raise ProtocolError(f"unknown message kind {kind!r}; expected one of {sorted(_CLASSES)}")
    cls, keys = _CLASSES[kind]
    try:
        fields = {attr: _get(wire, key) for key, attr in keys.items()}
        fields.update({attr: wire.get(key) for key, attr in _OPTIONAL.get(cls, {}).items()})
        if cls is LatentRequest:
            fields["latent"] = QuantizedLatent(
                _get(wire, "q"), (_get(wire, "m"), _get(wire, "d")), _get(wire, "b"), _get(wire, "c"), _get(wire, "g")
            )
        msg = cls(**fields)
        check_limits(msg, limits)
    except ProtocolError as e:
        raise ProtocolError(f"{kind} frame: {e}", e.code) from None
    return msg


@dataclass(frozen=True)
class FrameSize:
    """Exact bytes of a frame as sent: total = header + body.

    body is the payload: the latent body (LatentRequest), the UTF-8 text (TextRequest) or answer
    (Reply), 0 otherwise. Everything else is header, including the int8/int4 scales, whose byte
    count is also reported alone as `scales` (so scales <= header).
    """

    total: int
    header: int
    body: int
    scales: int = 0


def frame_size(data: bytes | Message) -> FrameSize:
    """Byte accounting of a frame, given as bytes (decoded with default limits) or as a message."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        msg, total = decode_frame(data), memoryview(data).nbytes
    else:
        msg, total = data, len(encode_frame(data))
    body, scales = 0, 0
    if isinstance(msg, LatentRequest):
        body, scales = len(msg.latent.body), len(msg.latent.scales)
    elif isinstance(msg, TextRequest):
        body = len(msg.text.encode("utf-8"))
    elif isinstance(msg, (Reply, JointReply)):
        body = len(msg.answer.encode("utf-8"))
    elif isinstance(msg, Ask):
        body = len(msg.question.encode("utf-8")) + len(msg.context.encode("utf-8"))
    return FrameSize(total, total - body, body, scales)


def peek_rid(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """Best-effort request id of a frame that failed to decode ("" if unreadable), so an error reply
    can still be matched to its request (e.g. a frame of another protocol version, or one over a limit).

    Reads the top-level map key by key and only the `i` value, skipping the others unread: a frame refused for
    an over-limit field (a context over `max_text_bytes`) still names its request."""
    try:
        if memoryview(data).nbytes > limits.max_frame_bytes:
            return ""
        cap = limits.max_frame_bytes  # nothing in a frame of this size is longer than the frame
        unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=cap,
            max_bin_len=cap,
            max_str_len=cap,
            max_array_len=cap,
            max_map_len=cap,
            max_ext_len=0,
        )
        unpacker.feed(data)
        for _ in range(min(unpacker.read_map_header(), MAX_KEYS)):
            if unpacker.unpack() == "i":
                rid = unpacker.unpack()
                break
            unpacker.skip()
        else:
            return ""
    except Exception:  # noqa: BLE001 - any unreadable frame simply has no rid
        return ""
    if not isinstance(rid, str) or len(rid.encode("utf-8", "replace")) > limits.max_str:
        return ""
    try:
        rid.encode("utf-8")
    except UnicodeEncodeError:
        return ""
    return rid
