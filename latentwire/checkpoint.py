"""Checkpoints: a folder the trainer writes and the sender, receivers, bench and eval serve from.

This module only reads and writes the folder; each role builds its own half (`sender/encoder.py:load_encoder`,
`receivers/adapter.py:load_adapter`).

    ckpt/
      weights.safetensors   encoder (trainable part) + one adapter per model, flat names
      config.json           encoder config, per-model adapter config + model spec/fingerprint, calibration, summary

config.json, typed and validated (`CheckpointConfig`, `read_config`, `load_config`), lives in
`checkpoint_config.py`; its names are re-exported here, so `checkpoint.X` stays the one way in.

The checkpoint fingerprint hashes both files and is stamped in every latent frame, so a
receiver refuses latents from another checkpoint. Loading against a model whose weights differ from the
ones it was trained with is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .checkpoint_config import (  # noqa: F401 - the folder's API re-exports its config's
    CONFIG,
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointError,
    ModelEntry,
    load_config,
    read_config,
    read_json,
    write_config,
)
from .models import LLM

try:  # safetensors raises its own error type for a truncated or garbled file
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - older safetensors
    SafetensorError = OSError  # type: ignore[misc,assignment]

WEIGHTS = "weights.safetensors"


def packaged_checkpoint(name: str = "default") -> Path:
    """A committed checkpoint, found as package data of `latentwire.checkpoints` (pyproject's package-dir maps the
    repository's `checkpoints/` there): the same folder in a checkout, an editable install and a wheel, never a
    path outside the package."""
    root = resources.files("latentwire.checkpoints")
    if not isinstance(root, Path):  # a zipped install: a checkpoint must be a folder on disk (safetensors maps it)
        raise CheckpointError(f"latentwire.checkpoints is not on disk ({root}): install the package unzipped")
    return root / name


DEFAULT_CKPT: Path = packaged_checkpoint()


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


def check_model(path: str | Path, name: str, llm: LLM, cfg: CheckpointConfig | None = None) -> None:
    """Refuse to serve a checkpoint with a model other than the one it was trained against (`cfg`: its config, if
    the caller has read it already)."""
    cfg = cfg or load_config(path)
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
NOT_IN_PART = ("calibration",)


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


def part_fingerprints(path: str | Path, cfg: dict | None = None) -> dict[str, str]:
    """`encoder` and one entry per adapter: what a reader compares to see which parts two checkpoints share
    (`cfg`: config.json as read, if the caller holds it)."""
    path = Path(path)
    cfg = cfg if cfg is not None else read_config(path)
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
