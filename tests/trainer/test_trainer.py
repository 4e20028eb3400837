"""The trained interlingua on the tiny models: it starts at the closed form, it learns, it resumes, it runs under
torchrun, and the receivers keep every string of the sharer's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from latentwire import checkpoint
from latentwire.codebook import string_code
from latentwire.receivers import adapter as adapter_mod
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig
from latentwire.system.pipeline import docs_of, load_checkpoint
from latentwire.trainer.loop import LoopConfig, TrainedParts, train_loop
from latentwire.trainer.recipe import closed_form
from latentwire.trainer.tiny import tiny_recipe


@pytest.fixture(scope="module")
def fresh(tiny_llama, tiny_qwen):
    """The closed form with every trained part at its starting value."""
    llms = {"tiny-llama": tiny_llama, "tiny-qwen": tiny_qwen}
    enc, adapters = closed_form(tiny_recipe(train_limit=60), llms, tiny_qwen)
    return enc, adapters, llms


def test_untrained_parts_are_the_closed_form(fresh, dev3):
    enc, adapters, llms = fresh
    reads = enc.read(docs_of(dev3, "distractor"))
    assert reads[0].hidden is not None  # the channel's input is read along the answer
    z, closed = enc.latents(reads), enc.latents(reads, closed=True)
    assert torch.equal(z, closed)  # the channel starts at zero
    for name, ad in adapters.items():
        n = ad.cfg.prompt_len
        assert n == 2 and ad.trained_parts == ["prompt", "residual"]
        with torch.no_grad():
            for tuned, plain in zip(ad.to_slots(z), ad.to_slots(z, tuned=False), strict=True):
                assert torch.equal(tuned[n:], plain)  # the residual starts at zero, tau at the closed form's
                assert torch.equal(tuned[:n], ad.prompt.to(tuned))
            emb = llms[name].embed(torch.tensor([1, 2, 3]))
            assert torch.equal(ad.text_slot(emb)[n:], emb) and torch.equal(ad.text_slot(emb, tuned=False), emb)


def test_training_lowers_the_loss_and_keeps_the_best_step(tiny_llama, tiny_qwen, dev3, tmp_path):
    llms = {"tiny-llama": tiny_llama, "tiny-qwen": tiny_qwen}
    enc, adapters = closed_form(tiny_recipe(train_limit=60), llms, tiny_qwen)
    reads = enc.read(docs_of(dev3, "distractor"))
    cfg = LoopConfig(steps=12, batch_size=3, lr=0.1, warmup=0, eval_every=6, bf16=False)
    parts = TrainedParts(enc, adapters, llms, cfg)
    scores = iter([0.1, 0.5, 0.2])  # validation at steps 0, 6 and 12: step 6 is the best
    summary = train_loop(parts, list(zip(reads, dev3, strict=True)), tmp_path, lambda: {"score": next(scores)})
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert len(losses) == 12 and losses[-1] < 0.9 * losses[0]  # three examples, overfitting
    assert summary["best_step"] == 6 and summary["steps"] == 12 and summary["examples_seen"] == 36
    assert set(next(r for r in rows if r["kind"] == "step")) >= {
        "tiny-llama/latent",
        "tiny-llama/relay-tuned",
        "tiny-qwen/latent",
        "channel",
    }
    assert enc.channel.proj.weight.abs().sum() > 0  # the sender's channel learned through both receivers
    # resuming at the end changes nothing and trains no further step
    again = train_loop(parts, list(zip(reads, dev3, strict=True)), tmp_path, lambda: {"score": 0.0})
    assert again["steps"] == 12 and len((tmp_path / "log.jsonl").read_text().splitlines()) == len(rows)


def test_the_trained_checkpoint_serves_what_it_trained(tiny_trained, dev3):
    ckpt, llms = tiny_trained
    cfg = checkpoint.read_config(ckpt)
    assert cfg["encoder"]["channel"] and cfg["summary"]["steps"] == 2 and cfg["summary"]["world_size"] == 1
    for path in ("evidence", "relay", "relay-tuned", "latent", "latent-closed"):
        assert set(cfg["models"]["tiny-llama"]["calibration"]) >= {path}
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    prompt = wire.adapters["tiny-llama"].prompt.detach()
    for t, c in zip(*(wire.slot_fn("tiny-llama", p)(dev3) for p in ("latent", "latent-closed")), strict=True):
        assert torch.equal(t[:2], prompt) and not torch.equal(t[2:], c) if len(c) else True
    relay, relay_tuned = (wire.slot_fn("tiny-llama", p)(dev3) for p in ("relay", "relay-tuned"))
    assert all(torch.equal(t[2:], r) for t, r in zip(relay_tuned, relay, strict=True))


def test_a_string_the_receiver_has_no_token_for_is_spelled(tiny_llama, monkeypatch):
    """No string lost: the byte-level tiny Llama has no token " Paris", so the step is spelled with its bytes."""
    monkeypatch.setattr(adapter_mod, "_lexicon", lambda spec, d_z, seed: ([" Paris"], torch.from_numpy(
        string_code(" Paris", d_z, seed))[None]))  # fmt: skip
    cfg = CodebookAdapterConfig(d_z=64, hidden_size=tiny_llama.hidden_size, lexicon="any", min_cos=0.45)
    ad = CodebookAdapter(cfg, tiny_llama)
    z = torch.zeros(2, 64)
    z[0] = torch.from_numpy(string_code(" Paris", 64))
    with torch.no_grad():
        slot = ad(z)
    ids = tiny_llama.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6 and torch.equal(slot, tiny_llama.embed(torch.tensor(ids)))
    without = CodebookAdapter(CodebookAdapterConfig(d_z=64, hidden_size=tiny_llama.hidden_size), tiny_llama)
    with torch.no_grad():
        assert without(z).shape[0] == 0  # the closed form alone drops it


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    """`latentwire train` under torchrun: two CPU processes (gloo), the main one writes the checkpoint."""
    args = ["--out", str(tmp_path), "--model", "tiny-llama", "--model", "tiny-qwen", "--sharer", "tiny-qwen"]
    args += ["-M", "4", "--d-z", "32", "--prompt-len", "2", "--rank", "2", "--steps", "2", "--batch-size", "2"]
    args += ["--limit-train", "8", "--eval-n", "2", "--eval-every", "0", "--max-new-tokens", "4", "--no-dev-eval"]
    args += ["--device", "cpu", "--dtype", "float32", "--threads", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "latentwire.trainer", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = checkpoint.read_config(tmp_path / "ckpt")["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["examples_seen"] == 8


def test_the_hidden_channel_never_drowns_the_codes():
    """However large its weights grow, the channel adds at most `max_norm` per step to a unit-norm code, so a
    receiver still recognises the code under it (an uncapped channel made every row drop: EXPERIMENTS E17)."""
    from latentwire.sender.sharer import HiddenChannel

    ch = HiddenChannel(16, 8, max_norm=0.5)
    h = torch.randn(5, 16)
    assert torch.equal(ch(h), torch.zeros(5, 8))  # zero-initialised: the closed form
    with torch.no_grad():
        ch.proj.weight.normal_(0, 10.0)
    out = ch(h)
    assert (out.norm(dim=-1) <= 0.5 + 1e-6).all() and (out.norm(dim=-1) > 0.45).all()
    with torch.no_grad():
        ch.proj.weight.mul_(1e-4)  # small contributions pass through almost unchanged
    assert torch.allclose(ch(h), ch.proj(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)), rtol=1e-3)
