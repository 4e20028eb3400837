"""The bench's offline figures on a tiny checkpoint: every section present, numbers consistent."""

import json

import pytest

from latentwire.bench.quality import wire_bytes
from latentwire.bench.run import run_bench
from latentwire.calibration import Calibration, joint
from latentwire.protocol import PATH_NAMES
from latentwire.system.pipeline import load_checkpoint
from latentwire.trainer.recipe import TrainRecipe


@pytest.fixture(scope="module")
def tiny_wire(tiny_trained):
    path, llms = tiny_trained
    return path, load_checkpoint(path, llms=llms)


def test_bench_offline_report(tiny_wire, dev3, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    path, wire = tiny_wire
    res = run_bench(
        path, out=tmp_path / "out", wire=wire, examples=dev3, contexts=("gold",), progress=False, command="test"
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["meta"]["n"] == 3 and saved["meta"]["fingerprint"] == wire.fingerprint
    q = res["quality"]["gold"]
    for name in ("tiny-llama", "tiny-qwen"):
        assert list(q["models"][name]) == list(PATH_NAMES)  # every path, in the one list's order
        assert set(q["latent_quant"][name]) == {"fp16", "int8", "int4"}
        for scheme in ("fp16", "int8", "int4"):  # a share of the same 3 questions
            assert q["latent_quant"][name][scheme]["unchanged"] * 3 in (0, 1, 2, 3)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Quality: gold context" in report and "relay-tuned" in report and "latent-closed" in report
    assert (tmp_path / "out" / "f1_by_method.png").stat().st_size > 1000
    assert (tmp_path / "out" / "f1_vs_bytes.png").is_file()


def test_bench_sharer_checkpoint_measures_every_path(dev3, tmp_path, monkeypatch):
    """The default recipe's checkpoint: five paths per receiver, the sharer's own answer, the selection figures."""
    from latentwire.bench.run import quick_checkpoint

    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    ckpt = quick_checkpoint(tmp_path / "run")
    res = run_bench(ckpt, out=tmp_path / "out", examples=dev3, contexts=("distractor",), progress=False, command="t")
    q = res["quality"]["distractor"]
    for name in ("tiny-llama", "tiny-qwen"):
        assert list(q["models"][name]) == list(PATH_NAMES)
        assert all(q["models"][name][p]["n"] == 3 for p in q["models"][name])
    assert q["sharer"]["n"] == 3 and q["sharer"]["model"] == "tiny-qwen"
    sel = res["selection"]
    assert {"split", "n", "pair_recall", "sentence_recall", "tokens", "ms_per_question"} <= set(sel)
    assert sel["n"] == 3 and sel["budget_paragraphs"] == TrainRecipe().evidence_paragraphs == 2
    eff = res["efficiency"]["token_compression"]["tiny-llama"]
    assert eff["prompt_ratio"] > 1 and eff["slot_ratio"] > 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Evidence selection" in report and "relay" in report and "Machine:" in report
    assert str(tmp_path) not in json.dumps(res["meta"])  # no machine paths in results
    assert (tmp_path / "out" / "selection.png").stat().st_size > 1000


def test_joint_pick_oracle_and_agreement():
    rows = {
        "a": [{"pred": "Paris", "score": -0.1, "f1": 1.0, "em": 1.0}, {"pred": "x", "score": -3, "f1": 0, "em": 0}],
        "b": [{"pred": "paris", "score": -2.0, "f1": 1.0, "em": 1.0}, {"pred": "y", "score": -0.1, "f1": 1, "em": 1}],
    }
    j = joint(rows, {"a": Calibration(), "b": Calibration()})
    assert j["joint"]["f1"] == 1.0 and j["oracle"]["f1"] == 1.0
    assert j["agreement"]["rate"] == 0.5
    rows["b"][1].update(f1=0, em=0)  # b's confident second answer is wrong now and a's is right:
    rows["a"][1].update(f1=1, em=1)  # the pick still follows the higher score, the oracle does not
    j = joint(rows, {"a": Calibration(), "b": Calibration()})
    assert j["joint"]["f1"] == 0.5 and j["oracle"]["f1"] == 1.0


def test_wire_bytes_exact():
    sizes = wire_bytes(8, 256)
    assert sizes["fp16"]["body"] == 4096 and sizes["int8"]["body"] == 2048 and sizes["int4"]["body"] == 1024
    assert all(s["total"] == s["header"] + s["body"] for s in sizes.values())


@pytest.mark.slow  # the whole system started as processes, twice
def test_bench_quick_cli_end_to_end(tmp_path, monkeypatch):
    """`latentwire bench --quick`: tiny checkpoint, offline figures and the live processes, one report."""
    from typer.testing import CliRunner

    from latentwire.cli import app

    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    args = ["bench", "--quick", "--out", str(tmp_path), "--context", "gold", "--limit", "3", "--throughput", "3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "results.json").read_text())
    live = results["live"]["paths"]
    assert set(live) == {"latent:fp16", "latent:int8", "latent:int4", "text", "evidence"}
    assert all(p["ok"] == p["n"] == 3 for p in live.values())
    fan = {k: v["fanout_bytes_per_request"] for k, v in live.items()}
    assert fan["latent:int4"] < fan["latent:int8"] < fan["latent:fp16"] < fan["text"]
    assert (tmp_path / "latency.png").is_file() and "## Live system latency" in (tmp_path / "report.md").read_text()
    assert results["live"]["context"] == "gold" and all(p["n_scored"] == 3 for p in live.values())
    tp = results["live"]["throughput"]  # the same 3 questions with 1 and with 8 in flight
    assert tp["path"] == "latent:fp16" and tp["window_1"]["failed"] == tp["window_8"]["failed"] == 0
    assert tp["n"] == 3 and (tp["window_1"]["window"], tp["window_8"]["window"]) == (1, 8)
    report = (tmp_path / "report.md").read_text()
    assert "Throughput on `latent:fp16`" in report and f"against one: {tp['speedup']:.2f}x." in report
    ablation = results["training"]["ablation"]  # the recipe's table, read from the checkpoint
    assert set(ablation) == {"full", "no-channel", "no-residual", "no-lexicon", "prompt-only", "relay-tuned",
                             "latent-closed"}  # fmt: skip
    assert "## What each trained part carries (val, 8 questions)" in report and (tmp_path / "ablation.png").is_file()


def test_engines_side_by_side_on_the_same_questions(tiny_trained, tmp_path, monkeypatch):
    """bench/engines.py: each engine's speed and answers against the reference's; the report renders them."""
    from latentwire.bench.engines import measure
    from latentwire.bench.report import engine_lines

    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    path, _ = tiny_trained
    res = measure(path, engines=("float32", "bf16-w8"), limit=2, progress=False)
    ref, bf = res["engines"]["float32"], res["engines"]["bf16-w8"]
    assert res["n"] == 2 and res["reference"] == "float32"
    assert set(ref["f1"]) == {"tiny-llama.latent", "tiny-qwen.latent"}
    assert set(bf["unchanged"]) == {"sharer", *ref["f1"]} and set(bf["f1_delta"]) == set(ref["f1"])
    for key, same in bf["unchanged"].items():  # the same answers to the same questions score the same F1
        assert key == "sharer" or same < 1.0 or bf["f1"][key] == ref["f1"][key], key
    for r in (ref, bf):
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["decode_tokens"] > 0
    table = "\n".join(engine_lines(res))
    assert "| bf16-w8 |" in table and "| float32 | " in table and "first 2 questions" in table
    assert f"| {bf['speedup']:.2f}x |" in table  # each engine's measured speed-up over the reference


def test_engine_quality_pairs_the_serving_engine_with_the_reference(tiny_trained, tmp_path, monkeypatch):
    """bench/engines.py compare_quality: per receiver and path, both F1s, the paired difference and the answers
    unchanged; against itself nothing changes."""
    from latentwire.bench.engines import compare_quality
    from latentwire.data import load_split
    from latentwire.system.pipeline import load_checkpoint

    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    path, _ = tiny_trained
    examples = load_split("dev", limit=3)
    same = compare_quality(
        load_checkpoint(path, engine="float32"), path, examples, "float32", ["latent"], progress=False
    )
    assert same["sharer_unchanged"] == 1.0 and set(same["paths"]) == {"tiny-llama.latent", "tiny-qwen.latent"}
    assert all(p["diff"] == 0.0 and p["unchanged"] == 1.0 and p["f1"] == p["f1_ref"] for p in same["paths"].values())
    other = compare_quality(
        load_checkpoint(path, engine="bf16-w8"), path, examples, "float32", ["relay"], progress=False
    )
    assert other["engine"] == "bf16-w8" and other["reference"] == "float32" and other["n"] == 3
    for p in other["paths"].values():
        assert p["diff"] == pytest.approx(p["f1"] - p["f1_ref"]) and p["n"] == 3
