"""The eight message kinds. Each validates itself on construction, so an existing message is valid.

Limits (string lengths, M, d_z, ...) are a property of the decoder, not of the message, so they are
checked separately by `check_limits` (encode_frame and decode_frame both call it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from .base import (
    DEFAULT_LIMITS,
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    Limits,
    ProtocolError,
    check_float,
    check_int,
    check_str,
    check_str_bytes,
    clip,
)
from .paths import WIRE_PATHS
from .quant import QMAX, Quant, QuantizedLatent, _scheme, quantize

InfoValue = str | int | float


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


def _check_ids(rid: object, sender: object, *, rid_required: bool = True) -> None:
    check_str("rid", rid, nonempty=rid_required)
    check_str("sender", sender, nonempty=True)


def _check_times(msg: LatentRequest | TextRequest | Ask) -> None:
    """`deadline` and `opened`: Unix epoch seconds, finite and >= 0, or None (not given)."""
    for name in ("deadline", "opened"):
        value = getattr(msg, name)
        if value is not None:
            _set(msg, name, check_float(name, value, 0.0))


@dataclass(frozen=True)
class LatentRequest:
    """Answer from a latent made by the encoder checkpoint identified by `fingerprint`."""

    rid: str
    sender: str
    fingerprint: str
    latent: QuantizedLatent
    max_new_tokens: int = 16
    deadline: float | None = None  # Unix time after which nobody waits for the answer (None: no deadline)
    opened: float | None = None  # Unix time the arbiter opened the request (None: not known)

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        check_str("fingerprint", self.fingerprint, nonempty=True)
        if not isinstance(self.latent, QuantizedLatent):
            raise ProtocolError(f"latent: expected QuantizedLatent, got {type(self.latent).__name__}")
        _set(self, "max_new_tokens", check_int("max_new_tokens", self.max_new_tokens, 1, INT32_MAX))
        _check_times(self)


@dataclass(frozen=True)
class TextRequest:
    """Answer from text (the prompt's "Question: ...\\nContext: ..." slot); `budget` keeps its first N tokens."""

    rid: str
    sender: str
    text: str
    budget: int | None = None
    max_new_tokens: int = 16
    deadline: float | None = None  # as in LatentRequest
    opened: float | None = None

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        check_str("text", self.text)
        if self.budget is not None:
            _set(self, "budget", check_int("budget", self.budget, 1, INT32_MAX))
        _set(self, "max_new_tokens", check_int("max_new_tokens", self.max_new_tokens, 1, INT32_MAX))
        _check_times(self)


@dataclass(frozen=True)
class Reply:
    """A receiver's answer; score = mean log-prob of the generated tokens, durations in local seconds."""

    rid: str
    sender: str
    model: str
    answer: str
    score: float
    durations: dict[str, float]
    fingerprint: str = ""

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        check_str("model", self.model, nonempty=True)
        check_str("answer", self.answer)
        check_str("fingerprint", self.fingerprint)
        _set(self, "score", check_float("score", self.score))
        if not isinstance(self.durations, dict):
            raise ProtocolError(f"durations: expected map, got {type(self.durations).__name__}")
        _set(
            self,
            "durations",
            {
                check_str("durations key", k): check_float(f"durations[{k!r}]", v, 0.0)
                for k, v in self.durations.items()
            },
        )


@dataclass(frozen=True)
class ErrorReply:
    """A request failed; `code` is a short machine-readable tag. rid is "" when it could not be read."""

    rid: str
    sender: str
    code: str
    message: str

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender, rid_required=False)
        check_str("code", self.code, nonempty=True)
        check_str("message", self.message)


