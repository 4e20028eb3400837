"""Seconds per training step spent in each frozen model (forward + backward to the soft tokens).

The encoder's share is small (features are cached); the LLMs' is most of a step, so this is what prefix
caching and sequence layout change. Compares the full layout with the cached chat prefix on real answers.

    python -m latentwire.bench.step_time --model llama --model qwen --batch-size 8 --steps 5
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import torch
import typer

from latentwire.data import load_split
from latentwire.device import set_threads
from latentwire.lm import answer_loss, assemble
from latentwire.models import LLM, load_llm
from latentwire.trainer.config import TrainConfig
from latentwire.trainer.train import prepare


def step_seconds(llm: LLM, answers: list[list[int]], m: int, cached_prefix: bool, steps: int) -> float:
    """Median seconds of one forward + backward through `llm` for a batch of M soft tokens per row."""
    times = []
    for _ in range(steps + 1):  # the first step warms up (and builds the prefix cache)
        soft = torch.randn(len(answers), m, llm.hidden_size, device=llm.device, requires_grad=True)
        t0 = time.perf_counter()
        loss = answer_loss(llm, assemble(llm, list(soft * llm.embed_rms), answers, cached_prefix), 2.0)
        loss.backward()
        times.append(time.perf_counter() - t0)
    return float(sorted(times[1:])[len(times[1:]) // 2])


def main(
    models: Annotated[list[str], typer.Option("--model")] = ["llama", "qwen"],  # noqa: B006
    batch_size: int = 8,
    m: int = 8,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: $LATENTWIRE_THREADS or all)")] = None,
    steps: int = 5,
) -> None:
    set_threads(threads)
    rows = load_split("train", limit=batch_size)
    for name in models:
        llm = load_llm(name)
        answers = prepare(rows, {name: llm}, TrainConfig()).answers[name]  # as the trainer cuts them
        full = step_seconds(llm, answers, m, False, steps)
        cached = step_seconds(llm, answers, m, True, steps)
        out = {"model": name, "batch": batch_size, "threads": torch.get_num_threads(), "full_s": round(full, 3)}
        typer.echo(json.dumps({**out, "cached_prefix_s": round(cached, 3), "speedup": round(full / cached, 2)}))


if __name__ == "__main__":
    typer.run(main)
