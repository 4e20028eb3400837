"""The gradient loop of the interlingua: the trained parts learn through every frozen receiver at once.

What trains (everything else stays frozen: the sharer, every receiver, the codes, the selector):
- the sender's hidden channel (`sender/sharer.py: HiddenChannel`), shared by all receivers, so one latent serves
  them all; `train_sender=False` (a family joining a checkpoint) keeps it as the parent's;
- per receiver: its soft prompt, its low-rank residual and tau (`receivers/adapter.py`), and the text twin of the
  prompt on relay's text (`relay-tuned`: the same parts, data and steps, so the bench shows what the latent
  adds beyond prompt tuning).

Losses per step, summed over receivers: gold-answer cross-entropy on the latent path and on the relay-tuned path
(`lm.answer_loss`, the sequence `lm.assemble` builds for serving); optionally `distill_weight` x cross-entropy
on the sharer's own answer (sequence-level distillation, bridged by the answer's string); and `channel_weight` x
the channel's mean squared contribution (its size relative to the unit-norm codes).

The loop reads the sharer's cached readings only (`SharerEncoder.read` fills the cache first), so a step costs
the receivers' forward and backward passes alone. Multi-GPU runs go through Accelerate: the trained parts are one
module (`TrainedParts`) that `Accelerator.prepare` wraps, each process draws its own batches, gradients are
averaged by DDP. Resumable: `state.pt` holds the parts, the optimiser, the schedule and the step.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from latentwire.data import Example
from latentwire.lm import answer_loss, assemble, text_slots
from latentwire.models import LLM
from latentwire.prompts import answer_ids
from latentwire.protocol import TRAINED_PATHS, path_spec
from latentwire.sender.sharer import Reading, SharerEncoder


@dataclass
class LoopConfig:
    # what every recipe sets (`from_recipe`): their defaults are the recipes', none here
    steps: int
    batch_size: int
    lr: float
    eval_every: int  # validate (and keep the best step) every N steps; 0: only at the end
    warmup: int = 20
    first_weight: float = 2.0  # the first answer token decides the answer's form: weight it up
    distill_weight: float = 0.0
    channel_weight: float = 0.1
    seed: int = 0
    # the frozen receivers' forward and backward passes under bfloat16 autocast (the trained parts and the loss
    # stay float32): 2-4x faster on CPUs with AMX/AVX512-BF16 and on GPUs; serving stays in the model's dtype
    bf16: bool = True

    @classmethod
    def from_recipe(cls, recipe: object) -> LoopConfig:
        """The loop's settings from a recipe (`TrainRecipe`, `ExtendRecipe`): the fields they share by name."""
        return cls(**{f.name: getattr(recipe, f.name) for f in fields(cls) if hasattr(recipe, f.name)})


def training_data(
    encoder: SharerEncoder, train: Sequence[Example], val: Sequence[Example], context: str, progress: bool = True
) -> list[tuple[Reading, Example]]:
    """The sharer's readings of `train` (and of `val`, which validation reads), from the reading cache or read
    into it: the loop itself never runs the sharer."""
    from latentwire.system.pipeline import docs_of

    readings = encoder.read(docs_of(train, context), progress=progress)
    encoder.read(docs_of(val, context), progress=progress)
    return list(zip(readings, train, strict=True))


