"""How a frozen model runs its inference passes: the engine, one registry, picked by measurement.

A CPU spends a reading or an answer in two kinds of pass. The prompt's prefill multiplies many positions at once
and is compute-bound; each greedy decoding step multiplies one position per row and is bound by how many bytes of
weights it streams. The engines:

- `float32`: the model as loaded.
- `bf16`: the whole model in bfloat16 (weights, embedding table, norms, attention, activations): one cast at load,
  none per layer, and every matrix multiply on the CPU's bfloat16 units (AMX, AVX512-BF16).
- `bf16-w8`: `bf16`, and each `Linear` (the output head included) also keeps its weights in int8, one scale per
  output channel; a pass over fewer than `PREFILL_ROWS` positions per row (a decoding step) multiplies those with
  torch's weight-only kernel (`torch._weight_int8pack_mm`: int8 weights, bfloat16 activations, which are never
  quantised), half of bfloat16's bytes per step. A prefill stays on the bfloat16 weights.

`auto` is `$LATENTWIRE_ENGINE` when set; else, on a CPU with bfloat16 arithmetic, the fastest engine whose F1 is no
more than 0.01 below `float32`'s on every receiver in `python -m latentwire.bench.engines` on 100 dev questions:
`bf16-w8` (see `AUTO_ENGINE`; E20 in docs/EXPERIMENTS.md has the table); `float32` elsewhere (bfloat16 is emulated
there and slower than float32), and on any other device. Training needs gradients through the frozen model and
always runs `float32` (`torch` autocast for speed); every inference path (the sharer's reading, the receivers, eval,
calibrate, the bench) loads the same engine, so what is measured is what serves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PREFILL_ROWS = 8  # positions per row in one pass from which the compute-bound bfloat16 multiply wins
AUTO_ENGINE = "bf16-w8"  # what `auto` picks on a CPU with bfloat16 arithmetic: the module docstring's rule


class W8Linear(nn.Module):
    """A bfloat16 `Linear` that multiplies a decoding step with int8 weights (per output channel), a prefill with
    its bfloat16 weights. The bfloat16 weight is the original parameter, so a head tied to the embedding table
    stays tied."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        w = linear.weight.detach().float()
        scales = w.abs().amax(1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # positions per row, not rows: a batch of decoding steps is still memory-bound
        positions = x.shape[-2] if x.dim() >= 3 else x.numel() // x.shape[-1]
        if positions >= PREFILL_ROWS:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1]).to(self.scales.dtype)
        y = torch._weight_int8pack_mm(flat, self.qweight, self.scales).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def _bf16(model: nn.Module) -> nn.Module:
    model.to(torch.bfloat16)
    # the output head reads one sliced position (`logits_to_keep`); in bfloat16 torch multiplies a non-contiguous
    # input by copying the transposed head first (~1 s for a 150k vocabulary), so the slice is made contiguous
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model


def _bf16_w8(model: nn.Module) -> nn.Module:
    _bf16(model)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    swapped: dict[int, nn.Module] = {}  # a Linear shared by two parents is converted once
    for parent, name, child in targets:
        if id(child) not in swapped:
            swapped[id(child)] = W8Linear(child)
        setattr(parent, name, swapped[id(child)])
    return model


class _BF16Linear(nn.Module):
    """`linear` with bfloat16 weights that takes and returns float32 (measured against `bf16`, then retired)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.inner = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None, dtype=torch.bfloat16)
        with torch.no_grad():
            self.inner.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.inner.bias.copy_(linear.bias)
        self.inner.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).to(x.dtype)


def _linear_bf16(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, _BF16Linear(child))
    return model


@dataclass(frozen=True)
class Engine:
    name: str
    description: str
    convert: Callable[[nn.Module], nn.Module] | None  # turns a float32 model into the engine's; None: as loaded


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("float32", "the model as loaded", None),
        Engine("bf16", "the whole model in bfloat16", _bf16),
        Engine("bf16-w8", "bfloat16, decoding steps on int8 weights (weight-only)", _bf16_w8),
        Engine("bfloat16", "Linear weights in bfloat16, the rest float32", _linear_bf16),
    )
}


def has_bf16_arithmetic() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16): where the fast engines are fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no flags to read; float32 is the safe pick there
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_engine(engine: str = "auto", device: torch.device | str = "cpu") -> str:
    """The engine's name: `auto` resolves as the module docstring says; anything else must be registered."""
    on_cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        engine = os.environ.get("LATENTWIRE_ENGINE") or "auto"
        if engine == "auto":
            return AUTO_ENGINE if on_cpu and has_bf16_arithmetic() else "float32"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of auto, {', '.join(ENGINES)}")
    if engine != "float32" and not on_cpu:
        raise ValueError(f"engine {engine!r} runs on a CPU only; on {torch.device(device).type} use float32")
    return engine


def apply_engine(model: nn.Module, engine: str) -> nn.Module:
    """Convert a float32 `model` into `engine`'s, in place; returns it."""
    convert = ENGINES[engine].convert
    if convert is not None:
        convert(model)
    model.engine = engine
    return model
