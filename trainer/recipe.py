"""The training recipe (`latentwire train`): the closed-form interlingua, then gradient steps on its trained parts.

1. **The closed form.** The selector is fitted on `train`'s supporting facts (seconds); the sharer (a frozen LLM)
   reads the selected evidence; the latent carries its answer as vocabulary-anchored codes
   (`latentwire.codebook`), which each receiver snaps onto its own embeddings, spelling with its own pieces any
   string of the sharer's it has no token for (`lexicon`).
2. **The reading cache.** The sharer reads every `train` and `val` question once, with its hidden states along
   the answer (`$LATENTWIRE_CACHE/readings/`, resumable, a progress bar): the loop never runs the sharer.
3. **The gradient steps** (`loop.py`): the hidden channel and each receiver's prompt, residual and tau, through
   all receivers at once; the relay-tuned twin gets the same steps on relay's text. Every `eval_every` steps the
   latent is validated on `val` and the best step is kept: step 0 (the untrained parts) is measured too.
4. **Calibration** of every path on `val` (the joint pick's prior), then the checkpoint with its figures.
5. **Ablations** on the same `val` questions (`ablation.py`): the latent with each trained part left out in turn,
   recorded in the summary as the table the bench publishes.

`steps=0` writes the closed form alone. Every knob is chosen on `val` (docs/EXPERIMENTS.md); dev stays
report-only. Every field is a `latentwire train` option.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from latentwire import checkpoint
from latentwire.data import load_split
from latentwire.models import LLM, load_llm
from latentwire.protocol import SENDER_PATHS, TRAINED_PATHS
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig
from latentwire.sender.selector import Selector, SelectorConfig, selection_report
from latentwire.sender.sharer import SharerConfig, SharerEncoder
from latentwire.system.pipeline import load_checkpoint

from .ablation import REFERENCES, ablate
from .calibrate import fit, validate
from .loop import LoopConfig, TrainedParts, process_state, train_loop, training_data
from .plot import plot_training
from .recipes import TrainRecipe


def config_dict(recipe: TrainRecipe, enc: SharerEncoder, adapters: dict, llms: dict[str, LLM], extra: dict) -> dict:
    """The checkpoint's config: encoder, one entry per receiver (model identity, adapter, calibration)."""
    return {
        "encoder": enc.cfg.to_dict(),
        "models": {
            name: {
                "spec": llm.spec,
                "fingerprint": llm.fingerprint,
                "hidden_size": llm.hidden_size,
                "adapter": adapters[name].cfg.to_dict(),
                "calibration": extra.get("calibration", {}).get(name, {}),
            }
            for name, llm in llms.items()
        },
        "train": recipe.to_dict(),
        "summary": extra.get("summary", {}),
    }


def closed_form(recipe: TrainRecipe, llms: dict[str, LLM], sharer: LLM) -> tuple[SharerEncoder, dict]:
    """The encoder and adapters before any gradient step (the trained parts at their starting values)."""
    if recipe.init:
        sel = SelectorConfig(**checkpoint.load_config(recipe.init).encoder["selector"])
    else:
        sel = Selector.fit(
            load_split("train", limit=recipe.train_limit),
            paragraphs=recipe.evidence_paragraphs,
            order=recipe.evidence_order,
            unsure_below=recipe.evidence_unsure_below,
        ).cfg
    trained = recipe.steps > 0
    cfg = SharerConfig(
        sharer=recipe.sharer,
        sharer_fingerprint=sharer.fingerprint,
        m=recipe.m,
        d_z=recipe.d_z,
        topk=recipe.topk,
        temperature=recipe.temperature,
        tokens_per_row=recipe.tokens_per_row,
        hidden_layer=recipe.hidden_layer if trained and recipe.channel else None,
        channel=trained and recipe.channel,
        selector=sel,
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
                lexicon=recipe.sharer if recipe.lexicon else "",
                prompt_len=recipe.prompt_len if trained else 0,
                rank=recipe.rank if trained else 0,
            ),
            llm,
        )
        for name, llm in llms.items()
    }
    return enc, adapters


