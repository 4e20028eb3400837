"""`latentwire smoke`: one question through the whole shipped design in one process, on every receiver.

By default a tiny trained checkpoint of the shipped design is built on the tiny random models (selector, sharer
reading, codes with the hidden channel, each receiver's adapter with its prompt and residual; seconds); with
`--real` the committed default checkpoint serves on the embedded pretrained models. For each receiver the
question goes selector -> sharer -> latent -> int8 on the wire -> adapter -> inputs_embeds -> greedy answer.
Any failing step raises, so the command exits non-zero. A whole-system check, it sits with the command-line
entry points (pyproject's import contract), which may import every role.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .checkpoint import DEFAULT_CKPT
from .data import load_split
from .lm import generate
from .system.pipeline import load_checkpoint

Echo = Callable[[str], None]


def smoke(
    real: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 6,
    ckpt: str | Path | None = None,
    data_dir: str | Path | None = None,
    echo: Echo = print,
    engine: str = "auto",
) -> dict[str, str]:
    """Answer one dev question on every receiver of the checkpoint; returns each receiver's generated text."""
    from .trainer.tiny import tiny_checkpoint

    ex = load_split("dev", data_dir=data_dir, limit=1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if ckpt is None:
            ckpt = DEFAULT_CKPT if real else tiny_checkpoint(tmp, device=device, dtype=dtype)
        echo(f"checkpoint {ckpt} ({time.perf_counter() - t0:.1f}s)")
        wire = load_checkpoint(ckpt, device=device, dtype=dtype, reading_cache=False, engine=engine)
        z = wire.encode([ex])
        echo(f"latent {tuple(z.shape[1:])}: {int((z[0].norm(dim=-1) > 0).sum())} rows carry the sharer's answer")
        out = {}
        for name in wire.model_names:
            llm = wire.llms[name]
            slot = wire.slot_fn(name, "latent", scheme="int8")([ex])[0]
            echo(f"[{name}] {type(llm.model).__name__} hidden={llm.hidden_size}: slot {tuple(slot.shape)}")
            gen = generate(llm, [slot], max_new_tokens=max_new_tokens)[0]
            if not gen.token_ids and not gen.text and gen.score == 0.0:
                raise RuntimeError(f"[{name}] decoding produced nothing")
            echo(f"[{name}] generated {len(gen.token_ids)} tokens: {gen.text!r} (mean logprob {gen.score:.3f})")
            out[name] = gen.text
    echo("smoke OK")
    return out
