"""config.json typed: `CheckpointConfig` round-trips the committed checkpoint and refuses a broken model entry."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from latentwire import checkpoint
from latentwire.checkpoint import DEFAULT_CKPT, CheckpointConfig, CheckpointError, ModelEntry


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads((DEFAULT_CKPT / checkpoint.CONFIG).read_text())


def test_default_config_round_trips(raw: dict) -> None:
    cfg = checkpoint.load_config(DEFAULT_CKPT)
    assert cfg.to_dict() == raw and CheckpointConfig.from_dict(raw).to_dict() == raw
    assert set(cfg.models) == {"gemma", "llama", "qwen"} and isinstance(cfg.models["qwen"], ModelEntry)
    assert cfg.models["qwen"].hidden_size == 896 and cfg.models["qwen"].adapter["kind"] == "codebook"
    assert cfg.encoder["backbone"] == "llm" and cfg.train["recipe"] == "train"
    # one Platt map per calibrated path, in one place
    cals = cfg.models["qwen"].calibration
    assert set(cals) >= {"evidence", "relay", "relay-tuned", "latent", "latent-closed"}  # every sender path
    assert cals == raw["models"]["qwen"]["calibration"] and not cfg.models["qwen"].extra
    assert all(set(c) == {"a", "b", "n", "positives"} for c in cals.values())


def test_write_config_writes_the_same_bytes(tmp_path: Path) -> None:
    checkpoint.write_config(tmp_path, checkpoint.load_config(DEFAULT_CKPT))
    assert (tmp_path / checkpoint.CONFIG).read_bytes() == (DEFAULT_CKPT / checkpoint.CONFIG).read_bytes()


def test_unknown_and_optional_keys_are_kept(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d.update(parent="ab" * 32, extensions=[{"model": "gemma"}], future={"x": 1}, nothing=None)
    d["models"]["llama"]["note"] = "kept"
    d["models"]["qwen"]["calibration"] = {}  # none fitted: raw scores
    cfg = CheckpointConfig.from_dict(d)
    assert cfg.parent == "ab" * 32 and cfg.extensions == [{"model": "gemma"}] and cfg.extra["future"] == {"x": 1}
    assert cfg.models["llama"].extra == {"note": "kept"} and cfg.models["qwen"].calibration == {}
    assert cfg.to_dict() == d


def _break(d: dict, path: tuple[str, ...], value: object) -> None:
    *parents, last = path
    for key in parents:
        d = d[key]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("spec",), KeyError, "models.llama.spec: missing"),
        (("spec",), 7, "models.llama.spec: must be str, not int"),
        (("spec",), "", "models.llama.spec: must not be empty"),
        (("fingerprint",), KeyError, "models.llama.fingerprint: missing"),
        (("fingerprint",), None, "models.llama.fingerprint: must be str, not NoneType"),
        (("hidden_size",), KeyError, "models.llama.hidden_size: missing"),
        (("hidden_size",), "576", "models.llama.hidden_size: must be int, not str"),
        (("hidden_size",), True, "models.llama.hidden_size: must be int, not bool"),
        (("hidden_size",), -576, "models.llama.hidden_size: must be a positive int, not -576"),
        (("adapter",), KeyError, "models.llama.adapter: missing"),
        (("adapter",), "codebook", "models.llama.adapter: must be dict, not str"),
        (("adapter", "kind"), KeyError, "models.llama.adapter.kind: missing"),
        (("adapter", "kind"), 1, "models.llama.adapter.kind: must be str, not int"),
        (("adapter", "tau"), math.nan, "models.llama.adapter.tau: nan must be finite"),
        (("calibration",), KeyError, "models.llama.calibration: missing"),
        (("calibration",), [1], "models.llama.calibration: must be dict, not list"),
        (("calibration", "latent", "a"), math.nan, "models.llama.calibration.latent.a: nan must be finite"),
        (("calibration", "latent", "a"), "1.3", "models.llama.calibration.latent.a: must be float, not str"),
        (("calibration", "relay"), 0.5, "models.llama.calibration.relay: must be dict, not float"),
        (("calibration", "relay", "b"), -math.inf, "models.llama.calibration.relay.b: -inf must be finite"),
        (("calibration", "relay", "b"), KeyError, "models.llama.calibration.relay.b: missing"),
        (("calibration", "relay", "n"), 1.5, "models.llama.calibration.relay.n: must be int, not float"),
        (("calibration", "relay", "positives"), 201, "calibration.relay: positives 201 must be within 0..n (200)"),
        (("calibration", "relay", "c"), 1.0, "calibration.relay.c: not a field of a calibration (fields: a, b, n,"),
        (("calibration", "video"), {"a": 1.0}, "models.llama.calibration.video: unknown path (paths: text, token-"),
    ],
)
def test_a_broken_model_entry_is_one_line_naming_field_and_file(
    raw: dict, tmp_path: Path, path: tuple[str, ...], value: object, says: str
) -> None:
    shutil.copy(DEFAULT_CKPT / checkpoint.WEIGHTS, tmp_path / checkpoint.WEIGHTS)
    d = copy.deepcopy(raw)
    _break(d["models"]["llama"], path, value)
    (tmp_path / checkpoint.CONFIG).write_text(json.dumps(d))
    for read in (checkpoint.read_config, checkpoint.load_config):
        with pytest.raises(CheckpointError) as e:
            read(tmp_path)
        assert str(e.value).startswith(f"{tmp_path / checkpoint.CONFIG}: ") and says in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"models": {"llama": "x"}}, "models.llama: must be dict, not str"),
        ({"models": []}, "models: must be dict, not list"),
        ({"models": {}}, "models: empty"),
        ({"encoder": 3}, "encoder: must be dict, not int"),
        ({"parent": 3}, "parent: must be str, not int"),
        ({"format": 3}, "format: 3 is not a format this version reads (2)"),
        ({"format": 1}, "format: 1 is not a format this version reads (2): rewrite it with the format-1 migration"),
        ({"format": "2"}, "format: must be int, not str"),
    ],
)
def test_a_broken_top_level_is_refused(raw: dict, change: dict, says: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(f"ck/config.json: {says}")):
        CheckpointConfig.from_dict({**raw, **change}, "ck")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("m", "four", "encoder.m: must be int, not str ('four')"),
        ("m", -1, "encoder.m: must be a positive int, not -1"),
        ("m", 0, "encoder.m: must be a positive int, not 0"),
        ("m", 8.0, "encoder.m: must be int, not float"),
        ("m", 10**6, "encoder.m: 1000000 is over the protocol's limit of 256"),
        ("m", KeyError, "encoder.m: missing"),
        ("d_z", 0, "encoder.d_z: must be a positive int, not 0"),
        ("d_z", 1 << 20, "encoder.d_z: 1048576 is over the protocol's limit of 8192"),
        ("tokens_per_row", 0, "encoder.tokens_per_row: must be a positive int, not 0"),
        ("backbone", 1, "encoder.backbone: must be str, not int"),
        ("temperature", math.inf, "encoder.temperature: inf must be finite"),
    ],
)
def test_a_broken_encoder_is_refused(raw: dict, field: str, value: object, says: str) -> None:
    d = copy.deepcopy(raw)
    _break(d["encoder"], (field,), value)
    with pytest.raises(CheckpointError, match=re.escape(f"ck/config.json: {says}")):
        CheckpointConfig.from_dict(d, "ck")


def test_a_nan_deep_inside_the_encoder_names_its_place(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d["encoder"]["selector"]["pair"][3] = math.nan
    with pytest.raises(CheckpointError, match=re.escape("encoder.selector.pair[3]: nan must be finite")):
        CheckpointConfig.from_dict(d, "ck")


@dataclasses.dataclass
class _Toy:
    """A stand-in adapter config dataclass: the validation reads any registry's fields, not these."""

    kind: str = "toy"
    d_z: int = 256
    tau: float = 1.0
    width: int | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, not {self.tau}")


