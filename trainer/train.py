"""The recipe: fit encoder + one adapter per model against frozen LLMs, on answer next-token loss.

One latent serves every model: each step encodes a batch once, maps it through every adapter, and sums the
models' answer losses. Runs as is on one CPU, or on several GPUs/processes under `accelerate launch` or
`torchrun` (Accelerate handles DDP; every rank reads its own slice of each global batch).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from latentwire import checkpoint
from latentwire.data import Example, load_split
from latentwire.device import resolve_device
from latentwire.evaluate import evaluate
from latentwire.lm import answer_loss, assemble
from latentwire.models import LLM, load_llm
from latentwire.prompts import answer_ids, example_slot
from latentwire.receivers.adapter import Adapter, AdapterConfig
from latentwire.receivers.calibration import fit_platt
from latentwire.sender.encoder import LatentEncoder

from .align import align_loss, slot_accuracy, slot_targets
from .config import TrainConfig
from .features import FeatureCache
from .teacher import TeacherCache


class TrainableWire(nn.Module):
    """Encoder + adapters as one module, so DDP sees a single forward."""

    def __init__(self, encoder: LatentEncoder, adapters: dict[str, Adapter]):
        super().__init__()
        self.encoder = encoder
        self.adapters = nn.ModuleDict(adapters)

    def forward(
        self, texts: list[str] | None = None, feats: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.encoder(texts) if feats is None else self.encoder.pool(feats, mask)
        return z, {name: ad(z) for name, ad in self.adapters.items()}


def latent_diversity(z: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the latents of different questions (1.0 = collapsed to one vector)."""
    flat = nn.functional.normalize(z.flatten(1).float(), dim=-1)
    sim = flat @ flat.T
    n = flat.shape[0]
    return (sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1)


@dataclass
class Prepared:
    texts: list[str]
    answers: dict[str, list[list[int]]]
    align: dict[str, torch.Tensor]  # (N, M) alignment targets per model (align.py)


def prepare(rows: list[Example], llms: dict[str, LLM], cfg: TrainConfig) -> Prepared:
    if cfg.align_target not in ("answer", "question"):
        raise ValueError(f"align_target must be answer or question, not {cfg.align_target!r}")
    texts = [example_slot(ex, cfg.context) for ex in rows]
    answers, align = {}, {}
    for name, llm in llms.items():
        tok, eos = llm.tokenizer, llm.tokenizer.eos_token_id
        # long answers are cut, but always end with the end-of-turn token
        answers[name] = [answer_ids(tok, ex.answer, eos)[:-1][: cfg.max_answer_tokens] + [eos] for ex in rows]
        seqs = (
            answers[name]
            if cfg.align_target == "answer"
            else [tok(ex.question, add_special_tokens=False)["input_ids"] for ex in rows]
        )
        align[name] = slot_targets(seqs, cfg.encoder.m, skip=eos)
    return Prepared(texts, answers, align)


def build_wire(cfg: TrainConfig, llms: dict[str, LLM]) -> TrainableWire:
    enc = LatentEncoder(cfg.encoder)
    adapters = {
        name: Adapter(
            AdapterConfig(
                d_z=cfg.encoder.d_z, hidden_size=llm.hidden_size, target_rms=llm.embed_rms, depth=cfg.adapter_depth
            )
        )
        for name, llm in llms.items()
    }
    return TrainableWire(enc, adapters)


def _lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def checkpoint_config(
    cfg: TrainConfig,
    wire: TrainableWire,
    llms: dict[str, LLM],
    calibration: dict | None = None,
    summary: dict | None = None,
) -> dict:
    return {
        "encoder": cfg.encoder.to_dict(),
        "models": {
            name: {
                "spec": llm.spec,
                "fingerprint": llm.fingerprint,
                "hidden_size": llm.hidden_size,
                "adapter": wire.adapters[name].cfg.to_dict(),
                "calibration": (calibration or {}).get(name, {}),
            }
            for name, llm in llms.items()
        },
        "train": cfg.to_dict(),
        "summary": summary or {},
    }


RESUMABLE = ("max_steps", "time_budget", "eval_every", "device", "dtype")  # may change between resumed sessions


def _check_resumable(saved: dict, cfg: TrainConfig, out: Path) -> None:
    """Refuse to continue a run folder with another recipe: its checkpoint would claim a config it never had."""
    now = cfg.to_dict()
    diffs = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE and saved.get(k) != now.get(k))
    if diffs:
        raise ValueError(
            f"{out} holds a run trained with another config ({', '.join(diffs)} differ); "
            "use another --out, or --no-resume to start over there"
        )


