"""The CLI's shape (process commands merged as top-level commands) and its error contract: a user-fixable error
is one line naming the file and exit code 2, with the traceback only under --debug."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from latentwire.cli import app
from latentwire.cli_base import CliError, user_error
from latentwire.protocol import DEFAULT_LIMITS

LATENTWIRE = str(Path(sys.executable).parent / "latentwire")
COMMANDS = {"smoke", "eval", "train", "bench", "demo"} | {
    "sender",
    "receiver",
    "arbiter",
    "up",
    "procfile",
    "ask",
    "ask-batch",
    "keygen",
}


def test_every_command_is_top_level() -> None:
    group = typer.main.get_command(app)
    assert set(group.commands) >= COMMANDS
    res = CliRunner().invoke(app, ["up", "--help"])
    assert res.exit_code == 0 and "NAME=SPEC" in res.stdout


@pytest.fixture
def big_context(tmp_path: Path) -> Path:
    path = tmp_path / "ctx.txt"
    path.write_text("Ada wrote it. " * (5 * 1024 * 1024 // 14))  # ~5 MB
    assert path.stat().st_size > DEFAULT_LIMITS.max_text_bytes
    return path


def _one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr.strip()


def test_oversized_context_file_is_one_line_and_exit_2(big_context: Path) -> None:
    res = CliRunner().invoke(app, ["ask", "Who?", "--context-file", str(big_context), "--wait", "0"])
    assert res.exit_code == 2
    line = _one_line(res.stderr)
    assert line.startswith(f"error: {big_context}: ") and "exceed the protocol's limit of 262,144 bytes" in line


def test_unreadable_context_files(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["ask", "Who?", "--context-file", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2 and "missing.txt" in _one_line(res.stderr)
    binary = tmp_path / "ctx.bin"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    res = CliRunner().invoke(app, ["ask", "Who?", "--context-file", str(binary)])
    assert res.exit_code == 2 and f"{binary}: not UTF-8 text" in _one_line(res.stderr)


def test_protocol_refusal_is_one_line() -> None:
    res = CliRunner().invoke(app, ["ask", "Who?", "--max-new-tokens", "0"])
    assert res.exit_code == 2 and "max_new_tokens" in _one_line(res.stderr)


def _garbled(tmp_path: Path, what: str) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if what == "config":
        (ckpt / "config.json").write_text('{"format": 1, "encoder"')
        (ckpt / "weights.safetensors").write_bytes(b"")
    else:
        (ckpt / "config.json").write_text(json.dumps({"format": 2, "encoder": {}, "models": {}}))
        (ckpt / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    return ckpt


@pytest.mark.parametrize(
    ("what", "names"), [("config", "config.json: malformed JSON"), ("weights", "weights.safetensors: not a readable")]
)
@pytest.mark.parametrize("command", ["sender", "receiver", "up"])
def test_garbled_checkpoint_is_one_line_naming_the_file(tmp_path: Path, command: str, what: str, names: str) -> None:
    ckpt = _garbled(tmp_path, what)
    res = CliRunner().invoke(app, [command, "--ckpt", str(ckpt)])
    assert res.exit_code == 2, res.output
    line = _one_line(res.stderr)
    assert line.startswith(f"error: {ckpt}") and names in line


@pytest.mark.parametrize("flag", ["--path", "--mode"])
def test_missing_checkpoint(tmp_path: Path, flag: str) -> None:
    res = CliRunner().invoke(app, ["eval", flag, "latent", "--ckpt", str(tmp_path / "nope"), "--limit", "1"])
    assert res.exit_code == 2 and "nope is not a LatentWire checkpoint" in _one_line(res.stderr)


@pytest.mark.parametrize("command", ["eval", "ask", "ask-batch"])
def test_the_path_option_is_path_and_its_old_name_mode_is_hidden(command: str) -> None:
    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands[command].params}
    assert params["path"].opts == ["--path"] and not params["path"].hidden
    assert params["mode"].opts == ["--mode"] and params["mode"].hidden
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0 and "--path" in res.stdout and not re.search(r"--mode\b", res.stdout)


def test_path_and_mode_disagreeing_is_one_line() -> None:
    res = CliRunner().invoke(app, ["eval", "--path", "text", "--mode", "latent"])
    assert res.exit_code == 2
    assert _one_line(res.stderr) == "error: --path text and --mode latent (its old name) disagree: give --path only"


def test_safetensors_errors_name_the_file_wherever_they_come_from(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(Exception) as info:  # noqa: PT011 - the point is what user_error makes of it
        load_file(str(bad))
    assert user_error(info.value).startswith(f"{bad}: unreadable safetensors file (")


def test_bugs_keep_their_traceback() -> None:
    assert user_error(RuntimeError("a bug")) is None
    assert user_error(KeyError("x")) is None
    assert user_error(CliError("fix this")) == "fix this"


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _garbled(tmp_path, "config")
    monkeypatch.setenv("LATENTWIRE_DEBUG", "0")
    res = CliRunner().invoke(app, ["--debug", "sender", "--ckpt", str(ckpt)])
    assert res.exit_code == 1 and type(res.exception).__name__ == "CheckpointError"
    assert os.environ["LATENTWIRE_DEBUG"] == "0"  # an argument, not an export: `up` passes it on itself
    assert CliRunner().invoke(app, ["sender", "--ckpt", str(ckpt)]).exit_code == 2
    monkeypatch.setenv("LATENTWIRE_DEBUG", "1")
    res = CliRunner().invoke(app, ["sender", "--ckpt", str(ckpt)])
    assert type(res.exception).__name__ == "CheckpointError"


def test_console_script_prints_one_line_and_exits_2(big_context: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LATENTWIRE_DEBUG"}
    out = subprocess.run(
        [LATENTWIRE, "ask", "Who?", "--context-file", str(big_context)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2 and out.stdout == ""
    assert _one_line(out.stderr).startswith(f"error: {big_context}: ")


def test_a_system_that_is_not_up_is_one_line() -> None:
    from latentwire.processes import net

    address = f"tcp://127.0.0.1:{net.free_port()}"
    res = CliRunner().invoke(app, ["ask", "Who?", "--arbiter", address, "--wait", "0.5", "--n-receivers", "3"])
    waiting, error = res.stderr.splitlines()  # the progress note, then the one error line
    assert res.exit_code == 2 and waiting.startswith("waiting for the system")
    assert error.startswith(f"error: LatentWire at {address} not ready after")