@pytest.mark.parametrize(
    ("adapter", "says"),
    [
        ({"kind": "mlp9"}, "models.llama.adapter.kind: unknown adapter kind 'mlp9' (known: toy)"),
        ({"kind": "toy", "d_z": "256"}, "models.llama.adapter.d_z: must be int, not str"),
        ({"kind": "toy", "d_z": True}, "models.llama.adapter.d_z: must be int, not bool"),
        ({"kind": "toy", "width": 1.5}, "models.llama.adapter.width: must be int or null, not float"),
        ({"kind": "toy", "flag": 1}, "models.llama.adapter.flag: must be bool, not int"),
        ({"kind": "toy", "colour": 1}, "models.llama.adapter.colour: not a field of a 'toy' adapter"),
        ({"kind": "toy", "tau": -1}, "models.llama.adapter: tau must be positive, not -1"),  # the dataclass's own
    ],
)
def test_adapters_are_checked_against_their_kinds_config_dataclass(raw: dict, adapter: dict, says: str) -> None:
    d = copy.deepcopy(raw)
    d["models"] = {n: d["models"][n] for n in ("llama", "qwen")}  # the two the toy registry is given
    d["models"]["llama"]["adapter"] = adapter
    with pytest.raises(CheckpointError, match=re.escape(f"ck/config.json: {says}")):
        CheckpointConfig.from_dict(d, "ck", adapters={"toy": _Toy})
    ok = {"kind": "toy", "d_z": 32, "tau": 20, "width": None, "flag": True}  # an int where a float is expected
    d["models"]["llama"]["adapter"] = d["models"]["qwen"]["adapter"] = ok
    assert CheckpointConfig.from_dict(d, "ck", adapters={"toy": _Toy}).models["llama"].adapter == ok


def test_the_committed_checkpoints_fit_the_adapter_registry() -> None:
    from latentwire.receivers.adapter import adapter_schemas

    committed = [c.parent for c in DEFAULT_CKPT.parent.glob(f"*/{checkpoint.CONFIG}")]
    assert DEFAULT_CKPT in committed
    for folder in committed:
        checkpoint.load_config(folder, adapters=adapter_schemas())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"format": 1, "enc\xff": {}}', "not UTF-8 text (invalid start byte at byte 18)"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON (nested over 32 deep)"),
        (b"[" * 40 + b"]" * 40, "malformed JSON (nested over 32 deep)"),
        (b'{"format": 1, "encoder"', "malformed JSON (Expecting"),
        (b"", "malformed JSON (Expecting value"),
        (b"1" * 5000, "malformed JSON (Exceeds the limit"),
    ],
)
def test_an_unreadable_config_file_is_one_line(tmp_path: Path, data: bytes, says: str) -> None:
    (tmp_path / checkpoint.CONFIG).write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_config(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / checkpoint.CONFIG}: {says}") and "\n" not in str(e.value)


def test_part_fingerprints_tell_the_parts_apart() -> None:
    parts = checkpoint.part_fingerprints(DEFAULT_CKPT)
    assert set(parts) == {"encoder", "gemma", "llama", "qwen"} and len(set(parts.values())) == 4
    assert checkpoint.shared_parts(DEFAULT_CKPT, DEFAULT_CKPT) == ["encoder", "gemma", "llama", "qwen"]
