"""A malformed checkpoint config, through the real CLI: one line `error: <file>: <field>: <why>`, exit code 2, and
no model loaded, for every command that serves or measures a checkpoint.

The checkpoint is a tiny one built by hand from `latentwire.tiny` (the committed default's encoder, scaled down to
M=4, d_z=32, with one codebook adapter per tiny model), so the test does not depend on a trainer.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from latentwire import checkpoint
from latentwire.cli import app

LATENTWIRE = str(Path(sys.executable).parent / "latentwire")
TINY = ("tiny-llama", "tiny-qwen")


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    """A valid tiny checkpoint config: the sharer is tiny-qwen, both tiny models receive."""
    from latentwire.receivers.adapter import adapter_schemas
    from latentwire.tiny import tiny_llm

    llms = {name: tiny_llm(name.removeprefix("tiny-")) for name in TINY}
    encoder = {**checkpoint.load_config(checkpoint.DEFAULT_CKPT).encoder, "m": 4, "d_z": 32}
    encoder.update(sharer="tiny-qwen", sharer_fingerprint=llms["tiny-qwen"].fingerprint)
    codebook = adapter_schemas()["codebook"]
    models = {
        name: {
            "spec": name,
            "fingerprint": llm.fingerprint,
            "hidden_size": llm.hidden_size,
            "adapter": codebook(
                d_z=32, hidden_size=llm.hidden_size, tokens_per_row=encoder["tokens_per_row"]
            ).to_dict(),
            "calibration": {
                "latent": {"a": 1.0, "b": -1.0, "n": 10, "positives": 3},
                "relay": {"a": 0.5, "b": -0.5, "n": 10, "positives": 2},
            },
        }
        for name, llm in llms.items()
    }
    return {"format": checkpoint.FORMAT_VERSION, "encoder": encoder, "models": models}


def _write(folder: Path, config: dict | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tau = {f"adapter.{name}.log_tau": torch.tensor(20.0).log() for name in TINY}  # a codebook adapter's one weight
    save_file(tau, str(folder / checkpoint.WEIGHTS))
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / checkpoint.CONFIG).write_bytes(data)
    return folder


def _set(path: str, value: object) -> Callable[[dict], None]:
    """Set (or, with KeyError, delete) the dotted field `path` of a config."""

    def change(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value

    return change


LLAMA = "models.tiny-llama"
# (name, change to the valid config or the file's bytes, what the line says after `config.json: `, whether only the
# adapter registry catches it: those are refused up front by sender/receiver/up, later by commands that do not
# pass the registry)
VARIANTS: list[tuple[str, Callable[[dict], None] | bytes, str, bool]] = [
    ("m not an int", _set("encoder.m", "four"), "encoder.m: must be int, not str ('four')", False),
    ("m negative", _set("encoder.m", -1), "encoder.m: must be a positive int, not -1", False),
    ("m zero", _set("encoder.m", 0), "encoder.m: must be a positive int, not 0", False),
    ("m a bool", _set("encoder.m", True), "encoder.m: must be int, not bool", False),
    ("m over the wire's limit", _set("encoder.m", 100_000), "encoder.m: 100000 is over the protocol's limit", False),
    ("d_z zero", _set("encoder.d_z", 0), "encoder.d_z: must be a positive int, not 0", False),
    ("d_z missing", _set("encoder.d_z", KeyError), "encoder.d_z: missing", False),
    ("encoder missing", _set("encoder", KeyError), "encoder: missing", False),
    ("selector weight nan", _set("encoder.temperature", math.nan), "encoder.temperature: nan must be finite", False),
    ("models not a dict", _set("models", ["tiny-llama"]), "models: must be dict, not list", False),
    ("models empty", _set("models", {}), "models: empty", False),
    ("entry not a dict", _set(LLAMA, "tiny-llama"), f"{LLAMA}: must be dict, not str", False),
    ("hidden_size negative", _set(f"{LLAMA}.hidden_size", -64), f"{LLAMA}.hidden_size: must be a positive int", False),
    ("fingerprint not a str", _set(f"{LLAMA}.fingerprint", 7), f"{LLAMA}.fingerprint: must be str, not int", False),
    ("spec missing", _set(f"{LLAMA}.spec", KeyError), f"{LLAMA}.spec: missing", False),
    (
        "calibration nan",
        _set(f"{LLAMA}.calibration.latent.a", math.nan),
        f"{LLAMA}.calibration.latent.a: nan must be finite",
        False,
    ),
    (
        "calibration inf",
        _set(f"{LLAMA}.calibration.relay.b", math.inf),
        f"{LLAMA}.calibration.relay.b: inf must be finite",
        False,
    ),
    (
        "calibration of no path",
        _set(f"{LLAMA}.calibration.video", {"a": 1.0, "b": 0.0, "n": 1, "positives": 0}),
        f"{LLAMA}.calibration.video: unknown path",
        False,
    ),
    ("tau nan", _set(f"{LLAMA}.adapter.tau", math.nan), f"{LLAMA}.adapter.tau: nan must be finite", False),
    (
        "adapter kind unknown",
        _set(f"{LLAMA}.adapter.kind", "mlp9"),
        f"{LLAMA}.adapter.kind: unknown adapter kind",
        True,
    ),
    ("adapter field mistyped", _set(f"{LLAMA}.adapter.nearest", "4"), f"{LLAMA}.adapter.nearest: must be int", True),
    ("adapter field unknown", _set(f"{LLAMA}.adapter.colour", 1), f"{LLAMA}.adapter.colour: not a field of", True),
    ("format unknown", _set("format", 3), "format: 3 is not a format this version reads", False),
    ("format 1", _set("format", 1), "format: 1 is not a format this version reads (2): rewrite it with", False),
    ("invalid UTF-8", b'{"format": 1, "encoder\xff": {}}', "not UTF-8 text (invalid start byte", False),
    ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000, "malformed JSON (nested over", False),
    ("truncated", b'{"format": 1, "encoder": {', "malformed JSON (Expecting", False),
    ("empty file", b"", "malformed JSON (Expecting value", False),
]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What got past the config check: any model load, or the process about to start (both recorded, not run)."""
    calls: list[str] = []

    def record(what: str) -> Callable[..., None]:
        def fn(*args: object, **kwargs: object) -> None:
            calls.append(what)
            raise SystemExit(f"{what} reached")  # a test that gets here fails on the exit code as well

        return fn

    import latentwire.models
    import latentwire.proc_cli
    import latentwire.receivers.process
    import latentwire.trainer.calibrate  # noqa: F401 - what `calibrate` imports, bound to the real load_llm first

    # every module holding load_llm by name: one imported while it is patched would keep the recorder for good
    real = latentwire.models.load_llm
    ours = [m for name, m in sys.modules.items() if name.startswith("latentwire.") or name == "latentwire"]
    for module in [m for m in ours if getattr(m, "load_llm", None) is real]:
        monkeypatch.setattr(module, "load_llm", record("load_llm"))
    monkeypatch.setattr(latentwire.receivers.process, "serve", record("receiver serve"))
    monkeypatch.setattr(latentwire.proc_cli, "serve_sender", record("sender serve"))
    monkeypatch.setattr(latentwire.proc_cli, "Supervisor", record("up's supervisor"))
    return calls


