"""The `llm` backbone end to end on tiny models: selection, reading, latent rows, the reading cache, the recipe's
checkpoint, and the sender's three sharer paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentwire import checkpoint
from latentwire.data import load_split
from latentwire.protocol import Ask, LatentRequest, TextRequest, decode_frame, dequantize, encode_frame
from latentwire.sender.process import Sender
from latentwire.sender.selector import Selector
from latentwire.sender.sharer import READ_K, ReadingCache, SharerConfig, SharerEncoder
from latentwire.system.pipeline import docs_of, load_checkpoint


@pytest.fixture(scope="module")
def selector() -> Selector:
    return Selector.fit(load_split("train", limit=100), paragraphs=2, unsure_below=0.0)  # two paragraphs, always


@pytest.fixture()
def encoder(tiny_qwen, selector) -> SharerEncoder:
    """The closed form (no hidden channel), one step a row: each row's codes are the sharer's own."""
    cfg = SharerConfig(
        sharer="tiny-qwen", m=4, d_z=32, topk=3, tokens_per_row=1, hidden_layer=None, channel=False,
        selector=selector.cfg,
    )  # fmt: skip
    return SharerEncoder(cfg, llm=tiny_qwen)


def test_reading_and_latent_rows(encoder, dev3):
    docs = docs_of(dev3, "distractor")
    reads = encoder.read(docs)
    z = encoder.latents(reads)
    assert z.shape == (3, 4, 32)
    for r, zi, (q, paras) in zip(reads, z, docs, strict=True):
        assert r.topk_ids.shape[1] == READ_K and r.topk_ids.shape == r.topk_logp.shape
        assert r.evidence.count("\n") == 1  # two paragraphs
        assert r.evidence == encoder.evidence((q, paras))
        steps = min(len(r.topk_ids), 4)
        assert (zi[:steps].norm(dim=-1) > 0).all() and zi[steps:].abs().sum() == 0


def test_reading_cache_resumes(encoder, dev3, tmp_path, monkeypatch):
    docs = docs_of(dev3, "gold")
    encoder.use_cache(tmp_path)
    first = encoder.read(docs)
    again = SharerEncoder(encoder.cfg, llm=encoder.llm).use_cache(tmp_path)

    def no_model(*a, **k):
        raise AssertionError("a cached reading never runs the model")

    monkeypatch.setattr("latentwire.sender.sharer.generate", no_model)
    second = again.read(docs)
    assert [r.answer for r in first] == [r.answer for r in second]
    assert torch.allclose(encoder.latents(first), again.latents(second), atol=1e-3)
    path = next(tmp_path.glob("*.jsonl"))
    path.write_text(path.read_text() + '{"key": "cut')  # an interrupted write is ignored
    assert len(ReadingCache(path.stem, READ_K, tmp_path).rows) == 3


def test_recipe_checkpoint_serves_every_path(tiny_trained, tiny_llama, tiny_qwen, dev3):
    ckpt, llms = tiny_trained
    cfg = checkpoint.read_config(ckpt)
    assert cfg["encoder"]["backbone"] == "llm" and cfg["encoder"]["sharer_fingerprint"] == tiny_qwen.fingerprint
    assert set(cfg["models"]) == set(llms) and all(m["calibration"] for m in cfg["models"].values())
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    assert wire.encoder.llm is tiny_qwen  # the sharer is the receiver's model, loaded once
    for mode in ("evidence", "relay", "latent"):
        slots = wire.slot_fn("tiny-llama", mode)(dev3)
        assert len(slots) == 3 and all(s.shape[-1] == tiny_llama.hidden_size for s in slots)
    sender = Sender(wire.encoder, wire.fingerprint, 4, "s-test")
    ex = dev3[0]
    for mode, kind in (("latent", LatentRequest), ("relay", TextRequest), ("evidence", TextRequest)):
        ((frame, _),) = sender.build_many([Ask("r-1", "c", ex.question, ex.context(), mode=mode, quant="int4")])
        msg = decode_frame(frame)
        assert isinstance(msg, kind)
        if mode == "evidence":
            assert msg.text.startswith(f"Question: {ex.question}\nContext: ")
    with pytest.raises(ValueError, match="sharer is tiny-qwen"):
        SharerEncoder(wire.encoder.cfg, llm=tiny_llama)


def test_served_and_offline_docs_share_readings(encoder, dev3, tmp_path, monkeypatch):
    """A reading is keyed by what the sharer reads, so a served request (context parsed from text) reuses the
    offline reading whenever the selection is the same."""
    import latentwire.sender.sharer as sharer

    encoder.use_cache(tmp_path)
    structured = [(ex.question, ex.paragraphs) for ex in dev3]
    encoder.read(structured)
    served = docs_of(dev3, "distractor")
    differ = sum(encoder.evidence(a) != encoder.evidence(b) for a, b in zip(structured, served, strict=True))
    calls = []
    real = sharer.generate
    monkeypatch.setattr(
        sharer, "generate", lambda llm, slots, *a, **k: calls.append(len(slots)) or real(llm, slots, *a, **k)
    )
    encoder.read(served)
    assert sum(calls) == differ


def test_hidden_states_are_cached_in_fp16(tiny_qwen, selector, dev3, tmp_path):
    cfg = SharerConfig(sharer="tiny-qwen", m=4, d_z=32, hidden_layer=-1, channel=False, selector=selector.cfg)
    first = SharerEncoder(cfg, llm=tiny_qwen).use_cache(tmp_path).read(docs_of(dev3[:1], "gold"))[0]
    assert first.hidden is not None and first.hidden.shape[1] == tiny_qwen.hidden_size
    assert first.hidden.shape[0] in (len(first.topk_ids), len(first.topk_ids) + 1)  # + the step that stopped
    again = SharerEncoder(cfg, llm=tiny_qwen).use_cache(tmp_path).read(docs_of(dev3[:1], "gold"))[0]
    assert torch.allclose(again.hidden, first.hidden, atol=1e-2, rtol=1e-2)


def test_sender_reads_asks_that_arrive_together_in_one_batch(tiny_trained, dev3):
    """Frames built for a batch carry what frames built one at a time do (text byte for byte; a latent within the
    float noise that padding adds to the sharer's hidden states); a garbage frame in the batch fails alone."""
    import zmq

    from latentwire.sender.process import _handle_many

    ckpt, llms = tiny_trained
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    sender = Sender(wire.encoder, wire.fingerprint, 4, "s-test")
    modes = ("latent", "relay", "latent", "evidence")
    asks = [
        Ask(f"r-{i}", "c", ex.question, ex.context(), mode=mode, quant="int8")
        for i, (ex, mode) in enumerate(zip([*dev3, dev3[0]], modes, strict=True))
    ]
    calls = []
    read = wire.encoder.read
    wire.encoder.read = lambda docs, **kw: calls.append(len(docs)) or read(docs, **kw)  # count the sharer's batches
    together = sender.build_many(asks)
    assert calls == [3]  # latent, relay, latent: one reading batch; evidence needs none
    alone = [sender.build_many([a])[0][0] for a in asks]
    for t, a in zip(together, alone, strict=True):
        got, want = decode_frame(t[0]), decode_frame(a)
        if isinstance(want, TextRequest):
            assert t[0] == a
        else:
            assert np.allclose(dequantize(got.latent), dequantize(want.latent), atol=0.05)
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        replies = _handle_many(sender, [encode_frame(asks[0]), b"\x00garbage", encode_frame(asks[1])], [push])
        assert [type(r).__name__ for r in replies] == ["Sent", "ErrorReply", "Sent"]
        assert replies[1].code in ("bad_request", "bad_frame") and replies[2].rid == "r-1"
        assert (replies[0].reached, replies[0].receivers) == (1, 1) and replies[0].fanout == replies[0].request > 0
        assert set(replies[0].durations) == {"encode", "frame", "cpu"}
        # the batch's CPU time split evenly over the asks it built: each gets one share
        assert replies[0].durations["cpu"] == replies[2].durations["cpu"] > 0
        assert [decode_frame(pull.recv()).rid for _ in range(2)] == ["r-0", "r-1"]
    finally:
        pull.close(0)
        push.close(0)


def test_a_reading_within_one_span_is_one_pass_bit_for_bit(encoder):
    """The sharer reads its prompt READ_CHUNK positions a pass; prompts that fit one span (every dev and val
    selection does in Qwen's tokens: at most 739) are read exactly as in one pass: the same tokens, distribution."""
    from latentwire.data import parse_context
    from latentwire.lm import generate
    from latentwire.sender.sharer import READ_CHUNK

    context = "\n".join(f"P{i}: Ada met P{i + 1} in {1800 + i}. " * (i + 2) for i in range(4))
    docs = [("Who met P2?", parse_context(context)), ("When did Ada meet P3 and P1?", parse_context(context))]
    readings = encoder.read(docs)
    ids = [encoder.prompt_ids(d[0], r.evidence) for d, r in zip(docs, readings, strict=True)]
    slots = [encoder.llm.embed(torch.tensor(i)) for i in ids]
    assert 0 < max(s.shape[0] for s in slots) < READ_CHUNK
    gens = generate(encoder.llm, slots, max(encoder.cfg.m, encoder.cfg.max_new_tokens), topk=READ_K)
    for r, g in zip(readings, gens, strict=True):
        assert torch.equal(r.topk_ids, g.topk_ids) and torch.equal(r.topk_logp, g.topk_logp)


def test_the_sharer_s_batches_are_bounded_by_padded_positions():
    from latentwire.sender.sharer import _batches

    assert _batches([100, 200, 300], 4, 8192) == [[0, 1, 2]]
    assert _batches([100, 200, 300, 400, 500], 4, 8192) == [[0, 1, 2, 3], [4]]  # at most `count`
    assert _batches([3000, 2000, 3500, 16000, 10], 8, 8192) == [[0, 1], [2], [3], [4]]  # 3 x 3500 > 8192
