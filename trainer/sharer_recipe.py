"""The sharer recipe (the default): a frozen LLM reads selected evidence; the latent carries its answer.

Nothing of the wire trains by gradient: the selector (a logistic regression and a small pair MLP) is fitted on
`train`'s supporting facts (seconds), the sharer and the receivers are frozen, the codes are derived from each
vocabulary (`latentwire.codebook`). The run fits the selector, writes the checkpoint, reads the validation
questions once (the sharer's readings are cached on disk, resumable) to fit each receiver's score calibration
on the latent and relay paths (the joint pick's learned prior), and writes the final checkpoint with its
validation figures. Knobs (k, temperature, tau, the evidence budget) are chosen on `val` (docs/EXPERIMENTS.md).
`latentwire calibrate` adds the other paths' calibrations afterwards.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latentwire import checkpoint
from latentwire.data import load_split
from latentwire.models import LLM, load_llm
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig
from latentwire.sender.selector import Selector, selection_report
from latentwire.sender.sharer import SharerConfig, SharerEncoder

from .calibrate import fit, validate
from .pipeline import load_checkpoint


@dataclass
class SharerRecipe:
    models: list[str] = field(default_factory=lambda: ["llama", "qwen"])  # receivers
    sharer: str = "qwen"  # the frozen LLM that reads in the sender
    m: int = 8
    d_z: int = 256
    topk: int = 1  # sharer tokens mixed per step (val: 1 beats 2, 4 and 8 for llama; EXPERIMENTS E8)
    temperature: float = 1.0
    tokens_per_row: int = 2  # answer steps per latent row: 8 rows carry the sharer's 16-token answer (E8)
    # the selector's budget and reading order: the best pair, the question's paragraph first, reads as well as
    # the gold paragraphs do (val: sharer F1 0.196 vs 0.198 gold; 4 paragraphs in source order 0.134; E11)
    evidence_paragraphs: int = 2
    evidence_order: str = "score"
    # one paragraph more where the pair scorer is unsure (the best pair's softmax share below this; 0: never).
    # val at 0.8: pair recall 0.905 -> 0.945, 12.5% of questions read 3 paragraphs, sharer F1 0.254 -> 0.248 (E16)
    evidence_unsure_below: float = 0.8
    tau: float = 20.0  # receivers' snapping temperature
    nearest: int = 4
    min_cos: float = 0.45  # two steps share a row: each keeps cosine ~0.7 with its code, chance stays < 0.35
    context: str = "distractor"
    eval_n: int = 100  # validation questions for calibration and the run's figures
    train_limit: int | None = None  # fit the selector on the first N training questions only
    max_new_tokens: int = 12
    device: str = "auto"
    dtype: str = "auto"

    def to_dict(self) -> dict:
        return {"recipe": "sharer", **asdict(self)}


def config_dict(recipe: SharerRecipe, enc: SharerEncoder, adapters: dict, llms: dict[str, LLM], extra: dict) -> dict:
    """The checkpoint's config: encoder, one entry per receiver (model identity, adapter, calibration)."""
    return {
        "encoder": enc.cfg.to_dict(),
        "models": {
            name: {
                "spec": llm.spec,
                "fingerprint": llm.fingerprint,
                "hidden_size": llm.hidden_size,
                "adapter": adapters[name].cfg.to_dict(),
                "calibration": extra.get("calibration", {}).get(name, {}).get("latent", {}),
                "calibration_by_path": extra.get("calibration", {}).get(name, {}),
            }
            for name, llm in llms.items()
        },
        "train": recipe.to_dict(),
        "summary": extra.get("summary", {}),
    }


def build(recipe: SharerRecipe, out: str | Path, llms: dict[str, LLM] | None = None, progress: bool = True) -> Path:
    """Fit, calibrate on `val`, write `out/ckpt` and `out/log.jsonl`; returns the checkpoint folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    llms = dict(llms or {})
    for name in recipe.models:
        llms.setdefault(name, load_llm(name, device=recipe.device, dtype=recipe.dtype))
    sharer = next((m for m in llms.values() if m.spec == recipe.sharer), None) or load_llm(
        recipe.sharer, device=recipe.device, dtype=recipe.dtype
    )
    train_rows, val_rows = load_split("train", limit=recipe.train_limit), load_split("val", limit=recipe.eval_n)
    selector = Selector.fit(
        train_rows,
        paragraphs=recipe.evidence_paragraphs,
        order=recipe.evidence_order,
        unsure_below=recipe.evidence_unsure_below,
    )
    cfg = SharerConfig(
        sharer=recipe.sharer,
        sharer_fingerprint=sharer.fingerprint,
        m=recipe.m,
        d_z=recipe.d_z,
        topk=recipe.topk,
        temperature=recipe.temperature,
        tokens_per_row=recipe.tokens_per_row,
        selector=selector.cfg,
    )
    enc = SharerEncoder(cfg, llm=sharer)
    adapters = {
        name: CodebookAdapter(
            CodebookAdapterConfig(
                d_z=recipe.d_z,
                hidden_size=llm.hidden_size,
                tau=recipe.tau,
                nearest=recipe.nearest,
                min_cos=recipe.min_cos,
                tokens_per_row=recipe.tokens_per_row,
            ),
            llm,
        )
        for name, llm in llms.items()
    }
    ckpt = out / "ckpt"
    checkpoint.save(ckpt, enc, adapters, config_dict(recipe, enc, adapters, llms, {}))
    wire = load_checkpoint(ckpt, llms=llms)
    # the latent and relay paths on validation: the run's figures and each path's score calibration
    val = validate(wire, list(llms), val_rows, recipe.context, recipe.max_new_tokens, progress=progress)
    calibration = fit(val)
    summary = {
        "steps": 0,
        "wall_s": round(time.perf_counter() - t0, 1),
        "val": {
            path: {n: {k: r[k] for k in ("n", "em", "f1", "nll_per_token")} for n, r in res.items()}
            for path, res in val.items()
        },
        "selection_val": selection_report(selector, load_split("val"), budgets=())["default"],
    }
    checkpoint.save(
        ckpt, enc, adapters, config_dict(recipe, enc, adapters, llms, {"calibration": calibration, "summary": summary})
    )
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "eval", "split": "val", "final": True, **summary["val"]["latent"]}) + "\n")
    return ckpt