def val_score(wire, names: list[str], rows, context: str, max_new_tokens: int) -> dict[str, float]:
    """Val F1 per receiver on the latent and relay-tuned paths (uncached: the parts are still training);
    `score`, what the loop keeps the best step by, is the latent's mean over receivers."""
    val = validate(wire, names, rows, context, max_new_tokens, TRAINED_PATHS, progress=False)
    out = {f"{n}/{p}": val[p][n]["f1"] for p in TRAINED_PATHS for n in names}
    out["score"] = float(np.mean([out[f"{n}/latent"] for n in names]))
    return out


def build(recipe: TrainRecipe, out: str | Path, llms: dict[str, LLM] | None = None, progress: bool = True) -> Path:
    """Closed form, reading cache, gradient steps, calibration; writes `out/ckpt`, `out/log.jsonl`,
    `out/training.png`; returns the checkpoint folder. Rerunning resumes (the cache and `state.pt`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    llms = dict(llms or {})
    for name in recipe.receivers:
        llms.setdefault(name, load_llm(name, device=recipe.device, dtype=recipe.dtype, engine="float32"))
    sharer = next((m for m in llms.values() if m.spec == recipe.sharer), None) or load_llm(
        recipe.sharer, device=recipe.device, dtype=recipe.dtype, engine="float32"
    )
    for llm in (*llms.values(), sharer):
        if llm.engine != "float32":  # int8 layers have no gradient; the frozen model's passes must stay exact
            raise ValueError(f"{llm.spec}: training runs on the float32 engine, not {llm.engine} (load_llm engine=)")
    enc, adapters = closed_form(recipe, llms, sharer)
    ckpt = out / "ckpt"
    state = process_state()
    val_rows = load_split("val", limit=recipe.eval_n)
    summary: dict = {"steps": 0}
    with state.main_process_first():  # the main process writes the closed form and fills the reading cache
        if state.is_main_process:
            checkpoint.save(ckpt, enc, adapters, config_dict(recipe, enc, adapters, llms, {}))
        wire = load_checkpoint(ckpt, llms=llms)
        enc, adapters = wire.encoder, wire.adapters  # the loaded parts are the ones that train and serve
        if recipe.steps:
            t_read = time.perf_counter()
            train_rows = load_split("train", limit=recipe.train_limit)
            data = training_data(enc, train_rows, val_rows, recipe.context, progress and state.is_main_process)
            summary["read_s"] = round(time.perf_counter() - t_read, 1)
    if recipe.steps:
        parts = TrainedParts(enc, dict(adapters), llms, LoopConfig.from_recipe(recipe))
        names = list(llms)
        summary.update(
            train_loop(
                parts,
                data,
                out,
                lambda: val_score(wire, names, val_rows, recipe.context, recipe.max_new_tokens),
                progress=progress,
            )
        )
        summary["world_size"] = state.num_processes
        if state.is_main_process:
            plot_training(out / "log.jsonl")
    if not state.is_main_process:  # the main process measures and writes the checkpoint
        return ckpt
    # every path on val: the run's figures and each path's score calibration (the joint pick's prior)
    val = validate(wire, list(llms), val_rows, recipe.context, recipe.max_new_tokens, SENDER_PATHS, progress=progress)
    calibration = fit(val)
    if recipe.steps:  # what each trained part carries, on the same questions (the full model and references: above)
        known = {"full": val["latent"], **{p: val[p] for p in REFERENCES}}
        summary["ablation"] = ablate(
            wire, val_rows, recipe.context, recipe.max_new_tokens, progress=progress, use_cache=False, done=known
        )
        summary["ablation_on"] = {"split": "val", "n": len(val_rows), "context": recipe.context}
    summary.update(
        wall_s=round(time.perf_counter() - t0, 1),
        val={
            path: {n: {k: r[k] for k in ("n", "em", "f1", "nll_per_token")} for n, r in res.items()}
            for path, res in val.items()
        },
        selection_val=selection_report(enc.selector, load_split("val"), budgets=())["default"],
    )
    checkpoint.save(
        ckpt, enc, adapters, config_dict(recipe, enc, adapters, llms, {"calibration": calibration, "summary": summary})
    )
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "final", "split": "val", **summary["val"]}) + "\n")
    return ckpt
