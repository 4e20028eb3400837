"""The engines side by side (`latentwire.engine`): `python -m latentwire.bench.engines --limit 50`.

For each engine, on the same questions: the whole checkpoint loaded with it, the sharer reading every question
afresh (no reading cache) and every receiver answering on each path asked for (no row cache), as eval serves them.
Per engine: prefill and decoding tokens per second (every model's forward passes timed, a pass over at least
`PREFILL_POSITIONS` positions per row counted as prefill), seconds per question, F1 per receiver and path, and
against the first engine (the reference, `float32`): the F1 difference and the share of answers unchanged word for
word. Writes `engines.json` (merged into the bench's results.json under `engines` by `--results`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from latentwire.data import Example, load_split
from latentwire.engine import ENGINES
from latentwire.evaluate import evaluate
from latentwire.metrics import paired
from latentwire.models import LLM
from latentwire.protocol import ENGINE_PATHS
from latentwire.system.pipeline import Wire, docs_of, load_checkpoint

PREFILL_POSITIONS = 8  # a forward pass over at least this many positions per row is timed as a prefill


class PassTimer:
    """Seconds and positions of every forward pass of the models it watches, split into prefill and decoding."""

    def __init__(self) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefill_tokens = self.decode_tokens = 0

    @contextlib.contextmanager
    def watch(self, llms: Sequence[LLM]) -> Iterator[PassTimer]:
        models = list({id(m.model): m.model for m in llms}.values())
        originals = [m.forward for m in models]
        for m, fwd in zip(models, originals, strict=True):
            m.forward = self._timed(fwd)
        try:
            yield self
        finally:
            for m, fwd in zip(models, originals, strict=True):
                m.forward = fwd

    def _timed(self, forward):
        def run(*args, **kwargs):
            x = kwargs.get("inputs_embeds")
            x = kwargs.get("input_ids") if x is None else x
            t0 = time.perf_counter()
            out = forward(*args, **kwargs)
            dt = time.perf_counter() - t0
            rows, positions = int(x.shape[0]), int(x.shape[1])
            if positions >= PREFILL_POSITIONS:
                self.prefill_s += dt
                self.prefill_tokens += rows * positions
            else:
                self.decode_s += dt
                self.decode_tokens += rows * positions
            return out

        return run

    def to_dict(self) -> dict[str, float]:
        return {
            "prefill_tok_s": self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0,
            "decode_tok_s": self.decode_tokens / self.decode_s if self.decode_s else 0.0,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "decode_tokens": self.decode_tokens,
        }


def measure(
    ckpt: str | Path,
    engines: Sequence[str] = tuple(ENGINES),
    split: str = "dev",
    limit: int = 50,
    paths: Sequence[str] = ("latent",),
    context: str = "distractor",
    progress: bool = True,
) -> dict:
    """`engines.<name>`: speed, F1 and (against the first engine) f1_delta and unchanged, on the same questions."""
    examples = load_split(split, limit=limit)
    out: dict = {"split": split, "n": len(examples), "paths": list(paths), "reference": engines[0], "engines": {}}
    answers: dict[str, dict[str, list[str]]] = {}
    for engine in engines:
        wire = load_checkpoint(ckpt, engine=engine, reading_cache=False)
        # read once per engine: the sender paths after the first take the readings from this fresh cache
        wire.encoder.use_cache(Path(tempfile.mkdtemp(prefix="engines-")))
        timer = PassTimer()
        rec: dict = {"f1": {}}
        answers[engine] = {}
        t0 = time.perf_counter()
        with timer.watch([*wire.llms.values(), wire.encoder.llm]):
            readings = wire.encoder.read(docs_of(examples, context), progress=progress)
            rec["sharer_s_per_q"] = (time.perf_counter() - t0) / len(examples)
            answers[engine]["sharer"] = [r.answer for r in readings]
            for name in wire.model_names:
                for path in paths:
                    res = evaluate(
                        wire.llms[name],
                        examples,
                        path,
                        context=context,
                        split=split,
                        use_cache=False,
                        progress=progress,
                        return_rows=True,
                        **wire.eval_args(name, path, context),
                    )
                    rec["f1"][f"{name}.{path}"] = res["f1"]
                    answers[engine][f"{name}.{path}"] = [r["pred"] for r in res["rows"]]
        rec.update(timer.to_dict())
        rec["s_per_q"] = (time.perf_counter() - t0) / len(examples)
        out["engines"][engine] = rec
        del wire
        gc.collect()
    ref = engines[0]
    for engine, rec in out["engines"].items():
        keys = list(rec["f1"])
        rec["f1_delta"] = {k: rec["f1"][k] - out["engines"][ref]["f1"][k] for k in keys}
        rec["unchanged"] = {
            k: float(np.mean([a == b for a, b in zip(answers[engine][k], answers[ref][k], strict=True)]))
            for k in ["sharer", *keys]
        }
        rec["speedup"] = out["engines"][ref]["s_per_q"] / rec["s_per_q"]
    return out


def compare_quality(
    wire: Wire,
    ckpt: str | Path,
    examples: Sequence[Example],
    reference: str = "float32",
    paths: Sequence[str] = ENGINE_PATHS,
    context: str = "distractor",
    split: str = "dev",
    progress: bool = True,
) -> dict:
    """The serving engine's answers (`wire`'s) against `reference`'s on every question, per receiver and path:
    F1 of both, the paired difference with its 95% CI and the share of answers unchanged word for word; and the
    sharer's. Rows come from the evaluation cache (keyed by engine), so a bench that measured these paths already
    reads only the reference afresh."""

    ref = load_checkpoint(ckpt, engine=reference)
    out: dict = {"engine": wire.encoder.llm.engine, "reference": reference, "n": len(examples), "paths": {}}
    docs = docs_of(examples, context)
    mine, theirs = wire.encoder.read(docs, progress=progress), ref.encoder.read(docs, progress=progress)
    out["sharer_unchanged"] = float(np.mean([a.answer == b.answer for a, b in zip(mine, theirs, strict=True)]))
    for name in wire.model_names:
        for path in paths:
            rows = [
                evaluate(
                    w.llms[name],
                    examples,
                    path,
                    context=context,
                    split=split,
                    return_rows=True,
                    progress=progress,
                    **w.eval_args(name, path, context),
                )["rows"]
                for w in (wire, ref)
            ]
            f1 = [float(np.mean([r["f1"] for r in v])) for v in rows]
            out["paths"][f"{name}.{path}"] = {"f1": f1[0], "f1_ref": f1[1], **paired(*rows)}
    del ref
    gc.collect()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint folder (default: the shipped one)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated; the first is the reference")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--paths", default="latent", help="comma-separated receiver paths")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results/engines.json")
    ap.add_argument("--results", default=None, help="a results.json to merge the figures into (key `engines`)")
    a = ap.parse_args(argv)
    from latentwire.checkpoint import DEFAULT_CKPT
    from latentwire.device import set_threads

    set_threads(a.threads)
    torch.manual_seed(0)
    res = measure(a.ckpt or DEFAULT_CKPT, a.engines.split(","), a.split, a.limit, a.paths.split(","))
    res["command"] = " ".join(["python -m latentwire.bench.engines", *(argv if argv is not None else sys.argv[1:])])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    if a.results:
        merged = json.loads(Path(a.results).read_text())
        merged["engines"] = res
        Path(a.results).write_text(json.dumps(merged, indent=2) + "\n")
    for name, rec in res["engines"].items():
        print(
            f"{name:10s} {rec['s_per_q']:6.2f} s/q  x{rec['speedup']:.2f}  prefill {rec['prefill_tok_s']:7.1f} tok/s  "
            f"decode {rec['decode_tok_s']:6.1f} tok/s  F1 delta "
            + " ".join(f"{k}={v:+.3f}" for k, v in rec["f1_delta"].items())
            + "  unchanged "
            + " ".join(f"{k}={v:.2f}" for k, v in rec["unchanged"].items())
        )


if __name__ == "__main__":
    main()
