"""A process parses its checkpoint's config.json once at start and passes the typed config down: the receiver,
the sender and the in-process wire each count one parse."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from latentwire import checkpoint, checkpoint_config
from latentwire.receivers.process import open_receiver
from latentwire.sender.process import open_sender
from latentwire.system.pipeline import load_checkpoint


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The folders whose config.json was parsed, in order (every reader goes through `read_json`, by its module
    or by the name `checkpoint` re-exports)."""
    seen: list[str] = []
    real: Callable = checkpoint_config.read_json

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(checkpoint_config, "read_json", counting)
    monkeypatch.setattr(checkpoint, "read_json", counting)
    yield seen


def test_receiver_reads_its_config_once(tiny_trained, reads) -> None:
    rx, fitted = open_receiver("tiny-llama", tiny_trained[0], None, "rx", "cpu", "float32", "float32")
    assert rx.name == "tiny-llama" and isinstance(fitted, dict)
    assert reads == [str(tiny_trained[0])]


def test_sender_reads_its_config_once(tiny_trained, reads) -> None:
    sender, cfg = open_sender(tiny_trained[0], "cpu", "float32", "sender")
    assert sender.m == cfg.encoder["m"]
    assert reads == [str(tiny_trained[0])]


def test_wire_reads_its_config_once(tiny_trained, reads) -> None:
    ckpt, llms = tiny_trained
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    assert set(wire.parts) == {"encoder", *wire.model_names}  # the part fingerprints hash the config as read
    assert reads == [str(ckpt)]
