"""Receiver-side adapters: interlingua soft tokens (M, d_z) -> one model's embedding space.

Two kinds, chosen by the checkpoint (`ADAPTERS`):
- `mlp`: a learned map; the output is RMS-normalised per soft token and scaled to the RMS of the model's own
  input embeddings, so a latent lands at the magnitude the frozen model expects (SmolLM2 and Qwen differ ~5x).
- `codebook`: for the vocabulary-anchored interlingua (`latentwire.codebook`): each row is snapped onto this
  model's own token embeddings, a softmax over the `nearest` token codes most similar to it; zero rows (the
  sharer's answer ended) are dropped. It needs no training: a new family joins by reading its vocabulary.
Both expose `to_slots((B, M, d_z)) -> list of (L_i, hidden)`, the one latent-to-slot step every path uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentwire import checkpoint
from latentwire.codebook import unbind, vocabulary_codes


@dataclass
class AdapterConfig:
    kind: str = "mlp"
    d_z: int = 256
    hidden_size: int = 576
    target_rms: float = 1.0  # RMS of the target model's input embeddings (measured at build time)
    depth: int = 2  # 1 = linear, 2+ = MLP with GELU
    width: int | None = None  # MLP width (defaults to hidden_size)

    def to_dict(self) -> dict:
        return asdict(self)


class FromPretrained:
    """`Kind.from_pretrained(ckpt, name, llm)`: `load_adapter`, refusing an adapter of another kind.

    Writing is the checkpoint's (`latentwire.checkpoint.save`): an adapter is one part of a checkpoint, whose
    fingerprint covers all of them, so there is no per-adapter `save_pretrained`.
    """

    @classmethod
    def from_pretrained(cls, path: str | Path, name: str, llm: Any) -> nn.Module:
        ad = load_adapter(path, name, llm)
        if not isinstance(ad, cls):
            raise checkpoint.CheckpointError(
                f"{path}: adapter {name!r} is a {ad.cfg.kind!r} adapter, not a {cls.__name__}"
            )
        return ad


class Adapter(FromPretrained, nn.Module):
    def __init__(self, cfg: AdapterConfig, llm: Any = None):
        super().__init__()
        self.cfg = cfg
        width = cfg.width or cfg.hidden_size
        layers: list[nn.Module] = [nn.LayerNorm(cfg.d_z)]
        dims = [cfg.d_z] + [width] * (cfg.depth - 1) + [cfg.hidden_size]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.gain = nn.Parameter(torch.ones(()))  # learnable, starts at the model's own embedding scale
        self.register_buffer("target_rms", torch.tensor(float(cfg.target_rms)), persistent=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(..., M, d_z) -> (..., M, hidden) at the target RMS."""
        h = self.net(z)
        rms = h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return h / rms * (self.target_rms * self.gain)

    def to_slots(self, z: torch.Tensor) -> list[torch.Tensor]:
        return list(self(z))


@dataclass
class CodebookAdapterConfig:
    kind: str = "codebook"
    d_z: int = 256
    hidden_size: int = 576
    tau: float = 20.0  # softmax temperature over cosine similarities (high = the nearest token alone)
    nearest: int = 4  # candidate tokens per row
    min_cos: float = 0.35  # rows matching no code of this vocabulary better than chance are dropped
    code_seed: int = 0
    tokens_per_row: int = 1  # places bound into one row by the sender (latentwire.codebook.pack)

    def to_dict(self) -> dict:
        return asdict(self)


class CodebookAdapter(FromPretrained, nn.Module):
    """Snap each latent row onto this model's own embeddings (see the module docstring)."""

    def __init__(self, cfg: CodebookAdapterConfig, llm: Any):
        super().__init__()
        self.cfg = cfg
        self.log_tau = nn.Parameter(torch.tensor(float(cfg.tau)).log())  # the one trainable scalar
        # the frozen model's tables are referenced, not registered: a checkpoint never holds third-party weights
        # (a tuple, so nn.Module does not adopt the model's embedding Parameter)
        self._tables = (
            vocabulary_codes(llm.tokenizer, cfg.d_z, cfg.code_seed),
            llm.model.get_input_embeddings().weight,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(M, d_z) -> (L, hidden), L <= M x tokens_per_row, in answer order."""
        codes, embed = self._tables
        z = z.float().to(codes.device)
        n, seed = self.cfg.tokens_per_row, self.cfg.code_seed
        z = torch.stack([unbind(z, j, seed) for j in range(n)], 1).flatten(0, 1)  # row-major: step order
        norm = z.norm(dim=-1, keepdim=True)
        sims = (z / norm.clamp(min=1e-8)) @ codes.T
        top = sims.topk(self.cfg.nearest, dim=-1)
        keep = (norm.squeeze(-1) > 1e-6) & (top.values[:, 0] >= self.cfg.min_cos)
        w = (self.log_tau.exp() * top.values[keep]).softmax(-1)
        emb = embed[top.indices[keep].to(embed.device)]  # (L, nearest, hidden)
        return (w.unsqueeze(-1).to(emb) * emb).sum(1)

    def to_slots(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [self(row) for row in z]


ADAPTERS: dict[str, tuple[type, type]] = {
    "mlp": (AdapterConfig, Adapter),
    "codebook": (CodebookAdapterConfig, CodebookAdapter),
}


def build_adapter(cfg: dict, llm: Any) -> nn.Module:
    """An adapter from its config dict (the `kind` field picks the family; `mlp` when absent)."""
    kind = cfg.get("kind", "mlp")
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTERS)}")
    config_cls, module_cls = ADAPTERS[kind]
    return module_cls(config_cls(**cfg), llm)


def load_adapter(path: str | Path, name: str, llm: Any) -> nn.Module:
    """A receiver's half of a checkpoint: the adapter for `name`, checked against the model it will feed."""
    path = Path(path)
    checkpoint.check_model(path, name, llm)
    cfg = checkpoint.read_config(path)
    try:
        ad = build_adapter(cfg["models"][name]["adapter"], llm)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: adapter {name!r}: {e}") from None
    sent = int(cfg.get("encoder", {}).get("tokens_per_row", 1))
    if isinstance(ad, CodebookAdapter) and ad.cfg.tokens_per_row != sent:
        raise checkpoint.CheckpointError(
            f"{path}: adapter {name!r} unbinds {ad.cfg.tokens_per_row} steps per row, the sender binds {sent}"
        )
    checkpoint.load_strict(ad, checkpoint.weights(path, f"adapter.{name}."), f"{path}: adapter {name!r}")
    return ad.to(llm.device).eval()
