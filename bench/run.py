"""`latentwire bench`: every figure of merit of one checkpoint from one run, side by side.

Writes `results.json` (machine-readable), `report.md` and PNG plots into the output folder.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from latentwire.data import load_split
from latentwire.prompts import example_slot
from latentwire.trainer.pipeline import Wire, load_checkpoint

from .quality import quality, wire_bytes
from .report import write_report


def versions() -> dict[str, str]:
    import msgpack
    import torch
    import transformers
    import zmq

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyzmq": zmq.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "numpy": np.__version__,
    }


def efficiency(wire: Wire, q: dict, examples) -> dict:
    m, d_z = int(wire.config["encoder"]["m"]), int(wire.config["encoder"]["d_z"])
    slot_bytes = float(np.mean([len(example_slot(ex, "distractor").encode()) for ex in examples]))
    comp = {
        name: {"prompt_tokens": per["text"]["prompt_tokens"], "ratio": per["text"]["prompt_tokens"] / m}
        for name, per in q["models"].items()
    }
    return {"m": m, "d_z": d_z, "slot_bytes": slot_bytes, "frame_bytes": wire_bytes(m, d_z), "token_compression": comp}


def run_bench(
    ckpt: str | Path,
    out: str | Path = "bench/results",
    split: str = "dev",
    limit: int | None = None,
    contexts: tuple[str, ...] = ("distractor", "gold"),
    live_n: int = 0,
    wire: Wire | None = None,
    examples: list | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Quality (per model, joint, oracle, per quantisation), efficiency, live latency and training cost."""
    out = Path(out)
    wire = wire or load_checkpoint(ckpt)
    examples = examples if examples is not None else load_split(split, limit=limit)
    t0 = time.perf_counter()
    q = quality(wire, examples, contexts=contexts, split=split, progress=progress)
    results = {
        "meta": {
            "checkpoint": str(ckpt),
            "fingerprint": wire.fingerprint,
            "split": split,
            "n": len(examples),
            "contexts": list(contexts),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} cores)",
            "command": command or " ".join(shlex.quote(a) for a in ["latentwire", *sys.argv[1:]]),
            "versions": versions(),
            "config": wire.config.get("train", {}),
            "models": {n: wire.config["models"][n]["spec"] for n in wire.model_names},
        },
        "quality": q,
        "efficiency": efficiency(wire, q["distractor"] if "distractor" in q else next(iter(q.values())), examples),
        "training": wire.config.get("summary", {}),
    }
    if live_n:
        from .live import live_latency

        results["live"] = live_latency(Path(ckpt), examples[:live_n], progress=progress)
    results["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    return results


def quick_checkpoint(path: Path, steps: int = 20) -> Path:
    """A tiny run on tiny random models, a few steps (`bench --quick`, CI); returns its checkpoint `path/ckpt`."""
    from latentwire.models import load_llm
    from latentwire.sender.encoder import EncoderConfig
    from latentwire.trainer.config import TrainConfig
    from latentwire.trainer.train import train

    names = ["tiny-llama", "tiny-qwen"]
    cfg = TrainConfig(
        models=names,
        encoder=EncoderConfig(backbone="bytes", d_model=64, d_z=32, m=4, max_bytes=2048, byte_layers=1, pool_layers=1),
        batch_size=4,
        lr=3e-3,
        max_steps=steps,
        time_budget=None,
        eval_every=0,
        eval_n=8,
        context="gold",
    )
    rows = load_split("train", limit=32)
    return train(
        cfg,
        path,
        llms={n: load_llm(n) for n in names},
        data=(rows, load_split("val", limit=8)),
        resume=False,
        progress=False,
    )