@dataclass(frozen=True)
class Heartbeat:
    """Readiness / liveness of a process; `info` carries small scalar facts (model name, device, ...).

    A receiver also announces `calibration`: per wire path, the Platt map (a, b) that turns its raw score into
    P(correct), P = 1 / (1 + exp(-(a * score + b))), so the arbiter can compare answers across models.
    """

    rid: str
    sender: str
    role: str
    status: str = "ready"
    info: dict[str, InfoValue] = field(default_factory=dict)
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)  # wire path -> (a, b)

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender, rid_required=False)
        check_str("role", self.role, nonempty=True)
        check_str("status", self.status, nonempty=True)
        if not isinstance(self.info, dict):
            raise ProtocolError(f"info: expected map, got {type(self.info).__name__}")
        _set(self, "info", {check_str("info key", k): _info_value(k, v) for k, v in self.info.items()})
        _set(self, "calibration", _map("calibration", self.calibration, _platt))
        unknown = [k for k in self.calibration if k not in WIRE_PATHS]
        if unknown:
            raise ProtocolError(f"calibration key: unknown path {unknown[0]!r}; expected one of {list(WIRE_PATHS)}")


def _platt(name: str, v: object) -> tuple[float, float]:
    """A Platt map as the wire carries it: a pair [a, b] of finite floats."""
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        got = f"{len(v)} items" if isinstance(v, (list, tuple)) else type(v).__name__
        raise ProtocolError(f"{name}: expected a pair [a, b], got {got}")
    return check_float(f"{name}[0]", v[0]), check_float(f"{name}[1]", v[1])


def _info_value(key: str, v: object) -> InfoValue:
    name = f"info[{key!r}]"
    if isinstance(v, str):
        return check_str(name, v)
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return check_int(name, v, INT64_MIN, INT64_MAX)
    if isinstance(v, (float, np.floating)):
        return check_float(name, v)
    raise ProtocolError(f"{name}: expected str, int or float, got {type(v).__name__}")


@dataclass(frozen=True)
class Sent:
    """A sender's report that request `rid` went out: the exact bytes of the frame it fanned out (`FrameSize`),
    how many receivers it reached of those it fans out to, and its own timings in seconds."""

    rid: str
    sender: str
    request: int = 0  # bytes of the frame, as each receiver gets it: header + payload
    header: int = 0  # everything but the payload (the int8/int4 scales included)
    payload: int = 0  # the latent body or the UTF-8 text
    scales: int = 0  # bytes of the int8/int4 scales (part of the header)
    fanout: int = 0  # bytes sent in all: request * reached
    reached: int = 0  # receivers the frame was queued to
    receivers: int = 0  # receivers the sender fans out to
    durations: dict[str, float] = field(default_factory=dict)  # e.g. "encode", "frame"

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        for name in ("request", "header", "payload", "scales", "fanout"):
            _set(self, name, check_int(name, getattr(self, name), 0, INT64_MAX))
        for name in ("reached", "receivers"):
            _set(self, name, check_int(name, getattr(self, name), 0, INT32_MAX))
        if self.header + self.payload != self.request:
            raise ProtocolError(f"request: {self.request} is not header + payload ({self.header} + {self.payload})")
        if self.scales > self.header:
            raise ProtocolError(f"scales: {self.scales} exceeds the header ({self.header})")
        if self.reached > self.receivers:
            raise ProtocolError(f"reached: {self.reached} exceeds receivers ({self.receivers})")
        if self.fanout != self.request * self.reached:
            raise ProtocolError(f"fanout: {self.fanout} is not request * reached ({self.request} * {self.reached})")
        _set(self, "durations", _map("durations", self.durations, lambda n, v: check_float(n, v, 0.0)))


# how a client asks: the paths an Ask may name (`paths.py` has the one list and what each path is)
MODES = WIRE_PATHS


