"""The inference engines (latentwire/engine.py) on tiny random models: what each swaps, that its logits stay within
a stated tolerance of float32's, that a prefill and a decoding step take the paths the engine promises, and that
cached readings and eval rows key apart by engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentwire import engine as eng
from latentwire.lm import generate, text_slots
from latentwire.models import load_llm

# relative error of the last position's logits against float32 on a random prompt of a tiny random model (no
# structure to preserve: a pretrained model's answers are compared on dev by bench/engines.py)
TOLERANCE = {"float32": 0.0, "bfloat16": 0.05, "int8": 0.2, "bf16-int8": 0.2, "f32-int8": 0.2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", ["llama", "qwen"])
@pytest.mark.parametrize("name", list(eng.ENGINES))
def test_engine_logits_within_tolerance_of_float32(family: str, name: str) -> None:
    ref = load_llm(f"tiny-{family}", device="cpu", engine="float32")
    llm = load_llm(f"tiny-{family}", device="cpu", engine=name)
    assert llm.engine == name and ref.engine == "float32"
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = llm.model(input_ids=ids).logits[:, -1]
        b = ref.model(input_ids=ids).logits[:, -1]
        step_a = llm.model(input_ids=ids[:, :1]).logits[:, -1]  # one position: a decoding step's path
        step_b = ref.model(input_ids=ids[:, :1]).logits[:, -1]
    assert _rel(a, b) <= TOLERANCE[name] + 1e-6
    assert _rel(step_a, step_b) <= TOLERANCE[name] + 1e-6
    if name != "float32":
        assert _rel(step_a, step_b) > 0  # the engine really changed a decoding step's arithmetic
    if name == "f32-int8":
        assert torch.equal(a, b)  # and only that: its prefill is float32's


def test_apply_engine_swaps_every_float32_linear_once_and_keeps_embeddings() -> None:
    llm = load_llm("tiny-qwen", device="cpu", engine="bf16-int8")
    model = llm.model
    assert not [m for m in model.modules() if type(m) is nn.Linear and m.weight.dtype == torch.float32]
    assert model.get_input_embeddings().weight.dtype == torch.float32  # adapters read the table in float32
    assert sum(isinstance(m, eng._SplitLinear) for m in model.modules()) > 0


def test_split_linear_prefills_in_bfloat16_and_decodes_in_int8() -> None:
    lin = nn.Linear(32, 48)
    split = eng._SplitLinear(lin)
    x_prefill = torch.randn(2, eng.PREFILL_ROWS, 32)
    x_step = torch.randn(4, 1, 32)  # a batch of four decoding steps is still four single positions
    with torch.no_grad():
        assert torch.equal(split(x_prefill), split.wide(x_prefill))
        assert torch.equal(split(x_step), split.narrow(x_step))
        assert not torch.equal(split.wide(x_step), split.narrow(x_step))
        assert split(x_step).dtype == torch.float32 and split(x_prefill).dtype == torch.float32


def test_greedy_generation_runs_on_every_engine() -> None:
    for name in eng.ENGINES:
        llm = load_llm("tiny-llama", device="cpu", engine=name)
        gens = generate(llm, text_slots(llm, ["Question: who?\nContext: Ada wrote it."] * 2), max_new_tokens=4)
        assert len(gens) == 2 and all(len(g.token_ids) <= 4 for g in gens)
        assert gens[0].token_ids == gens[1].token_ids  # identical rows answer identically


def test_auto_engine_reads_the_environment_and_refuses_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTWIRE_ENGINE", raising=False)
    assert eng.resolve_engine("auto", "cpu") == "float32"
    monkeypatch.setenv("LATENTWIRE_ENGINE", "int8")
    assert eng.resolve_engine("auto", "cpu") == "int8"
    assert load_llm("tiny-llama", device="cpu").engine == "int8"
    with pytest.raises(ValueError, match="unknown engine 'fast'; choose one of auto, float32"):
        eng.resolve_engine("fast", "cpu")
    # a model loaded in another dtype runs as loaded: no engine converts it
    assert load_llm("tiny-llama", device="cpu", dtype="bfloat16", engine="auto").engine == "float32"


def test_engines_other_than_float32_run_on_a_cpu_only() -> None:
    with pytest.raises(ValueError, match="runs on a CPU only"):
        eng.resolve_engine("int8", "meta")


def test_readings_and_eval_rows_key_apart_by_engine() -> None:
    from latentwire.sender.sharer import SharerConfig

    cfg = SharerConfig()
    assert cfg.reading_key("fp") == cfg.reading_key("fp", "float32")  # float32 keeps the keys it was cached under
    assert len({cfg.reading_key("fp", name) for name in eng.ENGINES}) == len(eng.ENGINES)


def test_cli_engine_option_refuses_an_unknown_engine_in_one_line() -> None:
    from typer.testing import CliRunner

    from latentwire.cli import app

    res = CliRunner().invoke(app, ["eval", "--engine", "fast", "--limit", "1"])
    assert res.exit_code == 2
    assert "unknown engine 'fast'" in res.output