class TrainedParts(nn.Module):
    """Every trained tensor of a checkpoint, as one module (what Accelerate wraps): the sender's channel and each
    receiver's adapter. `forward` is one step's loss on a batch of (reading, gold answer)."""

    def __init__(
        self,
        encoder: SharerEncoder,
        adapters: dict[str, nn.Module],
        llms: dict[str, LLM],
        cfg: LoopConfig,
        train_sender: bool = True,
    ):
        super().__init__()
        self.channel = encoder.channel if train_sender else None
        self.adapters = nn.ModuleDict(adapters)
        # the encoder (its sharer) and the receivers are frozen: kept out of the module's registry, so only the
        # trained parts above are this module's parameters (and DDP's)
        object.__setattr__(self, "_encoder", encoder)
        self._llms, self.cfg = llms, cfg

    def forward(self, readings: Sequence[Reading], answers: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(iter(self._llms.values())).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return self._losses(readings, answers)

    def _losses(self, readings: Sequence[Reading], answers: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        z = self._encoder.latents(readings)  # grads reach the channel through every receiver
        total = z.new_zeros(())
        parts: dict[str, float] = {}
        if self.channel is not None and self.cfg.channel_weight:
            n = self._encoder.cfg.m * self._encoder.cfg.tokens_per_row
            own = [self.channel(r.hidden[: min(len(r.topk_ids), n)]).pow(2).mean() for r in readings if len(r.topk_ids)]
            cost = self.cfg.channel_weight * torch.stack(own).mean() if own else total
            total = total + cost
            parts["channel"] = float(cost.detach())
        for name, adapter in self.adapters.items():
            llm = self._llms[name]
            eos = llm.tokenizer.eos_token_id
            gold = [answer_ids(llm.tokenizer, a, eos) for a in answers]
            latent = adapter.to_slots(z.to(llm.device))
            relay = [adapter.text_slot(s) for s in text_slots(llm, [r.answer or " " for r in readings])]
            for path in TRAINED_PATHS:
                latent_path = path_spec(path).latent
                slots = latent if latent_path else relay
                loss = answer_loss(llm, assemble(llm, slots, gold, cached_prefix=True), self.cfg.first_weight)
                if self.cfg.distill_weight and latent_path:
                    said = [answer_ids(llm.tokenizer, r.answer, eos) for r in readings]
                    kd = answer_loss(llm, assemble(llm, slots, said, cached_prefix=True), self.cfg.first_weight)
                    loss = loss + self.cfg.distill_weight * kd
                total = total + loss
                parts[f"{name}/{path}"] = float(loss.detach())
        return total, parts


def process_state():
    """This process's place in the run (Accelerate's `PartialState`): one process, or a rank of `accelerate launch`
    or `torchrun`. Without a GPU it must be asked for CPU processes, or a torchrun rank takes itself for the
    only one."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _state(parts: TrainedParts, opt, sched, step: int, best: dict) -> dict:
    return {
        "parts": parts.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "step": step,
        "best": best,
    }


def train_loop(
    parts: TrainedParts,
    data: Sequence[tuple[Reading, Example]],
    out: Path,
    validate: Callable[[], dict[str, float]],
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train `parts` on (reading, example) pairs; validate every `eval_every` steps and at the end, keep the best
    step's parts (by `validate()["score"]`, the mean val F1 of the latent) in `parts`; returns the summary.

    `out/log.jsonl` gets one line per step and per validation, `out/state.pt` the resumable state.
    """
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    cfg = parts.cfg
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in parts.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup, max(cfg.steps, 1))
    step, best = 0, {"score": -math.inf, "step": 0, "val": {}, "parts": None}
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        parts.load_state_dict(st["parts"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, best = st["step"], st["best"]
        log(f"resumed at step {step} (best val {best['score']:.3f} at step {best['step']})")
    model, opt = acc.prepare(parts, opt)
    rng = random.Random(cfg.seed * 1000 + acc.process_index + step)  # each process draws its own batches
    t0 = time.perf_counter()
    sink = open(out / "log.jsonl", "a")  # noqa: SIM115 - written along the whole loop, closed at its end

    def evaluate_now(at: int) -> None:
        if not acc.is_main_process:
            return
        parts.eval()
        val = validate()
        parts.train()
        sink.write(json.dumps({"kind": "val", "step": at, **val}) + "\n")
        sink.flush()
        log(f"step {at}: val " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if val["score"] > best["score"]:
            best.update(
                score=val["score"], step=at, val=val, parts={k: v.clone() for k, v in parts.state_dict().items()}
            )

    if step == 0 and cfg.eval_every:
        evaluate_now(0)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or not acc.is_main_process, desc="train")
    parts.train()
    while step < cfg.steps:
        batch = rng.sample(list(data), min(cfg.batch_size, len(data)))
        loss, terms = model([r for r, _ in batch], [ex.answer for _, ex in batch])
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        sink.write(json.dumps({"kind": "step", "step": step, "loss": float(loss.detach()), **terms}) + "\n")
        if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate_now(step)
            if acc.is_main_process:
                torch.save(_state(parts, opt, sched, step, best), state_path)
    bar.close()
    sink.close()
    if best["parts"] is not None:
        parts.load_state_dict(best["parts"])
    return {
        "steps": step,
        "best_step": best["step"],
        "best_val": best["val"],
        "examples_seen": step * cfg.batch_size * acc.num_processes,
        "train_examples": len(data),
        "train_s": round(time.perf_counter() - t0, 1),
    }
