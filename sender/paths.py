"""What the sender puts in a receiver's slot on each of its paths: the one dispatch.

The serving sender (`process.py`) and the in-process pipeline behind eval, calibrate and the bench
(`latentwire.system.pipeline`) both call `payloads`, so what is measured is what serves. A payload is text (the
receiver tokenises it: evidence, relay, relay-tuned) or an (M, d_z) float latent (latent, latent-closed).
Paths that need the sharer's reading (everything but evidence) read each question once, in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from latentwire.prompts import slot_text
from latentwire.protocol import path_spec

from .sharer import Doc, Reading, SharerEncoder

Payload = str | np.ndarray


def needs_reading(path: str) -> bool:
    """Whether a sender path needs the sharer's reading (`PathSpec.reads`)."""
    return path_spec(path).reads


def payload(encoder: SharerEncoder, path: str, doc: Doc, reading: Reading | None = None) -> Payload:
    """One question's payload on a sender path; `reading` is the sharer's, when a batch read it already."""
    spec = path_spec(path)
    if not spec.sender:
        raise ValueError(f"{path} is not a sender path: the client's text fills its slot")
    if not spec.reads:  # the selection itself
        return slot_text(doc[0], encoder.evidence(doc))
    if reading is None:
        reading = encoder.read([doc])[0]
    if not spec.latent:
        return reading.answer
    with torch.no_grad():
        return encoder.latents([reading], closed=not spec.tuned)[0].float().cpu().numpy()


def payloads(encoder: SharerEncoder, path: str, docs: Sequence[Doc], batch_size: int = 4) -> list[Payload]:
    """Payloads of many questions on one path (the sharer reads them `batch_size` at a time, cached)."""
    readings = encoder.read(docs, batch_size=batch_size) if needs_reading(path) else [None] * len(docs)
    return [payload(encoder, path, d, r) for d, r in zip(docs, readings, strict=True)]
