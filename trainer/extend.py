"""Extend a checkpoint with one more receiver: a new model family joins without touching the others.

With the vocabulary-anchored interlingua (`latentwire.codebook`) a receiver's adapter is a closed-form fit to
its own vocabulary: each latent row is snapped onto the new model's own token embeddings by the codes of its
own token strings. So joining needs no gradient step and no change to the sender or the other receivers:

- the child checkpoint holds the parent's tensors unchanged plus `adapter.<name>.*`, and the parent's config
  entries unchanged plus `models.<name>`;
- `adapter_fingerprints` (one sha256 per part: the encoder and each adapter, over its config entry and its
  tensors) lets a reader check that the encoder and every old adapter are the parent's, and `parent` names
  the parent's whole-checkpoint fingerprint;
- the new receiver's score calibration (every sender path) is fitted on `val` by the code that fits the others'
  (`trainer/calibrate.py`).

The zero-shot point is the codebook adapter at the parent's snapping settings; `tune` then picks its
temperature and candidate count on `val` within a time budget. When the parent's receivers have trained parts
(a prompt, a residual), the new adapter gets the same parts and the same gradient loop (`loop.py`) with the
sender frozen: only `adapter.<name>.*` trains, so the parent's parts stay byte for byte.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentwire import checkpoint
from latentwire.data import load_split
from latentwire.models import LLM, load_llm
from latentwire.protocol import SENDER_PATHS
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig
from latentwire.system.pipeline import load_checkpoint

from .calibrate import fit, validate
from .plot import plot_training
from .recipes import ExtendRecipe


def _write(parent: Path, out: Path, name: str, entry: dict, adapter: CodebookAdapter, extension: dict) -> str:
    """The child checkpoint: the parent's tensors and config entries unchanged, plus the new receiver."""
    cfg = checkpoint.read_config(parent)
    sd, meta = checkpoint.tensors(parent)
    new = {f"adapter.{name}.{k}": v.detach().float().cpu().contiguous() for k, v in adapter.state_dict().items()}
    cfg["models"][name] = entry
    cfg["parent"] = checkpoint.fingerprint(parent)
    cfg["extensions"] = [*cfg.get("extensions", []), extension]
    cfg.pop("adapter_fingerprints", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file({**sd, **new}, str(out / checkpoint.WEIGHTS), metadata=meta)
    checkpoint.write_config(out, cfg)
    # the map is written last, over the parts as they lie on disk
    cfg["adapter_fingerprints"] = checkpoint.part_fingerprints(out)
    checkpoint.write_config(out, cfg)
    return checkpoint.fingerprint(out)


def _set(adapter: CodebookAdapter, tau: float, nearest: int) -> None:
    adapter.cfg.tau, adapter.cfg.nearest = float(tau), int(nearest)
    with torch.no_grad():
        adapter.log_tau.fill_(torch.tensor(float(tau)).log().item())


def extend(
    recipe: ExtendRecipe,
    parent: str | Path,
    out: str | Path,
    llms: dict[str, LLM] | None = None,
    log=print,
) -> Path:
    """Fit the new receiver's adapter against the parent's frozen sender; write the child checkpoint to `out`.

    `llms` may hold already loaded models by name (the new one, and the sharer to reuse it).
    """
    t0 = time.perf_counter()
    parent, out = Path(parent), Path(out)
    if out.resolve() == parent.resolve():
        raise ValueError("the extended checkpoint needs its own folder: the parent stays as it is")
    name = recipe.name or recipe.model
    cfg = checkpoint.read_config(parent)
    if name in cfg["models"]:
        raise ValueError(f"{parent} already has a receiver named {name!r}")
    enc = cfg["encoder"]
    if enc.get("backbone") != "llm":
        raise ValueError(f"{parent}: only a vocabulary-anchored checkpoint (backbone llm) takes a new family")
    llms = dict(llms or {})
    llm = llms.get(name) or load_llm(recipe.model, device=recipe.device, dtype=recipe.dtype, engine="float32")
    llms[name] = llm
    ref = next((m["adapter"] for m in cfg["models"].values() if m["adapter"].get("kind") == "codebook"), {})
    acfg = CodebookAdapterConfig(
        d_z=int(enc["d_z"]),
        hidden_size=llm.hidden_size,
        tau=recipe.tau if recipe.tau is not None else ref.get("tau", CodebookAdapterConfig.tau),
        nearest=recipe.nearest if recipe.nearest is not None else ref.get("nearest", CodebookAdapterConfig.nearest),
        min_cos=recipe.min_cos if recipe.min_cos is not None else ref.get("min_cos", CodebookAdapterConfig.min_cos),
        code_seed=int(enc.get("code_seed", 0)),
        # how many answer steps the sender binds into one row is the sender's format, not a receiver's choice
        tokens_per_row=int(enc.get("tokens_per_row", 1)),
        # the same parts as the parent's receivers: the lexicon, the prompt and the residual
        lexicon=ref.get("lexicon", ""),
        prompt_len=int(ref.get("prompt_len", 0)) if recipe.steps else 0,
        rank=int(ref.get("rank", 0)) if recipe.steps else 0,
    )
    max_new = recipe.max_new_tokens or int(cfg.get("train", {}).get("max_new_tokens", 12))

    def entry(calibration: dict[str, dict]) -> dict:
        return {
            "spec": llm.spec,
            "fingerprint": llm.fingerprint,
            "hidden_size": llm.hidden_size,
            "adapter": adapter.cfg.to_dict(),
            "calibration": calibration,
        }

    adapter = CodebookAdapter(acfg, llm)
    ext = {"model": name, "parent": checkpoint.fingerprint(parent), "recipe": recipe.to_dict()}
    _write(parent, out, name, entry({}), adapter, ext)
    wire = load_checkpoint(out, models=[name], llms=llms, device=recipe.device, dtype=recipe.dtype, engine="float32")
    live = wire.adapters[name]
    rows = load_split("val", limit=recipe.eval_n)

    # the zero-shot point, then the grid while the budget lasts; ties keep the earlier (simpler) setting
    tried: list[dict] = []
    best = None
    t_tune = time.perf_counter()
    candidates = [(acfg.tau, acfg.nearest)] + (
        [g for g in recipe.grid if g != (acfg.tau, acfg.nearest)] if recipe.tune else []
    )
    for i, (tau, nearest) in enumerate(candidates):
        if i and time.perf_counter() - t_tune > recipe.time_budget:
            log(f"tuning stopped by the time budget after {i} settings")
            break
        _set(live, tau, nearest)
        res = validate(wire, [name], rows, recipe.context, max_new, paths=("latent",), progress=False)["latent"][name]
        tried.append({"tau": tau, "nearest": nearest, "f1": res["f1"], "em": res["em"], "s": round(res["wall_s"], 1)})
        log(f"val latent {name} tau={tau} nearest={nearest}: F1 {res['f1']:.3f} ({res['wall_s']:.0f} s)")
        if best is None or res["f1"] > best[1]["f1"]:
            best = ((tau, nearest), res)
    (tau, nearest), res = best
    _set(live, tau, nearest)
    trained = {}
    if live.trained_parts:
        trained = _train(recipe, wire, name, rows, max_new)
        log(f"trained {', '.join(live.trained_parts)} and tau: best val latent F1 {trained['best_val'].get('score')}")
    adapter = live
    # every path, fitted as the recipe fits the first receivers
    val = validate(wire, [name], rows, recipe.context, max_new, SENDER_PATHS, False)
    calibration = fit(val)[name]
    ext["summary"] = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "tune_s": round(time.perf_counter() - t_tune, 1),
        "zero_shot_val": {k: tried[0][k] for k in ("f1", "em")},
        "val": {p: {k: r[name][k] for k in ("n", "em", "f1", "nll_per_token")} for p, r in val.items()},
        "tried": tried,
        **({"training": trained} if trained else {}),
    }
    fp = _write(parent, out, name, entry(calibration), adapter, ext)
    kept = checkpoint.shared_parts(out, parent)
    log(f"{out}: fingerprint {fp[:12]}, parent {ext['parent'][:12]}; unchanged from the parent: {', '.join(kept)}")
    return out


def _train(recipe: ExtendRecipe, wire, name: str, rows, max_new: int) -> dict:
    """The new adapter's trained parts through the gradient loop, the sender frozen (its channel included)."""
    from .loop import LoopConfig, TrainedParts, train_loop, training_data
    from .recipe import val_score

    enc = wire.encoder
    if enc.channel is not None:
        enc.channel.requires_grad_(False)
    data = training_data(enc, load_split("train", limit=recipe.train_limit), rows, recipe.context)
    parts = TrainedParts(
        enc, {name: wire.adapters[name]}, wire.llms, LoopConfig.from_recipe(recipe), train_sender=False
    )
    run = Path(recipe.run_dir) / name
    summary = train_loop(parts, data, run, lambda: val_score(wire, [name], rows, recipe.context, max_new))
    plot_training(run / "log.jsonl")
    return summary
