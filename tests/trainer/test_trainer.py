"""Trainer, encoder, adapters and checkpoints on tiny random Llama + Qwen2 models."""

import json
import os
import subprocess
import sys

import pytest
import torch

from latentwire import checkpoint
from latentwire.data import Example, Paragraph
from latentwire.evaluate import evaluate
from latentwire.lm import assemble
from latentwire.prompts import example_slot
from latentwire.receivers.adapter import Adapter, AdapterConfig, CodebookAdapter, load_adapter
from latentwire.receivers.calibration import fit_platt
from latentwire.sender.encoder import EncoderConfig, LatentEncoder, load_encoder
from latentwire.tiny import tiny_llm
from latentwire.trainer.config import TrainConfig
from latentwire.trainer.pipeline import load_checkpoint
from latentwire.trainer.train import build_wire, latent_diversity, train

SMALL = dict(backbone="bytes", d_model=64, d_z=32, m=4, max_bytes=256, byte_layers=1, pool_layers=1)
FOUR = [
    ("What colour is the sky?", "blue", "The sky is blue."),
    ("What says meow?", "cat", "A cat says meow."),
    ("Is fire hot?", "yes", "Fire is hot."),
    ("Which number?", "42", "The number is 42."),
]


@pytest.fixture(scope="module")
def llms():
    return {"tiny-llama": tiny_llm("llama"), "tiny-qwen": tiny_llm("qwen")}


@pytest.fixture(scope="module")
def rows():
    return [Example(str(i), q, a, (Paragraph("T", (c,)),), frozenset({"T"})) for i, (q, a, c) in enumerate(FOUR)]


def tiny_config(llms, **kw) -> TrainConfig:
    """A recipe on the tiny models: bytes encoder, gold context, step-limited, no evaluation during training."""
    return TrainConfig(
        models=list(llms), encoder=EncoderConfig(**SMALL), time_budget=None, eval_every=0, context="gold", **kw
    )


def overfit_config(llms, **overrides) -> TrainConfig:
    """The tiny recipe that overfits FOUR."""
    base = dict(
        batch_size=4,
        lr=1e-2,
        warmup_steps=5,
        max_steps=150,
        eval_n=4,
        first_weight=1.0,
        diversity_weight=0.0,  # the overfit checks measure one loss at a time
    )
    return tiny_config(llms, **{**base, **overrides})


