"""Checkpoints: a folder the trainer writes and the sender, receivers, bench and eval serve from.

This module only reads and writes the folder; each role builds its own half (`sender/encoder.py:load_encoder`,
`receivers/adapter.py:load_adapter`).

    ckpt/
      weights.safetensors   encoder (trainable part) + one adapter per model, flat names
      config.json           encoder config, per-model adapter config + model spec/fingerprint, calibration, summary

`CheckpointConfig` / `ModelEntry` are config.json typed: read and validated in one place, so a reader gets
attributes instead of keys and a broken file fails at load with one line naming the field, not later with a
KeyError. Keys they do not know are kept as they are, so reading and writing a config loses nothing.

The checkpoint fingerprint hashes both files and is stamped in every latent frame, so a
receiver refuses latents from another checkpoint. Loading against a model whose weights differ from the
ones it was trained with is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .models import LLM

try:  # safetensors raises its own error type for a truncated or garbled file
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - older safetensors
    SafetensorError = OSError  # type: ignore[misc,assignment]

WEIGHTS, CONFIG = "weights.safetensors", "config.json"
DEFAULT_CKPT: Path = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, or does not match the models or config it is loaded with."""


def fingerprint(path: str | Path) -> str:
    """sha256 over the weights and the config, as written on disk."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path} is not a LatentWire checkpoint: {name} is missing")
        h.update(name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def save(
    path: str | Path,
    encoder: torch.nn.Module,
    adapters: dict[str, torch.nn.Module],
    config: dict | CheckpointConfig,
) -> str:
    """Write a checkpoint folder atomically enough (weights then config) and return its fingerprint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v for k, v in encoder.trainable_state_dict().items()}
    for name, ad in adapters.items():
        tensors.update({f"adapter.{name}.{k}": v for k, v in ad.state_dict().items()})
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path / WEIGHTS))
    write_config(path, config)
    return fingerprint(path)


def write_config(path: str | Path, config: dict | CheckpointConfig) -> None:
    """config.json as every checkpoint has it: the format version first among sorted keys, 2-space indent."""
    config = config.to_dict() if isinstance(config, CheckpointConfig) else config
    text = json.dumps({"format": FORMAT_VERSION, **config}, indent=2, sort_keys=True) + "\n"
    (Path(path) / CONFIG).write_text(text)


def read_config(path: str | Path) -> dict:
    """config.json as a dict, validated like `load_config` (for readers that still index it by key)."""
    path = Path(path)
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a LatentWire checkpoint: {CONFIG} is missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG}: malformed JSON ({e})") from None
    CheckpointConfig.from_dict(cfg, path)
    return cfg


def load_config(path: str | Path) -> CheckpointConfig:
    """config.json, typed and validated."""
    return CheckpointConfig.from_dict(read_config(path), path)


