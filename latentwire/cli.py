"""The `latentwire` command: one subcommand per job, each a thin wrapper over the Python API.

The process commands (sender, receiver, arbiter, up, procfile, ask, ask-batch, keygen) live in proc_cli.py and
are merged in as top-level commands; choices and the one-line error contract shared by both are in cli_base.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_base import DEBUG_ENV, Context, Mode, OneLineErrors, Split, recipe_options
from .proc_cli import app as processes

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="LatentWire: one compressed latent message that two frozen LLMs both answer from.",
)
app.add_typer(processes)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="show tracebacks instead of one-line errors")
    ] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the processes `up` starts inherit it


Device = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")]
Dtype = Annotated[str, typer.Option(help="auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16")]
Threads = Annotated[int | None, typer.Option(help="torch threads (default: $LATENTWIRE_THREADS or all cores)")]
DataDir = Annotated[
    Path | None,
    typer.Option(help="HotpotQA JSONL folder (default: $LATENTWIRE_DATA or ../shared/data/hotpotqa)"),
]


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def smoke(
    real: Annotated[bool, typer.Option(help="use the embedded pretrained models")] = False,
    m: int = 8,
    d_z: int = 256,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Random latent -> adapter -> inputs_embeds -> a few tokens, for each model family (a Llama, a Qwen2)."""
    from .device import set_threads
    from .smoke import smoke as run

    set_threads(threads)
    try:
        run(real=real, m=m, d_z=d_z, device=device, dtype=dtype, echo=typer.echo)
    except Exception as e:  # noqa: BLE001 - the command's contract is a clear message and a non-zero exit
        _fail(f"smoke failed: {type(e).__name__}: {e}")


@app.command("eval")
def eval_(
    mode: Annotated[Mode, typer.Option()] = Mode.text,
    model: Annotated[
        list[str],
        typer.Option(
            help="llama, qwen, a .gguf file, a folder or a HF id; repeat for several (latent default: the checkpoint's)"
        ),
    ] = [],  # noqa: B006 - typer needs a literal default
    context: Annotated[Context, typer.Option()] = Context.distractor,
    split: Annotated[Split, typer.Option()] = Split.dev,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    budget: Annotated[int, typer.Option(help="tokens kept by token-budget (M of the default checkpoint)")] = 8,
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint folder (evidence, relay and latent modes)")] = None,
    batch_size: int | None = None,
    data_dir: DataDir = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
    out: Annotated[Path | None, typer.Option(help="also write JSON here")] = None,
) -> None:
    """EM/F1 (95% CI), NLL/token, prompt size and speed of one path (text, token-budget, evidence, relay, latent)."""
    from .checkpoint import CheckpointError
    from .data import DataError, load_split
    from .device import set_threads
    from .evaluate import evaluate
    from .models import ModelNotFound, load_llm
    from .prompts import SENDER_MODES

    set_threads(threads)
    try:
        examples = load_split(split.value, data_dir, limit)
        results = []
        if mode.value in SENDER_MODES:
            from .trainer.pipeline import load_checkpoint

            if ckpt is None:
                _fail(f"--mode {mode.value} needs --ckpt (a folder written by `latentwire train`)")
            wire = load_checkpoint(ckpt, models=model or None, device=device, dtype=dtype)
            for name in wire.model_names:
                results.append(
                    evaluate(
                        wire.llms[name],
                        examples,
                        mode.value,
                        context=context.value,
                        split=split.value,
                        slot_fn=wire.slot_fn(name, mode.value, context.value),
                        slot_fingerprint=wire.path_fingerprint(mode.value, name),
                        batch_size=batch_size,
                    )
                )
        else:
            for spec in model or ["llama", "qwen"]:
                llm = load_llm(spec, device=device, dtype=dtype)
                results.append(
                    evaluate(
                        llm,
                        examples,
                        mode.value,
                        context=context.value,
                        split=split.value,
                        budget=budget,
                        batch_size=batch_size,
                    )
                )
    except (DataError, ModelNotFound, CheckpointError, ValueError) as e:
        _fail(str(e))
    text = json.dumps(results if len(results) > 1 else results[0], indent=2)
    typer.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command()
