"""LatentWire wire protocol: the only code that builds or parses frames (see SPEC.md).

Depends on numpy and msgpack only.
"""

from .base import DEFAULT_LIMITS, PROTOCOL_NAME, PROTOCOL_VERSION, Limits, ProtocolError
from .codes import ERROR_CODES, ErrorCode, refusal_code
from .frames import FrameSize, decode_frame, encode_frame, frame_size, peek_rid
from .fuzz import FuzzStats, fuzz, sample_messages
from .messages import (
    MODES,
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
    error_reply,
    latent_request,
)
from .paths import (
    CALIBRATED_PATHS,
    ENGINE_PATHS,
    PATH_NAMES,
    PATHS,
    SENDER_PATHS,
    TRAINED_PATHS,
    WIRE_PATHS,
    PathSpec,
    path_spec,
)
from .quant import Quant, QuantizedLatent, dequantize, error_bound, quantize

__all__ = [
    "DEFAULT_LIMITS",
    "ERROR_CODES",
    "ErrorCode",
    "MODES",
    "PATHS",
    "PATH_NAMES",
    "SENDER_PATHS",
    "TRAINED_PATHS",
    "CALIBRATED_PATHS",
    "ENGINE_PATHS",
    "WIRE_PATHS",
    "PathSpec",
    "path_spec",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "Ask",
    "ErrorReply",
    "FrameSize",
    "FuzzStats",
    "Heartbeat",
    "JointReply",
    "LatentRequest",
    "Limits",
    "Message",
    "ProtocolError",
    "Quant",
    "QuantizedLatent",
    "Reply",
    "Sent",
    "TextRequest",
    "check_limits",
    "decode_frame",
    "dequantize",
    "encode_frame",
    "error_bound",
    "error_reply",
    "frame_size",
    "fuzz",
    "latent_request",
    "peek_rid",
    "quantize",
    "refusal_code",
    "sample_messages",
]
