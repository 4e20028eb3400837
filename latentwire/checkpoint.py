"""Checkpoints: a folder the trainer writes and the sender, receivers, bench and eval serve from.

    ckpt/
      weights.safetensors   encoder (trainable part) + one adapter per model, flat names
      config.json           encoder config, per-model adapter config + model spec/fingerprint, calibration, summary

The checkpoint fingerprint hashes both files (DEVELOPERS.md) and is stamped in every latent frame, so a
receiver refuses latents from another checkpoint. Loading against a model whose weights differ from the
ones it was trained with is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models import LLM, load_llm

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


def save(path: str | Path, encoder: torch.nn.Module, adapters: dict[str, torch.nn.Module], config: dict) -> str:
    """Write a checkpoint folder atomically enough (weights then config) and return its fingerprint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v for k, v in encoder.trainable_state_dict().items()}
    for name, ad in adapters.items():
        tensors.update({f"adapter.{name}.{k}": v for k, v in ad.state_dict().items()})
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps({"format": FORMAT_VERSION, **config}, indent=2, sort_keys=True) + "\n")
    return fingerprint(path)


def read_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a LatentWire checkpoint: {CONFIG} is missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG}: malformed JSON ({e})") from None
    if cfg.get("format") != FORMAT_VERSION or "encoder" not in cfg or "models" not in cfg:
        raise CheckpointError(f"{path / CONFIG}: not a LatentWire checkpoint config (format {FORMAT_VERSION})")
    return cfg


def _weights(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    sd = load_file(str(path / WEIGHTS))
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, allow_missing: str = "") -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{what}: weights do not fit the config ({e})") from None
    missing = [k for k in missing if not (allow_missing and k.startswith(allow_missing))]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def load_encoder(path: str | Path, device: str | torch.device = "cpu"):
    """The sender's half: the encoder, in eval mode."""
    from latentwire.sender.encoder import EncoderConfig, LatentEncoder

    path = Path(path)
    cfg = read_config(path)
    enc = LatentEncoder(EncoderConfig(**cfg["encoder"]))
    _load_strict(
        enc, _weights(path, "encoder."), f"{path}: encoder", allow_missing="backbone." if enc.frozen_backbone else ""
    )
    return enc.to(device).eval()


def check_model(path: str | Path, name: str, llm: LLM) -> None:
    """Refuse to serve a checkpoint with a model other than the one it was trained against."""
    cfg = read_config(path)
    if name not in cfg["models"]:
        raise CheckpointError(f"{path} has no adapter for model {name!r} (it has: {', '.join(cfg['models'])})")
    want = cfg["models"][name]
    if want["fingerprint"] != llm.fingerprint:
        raise CheckpointError(
            f"{path}: adapter {name!r} was trained against {want['spec']} "
            f"(fingerprint {want['fingerprint'][:12]}), not {llm.spec} "
            f"(fingerprint {llm.fingerprint[:12]})"
        )
    if want["hidden_size"] != llm.hidden_size:
        raise CheckpointError(
            f"{path}: adapter {name!r} outputs {want['hidden_size']} dims, {llm.spec} expects {llm.hidden_size}"
        )


def load_adapter(path: str | Path, name: str, llm: LLM):
    """A receiver's half: the adapter for `name`, checked against the model it will feed."""
    from latentwire.receivers.adapter import Adapter, AdapterConfig

    path = Path(path)
    check_model(path, name, llm)
    ad = Adapter(AdapterConfig(**read_config(path)["models"][name]["adapter"]))
    _load_strict(ad, _weights(path, f"adapter.{name}."), f"{path}: adapter {name!r}")
    return ad.to(llm.device).eval()


@dataclass
class Wire:
    """A whole loaded checkpoint: encoder, adapters and their frozen LLMs (eval and bench use it)."""

    path: Path
    fingerprint: str
    config: dict
    encoder: torch.nn.Module
    adapters: dict[str, torch.nn.Module]
    llms: dict[str, LLM] = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return list(self.adapters)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder(list(texts))

    def slot_fn(self, name: str):
        """Slot texts -> soft-token embeddings for model `name` (the latent path's slot)."""
        llm, adapter = self.llms[name], self.adapters[name]

        @torch.no_grad()
        def fn(texts: Sequence[str]) -> list[torch.Tensor]:
            z = self.encode(texts).to(llm.device)
            return list(adapter(z).to(llm.model.dtype))

        return fn


def load_checkpoint(
    path: str | Path,
    models: Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    llms: dict[str, LLM] | None = None,
) -> Wire:
    """Load encoder + adapters + the frozen LLMs they were trained against (or the given `llms`)."""
    path = Path(path)
    cfg = read_config(path)
    names = list(models or cfg["models"])
    llms = dict(llms or {})
    for name in names:
        if name not in cfg["models"]:
            raise CheckpointError(f"{path} has no adapter for model {name!r} (it has: {', '.join(cfg['models'])})")
        if name not in llms:
            llms[name] = load_llm(cfg["models"][name]["spec"], device=device, dtype=dtype)
    adapters = {n: load_adapter(path, n, llms[n]) for n in names}
    enc = load_encoder(path, device=next(iter(llms.values())).device)
    return Wire(path, fingerprint(path), cfg, enc, adapters, {n: llms[n] for n in names})