def demo(
    limit: Annotated[int, typer.Option(help="dev questions to ask")] = 3,
    context: Annotated[Context, typer.Option()] = Context.distractor,
    quant: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4 on the wire")] = "int8",
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint (default: the committed default)")] = None,
) -> None:
    """The main job on the embedded default: start sender, Llama and Qwen receivers and the arbiter with the
    default checkpoint, and answer a few dev questions end to end through them."""
    from .checkpoint import DEFAULT_CKPT
    from .data import load_split
    from .metrics import f1_score
    from .up import LocalSystem

    ckpt = ckpt or DEFAULT_CKPT
    if not (ckpt / "config.json").is_file():
        _fail(f"no checkpoint at {ckpt}: train one with `latentwire train` or pass --ckpt")
    examples = load_split("dev", limit=limit)
    typer.echo(f"starting sender, llama, qwen and arbiter with {ckpt} (first start converts the models: ~1 min)")
    with LocalSystem(ckpt) as system, system.client() as client:
        items = [(ex.id, ex.question, ex.context(context.value)) for ex in examples]
        for ex, ans in zip(examples, client.ask_many(items, window=1, mode="latent", quant=quant), strict=True):
            row = ans.to_row()
            typer.echo(f"\nQ: {ex.question}\n   gold: {ex.answer}")
            typer.echo(
                f"   joint: {row['answer']!r} (from {row['model']}, F1 {f1_score(row['answer'], ex.answer):.2f}, "
                f"{row['e2e_s']:.2f} s end to end, {row['bytes'].get('fanout', 0)} bytes on the wire)"
            )
            for name, r in row["receivers"].items():
                typer.echo(f"   {name:6s} {r['answer']!r} score {r['score']:.2f} calibrated {r['calibrated']:.2f}")


# help for the sharer recipe's own options of `train` (`--backbone llm`); every other SharerRecipe field that
# `train` does not declare itself is an option too, with its comment as help
SHARER_HELP = {
    "sharer": "llm backbone: the frozen LLM that reads in the sender",
    "topk": "llm backbone: sharer tokens mixed per answer step",
    "tokens_per_row": "llm backbone: answer steps bound into one latent row",
    "min_cos": "llm backbone: receivers drop rows matching no token better",
    "temperature": "llm backbone: < 1 sharpens the sharer's distribution",
    "tau": "llm backbone: receivers' snapping temperature",
    "nearest": "llm backbone: receiver tokens mixed per row",
    "evidence_paragraphs": "llm backbone: paragraphs the selector keeps",
    "evidence_order": "llm backbone: reading order of the selection: score (best pair first) or source",
    "evidence_unsure_below": "llm backbone: one paragraph more where the best pair's softmax share is below this",
    "max_new_tokens": "llm backbone: answer tokens the receivers generate on val",
}


