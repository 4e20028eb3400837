"""The serving topology from a list of receivers: Procfile generation, `up` checks, and N receivers end to end."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from honcho.environ import parse_procfile
from typer.testing import CliRunner

from latentwire.cli import app
from latentwire.data import Example, Paragraph
from latentwire.proc_cli import scored_row
from latentwire.processes import up
from latentwire.processes.client import Answer, summarize_answers
from latentwire.protocol import Ask, ErrorReply, JointReply

REPO = Path(__file__).resolve().parents[2]


# ---- the process list ----


def test_committed_procfile_is_the_generated_default() -> None:
    assert (REPO / "Procfile").read_text() == up.procfile_text()
    assert up.read_procfile() == up.processes() == up.processes(up.DEFAULT_RECEIVERS)
    assert list(up.processes()) == ["sender", "gemma", "llama", "qwen", "arbiter"]


def test_processes_for_three_receivers_fan_out_to_the_same_addresses() -> None:
    receivers = {"a": "tiny-llama", "b-2": "tiny-qwen", "c": "models/x.gguf"}
    procs = up.processes(receivers, {"sender": 2})
    assert list(procs) == ["sender", "a", "b-2", "c", "arbiter"]
    env = {"LATENTWIRE_B_2": "tcp://10.0.0.2:7000", "LATENTWIRE_C_MODEL": "other.gguf"}  # as where up starts them
    argv = {name: cmd.argv(env) for name, cmd in procs.items()}
    binds = [argv[n][argv[n].index("--bind") + 1] for n in receivers]
    assert binds == ["tcp://127.0.0.1:5561", "tcp://10.0.0.2:7000", "tcp://127.0.0.1:5563"]
    # the sender fans out to the same addresses; a role's threads given, the default for the other
    assert argv["sender"] == ["latentwire", "sender", "--receivers", ",".join(binds), "--threads", "2"]
    assert all(argv[n][-2:] == ["--threads", str(up.THREADS["receiver"])] for n in receivers)
    assert argv["a"][:4] == ["latentwire", "receiver", "--model", "tiny-llama"] and argv["c"][3] == "other.gguf"
    shell = procs["sender"].shell()  # the Procfile line: every setting left to the shell that runs it
    assert shell == (
        "exec latentwire sender --receivers ${LATENTWIRE_RECEIVERS:-${LATENTWIRE_A:-tcp://127.0.0.1:5561},"
        "${LATENTWIRE_B_2:-tcp://127.0.0.1:5562},${LATENTWIRE_C:-tcp://127.0.0.1:5563}} --threads 2"
    )
    assert procs["c"].shell().startswith("exec latentwire receiver --model ${LATENTWIRE_C_MODEL:-models/x.gguf} ")
    assert up.count_receivers(procs) == 3


def test_engine_and_debug_reach_the_processes_as_arguments() -> None:
    procs = up.processes({"a": "tiny-llama"}, engine="bf16-w8", debug=True)
    argv = {name: cmd.argv({}) for name, cmd in procs.items()}
    assert all(a[:2] == ["latentwire", "--debug"] for a in argv.values())
    assert argv["sender"][-2:] == argv["a"][-2:] == ["--engine", "bf16-w8"] and "--engine" not in argv["arbiter"]
    assert "--engine" not in up.processes({"a": "tiny-llama"})["a"].argv({})  # auto: each process's own default


def test_a_procfile_line_is_read_back_as_its_argument_list() -> None:
    for cmd in up.processes({"a": "tiny-llama", "b": "tiny-qwen"}, engine="float32", debug=True).values():
        assert up.parse_command(cmd.shell()) == cmd
    # a receiver is counted by its role, not by a substring of some other process's line
    other = up.parse_command("exec latentwire arbiter --timeout 5")
    assert up.count_receivers({"x": other, "y": up.parse_command("latentwire receiver --model m")}) == 1
    for line, says in (
        ("python -m http.server", "latentwire processes"),
        ("latentwire receiver --bind tcp://${HOST}:1", "whole argument"),
        ("latentwire --debug", "no process role"),
    ):
        with pytest.raises(ValueError, match=says):
            up.parse_command(line)


def test_procfile_command_prints_what_honcho_and_up_run() -> None:
    res = CliRunner().invoke(app, ["procfile", "--receiver", "a=tiny-llama", "-r", "tiny-qwen"])
    assert res.exit_code == 0, res.output
    printed = {name: up.parse_command(line) for name, line in parse_procfile(res.stdout).processes.items()}
    assert printed == up.processes({"a": "tiny-llama", "tiny-qwen": "tiny-qwen"})
    default = CliRunner().invoke(app, ["procfile"])
    assert default.stdout == (REPO / "Procfile").read_text()


def test_honcho_accepts_a_generated_procfile(tmp_path: Path) -> None:
    path = tmp_path / "Procfile"
    path.write_text(up.procfile_text({"a": "tiny-llama", "b": "tiny-qwen", "c": "tiny-llama"}))
    honcho = Path(sys.executable).parent / "honcho"
    out = subprocess.run([str(honcho), "-f", str(path), "check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Valid procfile detected (sender, a, b, c, arbiter)" in out.stderr + out.stdout


def test_parse_receivers() -> None:
    assert up.parse_receivers(["llama=tiny-llama", "Qwen/Qwen2-0.5B-Instruct"]) == {
        "llama": "tiny-llama",
        "Qwen2-0-5B-Instruct": "Qwen/Qwen2-0.5B-Instruct",
    }
    for items, message in (
        (["a=x", "a=y"], "given twice"),
        (["a-b=x", "a_b=y"], "share LATENTWIRE_A_B"),
        (["sender=x"], "not sender, arbiter, up"),
        (["a.b=x"], "use letters, digits"),
        (["backend=llama"], "LATENTWIRE_BACKEND is another setting's variable"),
        (["ckpt=llama"], "LATENTWIRE_CKPT is another setting's"),
        (["llama_model=qwen"], "LATENTWIRE_LLAMA_MODEL is another setting's"),
        (["a=x y"], "without spaces"),
        (["a=$(rm -rf /)"], "without spaces"),
        ([], "no receivers"),
    ):
        with pytest.raises(ValueError, match=message):
            up.parse_receivers(items)


def test_child_env_puts_given_specs_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTWIRE_QWEN_MODEL", "from-env")
    monkeypatch.setenv("LATENTWIRE_LLAMA_MODEL", "from-env")
    env = up.child_env(None, {"llama": "tiny-llama"})
    assert env["LATENTWIRE_LLAMA_MODEL"] == "tiny-llama" and env["LATENTWIRE_QWEN_MODEL"] == "from-env"


# ---- answers scored against the gold ----


def _row(answer: str | None, gold: str | None, e2e: float = 0.1) -> dict:
    ask = Ask("r1", "client", "Who?", "")
    if answer is None:
        ans = Answer("q", ask, error=ErrorReply("r1", "arbiter", "no_answer", "nobody answered"), latency_s=e2e)
    else:
        reply = JointReply("r1", "arbiter", answer, "tiny-llama", 0.5, 0, 0, nbytes={"request": 10, "fanout": 20})
        ans = Answer("q", ask, reply=reply, latency_s=e2e)
    return scored_row(ans, gold) if gold is not None else ans.to_row()


def test_summarize_answers_scores_against_gold_and_counts_errors_apart() -> None:
    rows = [_row("The answer is Ada Lovelace.", "Ada Lovelace"), _row("Paris", "Ada Lovelace"), _row(None, "x")]
    assert [r["em"] for r in rows] == [1.0, 0.0, 0.0]
    s = summarize_answers(rows)
    assert (s["n"], s["n_answered"], s["n_errors"], s["n_scored"]) == (3, 2, 1, 3)
    assert math.isclose(s["em"], 1 / 3) and math.isclose(s["f1"], 1 / 3)
    assert s["bytes_per_request"] == 10 and s["fanout_bytes_per_request"] == 20
    unscored = summarize_answers([_row("Ada", None)])  # no gold: no EM/F1 rather than a fake 0.0
    assert unscored["em"] is None and unscored["f1"] is None and unscored["n_scored"] == 0


# ---- `up` refuses what would crash-loop ----


def test_up_refuses_receivers_the_checkpoint_has_no_adapter_for(tiny3_ckpt: Path) -> None:
    res = CliRunner().invoke(app, ["up", "--ckpt", str(tiny3_ckpt), "--receiver", "a=tiny-phi"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "has no adapter for model 'tiny-phi' (receiver a)" in res.stderr
    res = CliRunner().invoke(app, ["up", "--ckpt", str(tiny3_ckpt), "--receiver", "a=x y"])
    assert res.exit_code == 2 and "without spaces" in res.stderr


# ---- three receivers, live ----


@pytest.fixture(scope="module")
def tiny3_ckpt(tmp_path_factory) -> Path:
    """A checkpoint for three models: the two tiny families and a third tiny Llama saved as a model folder."""
    from latentwire.device import set_threads
    from latentwire.models import load_llm
    from latentwire.tiny import tiny_llm
    from latentwire.trainer.tiny import tiny_checkpoint

    set_threads(1)
    folder = tmp_path_factory.mktemp("models") / "llama-b"
    other = tiny_llm("llama", seed=1)
    other.model.save_pretrained(folder)
    other.tokenizer.save_pretrained(folder)
    llms = {n: load_llm(n, engine="float32") for n in ("tiny-llama", "tiny-qwen", str(folder))}
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt3"), llms=llms, models=list(llms))


@pytest.mark.slow
def test_live_bench_runs_one_receiver_per_checkpoint_model_and_scores_every_answer(
    tiny3_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latentwire.bench.live import checkpoint_receivers, live_latency

    monkeypatch.setenv("LATENTWIRE_ENGINE", "bf16-w8")  # the processes inherit it, whatever this CPU's default

    receivers = checkpoint_receivers(tiny3_ckpt)
    assert set(receivers) == {"tiny-llama", "tiny-qwen", "llama-b"} and receivers["llama-b"].endswith("/llama-b")
    examples = [
        Example(
            f"q{i}",
            f"Who wrote book {i}?",
            "Ada Lovelace",
            (Paragraph("B", (f"Book {i} is by Ada Lovelace.",)),),
            frozenset(),
        )
        for i in range(2)
    ]
    threads = {"sender": 2, "receiver": 1}
    out = live_latency(
        tiny3_ckpt, examples, progress=False, timeout=30, text_n=1, evidence_n=1, idle_overhead_n=5, threads=threads
    )
    assert out["receivers"] == receivers
    # the same questions once more with every process on float32: the serving engine's speed-up over it
    ref = out["engine_reference"]
    assert out["engine"] == "bf16-w8" and ref["engine"] == "float32" and ref["n_answered"] == 2
    # the reference answered the same questions, so the speed-up is measured; the idle messaging path stays in
    # milliseconds (a stall of a poll period or a heartbeat on the request path breaks this)
    assert ref["n"] == out["paths"]["latent:fp16"]["n"] and ref["n_errors"] == 0 and out["engine_speedup"] is not None
    assert out["overhead_idle"]["n"] == 5 and out["overhead_idle"]["p95"] < 0.5, out["overhead_idle"]
    assert set(out["paths"]) == {"latent:fp16", "latent:int8", "latent:int4", "text", "evidence"}
    # the cost of a question, summed over every process: each measured its own CPU time
    cost = out["cost"]
    assert set(cost) == {"latent", "text", "evidence"} and cost["latent"]["label"] == "latent:fp16"
    assert cost["latent"]["sender_cpu_s"] > 0 and len(cost["latent"]["receiver_cpu_s"]) == len(receivers)
    for path, c in cost.items():
        assert all(v > 0 for v in c["receiver_cpu_s"].values()), path
        assert c["1"]["cpu_s"] < c["2"]["cpu_s"] < c["3"]["cpu_s"], path  # every receiver adds its own work
    assert out["threads"] == threads
    for label, s in out["paths"].items():
        n = 1 if label in ("text", "evidence") else 2
        assert (s["n"], s["n_answered"], s["n_errors"], s["n_scored"], s["degraded"]) == (n, n, 0, n, 0), label
        assert s["f1"] is not None and s["em"] is not None, label  # scored against the gold answers
    fan = {label: s["fanout_bytes_per_request"] for label, s in out["paths"].items()}
    assert fan["latent:int4"] < fan["latent:int8"] < fan["latent:fp16"], fan  # what the quantization buys