@pytest.fixture(scope="module")
def trained(llms, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(overfit_config(llms), out, llms=llms, data=(rows, rows), resume=False, progress=False)


def test_overfits_four_examples(trained, llms, rows):
    out, ckpt = trained
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    wire = load_checkpoint(ckpt, llms=llms)
    for name in wire.model_names:
        res = evaluate(
            wire.llms[name],
            rows,
            "latent",
            context="gold",
            slot_fn=wire.slot_fn(name),
            use_cache=False,
            progress=False,
            return_rows=True,
            max_new_tokens=6,
        )
        hits = sum(r["raw"].startswith(ex.answer) for r, ex in zip(res["rows"], rows, strict=True))
        assert hits >= 3, (name, [r["raw"] for r in res["rows"]])


def test_checkpoint_roundtrip_identical(trained, llms, rows):
    _, ckpt = trained
    a = load_checkpoint(ckpt, llms=llms)
    b = load_checkpoint(ckpt, llms=llms)
    assert torch.equal(a.encode(rows, "gold"), b.encode(rows, "gold"))
    for n in a.model_names:
        sa, sb = a.slot_fn(n, context="gold")(rows), b.slot_fn(n, context="gold")(rows)
        assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    cfg = checkpoint.read_config(ckpt)
    assert cfg["summary"]["steps"] == 150 and "calibration" in cfg["models"]["tiny-llama"]
    assert a.fingerprint == checkpoint.fingerprint(ckpt) and len(a.fingerprint) == 64


def test_mismatched_model_is_refused(trained):
    _, ckpt = trained
    other = tiny_llm("llama", seed=1)  # same architecture, other weights
    with pytest.raises(checkpoint.CheckpointError, match="trained against"):
        load_adapter(ckpt, "tiny-llama", other)
    with pytest.raises(checkpoint.CheckpointError, match="no adapter for model"):
        load_adapter(ckpt, "llama", other)


def test_adapter_from_pretrained_is_load_adapter_of_its_kind(trained, llms):
    _, ckpt = trained
    ad = Adapter.from_pretrained(ckpt, "tiny-llama", llms["tiny-llama"])
    ref = load_adapter(ckpt, "tiny-llama", llms["tiny-llama"])
    assert all(torch.equal(a, b) for a, b in zip(ad.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(checkpoint.CheckpointError, match="'mlp' adapter, not a CodebookAdapter"):
        CodebookAdapter.from_pretrained(ckpt, "tiny-llama", llms["tiny-llama"])


def test_tampered_checkpoint_changes_fingerprint_and_bad_config_refused(trained, tmp_path):
    _, ckpt = trained
    import shutil

    copy = tmp_path / "ck"
    shutil.copytree(ckpt, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["encoder"]["d_z"] = 64  # weights no longer fit
    (copy / "config.json").write_text(json.dumps(cfg))
    assert checkpoint.fingerprint(copy) != checkpoint.fingerprint(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit|do not match"):
        load_encoder(copy)
    (copy / "config.json").write_text("{")
    with pytest.raises(checkpoint.CheckpointError, match="malformed JSON"):
        checkpoint.read_config(copy)


def test_adapter_output_matches_model_embedding_rms(llms):
    llm = llms["tiny-qwen"]
    ad = Adapter(AdapterConfig(d_z=32, hidden_size=llm.hidden_size, target_rms=llm.embed_rms))
    out = ad(torch.randn(5, 4, 32) * 100)
    rms = out.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, llm.embed_rms), rtol=1e-3)


def test_byte_encoder_masks_padding():
    enc = LatentEncoder(EncoderConfig(**SMALL)).eval()
    short = "Question: a?\nContext: b."
    alone = enc([short])
    padded = enc([short, short + " and a much longer text that forces padding of the first row" * 3])[0:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_training_and_serving_sequences_identical(llms, rows):
    """The trainer's input up to the answer is exactly what a receiver serves."""
    cfg = TrainConfig(models=list(llms), encoder=EncoderConfig(**SMALL))
    wire = build_wire(cfg, llms).eval()
    llm = llms["tiny-llama"]
    texts = [example_slot(r, "gold") for r in rows]
    with torch.no_grad():
        _, soft = wire(texts=texts)
        ans = [[5, 6, llm.tokenizer.eos_token_id]] * len(rows)
        tr = assemble(llm, list(soft["tiny-llama"]), ans)
        cached = assemble(llm, list(soft["tiny-llama"]), ans, cached_prefix=True)  # what the trainer runs
        srv = assemble(llm, list(soft["tiny-llama"]))
    n = srv.inputs_embeds.shape[1]
    assert torch.equal(tr.inputs_embeds[:, :n], srv.inputs_embeds)
    assert torch.equal(tr.attention_mask[:, :n], srv.attention_mask)
    p = len(llm.template.prefix_ids)  # latents are all M long: no row is padded, only the prefix is left out
    assert cached.prefix_len == p
    assert torch.equal(cached.inputs_embeds[:, : n - p], srv.inputs_embeds[:, p:])
    assert torch.equal(cached.position_ids[:, : n - p], srv.position_ids[:, p:])


def test_latent_diversity():
    z = torch.randn(6, 4, 8)
    assert latent_diversity(z.new_ones(6, 4, 8)) == pytest.approx(1.0)
    assert abs(float(latent_diversity(z))) < 0.5


def test_platt_calibration_is_monotone_and_finite():
    cal = fit_platt([-3, -2, -1, -0.5, -0.2, -0.1], [0, 0, 0, 1, 1, 1])
    assert cal(-0.1) > cal(-3) and 0 <= cal(-3) <= 1
    none = fit_platt([-1.0, -2.0], [0, 0])
    assert 0 <= none(-1.0) < 0.5 and none(float("nan")) == 0.0


def test_resume_continues_from_state(llms, rows, tmp_path):
    cfg = tiny_config(llms, batch_size=2, max_steps=2, eval_n=2)
    train(cfg, tmp_path, llms=llms, data=(rows, rows[:2]), progress=False)
    cfg.max_steps = 4
    ckpt = train(cfg, tmp_path, llms=llms, data=(rows, rows[:2]), progress=False)
    assert checkpoint.read_config(ckpt)["summary"]["steps"] == 4
    fp = checkpoint.fingerprint(ckpt)
    train(cfg, tmp_path, llms=llms, data=(rows, rows[:2]), progress=False)  # finished: left untouched
    assert checkpoint.fingerprint(ckpt) == fp
    cfg.lr = 0.5
    with pytest.raises(ValueError, match="another config \\(lr differ"):
        train(cfg, tmp_path, llms=llms, data=(rows, rows[:2]), progress=False)


def test_two_process_gloo_training(tmp_path):
    """The unchanged training entry point under torchrun: two CPU processes (gloo), a couple of steps."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "latentwire.trainer",
        "--out",
        str(tmp_path),
        "--model",
        "tiny-llama",
        "--model",
        "tiny-qwen",
        "--backbone",
        "bytes",
        "-M",
        "4",
        "--d-z",
        "32",
        "--max-steps",
        "2",
        "--time-budget",
        "0",
        "--limit-train",
        "8",
        "--eval-n",
        "2",
        "--eval-every",
        "0",
        "--batch-size",
        "2",
        "--no-dev-eval",
        "--context",
        "gold",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = checkpoint.read_config(tmp_path / "ckpt")["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["examples"] == 8


def test_distillation_targets_cached_and_aligned(llms, rows, tmp_path):
    from latentwire.lm import teacher_topk, text_slots
    from latentwire.prompts import answer_ids
    from latentwire.trainer.teacher import TeacherCache

    llm = llms["tiny-qwen"]
    tc = TeacherCache(llm, k=4, directory=tmp_path)
    texts = [example_slot(r, "gold") for r in rows[:2]]
    answers = [answer_ids(llm.tokenizer, r.answer, llm.tokenizer.eos_token_id) for r in rows[:2]]
    tc.warm(texts, answers, progress=False)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    idx, logp = tc.get(texts[0], answers[0])  # from disk now
    ref_idx, ref_logp = teacher_topk(llm, text_slots(llm, texts[:1])[0], answers[0], 4)
    assert torch.equal(idx, ref_idx) and torch.allclose(logp, ref_logp)
    width = max(map(len, answers)) + 1
    b_idx, b_logp = tc.batch(texts, answers, width)
    assert torch.equal(b_idx[0, width - len(answers[0]) :], idx) and (b_logp[0, : width - len(answers[0])] == 0).all()
    # the KD term is the cross-entropy from the teacher's renormalised top-k: check it against a hand computation
    batch = assemble(llm, text_slots(llm, texts), answers)
    from latentwire.lm import answer_logits, answer_loss

    t = tc.batch(texts, answers, batch.keep)
    extra = answer_loss(llm, batch, 1.0, t, 1.0) - answer_loss(llm, batch, 1.0)
    lp = answer_logits(llm, batch).log_softmax(-1)
    valid = batch.labels != -100
    kd = -(t[1].softmax(-1) * lp.gather(-1, t[0])).sum(-1)
    assert torch.allclose(extra, (kd * valid).sum() / valid.sum(), atol=1e-5)


def test_training_with_distillation_runs(llms, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(llms, batch_size=2, max_steps=3, eval_n=2, distill_weight=1.0, distill_topk=4)
    ckpt = train(cfg, tmp_path / "run", llms=llms, data=(rows, rows[:2]), progress=False)
    assert checkpoint.read_config(ckpt)["train"]["distill_weight"] == 1.0
    assert len(list((tmp_path / "cache" / "teacher").rglob("*.safetensors"))) == 2 * len(rows)


def test_align_warmup_runs_no_llm_and_makes_the_answer_readable(llms, rows, tmp_path, monkeypatch):
    calls = {"n": 0}
    for llm in llms.values():
        fwd = llm.model.forward

        def counted(*a, _fwd=fwd, **k):
            calls["n"] += 1
            return _fwd(*a, **k)

        monkeypatch.setattr(llm.model, "forward", counted)
    cfg = overfit_config(llms, align_steps=120, max_steps=120)
    train(cfg, tmp_path, llms=llms, data=(rows, rows), resume=False, progress=False)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    assert "loss_tiny-llama" not in steps[0] and "loss_align_tiny-llama" in steps[0]
    final = log[-1]
    assert final["kind"] == "eval" and final["final"]
    # the final validation decodes with the LLMs, but the 120 training steps never ran them
    assert 0 < calls["n"] < 120
    assert steps[-1]["loss"] < 0.2 * steps[0]["loss"]
    for name in llms:  # every soft token now decodes (nearest embedding) to its answer token
        assert final[name]["align_acc"] == 1.0, (final, steps[-1])
