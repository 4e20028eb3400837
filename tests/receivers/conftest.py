"""Shared by the receiver tests: a tiny checkpoint (random tiny models, built once) and foreign latent frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest

from latentwire.protocol import encode_frame, latent_request


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_trained) -> Path:
    """The shipped design at toy size (`trainer.tiny.tiny_checkpoint`), trained a few steps."""
    from latentwire.device import set_threads

    set_threads(1)
    return tiny_trained[0]


def _frame(**changes) -> bytes:
    """A valid latent frame (d_z = 32) with wire keys changed: what a broken or foreign sender might send."""
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    wire = msgpack.unpackb(encode_frame(latent_request("r-1", "test", "fp-test", x, "int8")), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


@pytest.fixture(scope="session")
def frame() -> Callable[..., bytes]:
    """`_frame`: a valid latent frame of another checkpoint, with wire keys changed."""
    return _frame


@pytest.fixture(scope="session")
def same_replies() -> Callable[..., None]:
    """`assert_same_replies`, for the tests that compare batched decoding with one frame at a time."""
    return assert_same_replies


# how far a batched answer's mean log-prob may move from the one alone: float32 noise, or a bfloat16 product's
# rounding (the CPU multiplies a batch's rows in other blocks than a single row's)
SCORE_NOISE = {"float32": 1e-4, "bf16-w8": 2e-2}


def assert_same_replies(batched: list, alone: list, engine: str = "float32") -> None:
    """Replies decoded in a batch are the ones each frame gets alone: same kind, answer (score within the
    engine's noise) or error code, in the same order."""
    from latentwire.protocol import ErrorReply, Reply

    assert [type(r) for r in batched] == [type(r) for r in alone]
    for b, a in zip(batched, alone, strict=True):
        assert b.rid == a.rid
        if isinstance(a, Reply):
            assert b.answer == a.answer and b.score == pytest.approx(a.score, abs=SCORE_NOISE[engine])
        else:
            assert isinstance(b, ErrorReply) and b.code == a.code
