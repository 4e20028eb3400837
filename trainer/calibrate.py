"""Each receiver's score calibration, fitted on `val` per path: what the joint pick compares.

The training recipe calibrates every receiver it builds on every sender path; `extend` calibrates the one it
adds with this same code, so a receiver that joins later is compared on the same footing as the first ones.
`calibrate` fits any path of an existing checkpoint (text and token-budget too) and writes the maps into its
config; the weights, and so every part fingerprint and cached row, stay as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from latentwire import checkpoint
from latentwire.calibration import Calibration, fit_platt, joint
from latentwire.data import Example, load_split
from latentwire.evaluate import evaluate
from latentwire.models import LLM
from latentwire.protocol import CALIBRATED_PATHS
from latentwire.system.pipeline import Wire, load_checkpoint


def validate(
    wire: Wire,
    names: Sequence[str],
    rows: Sequence[Example],
    context: str,
    max_new_tokens: int,
    paths: Sequence[str] = CALIBRATED_PATHS,
    progress: bool = True,
    limits: dict[str, int] | None = None,
    use_cache: bool = False,
    off: frozenset[str] = frozenset(),
) -> dict[str, dict[str, dict]]:
    """`{path: {receiver: result with per-question rows}}` on the validation rows; `off` leaves trained parts out
    of the latent (`Wire.slot_fn`: an ablation).

    Uncached by default: the recipe and `extend` validate adapters that are still being tuned in memory.
    `calibrate` caches, since it validates a checkpoint as it lies on disk (rows key on its part fingerprints).
    `limits` measures a path on its first N rows only (text costs seconds per question on a CPU).
    """
    return {
        path: {
            name: evaluate(
                wire.llms[name],
                rows[: (limits or {}).get(path)],
                path,
                context=context,
                split="val",
                use_cache=use_cache,
                progress=progress,
                return_rows=True,
                max_new_tokens=max_new_tokens,
                **wire.eval_args(name, path, context, off=off),
            )
            for name in names
        }
        for path in paths
    }


def fit(val: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """`{receiver: {path: Platt map as a dict}}` from `validate`'s results: raw score -> P(the answer is right).

    Per path, the best single receiver on these rows then gets a prior (`PRIORS`, added to its map's log-odds
    offset): the smallest whose joint pick on the rows is at least as good as that receiver alone, so the joint
    pick never loses to the best receiver where the scores cannot tell who is right (the largest prior is the
    fallback: that receiver's answer, unless it is empty)."""
    out: dict[str, dict[str, dict]] = {}
    for path, by_name in val.items():
        cals = {
            n: fit_platt([r["score"] for r in res["rows"]], [r["f1"] for r in res["rows"]])
            for n, res in by_name.items()
        }
        if len(by_name) > 1:
            cals = with_prior({n: res["rows"] for n, res in by_name.items()}, cals)
        for name, cal in cals.items():
            out.setdefault(name, {})[path] = cal.to_dict()
    return out


PRIORS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 100.0)


def with_prior(rows: dict[str, list[dict]], cals: dict[str, Calibration]) -> dict[str, Calibration]:
    """`cals` with the best single receiver's prior (see `fit`)."""
    n = min(len(r) for r in rows.values())
    rows = {m: r[:n] for m, r in rows.items()}
    best = max(rows, key=lambda m: (np.mean([r["f1"] for r in rows[m]]) if n else 0.0, m))
    alone = float(np.mean([r["f1"] for r in rows[best]])) if n else 0.0
    for prior in PRIORS:
        c = cals[best]
        trial = {**cals, best: dataclasses.replace(c, b=c.b + prior)}
        if joint(rows, trial)["joint"]["f1"] >= alone - 1e-9:
            return trial
    return trial


def calibrate(
    ckpt: str | Path,
    paths: Sequence[str] | None = None,
    *,
    n: int = 200,
    limits: dict[str, int] | None = None,
    context: str = "distractor",
    max_new_tokens: int = 16,
    data_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
    llms: dict[str, LLM] | None = None,
    engine: str = "auto",
) -> dict[str, dict[str, dict]]:
    """Fit every receiver of `ckpt` on `paths` (default: all it has) on the first `n` of `val`; write the maps
    into its config in place.

    Returns `{receiver: {path: map}}`. Paths not named keep their maps; the checkpoint's fingerprint changes
    (its config does), its parts do not (`checkpoint.NOT_IN_PART`).
    """
    wire = load_checkpoint(ckpt, device=device, dtype=dtype, llms=llms, engine=engine)
    paths = tuple(paths or wire.paths)
    unknown = [p for p in paths if p not in wire.paths]
    if unknown:
        raise ValueError(f"{ckpt} cannot be measured on {', '.join(unknown)}: choose from {', '.join(wire.paths)}")
    rows = load_split("val", data_dir=data_dir, limit=n)
    val = validate(wire, wire.model_names, rows, context, max_new_tokens, paths, progress, limits, use_cache=True)
    fitted = fit(val)
    _report_joint(val, fitted, log)
    cfg = checkpoint.load_config(ckpt)
    for name, by_path in fitted.items():
        entry = cfg.models[name]
        entry.calibration = {**entry.calibration, **by_path}
        for path, res in ((p, val[p][name]) for p in by_path):
            log(f"{name:8s} {path:13s} val F1 {res['f1']:.3f} (n {res['n']}): {by_path[path]}")
    checkpoint.write_config(ckpt, cfg)
    return fitted


def _report_joint(val: dict[str, dict[str, dict]], fitted: dict[str, dict[str, dict]], log: Callable) -> None:
    """Per path on the validation rows: the joint pick with the new maps against the best single receiver (in
    sample: the maps were fitted on these rows) and the oracle."""
    for path, by_name in val.items():
        if len(by_name) < 2:
            continue
        n = min(len(r["rows"]) for r in by_name.values())
        j = joint({m: r["rows"][:n] for m, r in by_name.items()}, {m: Calibration(**fitted[m][path]) for m in by_name})
        best = max(by_name, key=lambda m: by_name[m]["f1"])
        log(
            f"{path:13s} val joint F1 {j['joint']['f1']:.3f}, best single {best} {by_name[best]['f1']:.3f}, "
            f"oracle {j['oracle']['f1']:.3f} (n {n})"
        )
