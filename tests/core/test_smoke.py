from typer.testing import CliRunner

from latentwire.cli import app


def test_smoke_command_runs_both_families():
    res = CliRunner().invoke(app, ["smoke", "--m", "4", "--d-z", "32"])
    assert res.exit_code == 0, res.output
    assert "[llama] LlamaForCausalLM" in res.output and "[qwen] Qwen2ForCausalLM" in res.output
    assert "inputs_embeds (1," in res.output and "smoke OK" in res.output


def test_smoke_fails_loudly():
    res = CliRunner().invoke(app, ["smoke", "--device", "cuda:7"])
    assert res.exit_code != 0
