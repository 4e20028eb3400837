"""The sender's encoders: `Question + Context` -> M soft tokens of width d_z (the interlingua).

`ENCODERS` is the registry of encoder kinds, keyed by the config's `backbone`; `load_encoder` builds the one a
checkpoint names. Every encoder maps docs (question, paragraphs) to (B, M, d_z) through `encode_docs`. The one
kind is `llm`: a frozen sharer LLM reads the selected evidence and the latent carries what it computed
(`sharer.py`). A new kind is one entry: a builder `(path, config dict, device, llm, engine) -> module`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from latentwire import checkpoint


def _sharer_encoder(path: Path, cfg: dict, device: str, llm=None, engine: str = "auto") -> nn.Module:
    from .sharer import SharerConfig, SharerEncoder

    try:
        enc = SharerEncoder(SharerConfig.from_dict(cfg), llm=llm, device=device, engine=engine)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: encoder: {e}") from None
    if enc.channel is not None:
        checkpoint.load_strict(enc.channel, checkpoint.weights(path, "encoder.channel."), f"{path}: encoder channel")
    return enc.eval()


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "llm": _sharer_encoder,
}


def load_encoder(
    path: str | Path,
    device: str = "cpu",
    llm=None,
    engine: str = "auto",
    config: checkpoint.CheckpointConfig | None = None,
) -> nn.Module:
    """The sender's half of a checkpoint, in eval mode; `llm` reuses an already loaded sharer, else it is loaded
    run by `engine` (`latentwire.engine`); `config`: the checkpoint's, if the caller has read it already."""
    path = Path(path)
    cfg = (config or checkpoint.load_config(path)).encoder
    kind = cfg.get("backbone", "llm")
    if kind not in ENCODERS:
        raise checkpoint.CheckpointError(f"{path}: unknown encoder backbone {kind!r} (known: {', '.join(ENCODERS)})")
    return ENCODERS[kind](path, cfg, device, llm, engine)