def training_data(cfg: TrainConfig, limit: int | None = None) -> tuple[list[Example], list[Example]]:
    """The recipe's rows: `train` (first `limit`), plus `train_extra` if asked; the fixed validation subset."""
    rows = load_split("train", limit=limit) + (load_split("train_extra") if cfg.train_extra else [])
    return rows, load_split("val", limit=cfg.eval_n)


def eval_record(step: int, res: dict, final: bool = False) -> dict:
    """One line of the JSONL log for a validation evaluation."""
    keys = ("n", "em", "f1", "nll_per_token", "align_acc")
    per_model = {n: {k: r[k] for k in keys if k in r} for n, r in res.items()}
    return {"kind": "eval", "step": step, "split": "val", **({"final": True} if final else {}), **per_model}


def train(
    cfg: TrainConfig,
    out: str | Path,
    llms: dict[str, LLM] | None = None,
    data: tuple[list[Example], list[Example]] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train and write `out/ckpt` (servable checkpoint), `out/log.jsonl` and `out/state.pt` (resume)."""
    out = Path(out)
    dev = resolve_device(cfg.device)
    acc = Accelerator(cpu=dev.type == "cpu")
    main = acc.is_main_process
    torch.manual_seed(cfg.seed)
    if llms is None:
        llms = {name: load_llm(name, device=str(acc.device), dtype=cfg.dtype) for name in cfg.models}
    train_rows, val_rows = data if data is not None else training_data(cfg)
    prep = prepare(train_rows, llms, cfg)
    wire = build_wire(cfg, llms).to(acc.device)
    cache = FeatureCache(wire.encoder) if wire.encoder.frozen_backbone else None
    if cache is not None and main:
        cache.warm(prep.texts + [example_slot(ex, cfg.context) for ex in val_rows], progress=progress)
    teachers: dict[str, TeacherCache] = {}
    if cfg.distill_weight:
        teacher_texts = [example_slot(ex, cfg.distill_context) for ex in train_rows]
        teachers = {name: TeacherCache(llm, cfg.distill_topk) for name, llm in llms.items()}
        if main:
            for name, tc in teachers.items():
                tc.warm(teacher_texts, prep.answers[name], progress=progress)
    acc.wait_for_everyone()
    params = [p for p in wire.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, epoch_pos, rng_state = 0, 0.0, 0, None
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        _check_resumable(st.get("config", {}), cfg, out)
        wire.load_state_dict(st["wire"])
        opt.load_state_dict(st["opt"])
        step, elapsed, epoch_pos, rng_state = st["step"], st["elapsed"], st["epoch_pos"], st["rng"]
    wire, opt = acc.prepare(wire, opt)
    rng = np.random.default_rng(cfg.seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    order = rng.permutation(len(train_rows)) if rng_state is None else np.asarray(st["order"])
    out.mkdir(parents=True, exist_ok=True)

    def log(record: dict) -> None:
        if main:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    gb = cfg.batch_size * acc.num_processes
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and main), desc="train", unit="step")
    t_start, seen, last_eval = time.perf_counter() - elapsed, 0, None
    t_session = time.perf_counter()  # examples/s counts this session only (resume-safe)
    losses: list[float] = []
    div = torch.tensor(0.0)

    val_prep = prepare(val_rows, llms, cfg)  # validation texts and alignment targets, tokenised once

    def slot_batch(model: nn.Module, texts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if cache is None:
            return model(texts=texts)
        f, m = cache.features(texts)
        return model(feats=f.to(acc.device), mask=m.to(acc.device))

    def run_eval() -> dict:
        nonlocal last_eval
        model = acc.unwrap_model(wire)
        model.eval()

        @torch.no_grad()
        def slot_fn(examples, name: str, dtype: torch.dtype) -> list[torch.Tensor]:
            texts = [example_slot(ex, cfg.context) for ex in examples]
            return list(slot_batch(model, texts)[1][name].to(dtype))

        res = {
            name: evaluate(
                llm,
                val_rows,
                "latent",
                context=cfg.context,
                split="val",
                use_cache=False,
                progress=False,
                slot_fn=partial(slot_fn, name=name, dtype=llm.model.dtype),
                return_rows=True,
                max_new_tokens=cfg.max_new_tokens,
            )
            for name, llm in llms.items()
        }
        with torch.no_grad():
            chunks = [slot_batch(model, val_prep.texts[i : i + 16])[1] for i in range(0, len(val_prep.texts), 16)]
        for name, llm in llms.items():  # is the alignment target readable in the latent? (align.py)
            soft = torch.cat([c[name] for c in chunks])
            res[name]["align_acc"] = slot_accuracy(llm, soft, val_prep.align[name])
        model.train()
        last_eval = res
        return res

    def save(final: bool) -> Path:
        model = acc.unwrap_model(wire)
        summary = {
            "steps": step,
            "wall_s": round(time.perf_counter() - t_start, 1),
            "examples": step * gb,
            "examples_per_s": round(step * gb / max(time.perf_counter() - t_start, 1e-9), 3),
            "latent_diversity": div.item(),
            "world_size": acc.num_processes,
        }
        calib = None
        if final and last_eval:
            calib = {
                n: fit_platt(
                    [r["score"] for r in last_eval[n]["rows"]], [r["f1"] for r in last_eval[n]["rows"]]
                ).to_dict()
                for n in llms
            }
            summary["val"] = {n: {k: last_eval[n][k] for k in ("n", "em", "f1", "nll_per_token")} for n in llms}
        checkpoint.save(
            out / "ckpt", model.encoder, dict(model.adapters), checkpoint_config(cfg, model, llms, calib, summary)
        )
        torch.save(
            {
                "wire": model.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": time.perf_counter() - t_start,
                "epoch_pos": epoch_pos,
                "rng": rng.bit_generator.state,
                "order": order.tolist(),
                "config": cfg.to_dict(),
            },
            state_path,
        )
        return out / "ckpt"

    already_done = step > 0 and (
        (cfg.max_steps and step >= cfg.max_steps) or (cfg.time_budget and elapsed >= cfg.time_budget)
    )
    if already_done and (out / "ckpt" / checkpoint.CONFIG).is_file():
        return out / "ckpt"  # a finished run: rewriting it would change the fingerprint receivers serve
    wire.train()
    while True:
        elapsed = time.perf_counter() - t_start
        prog = max(
            step / cfg.max_steps if cfg.max_steps else 0.0, elapsed / cfg.time_budget if cfg.time_budget else 0.0
        )
        stop = torch.tensor([float(prog >= 1.0)], device=acc.device)
        if acc.reduce(stop, reduction="sum").item() > 0:
            break
        if epoch_pos + gb > len(order):
            order, epoch_pos = rng.permutation(len(train_rows)), 0
        idx = order[epoch_pos : epoch_pos + gb][acc.process_index :: acc.num_processes]
        epoch_pos += gb
        z, soft = slot_batch(wire, [prep.texts[i] for i in idx])
        loss = torch.zeros((), device=acc.device)
        per_model = {}
        aligning = step < cfg.align_steps  # warm-up phase: no LLM forward at all
        for name, llm in llms.items():
            if aligning or cfg.align_weight:
                a_loss = align_loss(llm, soft[name], prep.align[name][torch.as_tensor(idx)])
                per_model[f"align_{name}"] = a_loss.item()
                loss = loss + (1.0 if aligning else cfg.align_weight) * a_loss / len(llms)
            if aligning:
                continue
            answers = [prep.answers[name][i] for i in idx]
            batch = assemble(llm, list(soft[name]), answers, cached_prefix=True)  # prefix KV computed once
            teacher = teachers[name].batch([teacher_texts[i] for i in idx], answers, batch.keep) if teachers else None
            lm_loss = answer_loss(llm, batch, cfg.first_weight, teacher, cfg.distill_weight)
            per_model[name] = lm_loss.item()
            loss = loss + lm_loss / len(llms)
        div = latent_diversity(z)
        if cfg.diversity_weight:
            loss = loss + cfg.diversity_weight * div
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(cfg, step, prog)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seen += len(idx) * acc.num_processes
        losses.append(float(loss.detach()))
        rate = seen / max(time.perf_counter() - t_session, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", div=f"{div.item():.3f}", ex_s=f"{rate:.2f}")
        log(
            {
                "kind": "step",
                "step": step,
                "loss": loss.item(),
                **{f"loss_{k}": v for k, v in per_model.items()},
                "diversity": div.item(),
                "lr": opt.param_groups[0]["lr"],
                "elapsed": round(time.perf_counter() - t_start, 2),
            }
        )
        if cfg.eval_every and step > cfg.align_steps and (step - cfg.align_steps) % cfg.eval_every == 0:
            if main:
                log(eval_record(step, run_eval()))
                save(final=False)
            acc.wait_for_everyone()
    bar.close()
    ckpt = out / "ckpt"
    if main:
        log(eval_record(step, run_eval(), final=True))
        ckpt = save(final=True)
        from .plot import plot_training

        plot_training(out / "log.jsonl")
    acc.wait_for_everyone()
    return ckpt
