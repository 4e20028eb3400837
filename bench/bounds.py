"""Bounds for the latent path, measured by the same cached evaluation as every other figure.

A latent of M soft tokens replaces the question+context text. Two slots show what such a latent could give:
- `answer`: the gold answer's own first M tokens. If the receivers answer well from this, a reader that finds
  the answer and the adapters that spell it would suffice; the receivers are not the bottleneck.
- `question`: the question alone as text (no context): the best a latent that only carries the question can
  expect, against which the token-budget baseline (its first M tokens) and the latent compare.

    python -m latentwire.bench.bounds --model llama --model qwen --split val --limit 100
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer

from latentwire.data import Example, load_split
from latentwire.device import set_threads
from latentwire.evaluate import evaluate
from latentwire.lm import text_slots
from latentwire.models import LLM, load_llm

BOUNDS = ("answer", "question")


def bound_slot_text(ex: Example, kind: str) -> str:
    if kind == "answer":
        return ex.answer
    if kind == "question":
        return f"Question: {ex.question}"
    raise ValueError(f"unknown bound {kind!r}; choose one of {', '.join(BOUNDS)}")


def bound(llm: LLM, examples: Sequence[Example], kind: str, context: str = "distractor", m: int = 8, **kw) -> dict:
    """Evaluate `llm` with the slot replaced by the `kind` bound (the answer capped at its first M tokens)."""
    budget = m if kind == "answer" else None

    def slot_fn(chunk: Sequence[Example]):
        return text_slots(llm, [bound_slot_text(ex, kind) for ex in chunk], budget)

    res = evaluate(
        llm, examples, "latent", context=context, slot_fn=slot_fn, slot_fingerprint=f"bound:{kind}:{m}", **kw
    )
    return {**res, "bound": kind}


def main(
    models: Annotated[list[str], typer.Option("--model")] = ["llama", "qwen"],  # noqa: B006
    split: str = "val",
    limit: int | None = 100,
    context: str = "distractor",
    m: int = 8,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: $LATENTWIRE_THREADS or all)")] = None,
) -> None:
    set_threads(threads)
    rows = load_split(split, limit=limit)
    for name in models:
        llm = load_llm(name)
        for kind in BOUNDS:
            r = bound(llm, rows, kind, context=context, m=m, split=split)
            keep = ("bound", "n", "em", "f1", "f1_ci", "nll_per_token", "prompt_tokens")
            typer.echo(json.dumps({"model": name, **{k: r[k] for k in keep}}))


if __name__ == "__main__":
    typer.run(main)
