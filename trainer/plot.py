"""Training curves from a run's `log.jsonl`: each receiver's loss per path, and validation F1 per step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _smooth(v: list[float], k: int = 20) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a if a.size < k else np.convolve(a, np.ones(k) / k, mode="valid")


def plot_training(log: str | Path, out: str | Path | None = None) -> Path:
    """`training.png` beside the log (or `out`): losses (smoothed; relay-tuned dashed) and val F1 by step."""
    log = Path(log)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("kind") == "step"]
    vals = [r for r in rows if r.get("kind") == "val"]
    keys = sorted({k for r in steps for k in r if "/" in k})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in keys:
        pts = [(r["step"], r[key]) for r in steps if key in r]
        y = _smooth([v for _, v in pts])
        x = [s for s, _ in pts][len(pts) - len(y) :]
        axes[0].plot(x, y, "--" if key.endswith("relay-tuned") else "-", label=key)
    axes[0].set(title="answer loss (smoothed)", xlabel="step")
    for key in sorted({k for r in vals for k in r if "/" in k}):
        pts = [(r["step"], r[key]) for r in vals if key in r]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], "o--" if key.endswith("tuned") else "o-", label=key)
    axes[1].set(title="validation F1", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out) if out else log.with_name("training.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
