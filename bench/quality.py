"""Task quality of one checkpoint, per model and joint: text, token-budget, latent (per quantisation), oracle.

It runs the receivers' own code path (`evaluate` -> `lm.generate`) with the checkpoint's encoder and adapters;
the latent is quantised and dequantised by `protocol` exactly as on the wire. Text-path rows come from the
evaluation cache when model and data are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from latentwire.checkpoint import Wire
from latentwire.data import Example
from latentwire.evaluate import evaluate
from latentwire.metrics import summarize
from latentwire.prompts import example_slot
from latentwire.protocol import Quant, dequantize, quantize
from latentwire.receivers.calibration import Calibration, agreement, pick

SUMMARY_KEYS = (
    "n",
    "em",
    "em_ci",
    "f1",
    "f1_ci",
    "nll_per_token",
    "prompt_tokens",
    "slot_bytes",
    "seconds_per_question",
)


def encode_all(wire: Wire, texts: Sequence[str], batch: int = 16, progress: bool = True) -> dict[str, np.ndarray]:
    """Float latents (M, d_z) for every text, computed once and shared by every model and scheme."""
    out: dict[str, np.ndarray] = {}
    todo = list(dict.fromkeys(texts))
    for i in tqdm(range(0, len(todo), batch), disable=not progress, desc="encode", unit="batch"):
        chunk = todo[i : i + batch]
        for t, z in zip(chunk, wire.encode(chunk).float().cpu().numpy(), strict=True):
            out[t] = z
    return out


def latent_slot_fn(wire: Wire, name: str, latents: dict[str, np.ndarray], scheme: str | None):
    """Slot embeddings from stored latents, through the wire's quantisation when `scheme` is given."""
    llm, adapter = wire.llms[name], wire.adapters[name]

    @torch.no_grad()
    def fn(texts: Sequence[str]) -> list[torch.Tensor]:
        zs = [latents[t] if scheme is None else dequantize(quantize(latents[t], scheme)) for t in texts]
        z = torch.from_numpy(np.stack(zs)).to(llm.device)
        return list(adapter(z).to(llm.model.dtype))

    return fn


def joint(rows: dict[str, list[dict]], calibrations: dict[str, Calibration]) -> dict:
    """Joint pick (the arbiter's rule), oracle bound and agreement over per-model rows of the same questions."""
    names = sorted(rows)
    picked, oracle_f1, oracle_em, agree = [], [], [], []
    for i in range(len(rows[names[0]])):
        per = {m: rows[m][i] for m in names}
        picked.append(per[pick({m: (r["pred"], r["score"]) for m, r in per.items()}, calibrations)])
        oracle_f1.append(max(r["f1"] for r in per.values()))
        oracle_em.append(max(r["em"] for r in per.values()))
        agree.append(agreement([r["pred"] for r in per.values()]))
    a = np.array(agree, dtype=bool)
    jf = np.array([r["f1"] for r in picked])
    return {
        "joint": summarize([r["em"] for r in picked], jf.tolist()),
        "oracle": summarize(oracle_em, oracle_f1),
        "agreement": {
            "rate": float(a.mean()),
            "f1_when_agree": float(jf[a].mean()) if a.any() else None,
            "f1_when_disagree": float(jf[~a].mean()) if (~a).any() else None,
        },
    }


def quality(
    wire: Wire,
    examples: Sequence[Example],
    contexts: Sequence[str] = ("distractor", "gold"),
    schemes: Sequence[str] = ("fp16", "int8", "int4"),
    split: str = "dev",
    text_batch: int | None = None,
    progress: bool = True,
) -> dict:
    """Every quality figure of the report, per context mode."""
    m = int(wire.config["encoder"]["m"])
    cals = {
        n: Calibration(**{k: v for k, v in wire.config["models"][n].get("calibration", {}).items()})
        for n in wire.model_names
    }
    out: dict = {}
    for ctx in contexts:
        texts = [example_slot(ex, ctx) for ex in examples]
        latents = encode_all(wire, texts, progress=progress)
        res: dict = {"models": {}, "latent_quant": {}}
        method_rows: dict[str, dict[str, list[dict]]] = {"text": {}, "token-budget": {}, "latent": {}}
        for name in wire.model_names:
            llm = wire.llms[name]
            per: dict = {}
            for mode in ("text", "token-budget"):
                r = evaluate(
                    llm,
                    examples,
                    mode,
                    context=ctx,
                    split=split,
                    budget=m,
                    return_rows=True,
                    progress=progress,
                    batch_size=text_batch if mode == "text" else None,
                )
                method_rows[mode][name] = r.pop("rows")
                per[mode] = {k: r[k] for k in SUMMARY_KEYS if k in r}
            quant = {}
            for scheme in (None, *schemes):  # the float latent first: each scheme is compared with it
                r = evaluate(
                    llm,
                    examples,
                    "latent",
                    context=ctx,
                    split=split,
                    slot_fn=latent_slot_fn(wire, name, latents, scheme),
                    slot_fingerprint=wire.fingerprint if scheme is None else f"{wire.fingerprint}:{scheme}",
                    return_rows=True,
                    progress=progress,
                )
                rows = r.pop("rows")
                if scheme is None:
                    method_rows["latent"][name] = rows
                    per["latent"] = {k: r[k] for k in SUMMARY_KEYS if k in r}
                    continue
                same = [a["pred"] == b["pred"] for a, b in zip(rows, method_rows["latent"][name], strict=True)]
                quant[scheme] = {"f1": r["f1"], "em": r["em"], "unchanged": float(np.mean(same))}
            res["models"][name] = per
            res["latent_quant"][name] = quant
        # the checkpoint's calibration is fitted on latent answers; text paths compare raw scores (as the arbiter does)
        res["joint"] = {mode: joint(rows, cals if mode == "latent" else {}) for mode, rows in method_rows.items()}
        out[ctx] = res
    return out


def wire_bytes(m: int, d_z: int, schemes: Sequence[str] = ("fp32", "fp16", "int8", "int4")) -> dict[str, dict]:
    """Exact bytes of one latent frame per scheme (header + body), as the sender sends it."""
    from latentwire.protocol import frame_size, latent_request

    x = np.random.default_rng(0).standard_normal((m, d_z)).astype(np.float32)
    sizes = {}
    for s in schemes:
        fs = frame_size(latent_request("r-000001", "sender", "f" * 64, x, Quant(s)))
        sizes[s] = {"total": fs.total, "header": fs.header, "body": fs.body}
    return sizes
