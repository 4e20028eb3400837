"""Integration tests on the embedded pretrained models (SmolLM2-135M and Qwen2.5-0.5B), three dev questions."""

import pytest
import torch

from latentwire.evaluate import evaluate
from latentwire.lm import assemble, text_slots
from latentwire.metrics import f1_score
from latentwire.models import EMBEDDED, load_llm, resolve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["llama", "qwen"])
def real(request):
    return load_llm(request.param, device="cpu")


def test_cache_reload_matches_gguf_logits():
    """The converted cache folder gives the same logits as loading the GGUF itself."""
    from transformers import AutoModelForCausalLM

    llm = load_llm("llama", device="cpu", engine="float32")  # the conversion itself, before any engine
    gguf = EMBEDDED["llama"].files()[0]
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([llm.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(llm.model(ids).logits, direct(ids).logits, atol=1e-5)
    assert resolve("llama").fingerprint == EMBEDDED["llama"].sha256


def test_text_and_budget_eval(real, dev3, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path))  # fresh eval cache, models stay converted
    monkeypatch.setattr("latentwire.evaluate.cache_root", lambda: tmp_path)
    res = evaluate(real, dev3, "text", context="gold", progress=False, return_rows=True)
    assert [r["id"] for r in res["rows"]] == [ex.id for ex in dev3] and res["nll_per_token"] > 0
    # the figure is the answers' own: each question's F1 scored again from its prediction and its gold answer
    recomputed = [f1_score(r["pred"], ex.answer) for r, ex in zip(res["rows"], dev3, strict=True)]
    assert res["n"] == 3 and res["f1"] == pytest.approx(sum(recomputed) / 3)
    assert res["prompt_tokens"] > 100
    again = evaluate(real, dev3, "text", context="gold", progress=False)  # served from the cache
    assert again["f1"] == res["f1"] and again["wall_s"] < res["wall_s"]
    tb = evaluate(real, dev3, "token-budget", context="gold", budget=8, progress=False)
    assert tb["prompt_tokens"] < res["prompt_tokens"]


def test_real_embedding_scales_differ(real):
    # SmolLM2 and Qwen embed at very different scales: adapters must match each one.
    b = assemble(real, text_slots(real, ["Question: q\nContext: c"]))
    assert b.inputs_embeds.shape[-1] == real.hidden_size
    assert 0.005 < real.embed_rms < 1.0


def test_default_checkpoint_latent_carries_the_sharers_answer(dev3):
    """The committed default on the embedded models: the sender's sharer (Qwen) reads the selected evidence.
    The closed-form code (`latent-closed`) is exact for a shared vocabulary: the Qwen receiver's slot is its own
    embeddings of the sharer's answer tokens, through int4 too. The trained latent adds the hidden channel (at
    most half a code's norm per step) and each receiver's prompt before the snapped steps; SmolLM2 gets at least
    as many positions as answer steps (a string it has no token for is spelled with its own pieces)."""
    import numpy as np

    from latentwire.checkpoint import DEFAULT_CKPT
    from latentwire.protocol import dequantize, quantize
    from latentwire.system.pipeline import docs_of, load_checkpoint

    wire = load_checkpoint(DEFAULT_CKPT, device="cpu", reading_cache=False)
    assert wire.encoder.llm is wire.llms["qwen"]  # one Qwen in memory
    assert wire.encoder.channel is not None and all(a.cfg.prompt_len == 8 for a in wire.adapters.values())
    reads = wire.encoder.read(docs_of(dev3, "distractor"))
    with torch.no_grad():
        z, closed = wire.encoder.latents(reads), wire.encoder.latents(reads, closed=True)
    qwen = wire.llms["qwen"]
    for r, zi, ci in zip(reads, z, closed, strict=True):
        steps = r.topk_ids[: wire.m * wire.encoder.cfg.tokens_per_row, 0]
        want = qwen.embed(steps)
        for q in (ci.numpy(), dequantize(quantize(ci.numpy(), "int4"))):
            with torch.no_grad():
                got = wire.adapters["qwen"].to_slots(torch.from_numpy(np.asarray(q))[None], tuned=False)[0]
            assert got.shape == want.shape and (got - want).abs().max() < 0.02 * qwen.embed_rms  # another token: ~rms
        assert 0 < (zi - ci).norm(dim=-1).max() <= 2 * 0.5 + 1e-4  # two steps' channels per row, each capped
        with torch.no_grad():
            tuned = wire.adapters["qwen"].to_slots(zi[None])[0]
            ll = wire.adapters["llama"].to_slots(zi[None])[0]
        assert torch.equal(tuned[:8], wire.adapters["qwen"].prompt.detach().to(tuned))
        assert ll.shape[0] >= 8 + steps.shape[0] // 2  # the prompt and the steps, spelled where needed
