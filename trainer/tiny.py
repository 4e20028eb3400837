"""The shipped design at toy size on the tiny random models, trained a few steps: what the tests, `smoke`,
`bench --quick` and the fuzz, soak and overhead benches serve (a few seconds to build). The bench imports the
trainer through this module only (pyproject's import contract)."""

from __future__ import annotations

from pathlib import Path

from latentwire.models import LLM

from .recipe import TrainRecipe, build


def tiny_recipe(**over) -> TrainRecipe:
    """The shipped design at toy size on the tiny random models: what tests, `smoke`, `bench --quick` and the
    fuzz and overhead benches serve (a few seconds to build)."""
    base = dict(
        models=["tiny-llama", "tiny-qwen"],
        sharer="tiny-qwen",
        m=4,
        d_z=32,
        prompt_len=2,
        rank=2,
        steps=2,
        batch_size=2,
        eval_every=0,
        eval_n=4,
        train_limit=8,
        max_new_tokens=4,
        device="cpu",
        dtype="float32",
    )
    return TrainRecipe(**{**base, **over})


def tiny_checkpoint(folder: str | Path, llms: dict[str, LLM] | None = None, **over) -> Path:
    """A tiny trained checkpoint in `folder/ckpt` (see `tiny_recipe`)."""
    return build(tiny_recipe(**over), folder, llms=llms, progress=False)
