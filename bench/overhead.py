"""Messaging overhead of the running system, models excluded: `python -m latentwire.bench.overhead [-n 200]`.

Runs `LocalSystem` on the tiny random models and a tiny checkpoint, asks `n` latent questions one at a time and
prints JSON: the overhead as `latentwire bench` computes it (end to end minus the encoder and the slowest
receiver's adapter + generation, `overhead_s`), and where it goes, from the timings every reply
carries: client <-> arbiter, the arbiter after the last reply, the hops arbiter -> sender -> receiver ->
arbiter (sender and receiver work excluded), the sender's framing, and the receiver's own work around the model;
then each role's CPU time per request.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def receiver_model_s(row: dict) -> float:
    """The slowest receiver's model work (adapter + generation) for one answered row."""
    return max(
        (r["durations"].get("adapt", 0.0) + r["durations"].get("generate", 0.0) for r in row["receivers"].values()),
        default=0.0,
    )


def overhead_s(row: dict) -> float:
    """End to end minus the model work: the sender's encoder and the slowest receiver's adapter + generation."""
    return max(0.0, row["e2e_s"] - row["durations"].get("sender.encode", 0.0) - receiver_model_s(row))


def _pct(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


def breakdown(rows: list[dict]) -> dict[str, Any]:
    """Overhead percentiles and its parts (ms) from `Answer.to_row()` rows of successful asks."""
    parts: dict[str, list[float]] = {
        "overhead": [],
        "client_arbiter": [],
        "arbiter_after_last_reply": [],
        "hops": [],
        "sender_frame": [],
        "receiver_non_model": [],
    }
    for r in rows:
        d, rec = r["durations"], r["receivers"]
        rtt = {m: x["durations"].get("rtt", 0.0) for m, x in rec.items()}
        last = max(rtt, key=lambda m: rtt[m])
        x = rec[last]["durations"]
        parts["overhead"].append(overhead_s(r))
        parts["client_arbiter"].append(r["e2e_s"] - d["e2e"])
        parts["arbiter_after_last_reply"].append(d["e2e"] - rtt[last])
        parts["hops"].append(rtt[last] - x["total"] - d.get("sender.encode", 0.0) - d.get("sender.frame", 0.0))
        parts["sender_frame"].append(d.get("sender.frame", 0.0))
        parts["receiver_non_model"].append(x["total"] - x.get("adapt", 0.0) - x.get("generate", 0.0))
    return {k: _pct(v) for k, v in parts.items()}


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process (the client) and of each role it started."""
    import psutil

    me = psutil.Process()
    out = {"client": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            cmd, t = child.cmdline(), child.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        role = next((r for r in ("sender", "receiver", "arbiter") if r in cmd), None)
        if role:
            out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def run(n: int = 200, warmup: int = 10, quant: str = "int8") -> dict[str, Any]:
    """The breakdown over `n` asks, and each role's CPU milliseconds per request (receivers summed; the sender's
    include its encoder, the receivers' their models): where the processes themselves spend time."""
    from latentwire.processes.up import LocalSystem
    from latentwire.trainer.tiny import tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        with (
            LocalSystem(ckpt, {"llama": "tiny-llama", "qwen": "tiny-qwen"}, timeout=30) as system,
            system.client() as c,
        ):
            items = [(i, f"Who wrote book {i}?", f"Book {i} was written by Ada Lovelace.") for i in range(n + warmup)]
            list(c.ask_many(items[:warmup], window=1, quant=quant, max_new_tokens=4))
            before = _cpu_seconds()
            rows = [a.to_row() for a in c.ask_many(items[warmup:], window=1, quant=quant, max_new_tokens=4)]
            after = _cpu_seconds()
    ok = [r for r in rows if r["ok"]]
    cpu = {k: round((after[k] - before.get(k, 0.0)) / max(1, len(rows)) * 1e3, 3) for k in after}
    return {"n": len(ok), "failed": len(rows) - len(ok), "quant": quant, **breakdown(ok), "cpu_ms_per_request": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="questions, asked one at a time")
    ap.add_argument("--quant", default="int8")
    a = ap.parse_args()
    print(json.dumps(run(a.n, quant=a.quant), indent=2))


if __name__ == "__main__":
    main()
