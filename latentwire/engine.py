"""How a frozen model runs its inference passes: the engine, one registry, picked by measurement.

A CPU spends a reading or an answer in two kinds of pass. The prompt's prefill multiplies many positions at once
and is compute-bound; each greedy decoding step of a live request multiplies one row and is bound by how many bytes
of weights it streams. The engines:

- `float32`: the model as loaded.
- `bf16-w8`: the whole model in bfloat16 (weights, embedding table, norms, attention, activations: one cast at load,
  none per layer, every product on the CPU's bfloat16 units, AMX or AVX512-BF16), and each `Linear` (the output head
  included) also keeps its weights in int8, one scale per output channel. A pass over at most `W8_MAX_ROWS` rows
  (the decoding step of one to four requests: live serving) multiplies those with torch's weight-only kernel
  (`torch._weight_int8pack_mm`: int8 weights, bfloat16 activations, which are never quantised), half of bfloat16's
  bytes per step; a prefill and a batch's decoding steps (eval, the bench) stay on the bfloat16 weights, where the
  matrix units are faster (the int8 kernel's time grows with every row, bfloat16's barely does).

`auto` is `$LATENTWIRE_ENGINE` when set; else, on a CPU with bfloat16 arithmetic, the fastest engine whose latent
F1 is no more than 0.01 below `float32`'s on every receiver in `python -m latentwire.bench.engines` on 100 dev
questions: `bf16-w8` (`AUTO_ENGINE`); `float32` on any other CPU (bfloat16 is emulated there, slower than float32)
and on other devices. Measured on 2 cores with AMX (docs/EXPERIMENTS.md E20), batches on 2 threads, the sharer and
three receivers, against float32: the whole model in bfloat16 2.41x, with int8 decoding 2.07x (F1 −0.001 /
+0.011 / +0.035 gemma / llama / qwen; 87-93% of answers unchanged), bfloat16 `Linear` layers around float32 1.99x
(gemma −0.020); one request at a time on one thread (Qwen, a 140-token prompt, 10 tokens) float32 2.49 s, the whole
model in bfloat16 2.76 s, with int8 decoding 1.10 s. So `bf16-w8` is both: bfloat16's batches, int8's single rows.
The dynamic-int8 engines (activations quantised too) lost the quality (E18) and are gone, as are the two losers
above. Training needs gradients through the frozen model and always runs `float32` (`torch` autocast for speed);
every inference path (the sharer's reading, the receivers, eval, calibrate, the bench) loads the same engine, so
what is measured is what serves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

W8_MAX_ROWS = 4  # rows (positions x batch) up to which a pass multiplies int8 weights: a live decoding step
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
        # the weight-only kernel multiplies row by row (its time grows with every row, ~0.1 ms per 4864 x 896 on one
        # core) while bfloat16's matrix units take a few rows as fast as one: past W8_MAX_ROWS, bfloat16 wins
        if x.numel() // x.shape[-1] > W8_MAX_ROWS:
            # contiguous: the head reads a sliced last position (`logits_to_keep`), and torch multiplies a
            # non-contiguous bfloat16 input by first copying the transposed weight (~1 s for a 150k vocabulary)
            return F.linear(x.contiguous(), self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1]).to(self.scales.dtype)
        y = torch._weight_int8pack_mm(flat, self.qweight, self.scales).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _bf16_w8(model: nn.Module) -> nn.Module:
    model.to(torch.bfloat16)
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


@dataclass(frozen=True)
class Engine:
    name: str
    description: str
    convert: Callable[[nn.Module], nn.Module] | None  # turns a float32 model into the engine's; None: as loaded


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("float32", "the model as loaded", None),
        Engine("bf16-w8", "bfloat16, decoding steps on int8 weights (weight-only)", _bf16_w8),
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
