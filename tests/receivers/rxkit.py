"""A receiver's answers in-process, through `Receiver.replies` (frames that arrived together, as the process
reads them), put back in the frames' order."""

from __future__ import annotations

from collections.abc import Sequence

from latentwire.protocol import ErrorReply, Reply
from latentwire.receivers.receiver import Receiver


def answers(rx: Receiver, frames: Sequence[bytes]) -> list[Reply | ErrorReply]:
    """One reply per frame, in the frames' order (the receiver yields them as they are ready)."""
    return [reply for _, reply in sorted(rx.replies(frames), key=lambda item: item[0])]


def answer(rx: Receiver, frame: bytes) -> Reply | ErrorReply:
    (reply,) = answers(rx, [frame])
    return reply