def _get(d: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """d[key] checked against `kind`; a missing or wrongly typed field is one CheckpointError line naming it."""
    if key not in d:
        raise CheckpointError(f"{where}: {key} is missing")
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{where}: {key} must be {names}, not {type(value).__name__} ({value!r:.40})")
    return value


@dataclass
class ModelEntry:
    """One receiver's entry under `models`: the model it was trained against and its adapter's config."""

    spec: str
    fingerprint: str  # of the model's weights (`latentwire.models`); a different model is refused at load
    hidden_size: int
    adapter: dict[str, Any]  # the adapter's config; its `kind` picks the family (receivers/adapter.py)
    calibration: dict[str, Any] | None = None  # the latent's score calibration (receivers/calibration.py)
    calibration_by_path: dict[str, dict[str, Any]] | None = None  # one per calibrated sender path, when fitted
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    FIELDS: ClassVar[tuple[str, ...]] = (
        "spec",
        "fingerprint",
        "hidden_size",
        "adapter",
        "calibration",
        "calibration_by_path",
    )

    def calibrations(self) -> dict[str, dict[str, Any]]:
        """Each sender path's Platt map as fitted on `val` (older checkpoints: the latent's alone)."""
        return {"latent": self.calibration or {}, **(self.calibration_by_path or {})}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ModelEntry:
        if not isinstance(d, dict):
            raise CheckpointError(f"{where} must be an object, not {type(d).__name__}")
        adapter = _get(d, "adapter", dict, where)
        _get(adapter, "kind", str, f"{where}.adapter")
        calibration = _get(d, "calibration", dict, where) if d.get("calibration") is not None else None
        by_path = _get(d, "calibration_by_path", dict, where) if d.get("calibration_by_path") is not None else None
        for path in by_path or {}:
            _get(by_path, path, dict, f"{where}.calibration_by_path")
        return cls(
            spec=_get(d, "spec", str, where),
            fingerprint=_get(d, "fingerprint", str, where),
            hidden_size=_get(d, "hidden_size", int, where),
            adapter=adapter,
            calibration=calibration,
            calibration_by_path=by_path,
            extra={k: v for k, v in d.items() if k not in cls.FIELDS or v is None},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"spec": self.spec, "fingerprint": self.fingerprint, "hidden_size": self.hidden_size}
        out["adapter"] = self.adapter
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.calibration_by_path is not None:
            out["calibration_by_path"] = self.calibration_by_path
        return {**out, **self.extra}


@dataclass
class CheckpointConfig:
    """config.json: the sender's encoder config, one `ModelEntry` per receiver, and how the checkpoint was made."""

    encoder: dict[str, Any]  # the encoder's config (sender/encoder.py:EncoderConfig, backbone-specific keys)
    models: dict[str, ModelEntry]
    format: int = FORMAT_VERSION
    train: dict[str, Any] | None = None  # the recipe that trained it
    summary: dict[str, Any] | None = None  # what training measured (steps, wall time, validation scores)
    parent: str | None = None  # an extended checkpoint: its parent's fingerprint (trainer/extend.py)
    extensions: list[dict[str, Any]] | None = None  # one record per receiver added after training
    adapter_fingerprints: dict[str, str] | None = None  # `part_fingerprints` as written
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    OPTIONAL: ClassVar[tuple[str, ...]] = ("train", "summary", "parent", "extensions", "adapter_fingerprints")

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> CheckpointConfig:
        """Validate and type a parsed config.json; `path` (the checkpoint folder) is named in every error."""
        where = str(Path(path) / CONFIG) if path is not None else CONFIG
        if not isinstance(d, dict) or d.get("format") != FORMAT_VERSION or "encoder" not in d or "models" not in d:
            raise CheckpointError(f"{where}: not a LatentWire checkpoint config (format {FORMAT_VERSION})")
        models = _get(d, "models", dict, where)
        kinds = {"train": dict, "summary": dict, "parent": str, "extensions": list, "adapter_fingerprints": dict}
        return cls(
            encoder=_get(d, "encoder", dict, where),
            models={name: ModelEntry.from_dict(e, f"{where}: models.{name}") for name, e in models.items()},
            format=d["format"],
            **{k: _get(d, k, kinds[k], where) for k in cls.OPTIONAL if d.get(k) is not None},
            extra={k: v for k, v in d.items() if k not in ("encoder", "models", "format", *cls.OPTIONAL) or v is None},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written: `from_dict(d).to_dict() == d` for every valid `d`."""
        out: dict[str, Any] = {"format": self.format, "encoder": self.encoder}
        out["models"] = {name: e.to_dict() for name, e in self.models.items()}
        out.update({k: getattr(self, k) for k in self.OPTIONAL if getattr(self, k) is not None})
        return {**out, **self.extra}

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CheckpointConfig:
        """The config of the checkpoint folder `path`."""
        return load_config(path)

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json into the folder `path` (the weights are `save`'s)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        write_config(path, self)


def weights(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix` (prefix removed); a missing or unreadable file is a CheckpointError naming it."""
    try:
        sd = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a LatentWire checkpoint: {WEIGHTS} is missing") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: unreadable weights ({e})") from None
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, allow_missing: str = "") -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{what}: weights do not fit the config ({e})") from None
    missing = [k for k in missing if not (allow_missing and k.startswith(allow_missing))]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def check_model(path: str | Path, name: str, llm: LLM) -> None:
    """Refuse to serve a checkpoint with a model other than the one it was trained against."""
    cfg = load_config(path)
    if name not in cfg.models:
        raise CheckpointError(f"{path} has no adapter for model {name!r} (it has: {', '.join(cfg.models)})")
    want = cfg.models[name]
    if want.fingerprint != llm.fingerprint:
        raise CheckpointError(
            f"{path}: adapter {name!r} was trained against {want.spec} "
            f"(fingerprint {want.fingerprint[:12]}), not {llm.spec} "
            f"(fingerprint {llm.fingerprint[:12]})"
        )
    if want.hidden_size != llm.hidden_size:
        raise CheckpointError(
            f"{path}: adapter {name!r} outputs {want.hidden_size} dims, {llm.spec} expects {llm.hidden_size}"
        )


# ---- parts: the encoder and each adapter, fingerprinted apart (a checkpoint extended by one receiver keeps
# the others' parts, and what was measured on them stays valid) ----


def tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """Every tensor of a checkpoint's weights file, and the file's metadata (both kept as they are)."""
    try:
        with safe_open(str(Path(path) / WEIGHTS), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - not a dict
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a LatentWire checkpoint: weights are missing") from None


# entry keys no answer depends on: the score calibrations change which receiver the joint pick prefers, never what
# a receiver answers, so recalibrating a checkpoint keeps its parts (and the rows measured on them)
NOT_IN_PART = ("calibration", "calibration_by_path")


def part_fingerprint(entry: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of one part: its config entry (canonical JSON, less `NOT_IN_PART`) and its tensors (names, dtypes,
    shapes, bytes)."""
    entry = {k: v for k, v in entry.items() if k not in NOT_IN_PART}
    h = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"\x00{k}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def part_fingerprints(path: str | Path) -> dict[str, str]:
    """`encoder` and one entry per adapter: what a reader compares to see which parts two checkpoints share."""
    path = Path(path)
    cfg = read_config(path)
    sd, _ = tensors(path)
    within = lambda prefix: {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}  # noqa: E731
    out = {"encoder": part_fingerprint(cfg["encoder"], within("encoder."))}
    for name, entry in cfg["models"].items():
        out[name] = part_fingerprint(entry, within(f"adapter.{name}."))
    return out


def shared_parts(child: str | Path, parent: str | Path) -> list[str]:
    """The parts (encoder, adapters) of `parent` that `child` holds unchanged."""
    a, b = part_fingerprints(child), part_fingerprints(parent)
    return [k for k in b if a.get(k) == b[k]]