COMMANDS = {
    "sender": [],
    "receiver": ["--model", "tiny-llama"],
    "up": ["--receiver", "llama=tiny-llama", "--receiver", "qwen=tiny-qwen"],
    "calibrate": [],
}


def _broken(tmp_path: Path, config: dict, change: Callable[[dict], None] | bytes) -> Path:
    if isinstance(change, bytes):
        return _write(tmp_path / "ckpt", change)
    d = copy.deepcopy(config)
    change(d)
    return _write(tmp_path / "ckpt", d)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("change", "says", "registry"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_a_malformed_config_is_one_line_exit_2_before_any_model_loads(
    tiny_config: dict, tmp_path: Path, loads: list[str], command: str, change, says: str, registry: bool
) -> None:
    if registry and command == "calibrate":
        pytest.skip("calibrate validates the adapters by the registry only when it builds them, after the models")
    ckpt = _broken(tmp_path, tiny_config, change)
    res = CliRunner().invoke(app, [command, "--ckpt", str(ckpt), *COMMANDS[command]])
    assert (res.exit_code, loads) == (2, []), (res.output, res.exception)
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: {ckpt / checkpoint.CONFIG}: {says}"), res.stderr


def test_there_are_at_least_21_variants() -> None:
    assert len(VARIANTS) >= 21 and len({v[0] for v in VARIANTS}) == len(VARIANTS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_valid_tiny_config_gets_past_the_check(
    tiny_config: dict, tmp_path: Path, loads: list[str], command: str
) -> None:
    """The harness: the same checkpoint unbroken reaches the (recorded) model load or process start."""
    ckpt = _write(tmp_path / "ckpt", tiny_config)
    res = CliRunner().invoke(app, [command, "--ckpt", str(ckpt), *COMMANDS[command]])
    assert res.exit_code != 2 and len(loads) == 1, (res.output, loads)


def test_the_valid_tiny_checkpoint_serves_a_receiver(tiny_config: dict, tmp_path: Path) -> None:
    """It is a real checkpoint: a receiver loads it (tiny-llama and its adapter)."""
    from latentwire.receivers.receiver import load_receiver

    rx = load_receiver("tiny-llama", _write(tmp_path / "ckpt", tiny_config), None, "rx", "cpu", "float32")
    assert rx.m == 4 and rx.name == "tiny-llama"


def test_the_console_script_refuses_a_nan_calibration_that_up_would_restart_forever(
    tiny_config: dict, tmp_path: Path
) -> None:
    ckpt = _broken(tmp_path, tiny_config, _set(f"{LLAMA}.calibration.latent.a", math.nan))
    env = {k: v for k, v in os.environ.items() if k != "LATENTWIRE_DEBUG"}
    out = subprocess.run(
        [LATENTWIRE, "receiver", "--ckpt", str(ckpt), "--model", "tiny-llama", "--bind", "tcp://127.0.0.1:5599"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"error: {ckpt / checkpoint.CONFIG}: {LLAMA}.calibration.latent.a: nan must be finite\n"
