"""The `latentwire` command: one subcommand per job, each a thin wrapper over the Python API.

The process commands (sender, receiver, arbiter, up, procfile, ask, ask-batch, keygen) live in proc_cli.py and
are merged in as top-level commands; choices and the one-line error contract shared by both are in cli_base.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_base import (
    DEBUG_ENV,
    DEBUG_META,
    Context,
    EngineOpt,
    OldPathName,
    OneLineErrors,
    PathName,
    Split,
    path_option,
    recipe_options,
)
from .proc_cli import app as processes
from .processes import settings
from .processes.up import DEFAULT_RECEIVERS
from .trainer.recipes import ExtendRecipe, TrainRecipe  # torch-free: the recipes alone

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
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="show tracebacks instead of one-line errors")
    ] = False,
) -> None:
    ctx.meta[DEBUG_META] = debug  # read by the error contract and by `up`, which passes it to its processes
    # before any command parses its options (some read these variables): one line, exit 2, nothing started
    settings.check()


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
    real: Annotated[bool, typer.Option(help="the committed default checkpoint on the embedded models")] = False,
    ckpt: Annotated[Path | None, typer.Option(help="serve this checkpoint instead")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="HotpotQA folder (default: $LATENTWIRE_DATA)")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    engine: EngineOpt = "auto",
    threads: Threads = None,
) -> None:
    """One dev question through the shipped design on every receiver: selector, sharer, latent, int8, adapter,
    answer (a tiny trained checkpoint on the tiny random models by default)."""
    from .device import set_threads
    from .smoke import smoke as run

    set_threads(threads)
    try:
        run(real=real, ckpt=ckpt, data_dir=data_dir, device=device, dtype=dtype, echo=typer.echo, engine=engine)
    except Exception as e:  # noqa: BLE001 - the command's contract is a clear message and a non-zero exit
        _fail(f"smoke failed: {type(e).__name__}: {e}")


@app.command("eval")
def eval_(
    ctx: typer.Context,
    path: Annotated[PathName, typer.Option(help="the path measured")] = PathName.text,
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
    ckpt: Annotated[
        Path | None, typer.Option(help="checkpoint folder (the sender's paths: evidence, relay, latent)")
    ] = None,
    batch_size: int | None = None,
    data_dir: DataDir = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    engine: EngineOpt = "auto",
    threads: Threads = None,
    out: Annotated[Path | None, typer.Option(help="also write JSON here")] = None,
    mode: OldPathName = None,
) -> None:
    """EM/F1 (95% CI), NLL/token, prompt size and speed of one path (text, token-budget, evidence, relay, latent)."""
    from .checkpoint import CheckpointError
    from .data import DataError, load_split
    from .device import set_threads
    from .evaluate import evaluate
    from .models import ModelNotFound, load_llm
    from .protocol import SENDER_PATHS

    set_threads(threads)
    path = path_option(ctx, path, mode)
    try:
        examples = load_split(split.value, data_dir, limit)
        results = []
        if path.value in SENDER_PATHS:
            from .system.pipeline import load_checkpoint

            if ckpt is None:
                _fail(f"--path {path.value} needs --ckpt (a folder written by `latentwire train`)")
            wire = load_checkpoint(ckpt, models=model or None, device=device, dtype=dtype, engine=engine)
            for name in wire.model_names:
                results.append(
                    evaluate(
                        wire.llms[name],
                        examples,
                        path.value,
                        context=context.value,
                        split=split.value,
                        slot_fn=wire.slot_fn(name, path.value, context.value),
                        slot_fingerprint=wire.path_fingerprint(path.value, name),
                        batch_size=batch_size,
                    )
                )
        else:
            for spec in model or DEFAULT_RECEIVERS.values():
                llm = load_llm(spec, device=device, dtype=dtype, engine=engine)
                results.append(
                    evaluate(
                        llm,
                        examples,
                        path.value,
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
    limit: Annotated[int, typer.Option(help="dev questions to ask: the first N, none picked")] = 5,
    context: Annotated[Context, typer.Option()] = Context.distractor,
    quant: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4 on the wire")] = "int8",
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint (default: the committed default)")] = None,
    engine: EngineOpt = "auto",
) -> None:
    """The main job on the embedded default: start the sender, one receiver per family of the default checkpoint
    (Gemma, Llama, Qwen) and the arbiter, and answer the first dev questions end to end from one shared latent.

    Per question: the joint answer, each family's answer from the latent, the bytes on the wire against the
    text the receivers would otherwise read, and the time end to end; then one summary line."""
    from .checkpoint import DEFAULT_CKPT, load_config
    from .data import load_split
    from .metrics import exact_match, f1_score
    from .processes.up import LocalSystem
    from .prompts import example_slot

    ckpt = ckpt or DEFAULT_CKPT
    if not (ckpt / "config.json").is_file():
        _fail(f"no checkpoint at {ckpt}: train one with `latentwire train` or pass --ckpt")
    specs = {n: e.spec for n, e in load_config(ckpt).models.items()}
    names = list(specs)
    examples = load_split("dev", limit=limit)
    typer.echo(f"starting sender, {', '.join(names)} and arbiter with {ckpt} (a first start converts the models)")
    joint_f1, joint_em, best_f1, wire_b, text_b, e2e = [], [], {n: [] for n in names}, [], [], []
    with LocalSystem(ckpt, specs, engine=engine) as system, system.client() as client:
        items = [(ex.id, ex.question, ex.context(context.value)) for ex in examples]
        for ex, ans in zip(examples, client.ask_many(items, window=1, path="latent", quant=quant), strict=True):
            row = ans.to_row()
            # the text path sends every receiver the question and context: what the latent replaces
            text = len(example_slot(ex, context.value).encode()) * len(names)
            sent = int(row["bytes"].get("fanout", 0))
            f1 = f1_score(row["answer"] or "", ex.answer)
            joint_f1.append(f1)
            joint_em.append(exact_match(row["answer"] or "", ex.answer))
            wire_b.append(sent)
            text_b.append(text)
            e2e.append(row["e2e_s"])
            typer.echo(f"\nQ: {ex.question}\n   gold: {ex.answer}")
            if not ans.ok:
                typer.echo(f"   no answer: {row['error']}")
                continue
            typer.echo(f"   joint: {row['answer']!r} (from {row['model']}, F1 {f1:.2f})")
            for name, r in row["receivers"].items():
                rf1 = f1_score(r["answer"] or "", ex.answer)
                best_f1[name].append(rf1)
                typer.echo(f"   {name:6s} {r['answer']!r} F1 {rf1:.2f}, P(right) {r['calibrated'] or 0:.2f}")
            typer.echo(
                f"   {sent:,} bytes on the wire ({quant}) against {text:,} of text; {row['e2e_s']:.2f} s end to end"
            )
    n = len(examples)
    best = max(best_f1, key=lambda m: (sum(best_f1[m]), m))
    typer.echo(
        f"\n{n} questions: joint F1 {sum(joint_f1) / n:.2f} (EM {sum(joint_em) / n:.2f}; best family {best} "
        f"{sum(best_f1[best]) / n:.2f}); {sum(wire_b) / n:,.0f} bytes a question on the wire against "
        f"{sum(text_b) / n:,.0f} of text ({sum(text_b) / max(1, sum(wire_b)):.0f}x fewer); "
        f"median {sorted(e2e)[n // 2]:.2f} s end to end"
    )


# `train` declares a few TrainRecipe fields itself (other flags or help); every other field is an option too,
# with its `metadata["help"]` as help
@app.command()
@recipe_options(TrainRecipe, rename={"train_limit": "limit_train"})
def train(
    recipe: Any,
    out: Annotated[Path, typer.Option(help="run folder: ckpt/, log.jsonl, state.pt (resumed if present)")] = Path(
        "runs/default"
    ),
    models: Annotated[
        list[str] | None, typer.Option("--model", help="receivers (repeat; default gemma, llama, qwen)")
    ] = None,
    m: Annotated[int, typer.Option("--soft-tokens", "-M", help="soft tokens M (latent rows)")] = 8,
    limit_train: Annotated[int | None, typer.Option(help="first N training questions only")] = None,
    dev_eval: Annotated[bool, typer.Option(help="evaluate the final checkpoint on dev (500)")] = True,
    threads: Threads = None,
) -> None:
    """Train the interlingua against the frozen LLMs; writes a servable checkpoint to OUT/ckpt.

    The closed form (selector fitted, vocabulary-anchored codes), the sharer's reading cache, then gradient steps
    on the sender's hidden channel and each receiver's prompt, residual and tau (trainer/recipe.py). Multi-GPU:
    `accelerate launch -m latentwire.trainer ...` or `torchrun --nproc-per-node N -m latentwire.trainer ...`.
    """
    from .device import set_threads
    from .trainer.loop import process_state
    from .trainer.recipe import build

    set_threads(threads)
    ckpt = build(recipe, out)
    typer.echo(f"checkpoint: {ckpt}")
    if dev_eval and process_state().is_main_process:  # one rank evaluates; the others are done
        for path in (PathName.relay, PathName.latent):
            _dev_eval(
                ckpt,
                path,
                Context(recipe.context),
                recipe.m,
                recipe.device,
                recipe.dtype,
                threads,
                out / f"dev_{path.value}.json",
            )


def _dev_eval(ckpt: Path, path: PathName, context: Context, m: int, device, dtype, threads, out: Path) -> None:
    """A fresh checkpoint's figures on all of dev, as `latentwire eval` writes them."""
    eval_(
        None,  # type: ignore[arg-type]  # called, not parsed: no command line (ctx) to read
        path=path,
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
        mode=None,
    )


