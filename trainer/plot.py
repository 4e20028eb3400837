"""Training curves from a run's `log.jsonl`: loss per model, latent diversity, validation F1."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _smooth(v: list[float], k: int = 20) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    if a.size < k:
        return a
    return np.convolve(a, np.ones(k) / k, mode="valid")


def plot_training(log: str | Path, out: str | Path | None = None) -> Path:
    log = Path(log)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r["kind"] == "step"]
    evals = [r for r in rows if r["kind"] == "eval"]
    models = sorted({k.removeprefix("loss_").removeprefix("align_") for r in steps for k in r if k.startswith("loss_")})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style in [(f"loss_{n}", "-") for n in models] + [(f"loss_align_{n}", "--") for n in models]:
        pts = [(r["step"], r[key]) for r in steps if key in r]
        if not pts:
            continue
        y = _smooth([v for _, v in pts])
        x = [s for s, _ in pts][len(pts) - len(y) :]
        axes[0].plot(x, y, style, label=key[5:])
    axes[0].set(title="answer loss, align loss dashed (smoothed)", xlabel="step")
    axes[0].legend()
    axes[1].plot([r["step"] for r in steps], [r["diversity"] for r in steps], lw=0.8)
    axes[1].set(title="latent pairwise cosine (1 = collapse)", xlabel="step", ylim=(-1.05, 1.05))
    for name in models:
        pts = [(r["step"], r[name]["f1"]) for r in evals if name in r]
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    axes[2].set(title="validation F1 (latent)", xlabel="step")
    axes[2].legend()
    fig.tight_layout()
    out = Path(out) if out else log.with_name("training.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
