from typer.testing import CliRunner

from latentwire.cli import app


def test_smoke_command_answers_on_every_receiver():
    res = CliRunner().invoke(app, ["smoke", "--device", "cpu", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    assert "[tiny-llama] LlamaForCausalLM" in res.output and "[tiny-qwen] Qwen2ForCausalLM" in res.output
    assert "rows carry the sharer's answer" in res.output and "smoke OK" in res.output


def test_smoke_fails_loudly():
    res = CliRunner().invoke(app, ["smoke", "--device", "cuda:7"])
    assert res.exit_code != 0
