"""One device / dtype / thread policy for trainer, receivers, bench and smoke.

Why: several processes share few cores, and a CPU without bfloat16 arithmetic (AVX2 only) emulates it many times
slower than float32, so the choice must be deliberate and identical everywhere. The weights load in float32 on a
CPU; how the inference passes then run (bfloat16 prefill and int8 decoding where the CPU has them) is the
engine's (`engine.py`).
"""

from __future__ import annotations

import os

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else is taken as given (and checked)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (try --device auto)")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"--device {device}: Apple MPS is not available on this machine (try --device auto)")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 elsewhere (a CPU's faster passes are the engine's; MPS float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(DTYPES))}") from None


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads: `n` (0: every core), else $LATENTWIRE_THREADS, else every core. Returns the
    count."""
    if n is None:
        env = os.environ.get("LATENTWIRE_THREADS")
        n = int(env) if env else 0
    n = int(n) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
