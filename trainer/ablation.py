"""What each trained part carries: the latent on `val` with each part left out in turn (`ABLATIONS`).

A variant names the parts it leaves out (`Wire.slot_fn`'s `off`): the sender's hidden `channel` (the closed-form
code is sent instead), and the receiver's `residual`, `lexicon`, or `tau` (back to the closed form's value).
`prompt-only` keeps the trained soft prompt alone over the snapped codes: what a tuned text prompt could also
give. The references are `relay-tuned` (the sharer's answer as text behind the same trained prompt) and
`latent-closed` (nothing trained). Every variant is measured on the same questions, paired against the full
model: a part whose removal costs nothing carries nothing the others do not.

The recipe runs it on its validation questions after training (the summary's `ablation`); `latentwire ablate`
runs it on any checkpoint and writes it into the config, where the bench reads it
(`training.ablation.<variant>.<receiver>.f1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from latentwire import checkpoint
from latentwire.data import Example, load_split
from latentwire.metrics import paired
from latentwire.system.pipeline import Wire, load_checkpoint

from .calibrate import validate

# variant -> the parts it leaves out; "full" is the checkpoint as it serves
ABLATIONS: dict[str, frozenset[str]] = {
    "full": frozenset(),
    "no-channel": frozenset({"channel"}),
    "no-residual": frozenset({"residual"}),
    "no-lexicon": frozenset({"lexicon"}),
    "prompt-only": frozenset({"channel", "residual", "tau"}),
}
REFERENCES = ("relay-tuned", "latent-closed")  # paths measured beside the variants


def ablate(
    wire: Wire,
    rows: Sequence[Example],
    context: str = "distractor",
    max_new_tokens: int = 12,
    variants: Sequence[str] = tuple(ABLATIONS),
    progress: bool = True,
    use_cache: bool = True,
    done: dict[str, dict[str, dict]] | None = None,
) -> dict[str, dict[str, dict]]:
    """`{variant or reference path: {receiver: {n, em, f1, f1_ci, vs_full}}}` on `rows`: `vs_full` is the paired
    difference against the full model with its bootstrap 95% CI. Cached and resumable for a checkpoint as it lies
    on disk (rows key on its part fingerprints); `use_cache=False` for parts still in memory (the recipe). `done`
    gives results already measured on these rows (`{"full" or a reference path: {receiver: result with rows}}`)."""
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; choose from {', '.join(ABLATIONS)}")
    runs = [(v, "latent", ABLATIONS[v]) for v in ("full", *[v for v in variants if v != "full"])]
    runs += [(p, p, frozenset()) for p in REFERENCES]
    out: dict[str, dict[str, dict]] = {}
    full: dict[str, list[dict]] = {}
    names = wire.model_names
    for label, path, off in runs:
        got = (done or {}).get(label) or validate(
            wire, names, rows, context, max_new_tokens, (path,), progress, use_cache=use_cache, off=off
        )[path]
        for name in names:
            res = got[name]
            full.setdefault(name, res["rows"])
            entry = {k: res[k] for k in ("n", "em", "f1", "f1_ci")}
            if label != "full":
                entry["vs_full"] = {k: v for k, v in paired(res["rows"], full[name]).items() if k in ("diff", "ci")}
            out.setdefault(label, {})[name] = entry
    return out


def ablate_checkpoint(
    ckpt: str | Path,
    n: int = 200,
    context: str = "distractor",
    variants: Sequence[str] = tuple(ABLATIONS),
    engine: str = "auto",
    progress: bool = True,
    data_dir: str | Path | None = None,
    max_new_tokens: int = 16,
) -> dict[str, dict[str, dict]]:
    """`ablate` on the first `n` of `val` for a checkpoint on disk, answers as long as `calibrate`'s and the
    bench's (so the full model's rows are theirs); writes the table into its config's summary (`summary.ablation`,
    with `n` and the context). Its parts, and so every cached row, stay as they are."""
    wire = load_checkpoint(ckpt, engine=engine)
    rows = load_split("val", data_dir=data_dir, limit=n)
    table = ablate(wire, rows, context, max_new_tokens, variants, progress)
    cfg = checkpoint.load_config(ckpt)
    cfg.summary = {
        **(cfg.summary or {}),
        "ablation": table,
        "ablation_on": {"split": "val", "n": len(rows), "context": context},
    }
    checkpoint.write_config(ckpt, cfg)
    return table
