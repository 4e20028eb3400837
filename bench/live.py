"""Latency and bytes over the live processes: latent (per quantisation) against the text path.

Starts the whole system (`latentwire up`) on free loopback ports with one receiver per model of the checkpoint
(or the receivers given), sends the same questions one at a time per path, and reads end-to-end latency
(client-measured), bytes on the wire and the messaging overhead (everything but the encoder and the receivers'
adapter + generation) from the replies. Every answer is scored against the gold answer (EM/F1 of the joint
answer; a failed question scores 0 and is counted apart).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentwire.checkpoint import read_config
from latentwire.client import summarize_answers
from latentwire.data import Example
from latentwire.up import LocalSystem, receiver_name

PATHS = (("latent", "fp16"), ("latent", "int8"), ("latent", "int4"), ("text", None))


def overhead_s(row: dict) -> float:
    """End to end minus the model work: the sender's encoder and the slowest receiver's adapter + generation."""
    encode = row["durations"].get("sender.encode", 0.0)
    model = max(
        (r["durations"].get("adapt", 0.0) + r["durations"].get("generate", 0.0) for r in row["receivers"].values()),
        default=0.0,
    )
    return max(0.0, row["e2e_s"] - encode - model)


def checkpoint_receivers(ckpt: Path) -> dict[str, str]:
    """One receiver per model of the checkpoint: {process name: model}, the model being its name in the checkpoint
    (what the receiver loads and finds its adapter by)."""
    out: dict[str, str] = {}
    for name in read_config(ckpt)["models"]:
        key = receiver_name(name)
        out[key if key not in out else f"{key}-{len(out)}"] = name
    return out


def live_latency(
    ckpt: Path,
    examples: Sequence[Example],
    context: str = "distractor",
    progress: bool = True,
    timeout: float = 120.0,
    text_n: int = 20,
    receivers: Mapping[str, str] | None = None,
) -> dict:
    """Each path over the same questions; the text path (a ~1,500-token prompt per receiver) on the first `text_n`.

    `receivers`: {process name: model} (default: every model of the checkpoint, `checkpoint_receivers`)."""
    receivers = dict(receivers or checkpoint_receivers(ckpt))
    gold = {ex.id: ex.answer for ex in examples}
    out: dict = {"paths": {}, "context": context, "receivers": receivers}
    overheads: list[float] = []
    with LocalSystem(ckpt, receivers, timeout=timeout) as system, system.client() as client:
        for mode, quant in PATHS:
            label = f"{mode}:{quant}" if quant else mode
            subset = examples if mode == "latent" else examples[:text_n]
            items = [(ex.id, ex.question, ex.context(context)) for ex in subset]
            opts = {"mode": mode, **({"quant": quant} if quant else {})}
            rows = [
                {**a.to_row(), "gold": gold[a.tag]}
                for a in tqdm(
                    client.ask_many(items, window=1, **opts),
                    total=len(items),
                    disable=not progress,
                    desc=f"live {label}",
                    unit="q",
                )
            ]
            out["paths"][label] = summarize_answers(rows)
            if mode == "latent":
                overheads += [overhead_s(r) for r in rows if r["ok"]]
    if overheads:
        out["overhead"] = {"p50": float(np.percentile(overheads, 50)), "p95": float(np.percentile(overheads, 95))}
    return out
