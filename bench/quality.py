"""Task quality of one checkpoint, per receiver and joint, on every path: text, token-budget, evidence, relay,
latent (and the latent per quantisation), with the oracle and agreement.

It runs the receivers' own code path (`evaluate` -> `lm.generate`) with the checkpoint's sender (selector,
sharer, encoder) and adapters; the latent is quantised and dequantised by `protocol` exactly as on the wire.
Rows come from the evaluation cache when model, checkpoint and data are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latentwire.calibration import Calibration, joint
from latentwire.checkpoint import ModelEntry
from latentwire.data import Example
from latentwire.evaluate import evaluate
from latentwire.metrics import exact_match, f1_score, paired, summarize
from latentwire.protocol import path_spec
from latentwire.system.pipeline import Wire, docs_of

SUMMARY_KEYS = (
    "n",
    "em",
    "em_ci",
    "f1",
    "f1_ci",
    "nll_per_token",
    "prompt_tokens",
    "slot_bytes",
    "new_tokens",
    "seconds_per_question",
)


PAIRED = (("latent", "relay-tuned"), ("latent", "relay"))  # (path, baseline): `quality.<ctx>.paired` compares these


def path_calibrations(wire: Wire, path: str) -> dict[str, Calibration]:
    """Each receiver's score calibration for a path, fitted on `val` by the recipe; raw scores where none was."""
    out = {}
    for n in wire.model_names:
        cal = ModelEntry.from_dict(wire.config["models"][n], n).calibration.get(path)
        if cal:
            out[n] = Calibration(**cal)
    return out


def quality(
    wire: Wire,
    examples: Sequence[Example],
    contexts: Sequence[str] = ("distractor", "gold"),
    schemes: Sequence[str] = ("fp16", "int8", "int4"),
    split: str = "dev",
    text_batch: int | None = None,
    progress: bool = True,
    paths: Sequence[str] | None = None,
    path_limits: dict[str, int] | None = None,
) -> dict:
    """Every quality figure of the report, per context; `path_limits` measures a path on the first N
    questions only (every receiver the same N, so the joint pick compares the same questions)."""
    paths = tuple(paths or wire.paths)
    cals = {path: path_calibrations(wire, path) for path in paths}
    out: dict = {}
    for ctx in contexts:
        res: dict = {"models": {}, "latent_quant": {}}
        # one reading per question feeds every sender path
        reads = wire.encoder.read(docs_of(examples, ctx), progress=progress)
        res["sharer"] = {
            "model": wire.encoder.llm.spec,
            **summarize(
                [exact_match(r.answer, ex.answer) for r, ex in zip(reads, examples, strict=True)],
                [f1_score(r.answer, ex.answer) for r, ex in zip(reads, examples, strict=True)],
            ),
            "new_tokens": float(np.mean([len(r.topk_ids) for r in reads])) if reads else 0.0,
        }
        method_rows: dict[str, dict[str, list[dict]]] = {p: {} for p in paths}
        for name in wire.model_names:
            llm = wire.llms[name]
            per: dict = {}
            for path in paths:
                r = evaluate(
                    llm,
                    examples[: (path_limits or {}).get(path)],
                    path,
                    context=ctx,
                    split=split,
                    return_rows=True,
                    progress=progress,
                    batch_size=text_batch if path_spec(path).passages else None,
                    **wire.eval_args(name, path, ctx),
                )
                method_rows[path][name] = r.pop("rows")
                per[path] = {k: r[k] for k in SUMMARY_KEYS if k in r}
            quant = {}
            if "latent" in paths:
                for scheme in schemes:  # each scheme is compared with the float latent
                    r = evaluate(
                        llm,
                        examples,
                        "latent",
                        context=ctx,
                        split=split,
                        return_rows=True,
                        progress=progress,
                        **wire.eval_args(name, "latent", ctx, scheme),
                    )
                    rows = r.pop("rows")
                    same = [a["pred"] == b["pred"] for a, b in zip(rows, method_rows["latent"][name], strict=True)]
                    quant[scheme] = {"f1": r["f1"], "em": r["em"], "unchanged": float(np.mean(same))}
            res["models"][name] = per
            res["latent_quant"][name] = quant
        res["joint"] = {path: joint(rows, cals[path]) for path, rows in method_rows.items()}
        res["paired"] = {
            name: {
                f"{a}_vs_{b}": paired(method_rows[a][name], method_rows[b][name])
                for a, b in PAIRED
                if a in method_rows and b in method_rows and len(method_rows[a][name]) == len(method_rows[b][name])
            }
            for name in wire.model_names
        }
        out[ctx] = res
    return out


def wire_bytes(m: int, d_z: int, schemes: Sequence[str] = ("fp32", "fp16", "int8", "int4")) -> dict[str, dict]:
    """Exact bytes of one latent frame per scheme (header + body), as the sender sends it."""
    from latentwire.protocol import Quant, frame_size, latent_request

    x = np.random.default_rng(0).standard_normal((m, d_z)).astype(np.float32)
    sizes = {}
    for s in schemes:
        fs = frame_size(latent_request("r-000001", "sender", "f" * 64, x, Quant(s)))
        sizes[s] = {"total": fs.total, "header": fs.header, "body": fs.body}
    return sizes
