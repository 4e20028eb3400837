"""Shared pieces: the one error type, the limits a decoder enforces, and field validators.

The validators normalise numpy scalars to plain Python numbers, so a message built from
numpy values packs exactly like one built from Python values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .codes import ErrorCode

PROTOCOL_NAME = "latentwire"
PROTOCOL_VERSION = 2

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ProtocolError(ValueError):
    """A frame or message breaks the wire format; the message says what was wrong, `code` what a peer is told."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> None:
        super().__init__(message)
        self.code = code


def clip(s: str, max_bytes: int, mark: str = "") -> str:
    """`s` cut to at most `max_bytes` of UTF-8 on a character boundary (lone surrogates replaced), ending in `mark`
    when it was cut."""
    b = s.encode("utf-8", "replace")
    if len(b) <= max_bytes:
        return b.decode("utf-8", "ignore")
    return b[: max_bytes - len(mark.encode())].decode("utf-8", "ignore") + mark


@dataclass(frozen=True)
class Limits:
    """Caps a decoder checks before trusting a frame; encoders check them too so peers never reject."""

    max_frame_bytes: int = 1 << 20  # whole frame
    max_m: int = 256  # soft tokens per latent
    max_dz: int = 8192  # latent width
    max_text_bytes: int = 256 * 1024  # UTF-8 bytes of a prompt text or an answer
    max_str: int = 1024  # UTF-8 bytes of ids, names, codes, error messages, map keys and values
    max_items: int = 64  # entries in a map field (durations, info)
    max_new_tokens: int = 4096


DEFAULT_LIMITS = Limits()


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Return `value` as an int in lo..hi; bools are refused because they pack as msgpack booleans."""
    if _is_bool(value) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"{name}: expected int, got {type(value).__name__}")
    v = int(value)
    if not lo <= v <= hi:
        raise ProtocolError(f"{name}: {v} is outside {lo}..{hi}")
    return v


def check_float(name: str, value: object, lo: float = -math.inf) -> float:
    """Return `value` as a finite float >= lo (ints accepted, since other encoders may send them)."""
    if _is_bool(value) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ProtocolError(f"{name}: expected float, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise ProtocolError(f"{name}: {value} does not fit a float64") from None
    if not math.isfinite(v) or v < lo:
        raise ProtocolError(f"{name}: {v!r} must be finite and >= {lo}")
    return v


def check_str(name: str, value: object, *, nonempty: bool = False) -> str:
    """Return `value` if it is a str that encodes as UTF-8 (lone surrogates do not)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{name}: expected str, got {type(value).__name__}")
    if nonempty and not value:
        raise ProtocolError(f"{name}: must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ProtocolError(f"{name}: not encodable as UTF-8 ({e.reason})") from None
    return value


def check_str_bytes(name: str, value: str, max_bytes: int) -> None:
    """Check a validated str against a UTF-8 byte budget (skips the encode when it cannot exceed)."""
    if len(value) * 4 > max_bytes and len(value.encode("utf-8")) > max_bytes:
        raise ProtocolError(f"{name}: {len(value.encode('utf-8'))} UTF-8 bytes exceeds the limit {max_bytes}")
