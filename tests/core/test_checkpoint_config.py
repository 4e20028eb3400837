"""config.json typed: `CheckpointConfig` round-trips the committed checkpoint and refuses a broken model entry."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from latentwire import checkpoint
from latentwire.checkpoint import DEFAULT_CKPT, CheckpointConfig, CheckpointError, ModelEntry


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads((DEFAULT_CKPT / checkpoint.CONFIG).read_text())


def test_default_config_round_trips(raw: dict) -> None:
    cfg = CheckpointConfig.from_pretrained(DEFAULT_CKPT)
    assert cfg.to_dict() == raw and CheckpointConfig.from_dict(raw).to_dict() == raw
    assert set(cfg.models) == {"llama", "qwen"} and isinstance(cfg.models["qwen"], ModelEntry)
    assert cfg.models["qwen"].hidden_size == 896 and cfg.models["qwen"].adapter["kind"] == "codebook"
    assert cfg.encoder["backbone"] == "llm" and cfg.train["recipe"] == "sharer"
    # each calibrated path's map, typed (the latent's is also the entry's `calibration`)
    cals = cfg.models["qwen"].calibrations()
    assert set(cals) == {"text", "token-budget", "evidence", "relay", "latent"}  # `latentwire calibrate`: all five
    assert cals["latent"] == raw["models"]["qwen"]["calibration"]
    assert "calibration_by_path" not in cfg.models["qwen"].extra


def test_save_pretrained_writes_the_same_bytes(tmp_path: Path) -> None:
    CheckpointConfig.from_pretrained(DEFAULT_CKPT).save_pretrained(tmp_path)
    assert (tmp_path / checkpoint.CONFIG).read_bytes() == (DEFAULT_CKPT / checkpoint.CONFIG).read_bytes()


def test_unknown_and_optional_keys_are_kept(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d.update(parent="ab" * 32, extensions=[{"model": "gemma"}], future={"x": 1}, nothing=None)
    d["models"]["llama"]["calibration"] = None
    cfg = CheckpointConfig.from_dict(d)
    assert cfg.parent == "ab" * 32 and cfg.extensions == [{"model": "gemma"}] and cfg.extra["future"] == {"x": 1}
    assert cfg.models["llama"].calibration is None and cfg.to_dict() == d


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
        (("spec",), KeyError, "models.llama: spec is missing"),
        (("spec",), 7, "models.llama: spec must be str, not int"),
        (("fingerprint",), KeyError, "models.llama: fingerprint is missing"),
        (("fingerprint",), None, "models.llama: fingerprint must be str, not NoneType"),
        (("hidden_size",), KeyError, "models.llama: hidden_size is missing"),
        (("hidden_size",), "576", "models.llama: hidden_size must be int, not str"),
        (("hidden_size",), True, "models.llama: hidden_size must be int, not bool"),
        (("adapter",), KeyError, "models.llama: adapter is missing"),
        (("adapter",), "codebook", "models.llama: adapter must be dict, not str"),
        (("adapter", "kind"), KeyError, "models.llama.adapter: kind is missing"),
        (("adapter", "kind"), 1, "models.llama.adapter: kind must be str, not int"),
        (("calibration",), [1], "models.llama: calibration must be dict, not list"),
        (("calibration_by_path",), [1], "models.llama: calibration_by_path must be dict, not list"),
        (("calibration_by_path", "relay"), 0.5, "models.llama.calibration_by_path: relay must be dict, not float"),
    ],
)
def test_a_broken_model_entry_is_one_line_naming_field_and_file(
    raw: dict, tmp_path: Path, path: tuple[str, ...], value: object, says: str
) -> None:
    shutil.copy(DEFAULT_CKPT / checkpoint.WEIGHTS, tmp_path / checkpoint.WEIGHTS)
    d = copy.deepcopy(raw)
    _break(d["models"]["llama"], path, value)
    (tmp_path / checkpoint.CONFIG).write_text(json.dumps(d))
    for read in (checkpoint.read_config, CheckpointConfig.from_pretrained):
        with pytest.raises(CheckpointError) as e:
            read(tmp_path)
        assert str(e.value).startswith(f"{tmp_path / checkpoint.CONFIG}: ") and says in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"models": {"llama": "x"}}, "models.llama must be an object, not str"),
        ({"models": []}, "models must be dict, not list"),
        ({"encoder": 3}, "encoder must be dict, not int"),
        ({"parent": 3}, "parent must be str, not int"),
        ({"format": 2}, "not a LatentWire checkpoint config"),
    ],
)
def test_a_broken_top_level_is_refused(raw: dict, change: dict, says: str) -> None:
    with pytest.raises(CheckpointError, match=says):
        CheckpointConfig.from_dict({**raw, **change}, "ck")


def test_part_fingerprints_tell_the_parts_apart() -> None:
    parts = checkpoint.part_fingerprints(DEFAULT_CKPT)
    assert set(parts) == {"encoder", "llama", "qwen"} and len(set(parts.values())) == 3
    assert checkpoint.shared_parts(DEFAULT_CKPT, DEFAULT_CKPT) == ["encoder", "llama", "qwen"]
