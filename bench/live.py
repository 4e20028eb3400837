"""Latency and bytes over the live processes: latent (per quantisation) against the text path.

Starts the whole system (`latentwire up`) on free loopback ports with one receiver per model of the checkpoint
(or the receivers given), sends the same questions one at a time per path, and reads end-to-end latency
(client-measured), bytes on the wire and the messaging overhead (everything but the encoder and the receivers'
adapter + generation) from the replies. Every answer is scored against the gold answer (EM/F1 of the joint
answer; a failed question scores 0 and is counted apart). With `throughput_n`, the same questions are also
sent with one and with `window` requests in flight: requests per second and latency of both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentwire.checkpoint import read_config
from latentwire.data import Example
from latentwire.processes.client import summarize_answers
from latentwire.processes.up import LocalSystem, receiver_name
from latentwire.protocol import path_spec

from .overhead import overhead_s, receiver_model_s
from .overhead import run as idle_overhead

QUANTS = ("fp16", "int8", "int4")
REFERENCE_THREADS = {"sender": 1, "receiver": 1}  # how every process ran before the sender's reading took every core


def stages(rows: Sequence[dict]) -> dict[str, float]:
    """Where a path's end-to-end time goes (p50 s over answered rows): the sender's reading and encoding, the
    slowest receiver's adapter + generation, and the rest (messaging, `overhead_s`)."""
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return {}
    return {
        "sender_encode_p50_s": float(np.percentile([r["durations"].get("sender.encode", 0.0) for r in ok], 50)),
        "slowest_receiver_model_p50_s": float(np.percentile([receiver_model_s(r) for r in ok], 50)),
        "overhead_p50_s": float(np.percentile([overhead_s(r) for r in ok], 50)),
    }


def cpu_costs(rows: Sequence[dict], arbiter_cpu_s: float, receivers: int) -> dict:
    """CPU-seconds per answered question summed over every process, as it grows with the receivers: the sender's
    share of its batches (`sender.cpu`, measured by the sender itself), the arbiter's (its own CPU time over the
    run, from its status), and each receiver's share of its batches (`cpu`). `<n>.cpu_s` for n = 1..`receivers`
    counts the sender and the arbiter once and the mean receiver n times: one reading shared by n receivers."""
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return {}
    sender = float(np.mean([r["durations"].get("sender.cpu", 0.0) for r in ok]))
    per_rx: dict[str, list[float]] = {}
    for r in ok:
        for m, rep in r["receivers"].items():
            if "cpu" in rep["durations"]:
                per_rx.setdefault(m, []).append(rep["durations"]["cpu"])
    rx = {m: float(np.mean(v)) for m, v in per_rx.items()}
    mean_rx = float(np.mean(list(rx.values()))) if rx else 0.0
    arbiter = arbiter_cpu_s / len(ok)
    out: dict = {"sender_cpu_s": sender, "arbiter_cpu_s": arbiter, "receiver_cpu_s": rx, "n": len(ok)}
    for n in range(1, receivers + 1):
        out[str(n)] = {"cpu_s": sender + arbiter + n * mean_rx}
    return out


def _arbiter_cpu(client) -> float:
    st = client.status(timeout=5.0)
    return float(st.info.get("cpu_s", 0.0)) if st is not None else 0.0


def checkpoint_receivers(ckpt: Path) -> dict[str, str]:
    """One receiver per model of the checkpoint: {process name: model}, the model being its name in the checkpoint
    (what the receiver loads and finds its adapter by)."""
    out: dict[str, str] = {}
    for name in read_config(ckpt)["models"]:
        key = receiver_name(name)
        out[key if key not in out else f"{key}-{len(out)}"] = name
    return out


def _ask(
    client, examples: Sequence[Example], context: str, gold: dict, label: str, progress: bool, window: int = 1, **opts
) -> list[dict]:
    items = [(ex.id, ex.question, ex.context(context)) for ex in examples]
    answers = client.ask_many(items, window=window, **opts)
    bar = tqdm(answers, total=len(items), disable=not progress, desc=f"live {label}", unit="q")
    return [{**a.to_row(), "gold": gold[a.tag]} for a in bar]


