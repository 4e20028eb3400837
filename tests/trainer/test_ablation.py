"""Ablations: each trained part can be left out of the latent path, leaving every part out is the closed form, and
the recipe and `ablate_checkpoint` record the table the bench publishes."""

from __future__ import annotations

import shutil

import pytest
import torch

from latentwire import checkpoint
from latentwire.system.pipeline import load_checkpoint
from latentwire.trainer.ablation import ABLATIONS, REFERENCES, ablate_checkpoint


def test_every_part_left_out_is_the_closed_form(tiny_trained, dev3):
    ckpt, llms = tiny_trained
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    everything = frozenset({"channel", "prompt", "residual", "tau"})
    for name in wire.model_names:
        closed = wire.slot_fn(name, "latent-closed")(dev3)
        bare = wire.slot_fn(name, "latent", off=everything)(dev3)
        assert all(torch.equal(a, b) for a, b in zip(closed, bare, strict=True))
        n = wire.adapters[name].cfg.prompt_len
        full, no_prompt = (wire.slot_fn(name, "latent", off=o)(dev3) for o in (frozenset(), frozenset({"prompt"})))
        assert all(torch.equal(f[n:], p) for f, p in zip(full, no_prompt, strict=True))


def test_an_unknown_part_or_a_text_path_is_refused(tiny_trained):
    ckpt, llms = tiny_trained
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    with pytest.raises(ValueError, match="cannot leave out bogus"):
        wire.slot_fn("tiny-llama", "latent", off=frozenset({"bogus"}))
    with pytest.raises(ValueError, match="relay-tuned: cannot leave out prompt"):
        wire.slot_fn("tiny-llama", "relay-tuned", off=frozenset({"prompt"}))
    tags = {wire.eval_args("tiny-llama", "latent", off=o)["slot_fingerprint"] for o in ABLATIONS.values()}
    assert len(tags) == len(ABLATIONS)  # each variant's rows are cached apart


def test_the_recipe_records_the_ablation_table(tiny_trained):
    ckpt, _ = tiny_trained
    summary = checkpoint.read_config(ckpt)["summary"]
    table = summary["ablation"]
    assert set(table) == set(ABLATIONS) | set(REFERENCES)
    for name in ("tiny-llama", "tiny-qwen"):
        assert table["full"][name]["f1"] == summary["val"]["latent"][name]["f1"]
        assert table["relay-tuned"][name]["f1"] == summary["val"]["relay-tuned"][name]["f1"]
        for label in set(table) - {"full"}:
            diff = table[label][name]["vs_full"]["diff"]
            assert diff == pytest.approx(table[label][name]["f1"] - table["full"][name]["f1"])


def test_ablate_checkpoint_writes_its_table_and_keeps_the_parts(tiny_trained, tmp_path, monkeypatch):
    ckpt, llms = tiny_trained
    copy = shutil.copytree(ckpt, tmp_path / "ckpt")
    parts = checkpoint.part_fingerprints(copy, checkpoint.read_config(copy))
    monkeypatch.setattr("latentwire.trainer.ablation.load_checkpoint", lambda c, engine: load_checkpoint(c, llms=llms))
    table = ablate_checkpoint(copy, n=4, variants=("full", "no-channel"))
    cfg = checkpoint.read_config(copy)
    assert cfg["summary"]["ablation"] == table and cfg["summary"]["ablation_on"]["n"] == 4
    assert set(table) == {"full", "no-channel", *REFERENCES}
    assert checkpoint.part_fingerprints(copy, cfg) == parts
    with pytest.raises(ValueError, match="unknown ablation 'no-such'"):
        ablate_checkpoint(copy, n=4, variants=("no-such",))
