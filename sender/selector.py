"""Evidence selection: which paragraphs of a ~1,500-token context the sharer reads (~250 tokens).

HotpotQA questions need two paragraphs, and the second (the bridge) often shares no words with the question:
its title usually appears in the first. So the selector scores *pairs* of paragraphs, with features of each
paragraph against the question (BM25, title and question-word overlap) and of the pair together (one's title
inside the other's text, the question words of the sentence that names it, the question words the second
covers that the first lacks). A logistic regression scores single paragraphs; a small MLP scores pairs (the
second pick conditioned on the first), trained listwise: a softmax over each question's 45 pairs, so it learns
to rank the gold pair first rather than to score pairs one by one (`val`: gold pair first 0.905 against 0.695
for a linear pairwise scorer; docs/EXPERIMENTS.md E14). Both fit on the supporting facts of `train` in seconds.
The selection is the best pair, then, up to the budget, the paragraph that pairs best with one already chosen;
the budget grows by one where the best pair's share of that softmax is low (`unsure_below`: dev pair recall
0.860 -> 0.902 for 13% of questions reading a third paragraph; E16).
Everything is lexical, so a question costs a few milliseconds on one thread; the weights (~1,000 floats) are
saved in the checkpoint's config with the budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from latentwire.data import Example, Paragraph, render_paragraphs

from .features import pair_features, single_features

PAIR_HIDDEN = 32  # the pair MLP's width (val, gold pair first: 0.905 at 32, 0.88-0.89 at 16 over three seeds)
FEATURES_VERSION = 2  # of SINGLE_FEATURES and PAIR_FEATURES (features.py): weights fit only the features they learnt


@dataclass
class SelectorConfig:
    """The budget and the fitted weights (standardisation included): all a sender needs to select. The defaults
    are the shipped checkpoint's knobs (docs/EXPERIMENTS.md E11, E14, E16); the weights come from `Selector.fit`."""

    paragraphs: int = 2  # budget: paragraphs selected (the best pair, then the best partners of those chosen)
    # reading order of the selection: "score" puts the best pair first, its better-scoring paragraph (the one the
    # question names) before the bridge, then further picks in pick order; "source" keeps the context's order
    order: str = "score"
    single: list[float] = field(default_factory=list)  # logistic weights over SINGLE_FEATURES (+ bias), standardised
    single_mu: list[float] = field(default_factory=list)
    single_sd: list[float] = field(default_factory=list)
    pair: list[float] = field(default_factory=list)  # the MLP over PAIR_FEATURES, flat (W1 row-major, b1, w2, b2)
    pair_mu: list[float] = field(default_factory=list)
    pair_sd: list[float] = field(default_factory=list)
    version: int = FEATURES_VERSION  # the features the weights were fitted on: cached evidence and readings key on it
    pair_hidden: int = PAIR_HIDDEN  # the pair MLP's width
    # the budget grows by one paragraph when the scorer is unsure: when the best pair's share of the softmax
    # over all pairs (what the listwise MLP is trained on) is below this; 0 keeps the budget fixed
    unsure_below: float = 0.8

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    indices: list[int]  # selected paragraphs, in reading order (`SelectorConfig.order`)
    pair: tuple[int, int]  # the best pair
    confidence: float = 1.0  # the best pair's share of the softmax over all pairs

    def text(self, paragraphs: Sequence[Paragraph]) -> str:
        return render_paragraphs([paragraphs[i] for i in self.indices])


def _logit(x: np.ndarray, w: Sequence[float], mu: Sequence[float], sd: Sequence[float]) -> np.ndarray:
    w = np.asarray(w)
    return ((x - np.asarray(mu)) / np.asarray(sd)) @ w[:-1] + w[-1]


def _mlp(x: np.ndarray, flat: Sequence[float], hidden: int, mu: Sequence[float], sd: Sequence[float]) -> np.ndarray:
    """The pair MLP: standardise, tanh(W1 x + b1), w2 . h + b2; `flat` holds W1 (row-major), b1, w2, b2."""
    d = x.shape[1]
    p = np.asarray(flat, dtype=np.float64)
    if p.size != hidden * d + 2 * hidden + 1:
        raise ValueError(f"the pair scorer has {p.size} weights; {hidden} hidden units over {d} features need more")
    w1, b1 = p[: hidden * d].reshape(hidden, d), p[hidden * d : hidden * (d + 1)]
    w2, b2 = p[hidden * (d + 1) : hidden * (d + 2)], p[-1]
    return np.tanh(((x - np.asarray(mu)) / np.asarray(sd)) @ w1.T + b1) @ w2 + b2


