"""The one prompt, built once per model and shared by every path.

Each model's chat template is rendered around a marker; the text before and after the marker are the fixed
`prefix` and `suffix` token ids. The question+context *slot* in between is filled with the text's tokens
(`text`), the first M text tokens (`token-budget`), the question and the sender's selected evidence
(`evidence`), the sender's sharer's own answer (`relay`), or the M soft tokens (`latent`): all else identical
(`protocol/paths.py` lists the paths).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .data import Example

INSTRUCTION = "Answer with a short phrase only."
PROMPT_VERSION = 1
_MARK = "\u2063SLOT\u2063"


def slot_text(question: str, context: str) -> str:
    """The question+context text: what the encoder reads and what the text path tokenises."""
    return f"Question: {question}\nContext: {context}"


def example_slot(ex: Example, context: str = "distractor") -> str:
    return slot_text(ex.question, ex.context(context))


@dataclass(frozen=True)
class PromptTemplate:
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]


def build_template(tokenizer: PreTrainedTokenizerBase) -> PromptTemplate:
    """Split the model's chat template (one user turn + assistant header) at the slot."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; LatentWire prompts need one")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{_MARK}\n{INSTRUCTION}"}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(_MARK) != 1:
        raise ValueError("the chat template does not render the user message verbatim")
    before, after = rendered.split(_MARK)
    enc = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return PromptTemplate(enc(before), enc(after))


def slot_ids(tokenizer: PreTrainedTokenizerBase, text: str, budget: int | None = None) -> list[int]:
    """Token ids of the slot text; `budget` keeps the first `budget` tokens (the token-budget baseline)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:budget] if budget is not None else ids


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, eos_id: int) -> list[int]:
    """The gold answer as the assistant would write it, ended by the end-of-turn token."""
    return [*tokenizer(answer, add_special_tokens=False)["input_ids"], eos_id]
