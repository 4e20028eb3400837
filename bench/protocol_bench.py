"""Protocol microbenchmark and fuzz run: `python bench/protocol_bench.py` prints JSON.

Times are per call, in microseconds, best of `repeats` rounds (the least disturbed by other load).
"""

from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from latentwire.protocol import (
    Reply,
    TextRequest,
    decode_frame,
    dequantize,
    encode_frame,
    frame_size,
    fuzz,
    latent_request,
    quantize,
)

# name -> (scheme, group_size)
SCHEMES: dict[str, tuple[str, int | None]] = {
    "fp32": ("fp32", None),
    "fp16": ("fp16", None),
    "int8": ("int8", None),
    "int4": ("int4", None),
    "int4_g64": ("int4", 64),
}


def _us(fn: Callable[[], Any], repeats: int, number: int) -> float:
    return round(min(timeit.repeat(fn, repeat=repeats, number=number)) / number * 1e6, 2)


def run_microbench(m: int = 8, d_z: int = 256, repeats: int = 5, number: int = 2000) -> dict[str, Any]:
    """Quantize/dequantize/encode/decode time per frame and exact frame sizes, per scheme."""
    x = np.random.default_rng(0).standard_normal((m, d_z)).astype(np.float32)
    out: dict[str, Any] = {"m": m, "d_z": d_z, "schemes": {}}
    for name, (scheme, g) in SCHEMES.items():
        q = quantize(x, scheme, g)
        msg = latent_request("rid-000001", "sender", "ckpt-0123456789abcdef", x, scheme, g)
        data = encode_frame(msg)
        size = frame_size(data)
        out["schemes"][name] = {
            "quantize_us": _us(lambda s=scheme, g=g: quantize(x, s, g), repeats, number),
            "dequantize_us": _us(lambda q=q: dequantize(q), repeats, number),
            "encode_us": _us(lambda msg=msg: encode_frame(msg), repeats, number),
            "decode_us": _us(lambda data=data: decode_frame(data), repeats, number),
            "total_bytes": size.total,
            "header_bytes": size.header,
            "body_bytes": size.body,
            "scales_bytes": size.scales,
            "max_abs_error": float(np.abs(dequantize(q) - x).max()),
        }
    prompt = "Question: Who wrote the first program?\nContext: " + "Ada Lovelace wrote notes. " * 40
    others = {
        "text_request": TextRequest("rid-000001", "sender", prompt),
        "reply": Reply("rid-000001", "recv-llama", "llama", "Ada Lovelace", -0.31, {"generate": 0.21}),
    }
    for name, msg in others.items():
        data = encode_frame(msg)
        size = frame_size(data)
        out[name] = {
            "encode_us": _us(lambda msg=msg: encode_frame(msg), repeats, number),
            "decode_us": _us(lambda data=data: decode_frame(data), repeats, number),
            "total_bytes": size.total,
            "header_bytes": size.header,
            "body_bytes": size.body,
        }
    return out


def run_fuzz(n: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Fuzz decode_frame with n mutated frames; failures must be 0."""
    start = time.perf_counter()
    stats = fuzz(n, seed)
    seconds = time.perf_counter() - start
    return {
        "count": stats.count,
        "accepted": stats.accepted,
        "rejected": stats.rejected,
        "failures": len(stats.failures),
        "failure_examples": stats.failures[:5],
        "seconds": round(seconds, 2),
        "us_per_case": round(seconds / max(n, 1) * 1e6, 2),
    }


if __name__ == "__main__":
    print(json.dumps({"microbench": run_microbench(), "fuzz": run_fuzz()}, indent=2))