@dataclass(frozen=True)
class Ask:
    """A client's question to the arbiter: the sender builds the latent (or text) request from it."""

    rid: str
    sender: str
    question: str
    context: str = ""
    mode: str = "latent"
    quant: str = "int8"  # quant scheme of the latent (ignored by the text modes)
    group_size: int | None = None  # int8/int4 columns per scale; must divide d_z (checked by the sender)
    budget: int | None = None  # token-budget mode: tokens kept; None = M of the checkpoint
    max_new_tokens: int = 16
    # Unix times: from a client, when it stops waiting; from the arbiter, its own deadline and when it opened the
    # request (the sender copies both into the request frames, so receivers can drop work nobody waits for)
    deadline: float | None = None
    opened: float | None = None

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        check_str("question", self.question, nonempty=True)
        check_str("context", self.context)
        check_str("mode", self.mode)
        if self.mode not in MODES:
            raise ProtocolError(f"mode: unknown mode {self.mode!r}; expected one of {list(MODES)}")
        scheme = _scheme(self.quant, "quant")
        _set(self, "quant", scheme.value)
        if self.group_size is not None:
            if scheme not in QMAX:
                raise ProtocolError(f"group_size: must be None for {scheme.value}")
            _set(self, "group_size", check_int("group_size", self.group_size, 1, INT32_MAX))
        if self.budget is not None:
            _set(self, "budget", check_int("budget", self.budget, 1, INT32_MAX))
        _set(self, "max_new_tokens", check_int("max_new_tokens", self.max_new_tokens, 1, INT32_MAX))
        _check_times(self)

    @property
    def path(self) -> str:
        """The path asked for (`paths.py`): the `mode` field, the wire's name for it."""
        return self.mode


@dataclass(frozen=True)
class JointReply:
    """The arbiter's answer to an Ask: the picked answer plus every receiver's answer, timings and bytes.

    Flags are ints (0/1) because the wire has no booleans. `score` and `calibrated` are P(correct) after each
    model's calibration; `scores` are the raw mean log-probs (not comparable across models).
    """

    rid: str
    sender: str
    answer: str
    model: str  # the model whose answer was picked
    score: float
    agreement: int  # 1 when two or more receivers answered and all normalised answers are equal
    degraded: int  # 1 when not every expected receiver answered
    answers: dict[str, str] = field(default_factory=dict)  # model -> answer
    scores: dict[str, float] = field(default_factory=dict)  # model -> raw score
    calibrated: dict[str, float] = field(default_factory=dict)  # model -> P(correct)
    errors: dict[str, str] = field(default_factory=dict)  # model -> "code: message"
    durations: dict[str, float] = field(default_factory=dict)  # seconds: "e2e", "sender.encode", "llama.generate"...
    nbytes: dict[str, int] = field(default_factory=dict)  # frame bytes: "request", "fanout", "payload", ...

    def __post_init__(self) -> None:
        _check_ids(self.rid, self.sender)
        check_str("answer", self.answer)
        check_str("model", self.model, nonempty=True)
        _set(self, "score", check_float("score", self.score, 0.0))
        if self.score > 1.0:
            raise ProtocolError(f"score: {self.score!r} is a probability and must be <= 1")
        _set(self, "agreement", check_int("agreement", self.agreement, 0, 1))
        _set(self, "degraded", check_int("degraded", self.degraded, 0, 1))
        _set(self, "answers", _map("answers", self.answers, lambda n, v: check_str(n, v)))
        _set(self, "scores", _map("scores", self.scores, lambda n, v: check_float(n, v)))
        _set(self, "calibrated", _map("calibrated", self.calibrated, _probability))
        _set(self, "errors", _map("errors", self.errors, lambda n, v: check_str(n, v)))
        _set(self, "durations", _map("durations", self.durations, lambda n, v: check_float(n, v, 0.0)))
        _set(self, "nbytes", _map("nbytes", self.nbytes, lambda n, v: check_int(n, v, 0, INT64_MAX)))


def _probability(name: str, v: object) -> float:
    p = check_float(name, v, 0.0)
    if p > 1.0:
        raise ProtocolError(f"{name}: {p!r} is a probability and must be <= 1")
    return p