def live_latency(
    ckpt: Path,
    examples: Sequence[Example],
    context: str = "distractor",
    progress: bool = True,
    timeout: float = 120.0,
    text_n: int = 20,
    receivers: Mapping[str, str] | None = None,
    quants: Sequence[str] = QUANTS,
    throughput_n: int = 0,
    window: int = 8,
    reference_engine: str | None = "float32",
    idle_overhead_n: int = 200,
    evidence_n: int = 0,
    threads: Mapping[str, int] | None = None,
    reference_threads: Mapping[str, int] | None = REFERENCE_THREADS,
    engine: str = "auto",
) -> dict:
    """The latent path (one run per wire scheme in `quants`) over the questions, the text path (a ~1,500-token
    prompt per receiver) on the first `text_n`; then, if `throughput_n`, the first `throughput_n` latent
    questions (the first scheme) with 1 and with `window` in flight. With `reference_engine`, the latent path
    (the first scheme) again with every process on that engine and `reference_threads` (default: one thread per
    process, as float32 served before threads followed the work): `engine_speedup` is its p50 over the serving
    system's. With `idle_overhead_n`, the messaging overhead on an idle system of tiny models (`overhead.py`).
    `evidence_n`: the evidence path (each receiver reads the question + the selected evidence) on the first ones.
    `cost.<path>`: its CPU-seconds per question for 1..n receivers (`cpu_costs`). `threads`: per role
    (`sender`, `receiver`), as `LocalSystem` takes them.

    `receivers`: {process name: model} (default: every model of the checkpoint, `checkpoint_receivers`)."""
    from latentwire.engine import resolve_engine

    receivers = dict(receivers or checkpoint_receivers(ckpt))
    gold = {ex.id: ex.answer for ex in examples}
    engine = resolve_engine(engine, "cpu")  # what the processes resolve: `auto` reads this environment, as they do
    out: dict = {"paths": {}, "context": context, "receivers": receivers, "engine": engine}
    overheads: list[float] = []
    out["threads"] = dict(threads or {})
    system = LocalSystem(ckpt, receivers, timeout=timeout, threads=threads, engine=engine)
    with system, system.client() as client:
        runs = [("latent", q, examples) for q in quants] + ([("text", None, examples[:text_n])] if text_n else [])
        runs += [("evidence", None, examples[:evidence_n])] if evidence_n else []
        for path, quant, subset in runs:
            label = f"{path}:{quant}" if quant else path
            cpu0 = _arbiter_cpu(client)
            rows = _ask(
                client, subset, context, gold, label, progress, path=path, **({"quant": quant} if quant else {})
            )
            cost = cpu_costs(rows, _arbiter_cpu(client) - cpu0, len(receivers))
            out["paths"][label] = {**summarize_answers(rows), "stages": stages(rows)}
            out.setdefault("cost", {}).setdefault(path, {**cost, "label": label})  # latent: its first scheme
            if path_spec(path).latent:
                overheads += [overhead_s(r) for r in rows if r["ok"]]
        if throughput_n and quants:
            out["throughput"] = {"path": f"latent:{quants[0]}", "n": min(throughput_n, len(examples))}
            for w in (1, window):
                t0 = time.perf_counter()
                rows = _ask(
                    client,
                    examples[:throughput_n],
                    context,
                    gold,
                    f"{w} in flight",
                    progress,
                    window=w,
                    path="latent",
                    quant=quants[0],
                )
                wall = time.perf_counter() - t0
                ok = [r["e2e_s"] for r in rows if r["ok"]]
                out["throughput"][f"window_{w}"] = {
                    "window": w,
                    "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
                    "latency_p50_s": float(np.percentile(ok, 50)) if ok else None,
                    "failed": len(rows) - len(ok),
                }
            one, many = out["throughput"]["window_1"], out["throughput"][f"window_{window}"]
            out["throughput"]["speedup"] = (
                many["requests_per_s"] / one["requests_per_s"] if one["requests_per_s"] else None
            )
    if overheads:
        out["overhead"] = {"p50": float(np.percentile(overheads, 50)), "p95": float(np.percentile(overheads, 95))}
    if reference_engine and reference_engine != engine and quants:
        label = f"latent:{quants[0]}"
        reference = LocalSystem(ckpt, receivers, timeout=timeout, engine=reference_engine, threads=reference_threads)
        with reference as system, system.client() as c:
            rows = _ask(
                c, examples, context, gold, f"{label} {reference_engine}", progress, path="latent", quant=quants[0]
            )
        ref = {
            **summarize_answers(rows),
            "stages": stages(rows),
            "engine": reference_engine,
            "threads": dict(reference_threads or {}),
        }
        out["engine_reference"] = ref
        mine, theirs = out["paths"][label].get("latency_p50_s"), ref.get("latency_p50_s")
        out["engine_speedup"] = theirs / mine if mine and theirs else None
    if idle_overhead_n:
        idle = idle_overhead(idle_overhead_n)["overhead"]
        out["overhead_idle"] = {"p50": idle["p50_ms"] / 1e3, "p95": idle["p95_ms"] / 1e3, "n": idle_overhead_n}
    return out
