"""Frozen-LLM mechanics shared by training and serving: one sequence builder, greedy decoding, answer NLL.

`assemble` is the single place that lays out `prefix | slot | suffix | answer` as `inputs_embeds`; the trainer,
the receivers and the evaluators all call it, so the sequence a model is trained on is the one it serves.
Rows are left-padded so every row ends at the same position: generation continues from the last column, and
answer tokens are right-aligned, so logits are only computed for the last few positions (`logits_to_keep`).

Training can skip the constant chat prefix (`cached_prefix=True`): its keys and values are computed once per
model and every row's padding goes between prefix and slot instead, so the prefix keeps positions 0..P-1 and
the result is the same sequence; it saves the ~half of each short training row that is the system turn.

`generate` is the one decoding loop: `Decoding` holds its state and runs it one forward pass at a time (a span of
the prompt, then a token), and `generate` drives it to the end. A receiver steps it itself, so it can answer a
short ask between two steps of a long one and still give each the answer it would get uninterrupted.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models import LLM
from .prompts import PromptTemplate, answer_ids, slot_ids


def template_of(llm: LLM) -> PromptTemplate:
    return llm.template


@dataclass
class Batch:
    inputs_embeds: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None = None  # (B, K): targets of the last K positions, -100 where none
    prefix_len: int = 0  # > 0: the rows start after the chat prefix, read from `prefix_cache` (mask covers it)

    @property
    def keep(self) -> int:
        return 1 if self.labels is None else int(self.labels.shape[1])


def assemble(
    llm: LLM,
    slots: Sequence[torch.Tensor],
    answers: Sequence[Sequence[int]] | None = None,
    cached_prefix: bool = False,
) -> Batch:
    """Build `prefix | slot_i | suffix [| answer_i]` for each row; slots are (L_i, H) embeddings.

    With `cached_prefix`, rows hold `slot_i | suffix [| answer_i]` only and the prefix comes from
    `prefix_cache` (see the module docstring); `answer_logits` handles both layouts.
    """
    tpl = template_of(llm)
    dev = llm.device
    prefix = llm.embed(torch.tensor(tpl.prefix_ids, device=dev))
    suffix = llm.embed(torch.tensor(tpl.suffix_ids, device=dev))
    rows, n_ans = [], []
    for i, slot in enumerate(slots):
        parts = [slot.to(device=dev, dtype=prefix.dtype), suffix]
        if not cached_prefix:
            parts.insert(0, prefix)
        if answers is not None:
            ans = list(answers[i])
            n_ans.append(len(ans))
            if len(ans) > 1:  # the last answer token is only a target, never an input
                parts.append(llm.embed(torch.tensor(ans[:-1], device=dev)))
        rows.append(torch.cat(parts, 0))
    T = max(r.shape[0] for r in rows)
    B, H = len(rows), rows[0].shape[1]
    embeds = prefix.new_zeros(B, T, H)
    mask = torch.zeros(B, T, dtype=torch.long, device=dev)
    for i, r in enumerate(rows):
        embeds[i, T - r.shape[0] :] = r
        mask[i, T - r.shape[0] :] = 1
    P = len(tpl.prefix_ids) if cached_prefix else 0
    pos = P + (mask.cumsum(1) - 1).clamp(min=0)
    if cached_prefix:
        mask = torch.cat([mask.new_ones(B, P), mask], 1)
    labels = None
    if answers is not None:
        K = max(n_ans)
        labels = torch.full((B, K), -100, dtype=torch.long, device=dev)
        for i, ans in enumerate(answers):
            labels[i, K - len(ans) :] = torch.tensor(list(ans), device=dev)
    return Batch(embeds, mask, pos, labels, P)


_PREFIX: dict[tuple, object] = {}


@torch.no_grad()
def prefix_cache(llm: LLM, batch_size: int):
    """A fresh KV cache of the chat prefix for `batch_size` rows (the prefix is run once per model)."""
    # autocast (training) computes the prefix in another precision: its cache is kept apart from the exact one
    key = (id(llm.model), llm.model.dtype, str(llm.device), torch.is_autocast_enabled(llm.device.type))
    if key not in _PREFIX:
        ids = torch.tensor([template_of(llm).prefix_ids], device=llm.device)
        _PREFIX[key] = llm.model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
    cache = copy.deepcopy(_PREFIX[key])  # the forward pass appends to it
    cache.batch_repeat_interleave(batch_size)
    return cache


def answer_logits(llm: LLM, batch: Batch) -> torch.Tensor:
    """Logits of the last `batch.keep` positions only (B, K, V) in float32."""
    cached = {"cache": prefix_cache(llm, batch.inputs_embeds.shape[0])} if batch.prefix_len else {}
    out = llm.model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=bool(cached),
        logits_to_keep=batch.keep,
        **cached,
    )
    return out.logits.float()


def answer_loss(llm: LLM, batch: Batch, first_weight: float = 1.0) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens (pad masked), the first answer token weighted up."""
    assert batch.labels is not None
    logp = answer_logits(llm, batch).log_softmax(-1)
    valid = batch.labels != -100
    lp = logp.gather(-1, batch.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    w = valid.float()
    first = valid & ~F.pad(valid, (1, 0))[:, :-1]  # first real target of each row
    w = w + (first_weight - 1.0) * first.float()
    return -(lp * w).sum() / w.sum().clamp(min=1.0)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    score: float  # mean log-probability of the generated tokens
    nll: float | None = None  # NLL per token of the gold answer given the same prompt, when asked for
    topk_ids: torch.Tensor | None = None  # (S, k) the k most likely tokens at each generated step, when asked for
    topk_logp: torch.Tensor | None = None  # (S, k) their log-probs
    hidden: torch.Tensor | None = None  # (steps, H) the layer's state that predicted each step (a stop step too)


@torch.no_grad()
def generate(
    llm: LLM,
    slots: Sequence[torch.Tensor],
    max_new_tokens: int = 16,
    answers: Sequence[str] | None = None,
    topk: int = 0,
    hidden_layer: int | None = None,
    cached_prefix: bool = True,
    prefill_chunk: int | None = None,
) -> list[Generation]:
    """Greedy decoding from the assembled prompts; stops at end-of-turn or once a row has a full first line.

    With `answers`, also scores each gold answer (NLL per token, end-of-turn included) from the same prompt
    forward pass, so evaluation reads each long prompt once. `topk` > 0 keeps the top-k distribution of every
    generated (non-stop) step, and `hidden_layer` that layer's states along the way: what a sharer reads out.
    The constant chat prefix comes from its KV cache (`cached_prefix`; the same sequence, ~half the work of a
    short latent prompt). `prefill_chunk`: the prompt is read that many positions a pass (`Decoding`); None, in
    one pass.

    `Decoding` is this function run one step at a time: `generate` is `Decoding(...).run()`.
    """
    return Decoding(llm, slots, max_new_tokens, answers, topk, hidden_layer, cached_prefix, prefill_chunk).run()


def prefill_spans(length: int, chunk: int | None) -> list[tuple[int, int]]:
    """[start, end) column spans reading a prompt of `length` positions at most `chunk` a pass, as even as they
    come (no sliver of a last pass); one span when `chunk` is None or the prompt fits it."""
    if not chunk or length <= chunk:
        return [(0, length)]
    n = -(-length // chunk)
    edges = [i * length // n for i in range(n + 1)]
    return list(zip(edges, edges[1:], strict=False))


class Decoding:
    """`generate`'s greedy decoding as a state object run one step at a time (`step`), so a caller can do other
    work between steps and come back (a receiver serves a short ask between the steps of a long one).

    A step is one forward pass: a span of the prompt (`prefill_chunk` positions of the padded batch, its keys and
    values appended to the KV cache; None: the whole prompt at once), then one greedy token for every row still
    decoding. Nothing but this object's own state carries from one step to the next, so the result is the same
    tokens and scores, bit for bit, whatever ran between its steps. The chunking is part of the computation:
    another `prefill_chunk` may round the prompt's floats differently (the same answers up to that rounding).
    """

    @torch.no_grad()
    def __init__(
        self,
        llm: LLM,
        slots: Sequence[torch.Tensor],
        max_new_tokens: int = 16,
        answers: Sequence[str] | None = None,
        topk: int = 0,
        hidden_layer: int | None = None,
        cached_prefix: bool = True,
        prefill_chunk: int | None = None,
    ) -> None:
        batch = assemble(llm, slots, cached_prefix=cached_prefix)
        self.llm, self.max_new_tokens, self.answers = llm, max_new_tokens, answers
        self.topk, self.hidden_layer = topk, hidden_layer
        B = len(slots)
        self._batch = batch
        self._mask, self._pos = batch.attention_mask, batch.position_ids[:, -1:]
        self._cache = prefix_cache(llm, B) if cached_prefix else None
        self._spans = prefill_spans(int(batch.inputs_embeds.shape[1]), prefill_chunk)
        self._out = None  # the last pass's output: its logits give the next token
        self.nlls: list[float | None] = [None] * B
        self.gen: list[list[int]] = [[] for _ in range(B)]
        self.logps: list[list[float]] = [[] for _ in range(B)]
        self.tops: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(B)]
        self.states: list[list[torch.Tensor]] = [[] for _ in range(B)]
        self.finished = [False] * B
        self.steps = 0  # decoding steps taken (tokens chosen for the rows still decoding)
        self.done = False

    def run(self) -> list[Generation]:
        """Every step left, then the results."""
        while not self.done:
            self.step()
        return self.results()

    @torch.no_grad()
    def step(self) -> bool:
        """One forward pass (a span of the prompt, or one token); True once the decoding is over."""
        if self.done:
            return True
        if self._spans:
            self._prefill(*self._spans.pop(0))
            if not self._spans and self.max_new_tokens <= 0:
                self._finish()
        else:
            self._decode()
        return self.done

    def _prefill(self, start: int, end: int) -> None:
        batch, last = self._batch, not self._spans
        cache = {"cache": self._cache} if self._cache is not None else {}
        out = self.llm.model(
            inputs_embeds=batch.inputs_embeds[:, start:end],
            attention_mask=self._mask[:, : batch.prefix_len + end],
            position_ids=batch.position_ids[:, start:end],
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=self.hidden_layer is not None and last,
            **cache,
        )
        self._cache, self._out = out.cache, out
        if last:
            self._batch = None  # the prompt's embeddings are in the cache now
            if self.answers is not None:
                self.nlls = _score_answers(self.llm, out, self._mask, self._pos, self.answers)

    def _decode(self) -> None:
        """Read the last pass's next token for every live row; then, unless every row is done or out of tokens,
        run the pass for the following one."""
        out, tok, stop = self._out, self.llm.tokenizer, self.llm.stop_ids
        B = len(self.gen)
        lp = out.logits[:, -1].float().log_softmax(-1)
        nxt = lp.argmax(-1)
        top = lp.topk(self.topk, dim=-1) if self.topk else None
        for i in range(B):
            if self.finished[i]:
                continue
            if self.hidden_layer is not None:
                self.states[i].append(out.hidden_states[self.hidden_layer][i, -1].float().cpu())
            t = int(nxt[i])
            self.logps[i].append(float(lp[i, t]))
            if t in stop:
                self.finished[i] = True
                continue
            self.gen[i].append(t)
            if top is not None:
                self.tops[i].append((top.indices[i].cpu(), top.values[i].cpu()))
            text = tok.decode(self.gen[i], skip_special_tokens=True)
            if "\n" in text.lstrip():  # the post-processor keeps the first line only
                self.finished[i] = True
        self.steps += 1
        if all(self.finished) or self.steps >= self.max_new_tokens:
            self._finish()
            return
        self._mask = torch.cat([self._mask, self._mask.new_ones(B, 1)], 1)
        self._pos = self._pos + 1
        self._out = self.llm.model(
            input_ids=nxt.unsqueeze(1),
            attention_mask=self._mask,
            position_ids=self._pos,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=self.hidden_layer is not None,
        )
        self._cache = self._out.cache

    def _finish(self) -> None:
        self.done = True
        self._out = self._cache = self._batch = None  # the KV cache goes as soon as the decoding is over

    def results(self) -> list[Generation]:
        """One Generation per row (once `done`)."""
        if not self.done:
            raise RuntimeError("the decoding is not over: step it until done")
        tok, topk = self.llm.tokenizer, self.topk
        results = []
        for i, (g, lp, nll) in enumerate(zip(self.gen, self.logps, self.nlls, strict=True)):
            r = Generation(tok.decode(g, skip_special_tokens=True), g, sum(lp) / max(len(lp), 1), nll)
            if topk:
                tops = self.tops[i]
                r.topk_ids = torch.stack([t[0] for t in tops]) if tops else torch.zeros(0, topk, dtype=torch.long)
                r.topk_logp = torch.stack([t[1] for t in tops]) if tops else torch.zeros(0, topk)
            if self.hidden_layer is not None:
                r.hidden = torch.stack(self.states[i])
            results.append(r)
        return results


def _score_answers(llm: LLM, out, mask: torch.Tensor, pos: torch.Tensor, answers: Sequence[str]) -> list[float]:
    """NLL/token of each answer continuing the prompt whose forward output (logits + cache) is `out`."""
    eos = llm.tokenizer.eos_token_id
    ids = [answer_ids(llm.tokenizer, a, eos) for a in answers]
    logp = out.logits[:, -1:].float().log_softmax(-1)  # predicts the first answer token
    L = max(len(a) for a in ids)
    if L > 1:  # feed answer tokens (right-padded) on a copy of the prompt cache
        B, dev = len(ids), mask.device
        inp = torch.full((B, L - 1), eos, dtype=torch.long, device=dev)
        valid = torch.zeros(B, L - 1, dtype=mask.dtype, device=dev)
        for i, a in enumerate(ids):
            inp[i, : len(a) - 1] = torch.tensor(a[:-1], device=dev)
            valid[i, : len(a) - 1] = 1
        cont = llm.model(
            input_ids=inp,
            attention_mask=torch.cat([mask, valid], 1),
            position_ids=pos + 1 + torch.arange(L - 1, device=dev),
            cache=copy.deepcopy(out.cache),
            use_cache=True,
        )
        logp = torch.cat([logp, cont.logits.float().log_softmax(-1)], 1)
    return [-float(logp[i, torch.arange(len(a)), torch.tensor(a)].mean()) for i, a in enumerate(ids)]


def text_slots(llm: LLM, texts: Sequence[str], budget: int | None = None) -> list[torch.Tensor]:
    """Slot embeddings for the text path (`budget=None`) or the token-budget path (first `budget` tokens)."""
    return [llm.embed(torch.tensor(slot_ids(llm.tokenizer, t, budget), device=llm.device)) for t in texts]
