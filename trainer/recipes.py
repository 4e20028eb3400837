"""The recipes of `latentwire train` (`TrainRecipe`) and `latentwire train-adapter` (`ExtendRecipe`).

Each field's help is its `metadata["help"]`: `cli_base.recipe_options` makes every field a command option from
`dataclasses.fields` and the resolved type hints, as Hugging Face's `HfArgumentParser` does. The recipes live
apart from the code that runs them (`recipe.py`, `extend.py`) so that importing them, which the CLI does at
start, imports no torch. A recipe's `to_dict` is what a checkpoint's config records of its run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from latentwire.processes.up import DEFAULT_RECEIVERS


@dataclass
class TrainRecipe:
    models: list[str] | None = field(default=None, metadata={"help": "receivers (default: gemma, llama, qwen)"})
    sharer: str = field(default="qwen", metadata={"help": "the frozen LLM that reads in the sender"})
    m: int = field(default=8, metadata={"help": "soft tokens M (latent rows)"})
    d_z: int = field(default=256, metadata={"help": "latent width"})
    topk: int = field(
        default=1, metadata={"help": "sharer tokens mixed per step (val: 1 beats 2, 4 and 8; EXPERIMENTS E8)"}
    )
    temperature: float = field(default=1.0, metadata={"help": "< 1 sharpens the sharer's distribution before mixing"})
    tokens_per_row: int = field(
        default=2, metadata={"help": "answer steps per latent row: 8 rows carry the sharer's 16-token answer (E8)"}
    )
    # the selector's budget and reading order: the best pair, the question's paragraph first (E11)
    evidence_paragraphs: int = field(default=2, metadata={"help": "paragraphs the selector keeps"})
    evidence_order: str = field(default="score", metadata={"help": "reading order: score (best pair first) or source"})
    # one paragraph more where the pair scorer is unsure (the best pair's softmax share below this; 0: never; E16)
    evidence_unsure_below: float = field(
        default=0.8, metadata={"help": "one more paragraph where the best pair's share is below this"}
    )
    tau: float = field(
        default=20.0, metadata={"help": "receivers' snapping temperature (the closed form's; trained from there)"}
    )
    nearest: int = field(default=4, metadata={"help": "receiver tokens mixed per step"})
    min_cos: float = field(
        default=0.45,
        metadata={"help": "two steps share a row: each keeps cosine ~0.7 with its code, chance stays < 0.35"},
    )
    lexicon: bool = field(
        default=True, metadata={"help": "receivers spell the sharer's strings they have no token for (no string lost)"}
    )
    hidden_layer: int = field(
        default=-1, metadata={"help": "the sharer layer the hidden channel reads (-1: the last, normed)"}
    )
    channel: bool = field(default=True, metadata={"help": "train the hidden channel (the sender's trained part)"})
    prompt_len: int = field(
        default=8, metadata={"help": "each receiver's soft prompt (and its relay-tuned twin); 0: none"}
    )
    rank: int = field(default=16, metadata={"help": "each receiver's low-rank residual; 0: none"})
    steps: int = field(default=100, metadata={"help": "gradient steps; 0: the closed form alone"})
    batch_size: int = field(default=8, metadata={"help": "questions per step"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW, 20 warm-up steps, cosine decay"})
    channel_weight: float = field(default=0.1, metadata={"help": "the cost on the hidden channel's size"})
    distill_weight: float = field(
        default=0.0, metadata={"help": "cross-entropy on the sharer's own answer besides the gold one"}
    )
    bf16: bool = field(
        default=True,
        metadata={"help": "the frozen receivers' passes under bfloat16 autocast while training (2-4x faster)"},
    )
    eval_every: int = field(default=50, metadata={"help": "validate (and keep the best step) every N steps"})
    seed: int = field(default=0, metadata={"help": "batch sampling"})
    context: str = field(default="distractor", metadata={"help": "the questions' context: distractor or gold"})
    eval_n: int = field(
        default=100, metadata={"help": "validation questions for model selection, calibration and the run's figures"}
    )
    train_limit: int | None = field(default=None, metadata={"help": "the first N training questions only"})
    init: str = field(
        default="",
        metadata={
            "help": "take the selector from this checkpoint instead of fitting it (same evidence, same readings)"
        },
    )
    max_new_tokens: int = field(default=12, metadata={"help": "answer tokens the receivers generate on val"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"})
    dtype: str = field(
        default="auto", metadata={"help": "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16"}
    )

    def to_dict(self) -> dict:
        return {"recipe": "train", **asdict(self)}

    @property
    def receivers(self) -> list[str]:
        return list(self.models or DEFAULT_RECEIVERS.values())


# (tau, nearest) candidates tried by `tune`, in order; the zero-shot setting is always measured first
TUNE_GRID: tuple[tuple[float, int], ...] = ((50.0, 1), (20.0, 2), (10.0, 4), (20.0, 8))


@dataclass
class ExtendRecipe:
    model: str = field(
        default="gemma", metadata={"help": "the new receiver's model: gemma, a .gguf, a folder or a HF id"}
    )
    name: str | None = field(
        default=None, metadata={"help": "the receiver's name in the checkpoint (default: --model)"}
    )
    tau: float | None = field(default=None, metadata={"help": "snapping temperature (default: the parent's)"})
    nearest: int | None = field(
        default=None, metadata={"help": "receiver tokens mixed per step (default: the parent's)"}
    )
    min_cos: float | None = field(
        default=None, metadata={"help": "receivers drop rows matching no token better (default: the parent's)"}
    )
    tune: bool = field(default=True, metadata={"help": "pick tau and nearest on val (else: the zero-shot fit only)"})
    eval_n: int = field(default=100, metadata={"help": "validation questions for tuning and calibration"})
    context: str = field(
        default="distractor", metadata={"help": "the validation questions' context: distractor or gold"}
    )
    time_budget: float = field(
        default=1200.0, metadata={"help": "seconds for tuning; the zero-shot point and calibration always run"}
    )
    steps: int = field(
        default=50,
        metadata={"help": "gradient steps on the new adapter's trained parts (when the parent's receivers have them)"},
    )
    batch_size: int = field(default=8, metadata={"help": "questions per step"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW, 20 warm-up steps, cosine decay"})
    eval_every: int = field(default=50, metadata={"help": "validate (and keep the best step) every N steps"})
    train_limit: int | None = field(default=None, metadata={"help": "the first N training questions only"})
    run_dir: str = field(
        default="runs/extend",
        metadata={"help": "the training's log.jsonl, training.png and state.pt (rerunning resumes)"},
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the parent recipe's"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"})
    dtype: str = field(
        default="auto", metadata={"help": "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16"}
    )
    grid: list[tuple[float, int]] = field(
        default_factory=lambda: list(TUNE_GRID), metadata={"help": "(tau, nearest) candidates tried by tune, in order"}
    )

    def to_dict(self) -> dict:
        return {"recipe": "extend", **asdict(self)}
