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
TOLERANCE = {"float32": 0.0, "bf16-w8": 0.08}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


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


def test_bf16_w8_converts_every_linear_once_and_keeps_a_tied_head_tied() -> None:
    llm = load_llm("tiny-qwen", device="cpu", engine="bf16-w8")
    model = llm.model
    assert not [m for m in model.modules() if type(m) is nn.Linear]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the whole pass, norms and table included
    head = model.get_output_embeddings()
    assert isinstance(head, eng.W8Linear)
    if model.config.tie_word_embeddings:
        assert head.weight is model.get_input_embeddings().weight


def test_w8_linear_multiplies_a_few_rows_on_int8_weights_and_more_on_bfloat16_weights() -> None:
    lin = nn.Linear(32, 48).to(torch.bfloat16)
    w8 = eng.W8Linear(lin)
    x_prefill = torch.randn(1, eng.W8_MAX_ROWS + 1, 32, dtype=torch.bfloat16)  # one request's prefill
    x_batch = torch.randn(eng.W8_MAX_ROWS + 1, 1, 32, dtype=torch.bfloat16)  # a batch's decoding step
    x_step = torch.randn(eng.W8_MAX_ROWS, 1, 32, dtype=torch.bfloat16)  # live decoding steps of a few requests
    with torch.no_grad():
        assert torch.equal(w8(x_prefill), lin(x_prefill)) and torch.equal(w8(x_batch), lin(x_batch))
        dequant = w8.qweight.float() * w8.scales.float()[:, None]
        want = x_step.float() @ dequant.T + lin.bias.float()
        assert _rel(w8(x_step), want) < 0.02  # the int8 weights, within bfloat16's rounding
        assert not torch.equal(w8(x_step), lin(x_step))
    assert w8.qweight.dtype == torch.int8 and w8.qweight.shape == lin.weight.shape


def test_w8_head_multiplies_a_batch_of_sliced_positions_as_contiguous_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch multiplies a non-contiguous bfloat16 input by first copying the transposed weight (~1 s per step for a
    # 150k vocabulary): the head reads the last position sliced out of a batch, so it must make it contiguous
    llm = load_llm("tiny-llama", device="cpu", engine="bf16-w8")
    head = llm.model.get_output_embeddings()
    seen: list[bool] = []
    linear = eng.F.linear
    monkeypatch.setattr(eng.F, "linear", lambda x, *a: seen.append(x.is_contiguous()) or linear(x, *a))
    x = torch.randn(eng.W8_MAX_ROWS + 2, 5, head.weight.shape[1], dtype=torch.bfloat16)
    with torch.no_grad():
        head(x[:, -1:])
    assert seen == [True] and not x[:, -1:].is_contiguous()


def test_greedy_generation_runs_on_every_engine() -> None:
    for name in eng.ENGINES:
        llm = load_llm("tiny-llama", device="cpu", engine=name)
        gens = generate(llm, text_slots(llm, ["Question: who?\nContext: Ada wrote it."] * 2), max_new_tokens=4)
        assert len(gens) == 2 and all(len(g.token_ids) <= 4 for g in gens)
        assert gens[0].token_ids == gens[1].token_ids  # identical rows answer identically


def test_auto_engine_follows_the_environment_then_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTWIRE_ENGINE", raising=False)
    monkeypatch.setattr(eng, "has_bf16_arithmetic", lambda: True)
    assert eng.resolve_engine("auto", "cpu") == eng.AUTO_ENGINE == "bf16-w8"
    monkeypatch.setattr(eng, "has_bf16_arithmetic", lambda: False)
    assert eng.resolve_engine("auto", "cpu") == "float32"  # bfloat16 emulated: slower than float32
    monkeypatch.setenv("LATENTWIRE_ENGINE", "float32")
    assert eng.resolve_engine("auto", "cpu") == "float32"  # the environment wins, whatever the CPU
    monkeypatch.setattr(eng, "has_bf16_arithmetic", lambda: True)
    assert load_llm("tiny-llama", device="cpu").engine == "float32"
    with pytest.raises(ValueError, match="unknown engine 'fast'; choose one of auto, float32"):
        eng.resolve_engine("fast", "cpu")
    # a model loaded in another dtype runs as loaded: no engine converts it
    assert load_llm("tiny-llama", device="cpu", dtype="bfloat16", engine="auto").engine == "float32"


def test_engines_other_than_float32_run_on_a_cpu_only() -> None:
    with pytest.raises(ValueError, match="runs on a CPU only"):
        eng.resolve_engine("bf16-w8", "meta")


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
