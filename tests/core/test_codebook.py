"""The vocabulary-anchored interlingua: string codes, mixtures, and each receiver snapping them back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentwire.codebook import code_table, mix, string_code, token_strings, vocabulary_codes
from latentwire.protocol import dequantize, quantize
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig, build_adapter


def test_codes_are_deterministic_unit_and_nearly_orthogonal():
    a, b = string_code(" Paris", 256), string_code(" Paris", 256)
    assert np.array_equal(a, b) and abs(np.linalg.norm(a) - 1) < 1e-5
    assert not np.array_equal(a, string_code(" Paris", 256, seed=1))
    table = code_table([f"w{i}" for i in range(2000)] + [None], 256)
    assert table[-1].abs().sum() == 0  # no string, no code
    sims = table[:-1] @ table[:-1].T
    sims.fill_diagonal_(0)
    assert sims.abs().max() < 0.4


def test_two_families_agree_on_shared_strings(tiny_llama, tiny_qwen):
    sl, sq = token_strings(tiny_llama.tokenizer), token_strings(tiny_qwen.tokenizer)
    cl, cq = vocabulary_codes(tiny_llama.tokenizer, 64), vocabulary_codes(tiny_qwen.tokenizer, 64)
    where_q = {s: i for i, s in enumerate(sq) if s}
    shared = [(i, where_q[s]) for i, s in enumerate(sl) if s in where_q]
    assert len(shared) > 90  # printable bytes at least
    for i, j in shared:
        assert torch.equal(cl[i], cq[j])
    specials = set(tiny_llama.tokenizer.all_special_ids)
    assert all(sl[i] is None for i in specials)


def test_mix_weights_only_tokens_with_strings():
    codes = torch.eye(4)
    codes[3] = 0  # a special token
    ids = torch.tensor([[0, 1, 3], [3, 3, 3]])
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.4, 0.3, 0.3]]))
    z = mix(codes, ids, logp)
    assert torch.allclose(z[0], torch.tensor([2 / 3, 1 / 3, 0, 0]))
    assert z[1].abs().sum() == 0
    sharp = mix(codes, ids, logp, temperature=0.1)
    assert sharp[0, 0] > 0.99


def _adapter(llm, **kw) -> CodebookAdapter:
    return CodebookAdapter(CodebookAdapterConfig(d_z=128, hidden_size=llm.hidden_size, tau=200.0, **kw), llm)


def test_adapter_recovers_the_receivers_own_embeddings(tiny):
    codes = vocabulary_codes(tiny.tokenizer, 128)
    ids = tiny.tokenizer("Paris!", add_special_tokens=False)["input_ids"]
    z = torch.zeros(6, 128)
    z[: len(ids)] = codes[ids]
    with torch.no_grad():
        out = _adapter(tiny).to_slots(z[None])[0]
        emb = tiny.embed(torch.tensor(ids))
    assert out.shape == emb.shape  # zero rows are dropped
    assert torch.allclose(out, emb, atol=1e-5)
    for scheme in ("int8", "int4"):  # the wire's rounding does not move a code to another token
        zq = torch.from_numpy(dequantize(quantize(z.numpy(), scheme)))
        with torch.no_grad():
            assert torch.allclose(_adapter(tiny).to_slots(zq[None])[0], emb, atol=1e-4)


def test_adapter_drops_rows_no_token_explains(tiny):
    noise = torch.randn(3, 128)
    with torch.no_grad():
        assert _adapter(tiny).to_slots(noise[None])[0].shape[0] == 0
        assert _adapter(tiny, min_cos=-1.0).to_slots(noise[None])[0].shape[0] == 3


def test_adapter_registry(tiny):
    ad = build_adapter({"kind": "codebook", "d_z": 32, "hidden_size": tiny.hidden_size}, tiny)
    assert isinstance(ad, CodebookAdapter)
    assert list(ad.state_dict()) == ["log_tau"]  # never the model's own tables
    with pytest.raises(ValueError, match="unknown adapter kind"):
        build_adapter({"kind": "nope"}, tiny)


def test_bind_unbind_and_packing_recover_every_step(tiny):
    from latentwire.codebook import bind, pack, unbind

    v = torch.randn(5, 128)
    for place in range(3):
        assert torch.allclose(unbind(bind(v, place), place), v, atol=1e-6)
    assert torch.equal(bind(v, 0), v)  # one token per row is the plain code
    codes = vocabulary_codes(tiny.tokenizer, 128)
    ids = tiny.tokenizer("Paris, France!", add_special_tokens=False)["input_ids"]
    z = pack(codes[ids], m=8, per_row=2)
    assert z[(len(ids) + 1) // 2 :].abs().sum() == 0  # rows after the answer stay empty
    ad = _adapter(tiny, tokens_per_row=2, min_cos=0.5)
    emb = tiny.embed(torch.tensor(ids))
    for zq in (z, torch.from_numpy(dequantize(quantize(z.numpy(), "int4")))):
        with torch.no_grad():
            out = ad.to_slots(zq[None])[0]
        assert out.shape == emb.shape and torch.allclose(out, emb, atol=1e-4)
