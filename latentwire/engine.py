"""How a frozen model runs its inference passes: the engine, one registry, picked by measurement.

A CPU spends a reading or an answer in two kinds of pass. The prompt's prefill multiplies many positions at once
and is compute-bound; each greedy decoding step multiplies one position per row and is bound by how many bytes of
weights it streams. So the engines differ in their `Linear` layers only (the norms, attention and the embedding
table stay float32, and so does every activation between layers):

- `float32`: the weights as loaded.
- `bfloat16`: the `Linear` weights in bfloat16, for every pass.
- `int8`: the `Linear` weights in int8, per output channel, activations quantised per pass (dynamic int8).
- `bf16-int8`: a pass over at least `PREFILL_ROWS` positions per row (a prefill) multiplies in bfloat16, where the CPU's
  matrix units (AMX, AVX512-BF16) are fast; a shorter one (a decoding step) in int8, a quarter of float32's bytes.
- `f32-int8`: the same split with a float32 prefill, for a CPU without bfloat16 arithmetic (there bfloat16 is
  emulated and many times slower than float32).

`auto` is `$LATENTWIRE_ENGINE` when set, else `float32`: the pick is measured (E18 in docs/EXPERIMENTS.md). On a
CPU with bfloat16 arithmetic (AVX512-BF16, AMX) `bfloat16` reads and answers ~2x faster than `float32` in batches
on 2 threads (eval, the bench, a reading cache) with ~9 in 10 answers word for word, but the live processes (one
request at a time, one thread each, several on few cores) answered slower with it (p50 0.83x float32's), so it is
an option for batched work, not the default. The int8 decoding steps of `bf16-int8` and `f32-int8` are faster
still at decoding but change about half the answers, and `int8`'s quantised prefill loses most of the quality.
Training needs gradients through the frozen model and always runs `float32` (`torch`
autocast for speed); every inference path — the sharer's reading, the receivers, eval, calibrate and the bench —
loads the same engine, so what is measured is what serves. `bench/engines.py` measures them side by side; the
README's results say which engine produced which figure.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PREFILL_ROWS = 8  # positions per row in one pass from which the compute-bound bfloat16 multiply wins


def _int8(linear: nn.Linear) -> nn.Module:
    """A dynamic-int8 copy of `linear` (fbgemm; int8 weights per output channel)."""
    with warnings.catch_warnings():  # torch.ao's dynamic quantisation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig

        linear.qconfig = default_dynamic_qconfig
        return DynamicLinear.from_float(linear)


class _BF16Linear(nn.Module):
    """`linear` with bfloat16 weights that takes and returns float32."""

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


class _SplitLinear(nn.Module):
    """A prefill (>= PREFILL_ROWS positions per row) in bfloat16 (or float32), a decoding step in int8: see the
    module docstring."""

    def __init__(self, linear: nn.Linear, bf16_prefill: bool = True):
        super().__init__()
        self.wide = _BF16Linear(linear) if bf16_prefill else linear
        self.narrow = _int8(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # positions per row, not rows: a batch of decoding steps is still memory-bound
        positions = x.shape[-2] if x.dim() >= 3 else x.numel() // x.shape[-1]
        return self.wide(x) if positions >= PREFILL_ROWS else self.narrow(x)


@dataclass(frozen=True)
class Engine:
    name: str
    description: str
    linear: Callable[[nn.Linear], nn.Module] | None  # what each Linear becomes; None: left as loaded


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("float32", "the weights as loaded", None),
        Engine("bfloat16", "Linear weights in bfloat16", _BF16Linear),
        Engine("int8", "Linear weights in int8 (dynamic int8)", _int8),
        Engine("bf16-int8", "prefill in bfloat16, decoding steps in int8", _SplitLinear),
        Engine("f32-int8", "prefill in float32, decoding steps in int8", lambda lin: _SplitLinear(lin, False)),
    )
}


def resolve_engine(engine: str = "auto", device: torch.device | str = "cpu") -> str:
    """The engine's name: `auto` resolves as the module docstring says; anything else must be registered."""
    if engine == "auto":
        engine = os.environ.get("LATENTWIRE_ENGINE") or "float32"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of auto, {', '.join(ENGINES)}")
    if engine != "float32" and torch.device(device).type != "cpu":
        raise ValueError(f"engine {engine!r} runs on a CPU only; on {torch.device(device).type} use float32")
    return engine


def apply_engine(model: nn.Module, engine: str) -> nn.Module:
    """Swap `model`'s float32 `Linear` layers (its output head included) for the engine's, in place; returns it."""
    make = ENGINES[engine].linear
    if make is None:
        return model
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.dtype == torch.float32
    ]
    swapped: dict[int, nn.Module] = {}  # a Linear shared by two parents is converted once
    for parent, name, child in targets:
        if id(child) not in swapped:
            swapped[id(child)] = make(child)
        setattr(parent, name, swapped[id(child)])
    model.engine = engine
    return model
