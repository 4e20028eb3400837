"""Evaluate one model on one split on one path (text, token-budget, evidence, relay, latent), cached and resumable.

Per-question results are appended to `$LATENTWIRE_CACHE/eval/<key>.jsonl` as they are produced, keyed by
(model fingerprint, checkpoint fingerprint, split, context, path, budget, prompt version), so an
interrupted 30-80 minute text-path run resumes where it stopped and a rerun costs nothing. The repository
commits the rows of its published runs under `latentwire/rows/<key>.jsonl` (`ROWS_DIR`): a fresh clone starts from
them and recomputes only what changed (another model, checkpoint or prompt has another key).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Example
from .lm import generate, template_of, text_slots
from .metrics import exact_match, f1_score, postprocess, summarize
from .models import LLM, cache_root
from .prompts import PROMPT_VERSION, example_slot
from .protocol import PATH_NAMES, path_spec

SlotFn = Callable[[Sequence[Example]], list[torch.Tensor]]  # examples -> this model's slot embeddings


# the published runs' rows, seeding the cache: package data beside this module, so a wheel install has them too
ROWS_DIR = Path(__file__).resolve().parent / "rows"


def cache_key(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _check(ex: Example, context: str) -> str:
    """A row is reused only for the same question, context and gold answer (ids alone can collide across data)."""
    return hashlib.sha256(f"{example_slot(ex, context)}\x00{ex.answer}".encode()).hexdigest()[:16]


def _load_done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by an interruption is simply redone
    return done


def evaluate(
    llm: LLM,
    examples: Sequence[Example],
    path: str = "text",
    *,
    context: str = "distractor",
    split: str = "dev",
    budget: int = 8,
    slot_fn: SlotFn | None = None,
    slot_fingerprint: str = "",
    batch_size: int | None = None,
    max_new_tokens: int = 16,
    use_cache: bool = True,
    progress: bool = True,
    return_rows: bool = False,
) -> dict:
    """EM/F1 (with bootstrap CIs), NLL/token of the gold answer, prompt size and speed, as a JSON-able dict.

    `slot_fn` turns examples into slot embeddings for the paths that go through the sender (evidence, relay:
    its selection and its sharer; latent: encoder + this model's adapter); `slot_fingerprint` (the
    checkpoint's) then enters the cache key.
    """
    if path not in PATH_NAMES:
        raise ValueError(f"unknown path {path!r}; choose one of {', '.join(PATH_NAMES)}")
    spec = path_spec(path)
    if spec.sender and slot_fn is None:
        raise ValueError(f"the {path} path needs a checkpoint (its sender's selector, sharer or encoder)")
    if slot_fn is None:
        cut = budget if spec.budget else None
        slot_fn = lambda exs: text_slots(llm, [example_slot(ex, context) for ex in exs], cut)  # noqa: E731
    # a text prompt is ~1,500 tokens: batched four at a time where bfloat16's matrix units take the padding in
    # their stride (4.1 s a question against 6.0 alone for Qwen), one at a time in float32 (19.0 against 6.5)
    batch_size = batch_size or ((1 if llm.engine == "float32" else 4) if spec.whole_context else 16)
    key = cache_key(
        model=llm.fingerprint,
        slot=slot_fingerprint,
        split=split,
        context=context,
        mode=path,  # keyed "mode", its name before "path": another name would change every key
        budget=budget if spec.budget else None,
        prompt=PROMPT_VERSION,
        max_new_tokens=max_new_tokens,
        # float32 is the reference; other dtypes (bf16 on CUDA) and engines answer differently, so they key apart
        **({"dtype": str(llm.model.dtype)} if llm.model.dtype != torch.float32 else {}),
        **({"engine": llm.engine} if llm.engine != "float32" else {}),
    )
    rows_file = cache_root() / "eval" / f"{key}.jsonl" if use_cache else Path(os.devnull)
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    done = {**_load_done(ROWS_DIR / rows_file.name), **_load_done(rows_file)} if use_cache else {}
    checks = {ex.id: _check(ex, context) for ex in examples}
    for ex in examples:  # rows written for another question under the same id are redone
        if ex.id in done and done[ex.id].get("check", checks[ex.id]) != checks[ex.id]:
            del done[ex.id]
    # similar lengths batched together pad little; rows are returned in the examples' order whatever the batches
    todo = sorted((ex for ex in examples if ex.id not in done), key=lambda ex: len(example_slot(ex, context)))
    tpl = template_of(llm)
    start = time.perf_counter()
    bar = tqdm(
        total=len(examples),
        initial=len(examples) - len(todo),
        disable=not progress,
        desc=f"eval {llm.name} {path}/{context}",
        unit="q",
    )
    with open(rows_file, "a") as sink:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            t0 = time.perf_counter()
            texts = [example_slot(ex, context) for ex in chunk]
            with torch.no_grad():
                slots = slot_fn(chunk)
                gens = generate(llm, slots, max_new_tokens=max_new_tokens, answers=[ex.answer for ex in chunk])
            dt = (time.perf_counter() - t0) / len(chunk)
            for ex, text, slot, g in zip(chunk, texts, slots, gens, strict=True):
                pred = postprocess(g.text)
                row = {
                    "id": ex.id,
                    "check": checks[ex.id],
                    "raw": g.text,
                    "pred": pred,
                    "gold": ex.answer,
                    "score": g.score,
                    "nll": g.nll,
                    "em": exact_match(pred, ex.answer),
                    "f1": f1_score(pred, ex.answer),
                    "prompt_tokens": len(tpl.prefix_ids) + int(slot.shape[0]) + len(tpl.suffix_ids),
                    "new_tokens": len(g.token_ids),  # generated before the answer ended (the stop not counted)
                    "slot_bytes": len(text.encode()),
                    "seconds": dt,
                }
                done[ex.id] = row
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            bar.update(len(chunk))
    bar.close()
    rows = [done[ex.id] for ex in examples]
    return {
        "model": llm.spec,
        "model_fingerprint": llm.fingerprint[:16],
        "path": path,
        "context": context,
        "split": split,
        **({"budget": budget} if spec.budget else {}),
        **summarize([r["em"] for r in rows], [r["f1"] for r in rows]),
        "nll_per_token": float(np.mean([r["nll"] for r in rows])) if rows else float("nan"),
        "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rows])) if rows else 0.0,
        "slot_bytes": float(np.mean([r["slot_bytes"] for r in rows])) if rows else 0.0,
        # rows cached before the count was kept do not have it
        **(
            {"new_tokens": float(np.mean(counts))}
            if (counts := [r["new_tokens"] for r in rows if "new_tokens" in r])
            else {}
        ),
        "seconds_per_question": float(np.mean([r["seconds"] for r in rows])) if rows else 0.0,
        "wall_s": time.perf_counter() - start,
        "cache": str(rows_file) if use_cache else None,
        **({"rows": rows} if return_rows else {}),
    }