class Selector:
    """Question + paragraphs -> the selected paragraphs (see the module docstring)."""

    def __init__(self, cfg: SelectorConfig):
        if not cfg.single or not cfg.pair:
            raise ValueError("the selector has no weights: fit it first (Selector.fit)")
        if cfg.version != FEATURES_VERSION:
            raise ValueError(
                f"selector version {cfg.version}: these features are version {FEATURES_VERSION}, refit the selector"
            )
        self.cfg = cfg

    def select(self, question: str, paragraphs: Sequence[Paragraph], budget: int | None = None) -> Selection:
        """The configured budget (one paragraph more when the scorer is unsure: `unsure_below`), or exactly
        `budget` paragraphs when given."""
        adaptive = budget is None and self.cfg.unsure_below > 0
        budget = self.cfg.paragraphs if budget is None else budget
        if budget < 1:
            raise ValueError(f"the evidence budget must be at least one paragraph, not {budget}")
        n = len(paragraphs)
        x = single_features(question, paragraphs)  # once: the single scores and the pair features both use them
        s = self.single_scores(x)
        if n <= 2 or budget == 1:
            order = [int(i) for i in np.argsort(-s, kind="stable")]
            return Selection(self._ordered(order[:budget]), (order[0], order[min(1, n - 1)]))
        pairs, logits = self.pair_scores(question, paragraphs, s, x)
        joint = np.full((n, n), -np.inf)
        for (i, j), v in zip(pairs, logits, strict=True):
            joint[i, j] = joint[j, i] = v
        best = pairs[int(np.argmax(logits))]
        share = np.exp(logits - logits.max())
        confidence = float(1.0 / share.sum())  # the best pair's softmax share
        if adaptive and confidence < self.cfg.unsure_below:
            budget += 1
        chosen = sorted(best, key=lambda i: -s[i])[:budget]  # the question's own paragraph, then its bridge
        while len(chosen) < min(budget, n):  # each further pick: the best partner of what is already chosen
            rest = [c for c in range(n) if c not in chosen]
            chosen.append(max(rest, key=lambda c: joint[c, chosen].max()))
        return Selection(self._ordered(chosen), best, confidence)

    def _ordered(self, picks: list[int]) -> list[int]:
        """The picks (best first) in the configured reading order."""
        if self.cfg.order not in ("score", "source"):
            raise ValueError(f"unknown selection order {self.cfg.order!r}; choose score or source")
        return [int(i) for i in picks] if self.cfg.order == "score" else sorted(int(i) for i in picks)

    def single_scores(self, x: np.ndarray) -> np.ndarray:
        """Each paragraph's score alone (higher: more likely one the question needs), from its `single_features`."""
        return _logit(x, self.cfg.single, self.cfg.single_mu, self.cfg.single_sd)

    def pair_scores(
        self, question: str, paragraphs: Sequence[Paragraph], single: np.ndarray, single_x: np.ndarray | None = None
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Every unordered pair and its score (higher: more likely the two the question needs)."""
        c = self.cfg
        pairs, pf = pair_features(question, paragraphs, single, single_x)
        return pairs, _mlp(pf, c.pair, c.pair_hidden, c.pair_mu, c.pair_sd)

    def evidence(self, ex: Example, budget: int | None = None) -> str:
        return self.select(ex.question, ex.paragraphs, budget).text(ex.paragraphs)

    @classmethod
    def fit(
        cls,
        rows: Sequence[Example],
        paragraphs: int = SelectorConfig.paragraphs,
        l2: float = 1e-3,
        order: str = SelectorConfig.order,
        hidden: int = PAIR_HIDDEN,
        unsure_below: float = SelectorConfig.unsure_below,
    ) -> Selector:
        """Fit both scorers on examples with gold paragraphs (seconds on `train`); the knobs default to the shipped
        ones (`SelectorConfig`)."""
        rows = [ex for ex in rows if len(ex.gold_indices) == 2 and len(ex.paragraphs) > 2]
        if not rows:
            raise ValueError("no examples with two gold paragraphs to fit the selector on")
        xs, ys = [], []
        for ex in rows:
            xs.append(single_features(ex.question, ex.paragraphs))
            ys.append(np.isin(np.arange(len(ex.paragraphs)), ex.gold_indices).astype(np.float64))
        w1, mu1, sd1 = _fit_logistic(np.concatenate(xs), np.concatenate(ys), l2)
        xp, yp = [], []
        for ex, x in zip(rows, xs, strict=True):
            pairs, pf = pair_features(ex.question, ex.paragraphs, _logit(x, w1, mu1, sd1), x)
            gold = tuple(sorted(ex.gold_indices))
            xp.append(pf)
            yp.append(np.asarray([float(p == gold) for p in pairs]))
        w2, mu2, sd2 = _fit_listwise_mlp(xp, yp, hidden, l2)
        cfg = SelectorConfig(paragraphs, order, w1, mu1, sd1, w2, mu2, sd2, FEATURES_VERSION, hidden, unsure_below)
        return cls(cfg)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[list[float], list[float], list[float]]:
    """L2-regularised logistic regression on standardised features (L-BFGS); weights end with the bias.

    Fitted on one thread: the same data gives bit-identical weights whatever the caller's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _lbfgs(x, y, l2)
    finally:
        torch.set_num_threads(threads)


def _fit_listwise_mlp(
    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], hidden: int, l2: float, seed: int = 0
) -> tuple[list[float], list[float], list[float]]:
    """The pair MLP, fitted listwise: per question, cross-entropy of the softmax over its pairs against its gold
    pair (L-BFGS, float64, one thread, a seeded start: the same data gives the same weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = np.concatenate(xs)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        # questions as rows of a padded (Q, most pairs) grid: the softmax runs over each row's real pairs
        width = max(len(a) for a in xs)
        real = torch.zeros(len(xs), width, dtype=torch.bool)
        xt = torch.zeros(len(xs), width, x.shape[1], dtype=torch.float64)
        y = torch.zeros(len(xs), width, dtype=torch.float64)
        for q, (a, b) in enumerate(zip(xs, ys, strict=True)):
            real[q, : len(a)] = True
            xt[q, : len(a)] = torch.from_numpy((a - mu) / sd)
            y[q, : len(a)] = torch.from_numpy(b)
        g = torch.Generator().manual_seed(seed)
        d = x.shape[1]
        w1 = (torch.randn(hidden, d, generator=g, dtype=torch.float64) / d**0.5).requires_grad_()
        b1 = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
        w2 = (torch.randn(hidden, generator=g, dtype=torch.float64) / hidden**0.5).requires_grad_()
        b2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w1, b1, w2, b2], max_iter=300, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            s = (torch.tanh(xt @ w1.T + b1) @ w2 + b2).masked_fill(~real, -torch.inf)
            nll = -(torch.log_softmax(s, 1).masked_fill(~real, 0.0) * y).sum() / len(xs)
            loss = nll + l2 * (w1.pow(2).sum() + w2.pow(2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        flat = torch.cat([w1.detach().reshape(-1), b1.detach(), w2.detach(), b2.detach()])
        return flat.tolist(), mu.tolist(), sd.tolist()
    finally:
        torch.set_num_threads(threads)


def _lbfgs(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[list[float], list[float], list[float]]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(xt.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w[:-1] + w[-1], yt) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().tolist(), mu.tolist(), sd.tolist()


def selection_report(
    selector: Selector, rows: Sequence[Example], budgets: Sequence[int] = (1, 2, 3, 4, 5), tokenizer=None
) -> dict:
    """Pair recall (both gold paragraphs selected) and supporting-sentence recall by budget, size, speed; under
    `default`, the same for the configured budget as the sender selects (one more paragraph when unsure).

    Size is in paragraphs, words, and tokens of `tokenizer` (the sharer's) when given; speed is the median per
    question.
    """
    return {
        "n": len(rows),
        "default": _report_budget(selector, rows, None, tokenizer),
        "by_budget": {b: _report_budget(selector, rows, b, tokenizer) for b in budgets},
    }


def _report_budget(selector: Selector, rows: Sequence[Example], budget: int | None, tokenizer) -> dict:
    hits, sent_recall, n_paragraphs, n_words, n_tokens, secs = [], [], [], [], [], []
    for ex in rows:
        t0 = time.perf_counter()
        sel = selector.select(ex.question, ex.paragraphs, budget)
        secs.append(time.perf_counter() - t0)
        chosen = set(sel.indices)
        hits.append(float(set(ex.gold_indices) <= chosen))
        if ex.supporting:
            sent_recall.append(sum(p in chosen for p, _ in ex.supporting) / len(ex.supporting))
        text = sel.text(ex.paragraphs)
        n_paragraphs.append(len(chosen))
        n_words.append(len(text.split()))
        if tokenizer is not None:
            n_tokens.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return {
        "pair_recall": float(np.mean(hits)),
        "sentence_recall": float(np.mean(sent_recall)) if sent_recall else None,
        "paragraphs": float(np.mean(n_paragraphs)),
        "words": float(np.mean(n_words)),
        **({"tokens": float(np.mean(n_tokens))} if n_tokens else {}),
        "ms_per_question": 1000 * float(np.median(secs)),
    }
