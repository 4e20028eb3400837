"""What one ask may cost the sender: its question and context, bounded by size before any work (SPEC.md "Sender
limits").

The sender's paths (latent, relay, evidence) parse the context into paragraphs, score every pair of them with the
selector, and have the sharer read the question with the selected few. Unbounded, that work grows with the pair
count (quadratic in paragraphs) and the sharer's prompt: a 100 KB single-line context asked for tens of GB. So a
context or question over these bounds is refused at once with `too_large` (nothing trimmed silently: a trimmed
context answers another question), and a context with no paragraph with `bad_request`. Characters are not tokens
(three paragraphs of 4,096 four-byte characters are ~49k tokens of a byte-level BPE), so the sharer's prompt is
also capped in its own tokens once the selection is made (MAX_READ_TOKENS, as a receiver caps its slot): over it,
`too_large`, before any forward pass. HotpotQA's distractor contexts (10 paragraphs, ~6 KB, none over 3 KB; the
sharer's prompts at most 739 Qwen tokens on dev and val) sit well inside them.

Peak memory. What one legal ask adds to the sender is bounded by the design, not by the ask: the selector's pairs
(at most 2,016, a row of features each) and the context's characters (its word lists and sets), and one reading of
at most MAX_READ_TOKENS tokens (a batch holds at most READ_BATCH_POSITIONS padded positions, a longer prompt is
read alone), which the sharer reads READ_CHUNK positions a pass: its KV cache is linear in the prompt, its attention
mask and activations are a span's (`sharer.py`). `python -m latentwire.bench.sender_memory` encodes the worst legal
asks through the serving path (`Sender.build_many`) and reports the kernel's high-water mark of resident memory:
- `pairs`: 64 paragraphs filling the 65,536 characters (2,016 pairs), a 4,096-character question;
- `reading`: 16 paragraphs of 4,095 characters and a 4,096-character question, sized so the sharer's prompt is
  just under the token cap (16,379 Qwen tokens; 16,382 of the tiny one); 64 paragraphs of 4,096 characters are
  four times the context bound.
On the tiny random sharer (`--tiny`, tests/sender/test_sender_memory.py): +50-72 MiB for `pairs`, +112-157 MiB for
`reading` over 451 MiB, against a design bound of 558 MiB (`design_bound`); reading that prompt in one pass, as
before the cap and the spans, held +1,327 MiB (its attention mask is quadratic in the prompt). The shipped sender
(`--ckpt checkpoints/default`: the Qwen2.5-0.5B sharer on `bf16-w8`, 2 threads) holds 2,405 MiB loaded; `pairs`
(a 4,655-token reading) peaked at 2,620 MiB (+216), `reading` (16,379 tokens) at 3,482 MiB (+1,077, 181 s on two
busy cores), under its design bound of +1,556 MiB (945 MiB of which allows for an attention kernel that
materialises every head's scores of a span).
"""

from __future__ import annotations

from dataclasses import dataclass

from latentwire.data import Paragraph, parse_context
from latentwire.protocol import ErrorCode

MAX_PARAGRAPHS = 64  # the selector scores at most 64 * 63 / 2 = 2,016 pairs
MAX_PARAGRAPH_CHARS = 4096  # the sharer reads the selection (a few paragraphs), so this bounds its prompt
MAX_CONTEXT_CHARS = 64 * 1024  # the selector's features are linear in it
MAX_QUESTION_CHARS = 4096  # the selector matches its words against every paragraph; the sharer reads it (dev: <= 248)
# the sharer's prompt (question + selected evidence) in its own tokens, as a receiver caps its slot: the bounds above
# are characters, and a character may be several tokens (3 paragraphs of 4,096 four-byte characters: ~49k tokens)
MAX_READ_TOKENS = 16384


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
    question_chars: int = MAX_QUESTION_CHARS


def bounded_question(question: str, bounds: ContextBounds = ContextBounds()) -> str:
    """`question`, or Refused when it is over its bound (a sender path matches and reads it)."""
    if len(question) > bounds.question_chars:
        raise Refused(
            ErrorCode.TOO_LARGE,
            f"question of {len(question):,} characters is over the sender's bound of {bounds.question_chars:,}",
        )
    return question


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