@app.command()
@recipe_options(
    "latentwire.trainer.sharer_recipe:SharerRecipe",
    param="sharer_recipe",
    help_text=SHARER_HELP,
    rename={"train_limit": "limit_train"},
)
def train(
    sharer_recipe: Any,
    out: Annotated[Path, typer.Option(help="run folder: ckpt/, log.jsonl, state.pt (resumed if present)")] = Path(
        "runs/default"
    ),
    models: Annotated[list[str], typer.Option("--model", help="frozen LLMs (repeat)")] = ["llama", "qwen"],  # noqa: B006
    backbone: Annotated[
        str, typer.Option(help="sender backbone: llm (a frozen sharer LLM reads selected evidence), minilm or bytes")
    ] = "llm",
    m: Annotated[int, typer.Option("--soft-tokens", "-M", help="soft tokens M")] = 8,
    d_z: Annotated[int, typer.Option(help="latent width")] = 256,
    context: Annotated[Context, typer.Option()] = Context.distractor,
    batch_size: int = 8,
    lr: float = 5e-4,
    max_steps: Annotated[int | None, typer.Option(help="stop after N steps")] = None,
    time_budget: Annotated[float | None, typer.Option(help="stop after N seconds of training (0: no limit)")] = 3300.0,
    first_weight: float = 2.0,
    diversity_weight: Annotated[float, typer.Option(help="anti-collapse penalty (0: latents collapse)")] = 1.0,
    distill_weight: Annotated[float, typer.Option(help="distillation from each model reading the text prompt")] = 0.0,
    align_steps: Annotated[int, typer.Option(help="LLM-free token-alignment steps first (trainer/align.py)")] = 0,
    align_weight: Annotated[float, typer.Option(help="token alignment beside the answer loss afterwards")] = 0.0,
    align_target: Annotated[str, typer.Option(help="what the soft tokens align to: answer or question")] = "answer",
    window_embedding: Annotated[bool, typer.Option(help="tell the pooler which reader window a feature is from")] = (
        False
    ),
    distill_context: Annotated[Context, typer.Option(help="the teacher's context mode")] = Context.gold,
    adapter_depth: int = 2,
    train_extra: bool = False,
    eval_every: int = 100,
    eval_n: int = 100,
    limit_train: Annotated[int | None, typer.Option(help="first N training questions only")] = None,
    seed: int = 0,
    resume: bool = True,
    dev_eval: Annotated[bool, typer.Option(help="evaluate the final checkpoint on dev (500)")] = True,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Fit the sender and the adapters against the frozen LLMs; writes a servable checkpoint to OUT/ckpt.

    The default (`--backbone llm`) is the sharer recipe: no gradient steps, minutes (trainer/sharer_recipe.py);
    `minilm` and `bytes` train a pooled encoder and MLP adapters for `--time-budget` seconds (trainer/train.py).
    """
    from .device import set_threads
    from .sender.encoder import EncoderConfig
    from .trainer.config import TrainConfig
    from .trainer.train import train as run
    from .trainer.train import training_data

    set_threads(threads)
    if backbone == "llm":
        from .trainer.sharer_recipe import build

        ckpt = build(sharer_recipe, out)
        typer.echo(f"checkpoint: {ckpt}")
        if dev_eval:
            for mode in (Mode.relay, Mode.latent):
                _dev_eval(ckpt, mode, context, m, device, dtype, threads, out / f"dev_{mode.value}.json")
        return
    cfg = TrainConfig(
        models=models,
        encoder=EncoderConfig(backbone=backbone, m=m, d_z=d_z, window_embedding=window_embedding),
        adapter_depth=adapter_depth,
        context=context.value,
        train_extra=train_extra,
        batch_size=batch_size,
        lr=lr,
        max_steps=max_steps,
        time_budget=time_budget,
        first_weight=first_weight,
        diversity_weight=diversity_weight,
        distill_weight=distill_weight,
        align_steps=align_steps,
        align_weight=align_weight,
        align_target=align_target,
        distill_context=distill_context.value,
        eval_every=eval_every,
        eval_n=eval_n,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    ckpt = run(cfg, out, data=training_data(cfg, limit_train), resume=resume)
    typer.echo(f"checkpoint: {ckpt}")
    from accelerate import PartialState

    if dev_eval and PartialState().is_main_process:  # one rank evaluates; the others are done
        _dev_eval(ckpt, Mode.latent, context, m, device, dtype, threads, out / "dev_eval.json")


def _dev_eval(ckpt: Path, mode: Mode, context: Context, m: int, device, dtype, threads, out: Path) -> None:
    """A fresh checkpoint's figures on all of dev, as `latentwire eval` writes them."""
    eval_(
        mode=mode,
        model=[],
        context=context,
        split=Split.dev,
        limit=None,
        budget=m,
        ckpt=ckpt,
        batch_size=None,
        data_dir=None,
        device=device,
        dtype=dtype,
        threads=threads,
        out=out,
    )


@app.command()
def bench(
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint (default: the committed default)")] = None,
    out: Annotated[Path, typer.Option(help="results.json, report.md and plots go here")] = Path("bench/results"),
    split: Annotated[Split, typer.Option()] = Split.dev,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    context: Annotated[list[Context], typer.Option(help="context modes (repeat)")] = [  # noqa: B006
        Context.distractor,
        Context.gold,
    ],
    live: Annotated[int, typer.Option(help="questions sent through the live processes for latency (0: none)")] = 100,
    path: Annotated[
        list[Mode], typer.Option(help="paths measured (repeat; default: every path the checkpoint has)")
    ] = [],  # noqa: B006 - typer needs a literal default
    quant: Annotated[
        list[str], typer.Option(help="wire schemes compared with the float latent (repeat; default fp16, int8, int4)")
    ] = [],  # noqa: B006 - typer needs a literal default
    limit_path: Annotated[
        list[str], typer.Option(help="PATH=N: measure that path on the first N questions only (repeat)")
    ] = [],  # noqa: B006 - typer needs a literal default
    live_quant: Annotated[
        list[str], typer.Option(help="wire schemes of the live latent runs (repeat; default fp16, int8, int4)")
    ] = [],  # noqa: B006 - typer needs a literal default
    live_text: Annotated[int, typer.Option(help="live questions on the text path (the first N)")] = 20,
    throughput: Annotated[
        int, typer.Option(help="live questions asked with 1 and with 8 in flight (requests/s; 0: none)")
    ] = 0,
    quick: Annotated[bool, typer.Option(help="tiny random models + tiny checkpoint: minutes, for CI")] = False,
    threads: Threads = None,
) -> None:
    """The full figure-of-merit report: quality per model and joint, quantisation, bytes, latency, training cost."""
    from .bench.live import QUANTS
    from .bench.run import quick_checkpoint, run_bench
    from .checkpoint import DEFAULT_CKPT
    from .device import set_threads

    set_threads(threads)
    if quick:
        ckpt = quick_checkpoint(out / "quick-run")
        limit, live = limit or 6, min(live, 6)
    ckpt = ckpt or DEFAULT_CKPT
    contexts = tuple(c.value for c in context)
    paths = tuple(p.value for p in path) or None
    schemes = tuple(quant) or ("fp16", "int8", "int4")
    path_limits = _path_limits(limit_path)
    res = run_bench(
        ckpt,
        out=out,
        split=split.value,
        limit=limit,
        contexts=contexts,
        live_n=live,
        paths=paths,
        schemes=schemes,
        path_limits=path_limits,
        live_options={"quants": tuple(live_quant) or QUANTS, "text_n": live_text, "throughput_n": throughput},
    )
    typer.echo(f"wrote {out / 'results.json'} and {out / 'report.md'} ({res['meta']['wall_s']} s)")


def _path_limits(items: list[str]) -> dict[str, int]:
    """`--limit-path PATH=N` items as {path: N}."""
    try:
        limits = {k: int(v) for k, v in (item.split("=", 1) for item in items)}
    except ValueError:
        _fail(f"--limit-path takes PATH=N, not {items}")
    if bad := [k for k in limits if k not in {m.value for m in Mode}]:
        _fail(f"--limit-path: unknown path {bad[0]!r}; choose from {', '.join(m.value for m in Mode)}")
    return limits


@app.command()
def calibrate(
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint, calibrated in place (default: ours)")] = None,
    path: Annotated[
        list[Mode], typer.Option(help="paths to calibrate (repeat; default: every path the checkpoint has)")
    ] = [],  # noqa: B006 - typer needs a literal default
    n: Annotated[int, typer.Option(help="validation questions")] = 200,
    limit_path: Annotated[
        list[str], typer.Option(help="PATH=N: that path on the first N validation questions only (repeat)")
    ] = [],  # noqa: B006 - typer needs a literal default
    context: Annotated[Context, typer.Option()] = Context.distractor,
    data_dir: DataDir = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Fit each receiver's score calibration on `val` for the given paths and write it into the checkpoint's
    config: the arbiter's joint pick then compares P(right) instead of raw log-probabilities. Rows are cached,
    so an interrupted run resumes; the weights are untouched."""
    from .checkpoint import DEFAULT_CKPT, CheckpointError
    from .device import set_threads
    from .models import ModelNotFound
    from .trainer.calibrate import calibrate as run

    set_threads(threads)
    ckpt = ckpt or DEFAULT_CKPT
    limits = _path_limits(limit_path)
    try:
        fitted = run(
            ckpt,
            tuple(p.value for p in path) or None,
            n=n,
            limits=limits,
            context=context.value,
            data_dir=data_dir,
            device=device,
            dtype=dtype,
            log=typer.echo,
        )
    except (ModelNotFound, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"calibrated {', '.join(sorted(fitted))} in {ckpt}")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


# help for train-adapter's options; every other ExtendRecipe field is an option too, with its comment as help
EXTEND_HELP = {
    "model": "the new receiver's model: gemma, a .gguf, a folder or a HF id",
    "name": "the receiver's name in the checkpoint (default: --model)",
    "tau": "snapping temperature (default: the parent's)",
    "nearest": "receiver tokens mixed per row (default: the parent's)",
    "min_cos": "receivers drop rows matching no token better (default: the parent's)",
    "tune": "pick tau and nearest on val (else: the zero-shot fit only)",
    "eval_n": "validation questions for tuning and calibration",
    "time_budget": "seconds of tuning at most",
    "context": "the validation questions' context: distractor or gold",
}


@app.command("train-adapter")
@recipe_options("latentwire.trainer.extend:ExtendRecipe", help_text=EXTEND_HELP)
def train_adapter(
    recipe: Any,
    ckpt: Annotated[Path | None, typer.Option(help="the checkpoint to extend (default: the committed default)")] = None,
    out: Annotated[Path, typer.Option(help="the extended checkpoint's folder (the parent is left as it is)")] = Path(
        "runs/extended/ckpt"
    ),
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Add one receiver to a checkpoint without touching the others: its adapter is fitted to its own
    vocabulary against the frozen sender; the encoder and the old adapters are kept byte for byte."""
    from .checkpoint import DEFAULT_CKPT, CheckpointError
    from .device import set_threads
    from .models import ModelNotFound
    from .trainer.extend import extend

    set_threads(threads)
    try:
        path = extend(recipe, ckpt or DEFAULT_CKPT, out, log=typer.echo)
    except (ModelNotFound, CheckpointError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"checkpoint: {path}")
