"""The user-facing commands of the live system, end to end on the tiny trained checkpoint: what `latentwire ask`
prints (its lines, its JSON, its error), what `latentwire ask-batch` writes and sums up, and `latentwire demo`.

The data is a two-question HotpotQA file written here (`--data-dir` / $LATENTWIRE_DATA), so the scoring is checked
against golds the test knows.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentwire.cli import app
from latentwire.metrics import exact_match, f1_score, postprocess
from latentwire.processes import up
from latentwire.prompts import slot_text

TINY = {"llama": "tiny-llama", "qwen": "tiny-qwen"}  # process name -> model spec (the tiny checkpoint's names)
MODELS = set(TINY.values())
PARAGRAPHS = [
    ["Ada Lovelace", ["Ada Lovelace wrote the notes on the Analytical Engine.", " She published them in 1843."]],
    ["Charles Babbage", ["Charles Babbage designed the Analytical Engine.", " He never finished it."]],
    ["London", ["London is the capital of England.", " It lies on the Thames."]],
]
RECORDS = [
    {
        "id": "q-notes",
        "question": "Who wrote the notes on the Analytical Engine?",
        "answer": "Ada Lovelace",
        "context": PARAGRAPHS,
        "supporting_facts": [["Ada Lovelace", 0]],
    },
    {
        "id": "q-engine",
        "question": "Who designed the Analytical Engine?",
        "answer": "Charles Babbage",
        "context": PARAGRAPHS,
        "supporting_facts": [["Charles Babbage", 0]],
    },
]
CONTEXT = "\n".join(f"{title}: {''.join(sents)}" for title, sents in PARAGRAPHS)  # as a client sends it


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hotpotqa")
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return folder


@pytest.fixture(scope="module")
def ckpt(tiny_trained) -> Path:
    from latentwire.device import set_threads

    set_threads(1)  # this process only asks; the processes it starts need the cores
    return tiny_trained[0]


@pytest.fixture(scope="module")
def system(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[up.LocalSystem]:
    s = up.LocalSystem(ckpt, TINY, log=tmp_path_factory.mktemp("up") / "up.log", timeout=30)
    with s:
        yield s
    assert s.proc.returncode == 0, s.log.read_text()


def _ask(system: up.LocalSystem, *args: str) -> list[str]:
    return ["ask", *args, "--arbiter", system.address, "--n-receivers", "2", "--wait", "120", "--max-new-tokens", "4"]


# ---- latentwire ask ----

JOINT = re.compile(r"answer: (?P<answer>.*)  \(from (?P<model>\S+), P=\d\.\d\d\)(?P<flags>( \[\w+\])*)")
RECEIVER = re.compile(r"  (?P<model>\S+)\s+(?P<answer>'.*'|\".*\")  score -?\d+\.\d{3}  P \d\.\d\d  latency \d+ ms")
BYTES = re.compile(r"bytes: (?P<request>\d+) per receiver \((?P<payload>\d+) payload\), (?P<fanout>\d+) fanned out; "
                   r"end-to-end \d+ ms")  # fmt: skip


@pytest.mark.slow
def test_ask_prints_the_joint_answer_each_receivers_and_the_bytes(system: up.LocalSystem) -> None:
    res = CliRunner().invoke(app, _ask(system, RECORDS[0]["question"], "--context", CONTEXT, "--quant", "int4"))
    assert res.exit_code == 0, res.output
    head, *rows, tail = res.stdout.splitlines()
    joint = JOINT.fullmatch(head)
    assert joint and joint["model"] in MODELS and "degraded" not in joint["flags"], head
    answers = {}
    for line in rows:
        m = RECEIVER.fullmatch(line)
        assert m, line
        answers[m["model"]] = ast.literal_eval(m["answer"])  # printed with repr()
    assert set(answers) == MODELS
    assert joint["answer"] == answers[joint["model"]]  # the joint answer is the picked receiver's
    b = BYTES.fullmatch(tail)
    assert b, tail
    # int4 on the wire: M x d_z = 4 x 32 at 4 bits, fanned out to both receivers
    assert int(b["payload"]) == 64 and int(b["fanout"]) == 2 * int(b["request"]) > 0


@pytest.mark.slow
def test_ask_json_is_the_full_record(system: up.LocalSystem) -> None:
    res = CliRunner().invoke(app, [*_ask(system, RECORDS[1]["question"], "--context", CONTEXT), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["ok"] and not row["degraded"] and row["error"] is None and row["path"] == "latent"
    assert row["quant"] == "int8" and set(row["receivers"]) == MODELS and row["model"] in MODELS
    assert row["answer"] == row["receivers"][row["model"]]["answer"]


@pytest.mark.slow
def test_ask_a_request_the_system_refuses_is_an_error_line_and_exit_1(system: up.LocalSystem) -> None:
    res = CliRunner().invoke(app, _ask(system, "Who?", "--context", CONTEXT, "--group-size", "3"))  # d_z 32: no
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith("error: bad_request: ") and res.stderr.count("\n") == 1, res.stderr


# ---- latentwire ask-batch ----


@pytest.mark.slow
def test_ask_batch_writes_scored_rows_and_sums_them_up(system: up.LocalSystem, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows" / "results.jsonl"
    args = ["ask-batch", "--split", "dev", "--data-dir", str(data_dir), "--path", "latent", "--quant", "int8"]
    args += ["--window", "2", "--out", str(out), "--arbiter", system.address, "--n-receivers", "2"]
    res = CliRunner().invoke(app, [*args, "--wait", "120", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {r["id"] for r in RECORDS}
    for rec in RECORDS:
        row = rows[rec["id"]]
        assert row["ok"] and not row["degraded"] and set(row["receivers"]) == MODELS, row
        assert row["gold"] == rec["answer"]
        pred = postprocess(row["answer"])
        assert (row["em"], row["f1"]) == (exact_match(pred, rec["answer"]), f1_score(pred, rec["answer"]))
    summary = json.loads(res.stdout)
    assert (summary["n"], summary["n_answered"], summary["n_errors"], summary["n_scored"]) == (2, 2, 0, 2)
    assert summary["degraded"] == 0
    assert summary["f1"] == pytest.approx(sum(r["f1"] for r in rows.values()) / 2)
    assert summary["bytes_per_request"] > 0 and summary["fanout_bytes_per_request"] == 2 * summary["bytes_per_request"]


# ---- latentwire demo ----


class _TinySystem(up.LocalSystem):
    """`demo` starts the default receivers (the embedded models); here the same command runs the tiny ones."""

    def __init__(self, ckpt: Path, receivers: dict[str, str] | None = None, **kw) -> None:
        super().__init__(ckpt, TINY, **kw)


@pytest.mark.slow
def test_demo_answers_dev_questions_through_the_processes(
    ckpt: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "LocalSystem", _TinySystem)
    monkeypatch.setenv("LATENTWIRE_DATA", str(data_dir))
    res = CliRunner().invoke(app, ["demo", "--ckpt", str(ckpt), "--limit", "2", "--quant", "int4"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.startswith(f"starting sender, {', '.join(sorted(MODELS))} and arbiter with {ckpt}"), out
    *blocks, summary = out.split("\nQ: ")[1:] + [out.rstrip("\n").rsplit("\n", 1)[-1]]
    assert len(blocks) == 2, out
    joint_f1, sent, text = [], [], []
    for rec, block in zip(RECORDS, blocks, strict=True):
        question, gold, joint, *receivers, wire = block.strip("\n").split("\n\n")[0].splitlines()
        assert question == rec["question"] and gold.strip() == f"gold: {rec['answer']}", block
        m = re.fullmatch(r"   joint: (?P<answer>'.*'|\".*\") \(from (?P<model>\S+), F1 (?P<f1>\d\.\d\d)\)", joint)
        assert m and m["model"] in MODELS, joint
        assert m["f1"] == f"{f1_score(ast.literal_eval(m['answer']), rec['answer']):.2f}"  # printed with repr()
        joint_f1.append(float(m["f1"]))
        assert {line.split()[0] for line in receivers} == MODELS, receivers
        assert all(re.search(r" F1 \d\.\d\d, P\(right\) \d\.\d\d$", line) for line in receivers), receivers
        w = re.fullmatch(r"   ([\d,]+) bytes on the wire \(int4\) against ([\d,]+) of text; [\d.]+ s end to end", wire)
        assert w, wire
        sent.append(int(w[1].replace(",", "")))
        text.append(int(w[2].replace(",", "")))
        assert sent[-1] > 0 and sent[-1] % 2 == 0  # one frame, to two receivers
        assert text[-1] == 2 * len(slot_text(rec["question"], CONTEXT).encode())  # what text sends each receiver
    s_m = re.fullmatch(
        r"2 questions: joint F1 (?P<f1>\d\.\d\d) \(EM \d\.\d\d; best family \S+ \d\.\d\d\); (?P<sent>[\d,]+) bytes a "
        r"question on the wire against (?P<text>[\d,]+) of text \(\d+x fewer\); median \d+\.\d\d s end to end",
        summary,
    )
    assert s_m, summary
    assert s_m["f1"] == f"{sum(joint_f1) / 2:.2f}" and int(s_m["sent"].replace(",", "")) == round(sum(sent) / 2)


def test_demo_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", "--ckpt", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no checkpoint at" in res.stderr and res.stderr.count("\n") == 1, res.output
