"""CLI commands of the multi-process system (registered on the `latentwire` app by cli.py).

Kept apart from cli.py so the process commands and the training/eval commands can change independently.
Heavy imports (torch, transformers) happen inside the commands that need them: `ask` and `arbiter` start fast.
"""

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from latentwire.protocol import Quant

Ckpt = Annotated[
    Path | None,
    typer.Option(envvar="LATENTWIRE_CKPT", help="checkpoint folder (default: checkpoints/default)"),
]
CurveDir = Annotated[
    str | None, typer.Option("--curve", help="CURVE key folder from `latentwire keygen` (default: $LATENTWIRE_CURVE)")
]
Threads1 = Annotated[int, typer.Option(help="torch threads (processes share the cores: 1 each by default)")]
ArbiterAddr = Annotated[str | None, typer.Option("--arbiter", help="arbiter frontend (default: $LATENTWIRE_ARBITER)")]
Wait = Annotated[float, typer.Option(help="seconds to wait for the system to be ready (models load slowly)")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _ckpt(ckpt: Path | None) -> Path:
    from latentwire.checkpoint import DEFAULT_CKPT

    path = ckpt or DEFAULT_CKPT
    if not (path / "config.json").is_file():
        typer.secho(f"error: no checkpoint at {path} (pass --ckpt or set $LATENTWIRE_CKPT)", err=True, fg="red")
        raise typer.Exit(2)
    return path


def register(app: typer.Typer, Mode: type, Context: type, Split: type) -> None:  # noqa: N803 - the cli's enums
    @app.command()
    def sender(
        ckpt: Ckpt = None,
        backend: Annotated[str | None, typer.Option(help="arbiter backend (default: $LATENTWIRE_BACKEND)")] = None,
        receivers: Annotated[
            str | None, typer.Option(help="comma-separated receiver addresses (default: $LATENTWIRE_RECEIVERS)")
        ] = None,
        curve: CurveDir = None,
        device: Annotated[str, typer.Option(help="encoder device")] = "cpu",
        threads: Threads1 = 1,
    ) -> None:
        """Sender process: encodes each question once and sends the frame to every receiver."""
        from latentwire.device import set_threads
        from latentwire.sender.process import serve

        _logging()
        set_threads(threads)
        serve(_ckpt(ckpt), backend=backend, receivers=receivers, curve_dir=curve, device=device)

    @app.command()
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
        threads: Threads1 = 1,
    ) -> None:
        """Receiver process: one frozen LLM + adapter; answers latent and text frames, refuses bad ones."""
        from latentwire.device import set_threads
        from latentwire.receivers.receiver import serve

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
            max_new_tokens=max_new_tokens,
        )

    @app.command()
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
        from latentwire.receivers.arbiter import serve

        _logging()
        serve(
            frontend=address,
            backend=backend,
            replies=replies,
            timeout=timeout,
            max_inflight=max_inflight,
            drain=drain,
            curve_dir=curve,
        )

    @app.command()
    def ask(
        question: str,
        context_file: Annotated[Path | None, typer.Option(help="file with the context paragraphs")] = None,
        context: Annotated[str, typer.Option(help="context text (instead of --context-file)")] = "",
        mode: Annotated[Mode, typer.Option()] = Mode.latent,
        quant: Annotated[Quant, typer.Option(help="latent quantisation")] = Quant.INT8,
        group_size: Annotated[int | None, typer.Option(help="int8/int4 columns per scale")] = None,
        budget: Annotated[int | None, typer.Option(help="token-budget tokens (default: M)")] = None,
        max_new_tokens: int = 16,
        arbiter: ArbiterAddr = None,
        curve: CurveDir = None,
        wait: Wait = 300.0,
        as_json: Annotated[bool, typer.Option("--json", help="print the full record as JSON")] = False,
    ) -> None:
        """Ask the running system one question; prints the joint answer and each receiver's answer."""
        from latentwire.client import Client

        if context_file is not None:
            context = context_file.read_text()
        opts = dict(mode=mode.value, quant=quant.value, group_size=group_size, budget=budget)
        _check_options(question, context, max_new_tokens=max_new_tokens, **opts)
        with Client(arbiter, curve_dir=curve) as c:
            _wait(c, wait)
            ans = c.ask(question, context, max_new_tokens=max_new_tokens, **opts)
        if as_json:
            typer.echo(json.dumps(ans.to_row(), indent=2))
        elif not ans.ok:
            typer.secho(f"error: {ans.error.code}: {ans.error.message}", err=True, fg="red")
        else:
            _print_answer(ans)
        if not ans.ok:
            raise typer.Exit(1)

    @app.command("ask-batch")
    def ask_batch(
        split: Annotated[Split, typer.Option()] = Split.dev,
        limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
        context: Annotated[Context, typer.Option()] = Context.distractor,
        mode: Annotated[Mode, typer.Option()] = Mode.latent,
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
    ) -> None:
        """Run a dataset split through the live system; writes rows and prints EM/F1, latency and bytes."""
        from latentwire.client import Client
        from latentwire.data import load_split
        from latentwire.metrics import exact_match, f1_score

        _check_options("?", mode=mode.value, quant=quant.value, group_size=group_size, budget=budget)
        examples = load_split(split.value, data_dir, limit)
        gold = {ex.id: ex.answer for ex in examples}
        ctx = context.value
        items = ((ex.id, ex.question, ex.context(ctx)) for ex in examples)
        rows = []
        out.parent.mkdir(parents=True, exist_ok=True)
        with Client(arbiter, curve_dir=curve) as c, out.open("w") as f:
            _wait(c, wait)
            opts = dict(quant=quant.value, group_size=group_size, budget=budget, max_new_tokens=max_new_tokens)
            for ans in c.ask_many(items, window=window, mode=mode.value, **opts):
                row = {"id": ans.tag, "gold": gold[ans.tag], **ans.to_row()}
                row["em"], row["f1"] = exact_match(row["answer"], row["gold"]), f1_score(row["answer"], row["gold"])
                f.write(json.dumps(row) + "\n")
                rows.append(row)
        from latentwire.client import summarize

        typer.echo(json.dumps(summarize(rows), indent=2))

    @app.command()
    def up(
        ckpt: Ckpt = None,
        llama: Annotated[str | None, typer.Option(help="model spec of the `llama` line (e.g. tiny-llama)")] = None,
        qwen: Annotated[str | None, typer.Option(help="model spec of the `qwen` line (e.g. tiny-qwen)")] = None,
        procfile: Annotated[Path | None, typer.Option(help="process list (default: the repo's Procfile)")] = None,
        restart: Annotated[bool, typer.Option(help="restart a process that dies")] = True,
        wait: Wait = 300.0,
    ) -> None:
        """Start every Procfile process (sender, receivers, arbiter), report readiness, stop all on Ctrl-C."""
        from latentwire import net
        from latentwire.client import Client
        from latentwire.up import Supervisor, child_env, count_receivers

        procs = net.procfile(procfile)
        sup = Supervisor(procs, child_env(_ckpt(ckpt), {"llama": llama, "qwen": qwen}), restart=restart)
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

    @app.command()
    def keygen(folder: Path) -> None:
        """Write CURVE key pairs (arbiter, sender, receiver, client) for encrypted, authenticated links."""
        from latentwire.net import keygen as run

        for path in run(folder):
            typer.echo(path)


def _check_options(question: str, context: str = "", **options) -> None:
    """Refuse options the protocol would refuse, with a clear message instead of a traceback."""
    from latentwire.protocol import Ask, ProtocolError

    try:
        Ask("check", "cli", question, context, **options)
    except ProtocolError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(2) from None


def _wait(client, wait: float) -> None:
    shown = []

    def note(st) -> None:
        if not shown:
            typer.secho(f"waiting for the system at {client.address} ...", err=True, fg="yellow")
            shown.append(1)

    from latentwire import net
    from latentwire.up import count_receivers

    # wait for every receiver the Procfile runs (or $LATENTWIRE_N_RECEIVERS across hosts): an answer from a
    # half-started system would silently be a single model's
    n = int(os.environ.get("LATENTWIRE_N_RECEIVERS") or count_receivers(net.procfile()) or 1)
    try:
        client.wait_ready(wait, receivers=n, on_wait=note)
    except TimeoutError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(2) from None


def _print_answer(ans) -> None:
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
