"""Answer post-processing and HotpotQA EM/F1 (the official normalisation), with bootstrap CIs.

One post-processor serves every path (text, latent, token-budget, joint) so scores are comparable.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b)?\s*[:\-]?\s*", re.IGNORECASE)


def postprocess(text: str) -> str:
    """First non-empty line, without a leading 'The answer is', without trailing punctuation."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _ANSWER_PREFIX.sub("", line.strip())
    return line.strip().rstrip(".,;:!?。").strip().strip('"').strip()


def normalize_answer(s: str) -> str:
    """Official HotpotQA normalisation: lower, drop punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Official HotpotQA token F1, including its yes/no/noanswer rule."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred in special or ref in special) and pred != ref:
        return 0.0
    p_toks, r_toks = pred.split(), ref.split()
    common = Counter(p_toks) & Counter(r_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p_toks), same / len(r_toks)
    return 2 * precision * recall / (precision + recall)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1-alpha) CI of the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired(rows: Sequence[dict], base: Sequence[dict]) -> dict:
    """`rows` against `base` on the same questions: the mean F1 difference and its paired bootstrap 95% CI (the
    questions resampled together, so each question's difficulty cancels), and the share of answers unchanged."""
    if [r["id"] for r in rows] != [r["id"] for r in base]:
        raise ValueError("paired rows must be of the same questions in the same order")
    diff = [a["f1"] - b["f1"] for a, b in zip(rows, base, strict=True)]
    return {
        "diff": float(np.mean(diff)) if diff else float("nan"),
        "ci": list(bootstrap_ci(diff)),
        "n": len(diff),
        "unchanged": float(np.mean([a["pred"] == b["pred"] for a, b in zip(rows, base, strict=True)])),
    }


def summarize(ems: Sequence[float], f1s: Sequence[float]) -> dict[str, float | list[float] | int]:
    return {
        "n": len(ems),
        "em": float(np.mean(ems)) if ems else float("nan"),
        "em_ci": list(bootstrap_ci(ems)),
        "f1": float(np.mean(f1s)) if f1s else float("nan"),
        "f1_ci": list(bootstrap_ci(f1s)),
    }
