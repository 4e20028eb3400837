"""The commands of the multi-process system: sender, receiver, arbiter, up, procfile, ask, ask-batch, keygen.

A Typer of its own that cli.py merges into the `latentwire` app (`app.add_typer`), so these commands stay
top-level and the training/eval commands can change independently. Heavy imports (torch, transformers) happen
inside the commands that need them (marked `# torch`): `ask`, `up` and `arbiter` start fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from latentwire.arbiter.process import serve as serve_arbiter
from latentwire.cli_base import CliError, Context, EngineOpt, OldWirePath, Split, WirePath, debug, path_option
from latentwire.data import load_split
from latentwire.metrics import exact_match, f1_score, postprocess
from latentwire.processes import net, settings
from latentwire.processes.client import Answer, Client, ask_fields, summarize_answers
from latentwire.processes.up import (
    DEFAULT_RECEIVERS,
    THREADS,
    Supervisor,
    address_var,
    check_receivers,
    child_env,
    count_receivers,
    model_var,
    parse_receivers,
    processes,
    procfile_text,
    read_procfile,
)
from latentwire.protocol import DEFAULT_LIMITS, Ask, Quant
from latentwire.sender.process import serve as serve_sender

app = typer.Typer(add_completion=False)
PANEL = "Processes"

Ckpt = Annotated[
    Path | None,
    typer.Option(envvar="LATENTWIRE_CKPT", help="checkpoint folder (default: checkpoints/default)"),
]
CurveDir = Annotated[
    str | None, typer.Option("--curve", help="CURVE key folder from `latentwire keygen` (default: $LATENTWIRE_CURVE)")
]
Threads1 = Annotated[int, typer.Option(min=0, help="torch threads (0: every core; `up` gives each role its share)")]
RoleThreads = Annotated[int, typer.Option(min=0, help="torch threads of each process of this role (0: every core)")]
ArbiterAddr = Annotated[str | None, typer.Option("--arbiter", help="arbiter frontend (default: $LATENTWIRE_ARBITER)")]
Wait = Annotated[float, typer.Option(help="seconds to wait for the system to be ready (models load slowly)")]
NReceivers = Annotated[
    int,
    typer.Option(
        envvar="LATENTWIRE_N_RECEIVERS",
        help="receivers to wait for (as many as `up` runs; default: the default list's)",
    ),
]
ReceiverItems = Annotated[
    list[str],
    typer.Option(
        "--receiver",
        "-r",
        metavar="NAME=SPEC",
        help="a receiver process: its name and model spec (llama, tiny-qwen, a .gguf, a folder, a HF id); repeat "
        f"for several (default: {' '.join(f'{n}={s}' for n, s in DEFAULT_RECEIVERS.items())})",
    ),
]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _settings(engine: bool = False, **endpoints: str | None) -> None:
    """The process's settings, checked before anything starts (`latentwire.processes.settings`): the
    environment's, and the endpoint flags given (by flag name)."""
    settings.check(engine=engine)
    for flag, value in endpoints.items():
        settings.check_endpoint(flag, value, many=flag == "--receivers")


def _ckpt(ckpt: Path | None) -> Path:
    """The checkpoint folder, refused up front (one line naming the file and field) when its config or weights are
    unreadable or its config is malformed anywhere: a process that crashes on load would otherwise be restarted by
    `up` again and again, and would fail only after its slow model load."""
    from safetensors import SafetensorError, safe_open

    from latentwire.checkpoint import CONFIG, DEFAULT_CKPT, WEIGHTS, CheckpointConfig, read_json  # torch
    from latentwire.receivers.adapter import adapter_schemas

    path = ckpt or DEFAULT_CKPT
    if not (path / CONFIG).is_file():
        raise CliError(f"no checkpoint at {path}: {path / CONFIG} is missing (pass --ckpt or set $LATENTWIRE_CKPT)")
    raw = read_json(path)  # files that cannot be read at all are said before what a readable config gets wrong
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CliError(f"{weights} is missing: not a complete LatentWire checkpoint")
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise CliError(f"{weights}: not a readable safetensors file ({e})") from None
    CheckpointConfig.from_dict(raw, path, adapters=adapter_schemas())  # every field, each adapter by its kind
    return path


@app.command(rich_help_panel=PANEL)
def sender(
    ckpt: Ckpt = None,
    backend: Annotated[str | None, typer.Option(help="arbiter backend (default: $LATENTWIRE_BACKEND)")] = None,
    receivers: Annotated[
        str | None, typer.Option(help="comma-separated receiver addresses (default: $LATENTWIRE_RECEIVERS)")
    ] = None,
    curve: CurveDir = None,
    device: Annotated[str, typer.Option(help="encoder device")] = "cpu",
    threads: Threads1 = THREADS["sender"],
    engine: EngineOpt = "auto",
) -> None:
    """Sender process: encodes each question once and sends the frame to every receiver."""
    from latentwire.device import set_threads  # torch

    _settings(engine=True, **{"--backend": backend, "--receivers": receivers})
    _logging()
    set_threads(threads)
    serve_sender(_ckpt(ckpt), backend=backend, receivers=receivers, curve_dir=curve, device=device, engine=engine)


