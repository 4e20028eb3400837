import pytest
import torch
import torch.nn.functional as F

from latentwire.lm import answer_loss, assemble, generate, template_of, text_slots
from latentwire.prompts import INSTRUCTION, answer_ids, slot_text


def test_template_wraps_slot_in_chat_turn(tiny):
    tpl = template_of(tiny)
    tok = tiny.tokenizer
    slot = slot_text("Who?", "Ctx.")
    ids = list(tpl.prefix_ids) + tok(slot, add_special_tokens=False)["input_ids"] + list(tpl.suffix_ids)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": f"{slot}\n{INSTRUCTION}"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(ids) == rendered


def test_latent_and_text_differ_only_in_slot(tiny):
    text = text_slots(tiny, ["Question: a\nContext: b"])[0]
    soft = torch.randn(8, tiny.hidden_size)
    bt, bl = assemble(tiny, [text]), assemble(tiny, [soft])
    tpl = template_of(tiny)
    p, s = len(tpl.prefix_ids), len(tpl.suffix_ids)
    assert torch.equal(bt.inputs_embeds[0, :p], bl.inputs_embeds[0, :p])
    assert torch.equal(bt.inputs_embeds[0, -s:], bl.inputs_embeds[0, -s:])
    assert torch.equal(bl.inputs_embeds[0, p : p + 8], soft)


def test_token_budget_keeps_first_m_tokens(tiny):
    text = "Question: what is the budget?\nContext: long " * 5
    full, cut = text_slots(tiny, [text])[0], text_slots(tiny, [text], budget=8)[0]
    assert cut.shape[0] == 8 and torch.equal(cut, full[:8])


def test_left_padding_and_label_alignment(tiny):
    """Labels must be the answer tokens at the positions that predict them (no off-by-one)."""
    eos = tiny.tokenizer.eos_token_id
    slots = [torch.randn(3, tiny.hidden_size), torch.randn(8, tiny.hidden_size)]
    answers = [answer_ids(tiny.tokenizer, "Paris", eos), answer_ids(tiny.tokenizer, "no", eos)]
    b = assemble(tiny, slots, answers)
    assert b.attention_mask[0].sum() < b.attention_mask[1].sum()
    assert b.attention_mask[0, 0] == 0 and b.attention_mask[:, -1].all()
    assert (b.position_ids[1] == torch.arange(b.position_ids.shape[1])).all()
    # Reference: full logits, standard shift, answers only.
    with torch.no_grad():
        logits = tiny.model(
            inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids
        ).logits
        for i, ans in enumerate(answers):
            n = len(ans)
            pred = logits[i, -n:]  # position T-n predicts the first answer token
            ref = F.cross_entropy(pred, torch.tensor(ans))
            row = assemble(tiny, [slots[i]], [ans])
            assert torch.allclose(answer_loss(tiny, row), ref, atol=1e-5)
            # the inputs after the prompt are the answer tokens shifted by one
            emb = tiny.embed(torch.tensor(ans[:-1]))
            assert torch.allclose(b.inputs_embeds[i, -(n - 1) :], emb)


def test_first_token_weighting_changes_loss(tiny):
    eos = tiny.tokenizer.eos_token_id
    b = assemble(tiny, [torch.randn(4, tiny.hidden_size)], [answer_ids(tiny.tokenizer, "abc", eos)])
    assert not torch.isclose(answer_loss(tiny, b, 1.0), answer_loss(tiny, b, 5.0))


def test_batched_generation_equals_single(tiny):
    slots = text_slots(tiny, ["Question: short\nContext: x", "Question: a much longer one\nContext: yyy zz"])
    batched = generate(tiny, slots, max_new_tokens=5)
    for s, g in zip(slots, batched, strict=True):
        single = generate(tiny, [s], max_new_tokens=5)[0]
        assert single.token_ids == g.token_ids
        assert abs(single.score - g.score) < 1e-4


def test_answer_nll_from_generation_matches_teacher_forcing(tiny):
    """NLL scored on the generation's prompt cache equals the plain teacher-forced loss, per row of a batch."""
    slots = text_slots(tiny, ["Question: q\nContext: c", "Question: a longer one\nContext: more text here"])
    answers = ["Paris", "no"]
    gens = generate(tiny, slots, max_new_tokens=3, answers=answers)
    eos = tiny.tokenizer.eos_token_id
    for s, a, g in zip(slots, answers, gens, strict=True):
        ref = answer_loss(tiny, assemble(tiny, [s], [answer_ids(tiny.tokenizer, a, eos)]))
        assert g.nll is not None and abs(g.nll - float(ref)) < 1e-4
    assert generate(tiny, slots[:1], max_new_tokens=2)[0].nll is None


def test_cached_prefix_gives_the_same_loss_and_gradients(tiny):
    """Training reads the chat prefix from a KV cache: same sequence, same loss, same gradient to the slots."""
    eos = tiny.tokenizer.eos_token_id
    answers = [answer_ids(tiny.tokenizer, "Paris", eos), answer_ids(tiny.tokenizer, "no", eos)]
    torch.manual_seed(0)
    base = [torch.randn(3, tiny.hidden_size), torch.randn(8, tiny.hidden_size)]
    losses, grads = [], []
    for cached in (False, True):
        slots = [s.clone().requires_grad_() for s in base]
        b = assemble(tiny, slots, answers, cached_prefix=cached)
        assert b.prefix_len == (len(template_of(tiny).prefix_ids) if cached else 0)
        loss = answer_loss(tiny, b, first_weight=2.0)
        loss.backward()
        losses.append(loss.detach())
        grads.append([s.grad for s in slots])
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for g0, g1 in zip(*grads, strict=True):
        assert torch.allclose(g0, g1, atol=1e-5)


