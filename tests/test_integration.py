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
