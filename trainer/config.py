"""The training recipe's configuration: one dataclass, saved into every checkpoint and run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from latentwire.sender.encoder import EncoderConfig


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["llama", "qwen"])
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter_depth: int = 2
    context: str = "distractor"  # training prompts' context mode
    train_extra: bool = False  # add train_extra.jsonl to the training rows
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_steps: int | None = None
    time_budget: float | None = 3300.0  # seconds of training (the default run fits in about an hour)
    first_weight: float = 2.0  # weight of the first answer token in the loss
    diversity_weight: float = 1.0  # penalty on the mean pairwise cosine of latents (0 collapses: EXPERIMENTS E1)
    align_steps: int = 0  # LLM-free steps pulling soft tokens toward the answer's token embeddings (align.py)
    align_weight: float = 0.0  # the same alignment term, kept beside the answer loss afterwards
    align_target: str = "answer"  # "answer" | "question" (its first M tokens: reconstruction)
    distill_weight: float = 0.0  # weight of distillation from the same model reading the text prompt
    distill_context: str = "gold"  # the teacher's context mode (gold prompts are ~5x cheaper to read)
    distill_topk: int = 16
    max_answer_tokens: int = 16
    eval_every: int = 100
    eval_n: int = 100  # fixed validation subset evaluated periodically
    max_new_tokens: int = 12
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)
