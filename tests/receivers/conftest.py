"""Shared by the receiver tests: a tiny checkpoint (random tiny models, built once) and foreign latent frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest

from latentwire.protocol import encode_frame, latent_request


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from latentwire import checkpoint
    from latentwire.device import set_threads
    from latentwire.models import load_llm
    from latentwire.sender.encoder import EncoderConfig
    from latentwire.trainer.config import TrainConfig
    from latentwire.trainer.train import build_wire, checkpoint_config

    set_threads(1)
    llms = {"tiny-llama": load_llm("tiny-llama"), "tiny-qwen": load_llm("tiny-qwen")}
    enc = EncoderConfig(backbone="bytes", d_model=64, d_z=32, m=4, max_bytes=512, byte_layers=1, pool_layers=1)
    cfg = TrainConfig(models=list(llms), encoder=enc)
    wire = build_wire(cfg, llms)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    checkpoint.save(path, wire.encoder, dict(wire.adapters), checkpoint_config(cfg, wire, llms))
    return path


def _frame(**changes) -> bytes:
    """A valid latent frame (d_z = 32) with wire keys changed: what a broken or foreign sender might send."""
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    wire = msgpack.unpackb(encode_frame(latent_request("r-1", "test", "fp-test", x, "int8")), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


@pytest.fixture(scope="session")
def frame() -> Callable[..., bytes]:
    """`_frame`: a valid latent frame of another checkpoint, with wire keys changed."""
    return _frame
