"""Receiver-side adapter: interlingua soft tokens (M, d_z) -> one model's embedding space (M, hidden).

The output is RMS-normalised per soft token and scaled to the RMS of the model's own input embeddings, so a
latent lands at the magnitude the frozen model expects (SmolLM2 and Qwen differ by ~5x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AdapterConfig:
    d_z: int = 256
    hidden_size: int = 576
    target_rms: float = 1.0  # RMS of the target model's input embeddings (measured at build time)
    depth: int = 2  # 1 = linear, 2+ = MLP with GELU
    width: int | None = None  # MLP width (defaults to hidden_size)

    def to_dict(self) -> dict:
        return asdict(self)


class Adapter(nn.Module):
    def __init__(self, cfg: AdapterConfig):
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
