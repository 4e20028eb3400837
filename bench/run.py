"""`latentwire bench`: every figure of merit of one checkpoint from one run, side by side.

Writes `results.json` (machine-readable), `report.md` and PNG plots into the output folder.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from latentwire.data import load_split
from latentwire.prompts import example_slot
from latentwire.protocol import ENGINE_PATHS
from latentwire.system.pipeline import Wire, docs_of, load_checkpoint

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
    """Bytes on the wire against the text, and positions: slot tokens per soft token, whole prompts text vs latent."""
    from latentwire.prompts import slot_ids

    m, d_z = wire.m, int(wire.config["encoder"]["d_z"])
    slot_bytes = float(np.mean([len(example_slot(ex, "distractor").encode()) for ex in examples]))
    comp = {}
    for name, per in q["models"].items():
        llm = wire.llms[name]
        fixed = len(llm.template.prefix_ids) + len(llm.template.suffix_ids)
        slot = float(np.mean([len(slot_ids(llm.tokenizer, example_slot(ex, "distractor"))) for ex in examples]))
        latent = per["latent"]["prompt_tokens"] if "latent" in per else fixed + m
        comp[name] = {
            "slot_tokens": slot,
            "slot_ratio": slot / m,
            "prompt_tokens": slot + fixed,
            "latent_prompt_tokens": latent,
            "prompt_ratio": (slot + fixed) / latent,
        }
    return {"m": m, "d_z": d_z, "slot_bytes": slot_bytes, "frame_bytes": wire_bytes(m, d_z), "token_compression": comp}


def selection(wire: Wire, examples, split: str, progress: bool = False) -> dict:
    """The sender's evidence selection on the bench's questions: the default budget (as the sender selects, one
    paragraph more where the scorer is unsure) and the fixed-budget curve around it, and
    what it costs the sharer: its own F1 reading the selection (distractor context) against reading the gold
    paragraphs (cached readings: the quality run has read the selection already)."""
    from latentwire.metrics import f1_score
    from latentwire.sender.selector import selection_report

    sel = wire.encoder.selector
    budget = sel.cfg.paragraphs
    rep = selection_report(sel, examples, sorted({1, 2, 3, 4, 5, 6, budget}), tokenizer=wire.encoder.llm.tokenizer)
    sharer = {}
    for ctx in ("distractor", "gold"):
        reads = wire.encoder.read(docs_of(examples, ctx), progress=progress)
        sharer[ctx] = float(np.mean([f1_score(r.answer, ex.answer) for r, ex in zip(reads, examples, strict=True)]))
    return {
        "split": split,
        "n": rep["n"],
        "budget_paragraphs": budget,
        "unsure_below": sel.cfg.unsure_below,
        **rep["default"],
        "sharer_f1": sharer["distractor"],
        "sharer_f1_gold": sharer["gold"],
        "sharer_gap": sharer["gold"] - sharer["distractor"],
        "curve": rep,
    }


def _shown(path: Path) -> str:
    """A checkpoint as results show it: relative to the working directory when inside it, else its name."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


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
    paths: tuple[str, ...] | None = None,
    schemes: tuple[str, ...] = ("fp16", "int8", "int4"),
    path_limits: dict[str, int] | None = None,
    live_options: dict | None = None,
    engines_n: int = 0,
    reference_engine: str | None = "float32",
    engine: str = "auto",
) -> dict:
    """Quality (per model, joint, oracle, per quantisation), efficiency, live latency and training cost; every
    model (in-process and in the live processes) run by `engine`."""
    out = Path(out)
    wire = wire or load_checkpoint(ckpt, engine=engine)
    examples = examples if examples is not None else load_split(split, limit=limit)
    t0 = time.perf_counter()
    q = quality(
        wire,
        examples,
        contexts=contexts,
        split=split,
        progress=progress,
        paths=paths,
        schemes=schemes,
        path_limits=path_limits,
    )
    results = {
        "meta": {
            "checkpoint": _shown(Path(ckpt)),
            "fingerprint": wire.fingerprint,
            "split": split,
            "n": len(examples),
            "contexts": list(contexts),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "command": command or " ".join(shlex.quote(a) for a in ["latentwire", *sys.argv[1:]]),
            "versions": versions(),
            "config": wire.config.get("train", {}),
            "models": {n: wire.config["models"][n]["spec"] for n in wire.model_names},
        },
        "quality": q,
        "efficiency": efficiency(wire, q["distractor"] if "distractor" in q else next(iter(q.values())), examples),
        "training": wire.config.get("summary", {}),
    }
    results["selection"] = selection(wire, examples, split, progress)
    ctx = "distractor" if "distractor" in contexts else contexts[0]  # the live and engine runs' context
    if live_n:
        from .live import live_latency

        results["live"] = live_latency(
            Path(ckpt), examples[:live_n], context=ctx, progress=progress, engine=engine, **(live_options or {})
        )
    if reference_engine and reference_engine != wire.encoder.llm.engine:  # what the serving engine changed
        from .engines import compare_quality

        wanted = [p for p in ENGINE_PATHS if p in (paths or wire.paths)]
        results["engine_quality"] = compare_quality(
            wire, ckpt, examples, reference_engine, wanted, ctx, split, progress
        )
    if engines_n:  # every engine side by side on the first questions (bench/engines.py)
        from .engines import measure

        results["engines"] = measure(Path(ckpt), split=split, limit=engines_n, context=ctx, progress=progress)
    results["meta"]["engine"] = wire.encoder.llm.engine  # what every quality figure above ran on
    results["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, out)
    return results


def quick_checkpoint(path: Path) -> Path:
    """The shipped recipe on tiny random models (`bench --quick`, CI): a tiny trained checkpoint, seconds; returns
    `path/ckpt`."""
    from latentwire.trainer.tiny import tiny_checkpoint

    return tiny_checkpoint(path, eval_n=8, train_limit=100, context="gold")