@app.command(rich_help_panel=PANEL)
def receiver(
    model: Annotated[str, typer.Option(help="llama, qwen, tiny-llama, a .gguf, a folder or a HF id")] = "llama",
    ckpt: Ckpt = None,
    name: Annotated[str | None, typer.Option(help="the model's name in the checkpoint (default: --model)")] = None,
    bind: Annotated[str | None, typer.Option(help="where to listen (default: $LATENTWIRE_RECEIVER)")] = None,
    replies: Annotated[str | None, typer.Option(help="arbiter replies (default: $LATENTWIRE_REPLIES)")] = None,
    curve: CurveDir = None,
    device: Annotated[str, typer.Option()] = "auto",
    dtype: Annotated[str, typer.Option()] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="cap on tokens generated per request")] = 64,
    max_batch_positions: Annotated[
        int, typer.Option(min=1, help="cap on the padded positions (requests x longest) decoded together")
    ] = 8192,  # receivers/receiver.py: MAX_BATCH_POSITIONS (not imported here: it would load torch at start)
    threads: Threads1 = THREADS["receiver"],
    engine: EngineOpt = "auto",
) -> None:
    """Receiver process: one frozen LLM + adapter; answers latent and text frames, refuses bad ones."""
    from latentwire.device import set_threads  # torch
    from latentwire.receivers.process import serve  # torch

    _settings(engine=True, **{"--bind": bind, "--replies": replies})
    _logging()
    set_threads(threads)
    serve(
        model,
        _ckpt(ckpt),
        name=name,
        bind=bind,
        replies=replies,
        curve_dir=curve,
        device=device,
        dtype=dtype,
        engine=engine,
        max_new_tokens=max_new_tokens,
        max_batch_positions=max_batch_positions,
    )


@app.command(rich_help_panel=PANEL)
def arbiter(
    address: ArbiterAddr = None,
    backend: Annotated[str | None, typer.Option(help="senders connect here ($LATENTWIRE_BACKEND)")] = None,
    replies: Annotated[str | None, typer.Option(help="receivers reply here ($LATENTWIRE_REPLIES)")] = None,
    timeout: Annotated[
        float, typer.Option(envvar="LATENTWIRE_TIMEOUT", help="seconds to wait for all receivers")
    ] = 60.0,
    max_inflight: Annotated[int, typer.Option(help="requests in flight before answering `busy`")] = 256,
    drain: Annotated[float, typer.Option(help="seconds to finish in-flight requests on stop")] = 5.0,
    curve: CurveDir = None,
) -> None:
    """Arbiter process: takes clients' questions, joins the receivers' replies, picks the joint answer."""
    _settings(**{"--arbiter": address, "--backend": backend, "--replies": replies})
    _logging()
    serve_arbiter(
        frontend=address,
        backend=backend,
        replies=replies,
        timeout=timeout,
        max_inflight=max_inflight,
        drain=drain,
        curve_dir=curve,
    )


@app.command(rich_help_panel=PANEL)
def ask(
    ctx: typer.Context,
    question: str,
    context_file: Annotated[Path | None, typer.Option(help="file with the context paragraphs (UTF-8)")] = None,
    context: Annotated[str, typer.Option(help="context text (instead of --context-file)")] = "",
    path: Annotated[WirePath, typer.Option(help="how the question reaches the receivers")] = WirePath.latent,
    quant: Annotated[Quant, typer.Option(help="latent quantisation")] = Quant.INT8,
    group_size: Annotated[int | None, typer.Option(help="int8/int4 columns per scale")] = None,
    budget: Annotated[int | None, typer.Option(help="token-budget tokens (default: M)")] = None,
    max_new_tokens: int = 16,
    arbiter: ArbiterAddr = None,
    curve: CurveDir = None,
    wait: Wait = 300.0,
    n_receivers: NReceivers = len(DEFAULT_RECEIVERS),
    as_json: Annotated[bool, typer.Option("--json", help="print the full record as JSON")] = False,
    mode: OldWirePath = None,
) -> None:
    """Ask the running system one question; prints the joint answer and each receiver's answer."""
    path = path_option(ctx, path, mode)
    if context_file is not None:
        context = _read_context(context_file)
    opts = dict(path=path.value, quant=quant.value, group_size=group_size, budget=budget)
    _check_options(question, context, max_new_tokens=max_new_tokens, **opts)
    with Client(arbiter, curve_dir=curve) as c:
        _wait(c, wait, n_receivers)
        ans = c.ask(question, context, max_new_tokens=max_new_tokens, **opts)
    if as_json:
        typer.echo(json.dumps(ans.to_row(), indent=2))
    elif not ans.ok:
        typer.secho(f"error: {ans.error.code}: {ans.error.message}", err=True, fg="red")
    else:
        _print_answer(ans)
    if not ans.ok:
        raise typer.Exit(1)


