"""The error codes LatentWire's processes put in `err` frames: the one list (SPEC.md lists them under `err`).
A `ProtocolError` carries its code from where it is raised, so nobody reads it back from the message.

A decoder accepts any non-empty code, so a peer of another implementation may send others; the arbiter counts the
codes of this list one by one in its status and every other one as `other`.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """`err.e` values; each member's comment says who sends it and when."""

    BAD_FRAME = "bad_frame"  # undecodable frame, non-finite or out-of-range latent, empty text
    BAD_VERSION = "bad_version"  # a frame of another major version
    BAD_QUANT = "bad_quant"  # an unknown quant scheme
    BAD_SHAPE = "bad_shape"  # latent M or d_z not the checkpoint's
    NO_MATCH = "no_match"  # a valid latent none of whose rows matches a token of the receiver: nothing to read
    BAD_REQUEST = "bad_request"  # an ask that cannot be served as asked (e.g. a sender path with no context)
    WRONG_CHECKPOINT = "wrong_checkpoint"  # a latent of another checkpoint
    TOO_LARGE = "too_large"  # over a size bound: a receiver's slot tokens, the sender's context, a joint reply
    UNEXPECTED_KIND = "unexpected_kind"  # a frame kind the socket does not take
    BAD_OUTPUT = "bad_output"  # a receiver's answer that cannot be framed
    INTERNAL = "internal"  # a bug; the process keeps serving
    SHUTTING_DOWN = "shutting_down"  # the process is stopping
    EXPIRED = "expired"  # dropped unanswered: its deadline passed (SPEC.md "Deadlines")
    NO_ANSWER = "no_answer"  # arbiter: the deadline came and no receiver answered
    ALL_FAILED = "all_failed"  # arbiter: every receiver failed, for different reasons
    NO_RECEIVERS = "no_receivers"  # arbiter: no receiver serves the system
    NO_SENDER = "no_sender"  # arbiter: no sender is ready
    BUSY = "busy"  # arbiter: the in-flight window, or this client's share of it, is full
    TIMEOUT = "timeout"  # the Python client: no answer within its timeout (never on the wire)
    REFUSED = "refused"  # the Python client: the arbiter refused its CURVE key (never on the wire)

    def __str__(self) -> str:
        return self.value


ERROR_CODES: frozenset[str] = frozenset(c.value for c in ErrorCode)


def refusal_code(error: Exception) -> ErrorCode:
    """The code for a frame that failed to decode with `error`: the code its `ProtocolError` was raised with
    (`bad_version` for another major version, `bad_quant` for an unknown quant scheme, ...), else `bad_frame`.
    Every process that answers an undecodable frame names it this way (SPEC.md, `err`)."""
    code = getattr(error, "code", None)
    return code if isinstance(code, ErrorCode) else ErrorCode.BAD_FRAME
