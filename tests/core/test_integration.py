"""Integration tests on the embedded pretrained models (SmolLM2-135M and Qwen2.5-0.5B), three dev questions."""

import pytest
import torch

from latentwire.evaluate import evaluate
from latentwire.lm import assemble, text_slots
from latentwire.models import EMBEDDED, load_llm, resolve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["llama", "qwen"])
def real(request):
    return load_llm(request.param, device="cpu")


def test_cache_reload_matches_gguf_logits():
    """The converted cache folder gives the same logits as loading the GGUF itself."""
    from transformers import AutoModelForCausalLM

    llm = load_llm("llama", device="cpu")
    gguf = EMBEDDED["llama"].files()[0]
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([llm.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(llm.model(ids).logits, direct(ids).logits, atol=1e-5)
    assert resolve("llama").fingerprint == EMBEDDED["llama"].sha256


def test_text_and_budget_eval(real, dev3, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path))  # fresh eval cache, models stay converted
    monkeypatch.setattr("latentwire.evaluate.cache_root", lambda: tmp_path)
    res = evaluate(real, dev3, "text", context="gold", progress=False)
    assert res["n"] == 3 and 0 <= res["f1"] <= 1 and res["nll_per_token"] > 0
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
    """The committed default on the embedded models: the sender's sharer (Qwen) reads the selected evidence;
    the Qwen receiver's slot is exactly its own embeddings of the sharer's answer tokens (the codes are exact
    for a shared vocabulary), through int4 too; SmolLM2's slot holds only its own token embeddings."""
    import numpy as np

    from latentwire.checkpoint import DEFAULT_CKPT
    from latentwire.protocol import dequantize, quantize
    from latentwire.system.pipeline import docs_of, load_checkpoint

    wire = load_checkpoint(DEFAULT_CKPT, device="cpu", reading_cache=False)
    assert wire.encoder.llm is wire.llms["qwen"]  # one Qwen in memory
    reads = wire.encoder.read(docs_of(dev3, "distractor"))
    z = wire.encoder.latents(reads)
    qwen, llama = wire.llms["qwen"], wire.llms["llama"]
    for r, zi in zip(reads, z, strict=True):
        steps = r.topk_ids[: wire.m * wire.encoder.cfg.tokens_per_row, 0]
        want = qwen.embed(steps)
        for q in (zi.numpy(), dequantize(quantize(zi.numpy(), "int4"))):
            with torch.no_grad():
                got = wire.adapters["qwen"].to_slots(torch.from_numpy(np.asarray(q))[None])[0]
            assert got.shape == want.shape and (got - want).abs().max() < 0.02 * qwen.embed_rms  # another token: ~rms
        with torch.no_grad():
            ll = wire.adapters["llama"].to_slots(zi[None])[0]
        table = llama.model.get_input_embeddings().weight
        assert 0 < ll.shape[0] <= steps.shape[0]
        assert all((table - row).abs().amax(-1).min() < 0.02 * llama.embed_rms for row in ll)
