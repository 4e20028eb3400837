"""Each receiver's score calibration, fitted on `val` per sender path: what the joint pick compares.

The sharer recipe calibrates every receiver it builds; `extend` calibrates the one it adds, with this same code,
so a receiver that joins later is compared on the same footing as the first ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from latentwire.data import Example
from latentwire.evaluate import evaluate
from latentwire.receivers.calibration import CALIBRATED_PATHS, fit_platt

from .pipeline import Wire


def validate(
    wire: Wire,
    names: Sequence[str],
    rows: Sequence[Example],
    context: str,
    max_new_tokens: int,
    paths: Sequence[str] = CALIBRATED_PATHS,
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """`{path: {receiver: result with per-question rows}}` on the validation rows (never cached: val is tuning)."""
    return {
        path: {
            name: evaluate(
                wire.llms[name],
                rows,
                path,
                context=context,
                split="val",
                slot_fn=wire.slot_fn(name, path, context),
                use_cache=False,
                progress=progress,
                return_rows=True,
                max_new_tokens=max_new_tokens,
            )
            for name in names
        }
        for path in paths
    }


def fit(val: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """`{receiver: {path: Platt map as a dict}}` from `validate`'s results: raw score -> P(the answer is right)."""
    out: dict[str, dict[str, dict]] = {}
    for path, by_name in val.items():
        for name, res in by_name.items():
            rows = res["rows"]
            out.setdefault(name, {})[path] = fit_platt([r["score"] for r in rows], [r["f1"] for r in rows]).to_dict()
    return out