@app.command("ask-batch", rich_help_panel=PANEL)
def ask_batch(
    ctx: typer.Context,
    split: Annotated[Split, typer.Option()] = Split.dev,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    context: Annotated[Context, typer.Option()] = Context.distractor,
    path: Annotated[WirePath, typer.Option(help="how the questions reach the receivers")] = WirePath.latent,
    quant: Annotated[Quant, typer.Option()] = Quant.INT8,
    group_size: int | None = None,
    budget: int | None = None,
    max_new_tokens: int = 16,
    window: Annotated[int, typer.Option(help="questions in flight at once (backpressure)")] = 4,
    out: Annotated[Path, typer.Option(help="JSON Lines, one row per question")] = Path("results.jsonl"),
    data_dir: Annotated[Path | None, typer.Option(help="HotpotQA folder (default: $LATENTWIRE_DATA)")] = None,
    arbiter: ArbiterAddr = None,
    curve: CurveDir = None,
    wait: Wait = 300.0,
    n_receivers: NReceivers = len(DEFAULT_RECEIVERS),
    mode: OldWirePath = None,
) -> None:
    """Run a dataset split through the live system; writes rows (scored against the gold) and prints EM/F1,
    answered and failed counts, latency and bytes."""
    path = path_option(ctx, path, mode)
    _check_options("?", path=path.value, quant=quant.value, group_size=group_size, budget=budget)
    examples = load_split(split.value, data_dir, limit)
    gold = {ex.id: ex.answer for ex in examples}
    items = ((ex.id, ex.question, ex.context(context.value)) for ex in examples)
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with Client(arbiter, curve_dir=curve) as c, out.open("w") as f:
        _wait(c, wait, n_receivers)
        opts = dict(quant=quant.value, group_size=group_size, budget=budget, max_new_tokens=max_new_tokens)
        for ans in c.ask_many(items, window=window, path=path.value, **opts):
            row = scored_row(ans, gold[ans.tag])
            f.write(json.dumps(row) + "\n")
            rows.append(row)
    typer.echo(json.dumps(summarize_answers(rows), indent=2))


def scored_row(ans: Answer, gold: str) -> dict:
    """`ans.to_row()` with the gold answer and EM/F1 of the joint answer (0 when there is none)."""
    row = {**ans.to_row(), "gold": gold}
    pred = postprocess(row["answer"]) if row["ok"] else ""
    row["em"], row["f1"] = (exact_match(pred, gold), f1_score(pred, gold)) if row["ok"] else (0.0, 0.0)
    return row


@app.command(rich_help_panel=PANEL)
def up(
    ctx: typer.Context,
    ckpt: Ckpt = None,
    receiver: ReceiverItems = [],  # noqa: B006 - typer needs a literal default
    llama: Annotated[str | None, typer.Option(hidden=True, help="shorthand for --receiver llama=SPEC")] = None,
    qwen: Annotated[str | None, typer.Option(hidden=True, help="shorthand for --receiver qwen=SPEC")] = None,
    procfile: Annotated[
        Path | None, typer.Option(help="run this Procfile as it is instead of the list from --receiver")
    ] = None,
    restart: Annotated[bool, typer.Option(help="restart a process that dies")] = True,
    wait: Wait = 300.0,
    engine: EngineOpt = "auto",
    sender_threads: RoleThreads = THREADS["sender"],
    receiver_threads: RoleThreads = THREADS["receiver"],
) -> None:
    """Start a sender, one receiver per --receiver and an arbiter; report readiness; restart a process that dies;
    stop all on Ctrl-C."""
    _settings(engine=True)
    path = _ckpt(ckpt)
    given = _receivers(receiver, llama, qwen)
    if procfile is not None:
        procs = read_procfile(procfile)
    else:
        chosen = given or DEFAULT_RECEIVERS
        threads = {"sender": sender_threads, "receiver": receiver_threads}
        procs = processes(chosen, threads, engine=engine, debug=debug(ctx))
        for name in chosen:  # where each receiver binds, when the environment says
            settings.check_endpoint(f"${address_var(name)}", os.environ.get(address_var(name)))
        # what each receiver will load: a given spec, else $LATENTWIRE_<NAME>_MODEL, else the default's
        _check_receivers_in(path, {n: given.get(n) or os.environ.get(model_var(n)) or s for n, s in chosen.items()})
    # given specs go into the environment (a flag beats LATENTWIRE_<NAME>_MODEL); defaults leave it as it is
    sup = Supervisor(procs, child_env(path, given), restart=restart)
    stop = net.StopFlag()
    t0 = time.monotonic()

    def watch() -> None:
        with Client() as c:
            try:
                st = c.wait_ready(wait, receivers=count_receivers(procs))
                sup.say("up", f"ready in {time.monotonic() - t0:.1f} s: receivers {st.info.get('receivers')}")
            except TimeoutError as e:
                sup.say("up", f"not ready: {e}")

    sup.run(stop, on_start=lambda: threading.Thread(target=watch, daemon=True).start())
    if sup.failed:  # a process refused its settings: restarting it would refuse them again
        raise typer.Exit(2)


