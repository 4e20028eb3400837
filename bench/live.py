"""Latency and bytes over the live processes: latent (per quantisation) against the text path.

Starts the whole system (`latentwire up`) on free loopback ports with the checkpoint's models, sends the same
questions one at a time per path, and reads end-to-end latency (client-measured), bytes on the wire and the
messaging overhead (everything but the encoder and the receivers' adapter + generation) from the replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentwire.checkpoint import read_config
from latentwire.data import Example

PATHS = (("latent", "fp16"), ("latent", "int8"), ("latent", "int4"), ("text", None))


def overhead_s(row: dict) -> float:
    """End to end minus the model work: the sender's encoder and the slowest receiver's adapter + generation."""
    encode = row["durations"].get("sender.encode", 0.0)
    model = max(
        (r["durations"].get("adapt", 0.0) + r["durations"].get("generate", 0.0) for r in row["receivers"].values()),
        default=0.0,
    )
    return max(0.0, row["e2e_s"] - encode - model)


def live_latency(
    ckpt: Path,
    examples: Sequence[Example],
    context: str = "distractor",
    progress: bool = True,
    timeout: float = 120.0,
    text_n: int = 20,
) -> dict:
    """Each path over the same questions; the text path (a ~1,500-token prompt per receiver) on the first `text_n`."""
    from latentwire.client import summarize
    from latentwire.up import LocalSystem

    names = list(read_config(ckpt)["models"])
    llama = next((n for n in names if "llama" in n), names[0])
    qwen = next((n for n in names if n != llama), names[-1])
    out: dict = {"paths": {}, "context": context}
    overheads: list[float] = []
    with LocalSystem(ckpt, llama=llama, qwen=qwen, timeout=timeout) as system, system.client() as client:
        for mode, quant in PATHS:
            label = f"{mode}:{quant}" if quant else mode
            subset = examples if mode == "latent" else examples[:text_n]
            items = [(ex.id, ex.question, ex.context(context)) for ex in subset]
            opts = {"mode": mode, **({"quant": quant} if quant else {})}
            rows = [
                a.to_row()
                for a in tqdm(
                    client.ask_many(items, window=1, **opts),
                    total=len(items),
                    disable=not progress,
                    desc=f"live {label}",
                    unit="q",
                )
            ]
            out["paths"][label] = summarize(rows)
            if mode == "latent":
                overheads += [overhead_s(r) for r in rows if r["ok"]]
    if overheads:
        out["overhead"] = {"p50": float(np.percentile(overheads, 50)), "p95": float(np.percentile(overheads, 95))}
    return out
