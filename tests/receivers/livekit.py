"""The live tests' kit: the whole system on the tiny models."""

from __future__ import annotations

from pathlib import Path

from latentwire.processes.up import LocalSystem


def tiny_system(ckpt: Path, folder: Path) -> LocalSystem:
    """`up.LocalSystem` on the tiny models (not started), its log in `folder`."""
    return LocalSystem(ckpt, {"llama": "tiny-llama", "qwen": "tiny-qwen"}, log=folder / "up.log", timeout=20)