def _map(name: str, value: object, check: Callable[[str, object], object]) -> dict:
    """Validate a str-keyed map field, normalising its values with `check(name[key], value)`."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{name}: expected map, got {type(value).__name__}")
    return {check_str(f"{name} key", k): check(f"{name}[{k!r}]", v) for k, v in value.items()}


Message = LatentRequest | TextRequest | Reply | ErrorReply | Heartbeat | Sent | Ask | JointReply

# bounded by max_text_bytes (for maps: each value); other strings by max_str
_TEXT_FIELDS = frozenset({"text", "answer", "question", "context", "answers"})


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _over(value: str, max_bytes: int) -> bool:
    """Whether `value` exceeds max_bytes of UTF-8 (encodes only when its length cannot decide)."""
    return len(value) * 4 > max_bytes and len(value.encode("utf-8")) > max_bytes


def check_limits(msg: Message, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ProtocolError if a valid message exceeds `limits` (frame size is checked by the codec).

    Every frame in and out passes here, so names for the error message are only built on failure.
    """
    names = _FIELD_NAMES.get(type(msg))
    if names is None:
        names = _FIELD_NAMES[type(msg)] = tuple(f.name for f in fields(msg))
    for name in names:
        value = getattr(msg, name)
        if isinstance(value, str):
            if _over(value, limits.max_text_bytes if name in _TEXT_FIELDS else limits.max_str):
                check_str_bytes(name, value, limits.max_text_bytes if name in _TEXT_FIELDS else limits.max_str)
        elif isinstance(value, dict):
            if len(value) > limits.max_items:
                raise ProtocolError(f"{name}: {len(value)} entries exceeds the limit {limits.max_items}")
            limit = limits.max_text_bytes if name in _TEXT_FIELDS else limits.max_str
            for k, v in value.items():
                if _over(k, limits.max_str):
                    check_str_bytes(f"{name} key", k, limits.max_str)
                if isinstance(v, str) and _over(v, limit):
                    check_str_bytes(f"{name}[{k!r}]", v, limit)
                elif isinstance(v, tuple) and len(v) > limits.max_items:  # an array: the decoder bounds those too
                    raise ProtocolError(f"{name}[{k!r}]: {len(v)} items exceeds the limit {limits.max_items}")
    if isinstance(msg, (LatentRequest, TextRequest, Ask)) and msg.max_new_tokens > limits.max_new_tokens:
        raise ProtocolError(f"max_new_tokens: {msg.max_new_tokens} exceeds the limit {limits.max_new_tokens}")
    if isinstance(msg, Sent) and msg.request > limits.max_frame_bytes:  # no frame that large was ever sent
        raise ProtocolError(f"request: {msg.request} bytes exceeds the limit {limits.max_frame_bytes}")
    if isinstance(msg, LatentRequest):
        m, d = msg.latent.shape
        if m > limits.max_m or d > limits.max_dz:
            raise ProtocolError(f"latent.shape: {m}x{d} exceeds the limit {limits.max_m}x{limits.max_dz}")


def latent_request(
    rid: str,
    sender: str,
    fingerprint: str,
    x: np.ndarray,
    scheme: Quant | str,
    group_size: int | None = None,
    max_new_tokens: int = 16,
    deadline: float | None = None,
    opened: float | None = None,
) -> LatentRequest:
    """Quantise `x` and wrap it in a LatentRequest (the sender's one-liner)."""
    return LatentRequest(rid, sender, fingerprint, quantize(x, scheme, group_size), max_new_tokens, deadline, opened)


def error_reply(rid: str, sender: str, code: str, message: str, limits: Limits = DEFAULT_LIMITS) -> ErrorReply:
    """An ErrorReply whose code and message are cut to fit `limits.max_str` (so replying cannot fail)."""
    return ErrorReply(rid, sender, clip(code, limits.max_str) or "error", clip(message, limits.max_str))
