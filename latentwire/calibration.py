"""Score calibration and the joint pick, shared by the receivers (which announce their maps), the arbiter (which
picks), the trainer (which fits the maps) and the bench (which scores the pick offline).

Raw mean log-probabilities of two models with different tokenizers are not comparable. Each receiver's raw
score is mapped to P(answer is right) by Platt scaling fitted on the validation slice, and stored with the
checkpoint; the arbiter compares calibrated scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from latentwire.metrics import normalize_answer, summarize
from latentwire.protocol import WIRE_PATHS


@dataclass(frozen=True)
class Calibration:
    a: float = 1.0
    b: float = 0.0
    n: int = 0
    positives: int = 0

    def __call__(self, score: float) -> float:
        """P(correct) for a raw score; non-finite scores get 0."""
        if not math.isfinite(score):
            return 0.0
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, self.a * score + self.b))))

    def to_dict(self) -> dict:
        return asdict(self)


def announced(fitted: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """What a receiver announces in its heartbeats (`Heartbeat.calibration`) from its checkpoint entry's maps: (a, b)
    of each path an Ask may name (the others are measured in-process, never asked over the wire)."""
    return {path: (float(c["a"]), float(c["b"])) for path, c in fitted.items() if path in WIRE_PATHS}


def fit_platt(scores: Sequence[float], correct: Sequence[float], ridge: float = 1e-2, iters: int = 50) -> Calibration:
    """Logistic regression of `correct` (0/1 or F1 in [0,1]) on `scores`, by Newton's method with a small ridge.

    With the standard Platt prior-smoothed targets, so a slice with no (or only) correct answers still gives a
    finite, monotone map instead of diverging.
    """
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return Calibration()
    pos = float(y.sum())
    t = (y * (pos + 1) / (pos + 2)) + ((1 - y) / (x.size - pos + 2))  # Platt's smoothed targets
    X = np.stack([x, np.ones_like(x)], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -50, 50)))
        grad = X.T @ (p - t) + ridge * w
        H = (X.T * (p * (1 - p))) @ X + ridge * np.eye(2)
        step = np.linalg.solve(H, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return Calibration(float(w[0]), float(w[1]), int(x.size), int(round(pos)))


def pick(answers: dict[str, tuple[str, float]], calibrations: dict[str, Calibration]) -> str:
    """The joint answer's model: a soft vote over the receivers' calibrated scores.

    `answers` maps model name -> (answer, raw score). Non-empty answers come first; then the answer (after the
    official normalisation) whose receivers' calibrated scores sum highest, so two receivers that agree outvote
    a third that is sure of something else; within it the receiver with the highest calibrated score, then the
    name. With two receivers this is the higher calibrated score (agreeing ones give the same answer anyway).
    The arbiter and the bench both call this.
    """
    if not answers:
        raise ValueError("no answers to pick from")
    cal = {n: calibrations.get(n, Calibration())(answers[n][1]) for n in answers}
    key = {n: normalize_answer(answers[n][0]) for n in answers}
    support: dict[str, float] = {}
    for n in answers:
        support[key[n]] = support.get(key[n], 0.0) + cal[n]
    return min(answers, key=lambda n: (not answers[n][0].strip(), -support[key[n]], -cal[n], n))


def agreement(answers: list[str]) -> bool:
    """At least two answers, all equal after the official normalisation."""
    return len(answers) >= 2 and len({normalize_answer(a) for a in answers}) == 1


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
