"""Answer alignment (trainer/align.py): targets, loss, and an LLM-free warm-up that makes the answer readable."""

import json

import torch

from latentwire.data import Example
from latentwire.sender.encoder import EncoderConfig
from latentwire.tiny import tiny_llm
from latentwire.trainer.align import align_loss, slot_accuracy, slot_targets
from latentwire.trainer.config import TrainConfig
from latentwire.trainer.train import train

SMALL = dict(backbone="bytes", d_model=64, d_z=32, m=4, max_bytes=256, byte_layers=1, pool_layers=1)
QA = [("Colour of the sky?", "blue"), ("What says meow?", "cat"), ("Is fire hot?", "yes"), ("Which number?", "42")]


def test_targets_loss_and_accuracy():
    llm = tiny_llm("llama")
    eos = llm.tokenizer.eos_token_id
    answers = [[5, 6, 7, eos], [eos], [1, 2, 3, 4, 5, 6, eos]]
    tgt = slot_targets(answers, m=4, skip=eos)
    assert tgt.tolist() == [[5, 6, 7, -100], [-100] * 4, [1, 2, 3, 4]]
    exact = llm.embed(tgt.clamp(min=0)).detach()  # soft tokens that are the answer's own embeddings
    noise = torch.randn_like(exact)
    assert align_loss(llm, exact, tgt) < 0.1 < align_loss(llm, noise, tgt)
    assert align_loss(llm, noise, torch.full((3, 4), -100)) == 0.0  # no answer tokens: no signal, no NaN
    assert slot_accuracy(llm, exact, tgt) == 1.0
    assert slot_accuracy(llm, -exact, tgt) == 0.0


def test_align_warmup_runs_no_llm_and_makes_the_answer_readable(tmp_path, monkeypatch):
    llms = {"tiny-llama": tiny_llm("llama"), "tiny-qwen": tiny_llm("qwen")}
    rows = [Example(str(i), q, a, (("T", q),), frozenset({"T"})) for i, (q, a) in enumerate(QA)]
    calls = {"n": 0}
    for llm in llms.values():
        fwd = llm.model.forward

        def counted(*a, _fwd=fwd, **k):
            calls["n"] += 1
            return _fwd(*a, **k)

        monkeypatch.setattr(llm.model, "forward", counted)
    cfg = TrainConfig(
        models=list(llms),
        encoder=EncoderConfig(**SMALL),
        batch_size=4,
        lr=1e-2,
        warmup_steps=5,
        align_steps=120,
        max_steps=120,
        time_budget=None,
        eval_every=0,
        eval_n=4,
        context="gold",
        diversity_weight=0.0,  # measure the alignment term alone
    )
    train(cfg, tmp_path, llms=llms, data=(rows, rows), resume=False, progress=False)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    assert "loss_tiny-llama" not in steps[0] and "loss_align_tiny-llama" in steps[0]
    assert calls["n"] > 0  # the final validation decodes...
    final = log[-1]
    assert final["kind"] == "eval" and final["final"]
    # ...but the 120 training steps themselves never ran the LLMs: far fewer calls than steps x models
    assert calls["n"] < 120
    assert steps[-1]["loss"] < 0.2 * steps[0]["loss"]
    for name in llms:  # every soft token now decodes (nearest embedding) to its answer token
        assert final[name]["align_acc"] == 1.0, (final, steps[-1])


def test_window_embedding_lets_the_pooler_tell_windows_apart():
    from latentwire.sender.encoder import Resampler

    torch.manual_seed(0)
    feats = torch.randn(1, 8, 16)  # two windows of 4
    swapped = torch.cat([feats[:, 4:], feats[:, :4]], 1)
    mask = torch.ones(1, 8, dtype=torch.bool)
    for on in (False, True):
        cfg = EncoderConfig(backbone="minilm", window=4, max_windows=2, window_embedding=on, d_model=16, d_z=8, m=2)
        pool = Resampler(cfg, in_dim=16)
        if on:
            torch.nn.init.normal_(pool.window_embed.weight, std=1.0)
        same = torch.allclose(pool(feats, mask), pool(swapped, mask), atol=1e-5)
        assert same != on  # without it, attention is order-blind across windows
