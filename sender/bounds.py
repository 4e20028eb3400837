"""What one ask may cost the sender: its context, bounded by size before any work (SPEC.md "Sender limits").

The sender's paths (latent, relay, evidence) parse the context into paragraphs, score every pair of them with the
selector, and have the sharer read the selected few. Unbounded, that work grows with the pair count (quadratic in
paragraphs) and the sharer's prompt (its attention, quadratic in tokens): a 100 KB single-line context asked for
tens of GB. So a context over these bounds is refused at once with `too_large` (nothing trimmed silently: a
trimmed context answers another question), and a context with no paragraph with `bad_request`. HotpotQA's
distractor contexts (10 paragraphs, ~6 KB, none over 3 KB) sit well inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from latentwire.data import Paragraph, parse_context
from latentwire.protocol import ErrorCode

MAX_PARAGRAPHS = 64  # the selector scores at most 64 * 63 / 2 = 2,016 pairs
MAX_PARAGRAPH_CHARS = 4096  # the sharer reads the selection (a few paragraphs), so this bounds its prompt
MAX_CONTEXT_CHARS = 64 * 1024  # the selector's features are linear in it


class Refused(ValueError):
    """An ask the sender will not serve as asked; `code` is the `err` code its reply carries."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ContextBounds:
    paragraphs: int = MAX_PARAGRAPHS
    paragraph_chars: int = MAX_PARAGRAPH_CHARS
    context_chars: int = MAX_CONTEXT_CHARS


def bounded_paragraphs(context: str, bounds: ContextBounds = ContextBounds()) -> tuple[Paragraph, ...]:
    """`context` as paragraphs (`parse_context`), or Refused when it is empty or over a bound."""
    if len(context) > bounds.context_chars:
        raise Refused(
            ErrorCode.TOO_LARGE,
            f"context of {len(context):,} characters is over the sender's bound of {bounds.context_chars:,}",
        )
    # counted before parsing: a context of thousands of one-line paragraphs is refused without building them
    lines = sum(1 for line in context.splitlines() if line.strip())
    if lines > bounds.paragraphs:
        raise Refused(
            ErrorCode.TOO_LARGE,
            f"context of {lines:,} paragraphs (lines) is over the sender's bound of {bounds.paragraphs}",
        )
    paragraphs = parse_context(context)
    if not paragraphs:
        raise Refused(ErrorCode.BAD_REQUEST, "this path reads a context, and the ask's context has no paragraph")
    longest = max(len(p.render()) for p in paragraphs)
    if longest > bounds.paragraph_chars:
        raise Refused(
            ErrorCode.TOO_LARGE,
            f"a paragraph of {longest:,} characters is over the sender's bound of {bounds.paragraph_chars:,} "
            "per paragraph",
        )
    return paragraphs