@app.command()
def bench(
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint (default: the committed default)")] = None,
    out: Annotated[Path, typer.Option(help="results.json, report.md and plots go here")] = Path("bench/results"),
    split: Annotated[Split, typer.Option()] = Split.dev,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    context: Annotated[list[Context], typer.Option(help="contexts (repeat)")] = [  # noqa: B006
        Context.distractor,
        Context.gold,
    ],
    live: Annotated[int, typer.Option(help="questions sent through the live processes for latency (0: none)")] = 100,
    path: Annotated[
        list[PathName], typer.Option(help="paths measured (repeat; default: every path the checkpoint has)")
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
    live_evidence: Annotated[int, typer.Option(help="live questions on the evidence path (the first N)")] = 20,
    throughput: Annotated[
        int, typer.Option(help="live questions asked with 1 and with 8 in flight (requests/s; 0: none)")
    ] = 0,
    engines: Annotated[
        int, typer.Option(help="questions on which every engine is measured side by side (0: none)")
    ] = 0,
    reference_engine: Annotated[
        str,
        typer.Option(help="engine the serving one's latent, relay and evidence answers are compared with ('': none)"),
    ] = "float32",
    quick: Annotated[bool, typer.Option(help="tiny random models + tiny checkpoint: minutes, for CI")] = False,
    threads: Threads = None,
    engine: EngineOpt = "auto",
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
        live_options={
            "quants": tuple(live_quant) or QUANTS,
            "text_n": live_text,
            "evidence_n": live_evidence,
            "throughput_n": throughput,
        },
        engines_n=engines,
        reference_engine=reference_engine or None,
        engine=engine,
    )
    typer.echo(f"wrote {out / 'results.json'} and {out / 'report.md'} ({res['meta']['wall_s']} s)")


def _path_limits(items: list[str]) -> dict[str, int]:
    """`--limit-path PATH=N` items as {path: N}."""
    try:
        limits = {k: int(v) for k, v in (item.split("=", 1) for item in items)}
    except ValueError:
        _fail(f"--limit-path takes PATH=N, not {items}")
    if bad := [k for k in limits if k not in {p.value for p in PathName}]:
        _fail(f"--limit-path: unknown path {bad[0]!r}; choose from {', '.join(p.value for p in PathName)}")
    return limits


@app.command()
def calibrate(
    ckpt: Annotated[Path | None, typer.Option(help="checkpoint, calibrated in place (default: ours)")] = None,
    path: Annotated[
        list[PathName], typer.Option(help="paths to calibrate (repeat; default: every path the checkpoint has)")
    ] = [],  # noqa: B006 - typer needs a literal default
    n: Annotated[int, typer.Option(help="validation questions")] = 200,
    limit_path: Annotated[
        list[str], typer.Option(help="PATH=N: that path on the first N validation questions only (repeat)")
    ] = [],  # noqa: B006 - typer needs a literal default
    context: Annotated[Context, typer.Option()] = Context.distractor,
    data_dir: DataDir = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    engine: EngineOpt = "auto",
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
            engine=engine,
        )
    except (ModelNotFound, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"calibrated {', '.join(sorted(fitted))} in {ckpt}")


@app.command()
def ablate(
    ckpt: Annotated[
        Path | None, typer.Option(help="checkpoint, its table written into its config (default: ours)")
    ] = None,
    n: Annotated[int, typer.Option(help="validation questions")] = 200,
    variant: Annotated[
        list[str],
        typer.Option(help="variants (repeat; default: full, no-channel, no-residual, no-lexicon, prompt-only)"),
    ] = [],  # noqa: B006 - typer needs a literal default
    context: Annotated[Context, typer.Option()] = Context.distractor,
    data_dir: DataDir = None,
    engine: EngineOpt = "auto",
    threads: Threads = None,
) -> None:
    """The latent on `val` with each trained part left out in turn, beside relay-tuned and the closed form: what
    each part carries. Rows are cached, so an interrupted run resumes; the weights are untouched."""
    from .checkpoint import DEFAULT_CKPT, CheckpointError
    from .device import set_threads
    from .models import ModelNotFound
    from .trainer.ablation import ABLATIONS, ablate_checkpoint

    set_threads(threads)
    ckpt = ckpt or DEFAULT_CKPT
    try:
        table = ablate_checkpoint(
            ckpt, n, context.value, tuple(variant) or tuple(ABLATIONS), engine=engine, data_dir=data_dir
        )
    except (ModelNotFound, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    names = sorted(next(iter(table.values())))
    typer.echo(f"{'val F1':14s}" + "".join(f"{m:>10s}" for m in names))
    for label, by_name in table.items():
        typer.echo(f"{label:14s}" + "".join(f"{by_name[m]['f1']:10.3f}" for m in names))
    typer.echo(f"written into {ckpt}")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


# train-adapter declares a few ExtendRecipe fields itself; every other field is an option too, with its
# `metadata["help"]` as help
@app.command("train-adapter")
@recipe_options(ExtendRecipe)
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
