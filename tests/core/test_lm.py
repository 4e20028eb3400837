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