@app.command("procfile", rich_help_panel=PANEL)
def procfile_(receiver: ReceiverItems = []) -> None:  # noqa: B006 - typer needs a literal default
    """Print the Procfile `up` runs for these receivers (honcho's format: `honcho start -f FILE` runs it too)."""
    typer.echo(procfile_text(_receivers(receiver) or DEFAULT_RECEIVERS), nl=False)


@app.command(rich_help_panel=PANEL)
def keygen(folder: Path) -> None:
    """Write CURVE key pairs (arbiter, sender, receiver, client) for encrypted, authenticated links."""
    for path in net.keygen(folder):
        typer.echo(path)


def _receivers(items: list[str], llama: str | None = None, qwen: str | None = None) -> dict[str, str]:
    """The receivers the flags name ({} when none): the --receiver list, or the default list with shorthands applied."""
    try:
        chosen = parse_receivers(items) if items else {}
        shorthands = {n: s for n, s in (("llama", llama), ("qwen", qwen)) if s}
        if shorthands:
            chosen = {**(chosen or DEFAULT_RECEIVERS), **shorthands}
        return check_receivers(chosen) if chosen else {}
    except ValueError as e:
        raise CliError(str(e)) from None


def _check_receivers_in(ckpt: Path, receivers: dict[str, str]) -> None:
    """Refuse a receiver whose model has no adapter in the checkpoint (it would crash, restart, crash...)."""
    from latentwire.checkpoint import load_config  # torch

    have = list(load_config(ckpt).models)
    for name, spec in receivers.items():
        if spec not in have:
            raise CliError(
                f"{ckpt} has no adapter for model {spec!r} (receiver {name}); it has: {', '.join(have)} "
                f"(--receiver NAME=SPEC with one of those)"
            )


def _read_context(path: Path) -> str:
    """A context file's text, refused up front when the protocol could not carry it (the message names the file)."""
    limit = DEFAULT_LIMITS.max_text_bytes
    size = path.stat().st_size
    if size > limit:
        raise CliError(f"{path}: {size:,} bytes of context exceed the protocol's limit of {limit:,} bytes per text")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check_options(question: str, context: str = "", **options) -> None:
    """Refuse options the protocol would refuse before connecting (ProtocolError: one line, exit code 2)."""
    Ask("check", "cli", question, context, **ask_fields(options))


def _wait(client: Client, wait: float, receivers: int) -> None:
    """Wait for `receivers` receivers: an answer from a half-started system would silently be a single model's."""
    shown = []

    def note(st) -> None:
        if not shown:
            typer.secho(f"waiting for the system at {client.address} ...", err=True, fg="yellow")
            shown.append(1)

    try:
        client.wait_ready(wait, receivers=max(1, receivers), on_wait=note)
    except TimeoutError as e:
        raise CliError(str(e)) from None


def _print_answer(ans: Answer) -> None:
    r = ans.reply
    flags = (" [agreement]" if r.agreement else "") + (" [degraded]" if r.degraded else "")
    typer.echo(f"answer: {r.answer}  (from {r.model}, P={r.score:.2f}){flags}")
    for m in sorted(set(r.answers) | set(r.errors)):
        if m in r.answers:
            rtt = r.durations.get(f"{m}.rtt", 0.0)
            typer.echo(
                f"  {m:12s} {r.answers[m]!r}  score {r.scores[m]:.3f}  P {r.calibrated[m]:.2f}  "
                f"latency {rtt * 1000:.0f} ms"
            )
        else:
            typer.echo(f"  {m:12s} error: {r.errors[m]}")
    b = r.nbytes
    typer.echo(
        f"bytes: {b.get('request', 0)} per receiver ({b.get('payload', 0)} payload), {b.get('fanout', 0)} fanned out; "
        f"end-to-end {ans.latency_s * 1000:.0f} ms"
    )