def test_generation_from_the_cached_prefix_is_the_same(tiny):
    """Serving reads the chat prefix from its KV cache: the same answers and scores as the full prompt."""
    from latentwire.lm import generate, text_slots

    slots = text_slots(tiny, ["Question: who?\nContext: Ann met Bob.", "Question: where is it?\nContext: x"])
    a = generate(tiny, slots, 6, answers=["Ann", "Paris"], topk=3, cached_prefix=False)
    b = generate(tiny, slots, 6, answers=["Ann", "Paris"], topk=3, cached_prefix=True)
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids
        assert abs(x.score - y.score) < 1e-4 and abs(x.nll - y.nll) < 1e-4
        assert torch.equal(x.topk_ids, y.topk_ids)


# ---- generation as resumable steps (`Decoding`: what a receiver pauses for shorter work) ----


def _same(a, b) -> None:
    """Two lists of Generations, equal bit for bit."""
    for x, y in zip(a, b, strict=True):
        assert (x.text, x.token_ids, x.score, x.nll) == (y.text, y.token_ids, y.score, y.nll)
        for t in ("topk_ids", "topk_logp", "hidden"):
            assert (getattr(x, t) is None) == (getattr(y, t) is None)
            assert getattr(x, t) is None or torch.equal(getattr(x, t), getattr(y, t)), t


def test_prefill_spans_cover_the_prompt_in_even_passes():
    from latentwire.lm import prefill_spans

    assert prefill_spans(100, None) == [(0, 100)] and prefill_spans(100, 100) == [(0, 100)]
    assert prefill_spans(257, 256) == [(0, 128), (128, 257)]  # no one-column sliver of a last pass
    spans = prefill_spans(1500, 256)
    assert len(spans) == 6 and spans[0][0] == 0 and spans[-1][1] == 1500
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert max(b - a for a, b in spans) <= 256


def test_a_decoding_paused_for_other_work_gives_generate_s_answers_bit_for_bit(tiny):
    """Step a long batch, run a whole other decoding between two of its steps (and another at every step after),
    resume: the same tokens, scores, NLLs, top-k and hidden states as `generate` with the same chunking."""
    from latentwire.lm import Decoding

    long = text_slots(tiny, ["Question: who wrote it?\nContext: " + "Ada wrote the notes. " * 12, "Question: x?"])
    short = text_slots(tiny, ["Question: where?\nContext: Paris."])
    kw = {"answers": ["Ada", "no"], "topk": 3, "hidden_layer": -1, "prefill_chunk": 16}
    run, steps = Decoding(tiny, long, 6, **kw), 0
    while not run.step():
        steps += 1
        other = Decoding(tiny, short, 4, prefill_chunk=16 if steps % 2 else None)
        assert other.run()[0].token_ids == generate(tiny, short, 4)[0].token_ids
    assert steps > len(run.results()[0].token_ids) >= 1  # paused in the prompt and in the decoding
    _same(run.results(), generate(tiny, long, 6, **kw))


@pytest.mark.parametrize("cached_prefix", [True, False])
def test_chunked_prefill_gives_the_same_answers(tiny, cached_prefix):
    """Reading the prompt in spans (left-padded rows: some spans are all padding for the short row) is the same
    computation up to float rounding: the same tokens, scores within noise."""
    slots = text_slots(tiny, ["Question: who?\nContext: " + "Ann met Bob. " * 9, "Question: where is it?\nContext: x"])
    whole = generate(tiny, slots, 6, answers=["Ann", "x"], cached_prefix=cached_prefix)
    for chunk in (5, 16, 64):
        spans = generate(tiny, slots, 6, answers=["Ann", "x"], cached_prefix=cached_prefix, prefill_chunk=chunk)
        for x, y in zip(whole, spans, strict=True):
            assert x.token_ids == y.token_ids and abs(x.score - y.score) < 1e-5 and abs(x.nll - y.nll) < 1e-5


def test_chunked_prefill_through_a_sliding_window():
    """Gemma3's local layers keep a sliding window of keys: spans shorter and longer than the window read the same
    prompt (the embedded gemma's window is 512, a whole-context prompt ~1,500 tokens)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from latentwire.llm import from_objects
    from latentwire.tiny import byte_tokenizer

    tok = byte_tokenizer("qwen")
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096, initializer_range=0.2, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    llm = from_objects("tiny-gemma3", Gemma3ForCausalLM(cfg).float().eval(), tok, fingerprint="tiny-gemma3")
    slots = text_slots(llm, ["Question: which?\nContext: " + "abc " * 40, "Question: where?\nContext: x"])
    whole = generate(llm, slots, 6, answers=["abc", "x"])
    for chunk in (5, 16, 40):
        for x, y in zip(whole, generate(llm, slots, 6, answers=["abc", "x"], prefill_chunk=chunk), strict=True):
            assert x.token_ids == y.token_ids and abs(x.score - y.score) < 1e-5 and abs(x.nll - y.nll) < 1e-5
