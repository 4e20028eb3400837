"""Evidence selection: which paragraphs of a ~1,500-token context the sharer reads (~250-400 tokens).

HotpotQA questions need two paragraphs, and the second (the bridge) often shares no words with the question:
its title usually appears in the first. So the selector scores *pairs* of paragraphs, with features of each
paragraph against the question (BM25, title and question-word overlap) and of the pair together (one's title
inside the other's text, the question words the two cover jointly). Two logistic regressions, fitted on the
supporting facts of `train` in seconds: one scores single paragraphs, one scores pairs (the second pick
conditioned on the first). The selection is the best pair, then, up to the budget, the paragraph that pairs
best with one already chosen.
Everything is lexical, so a question costs a few milliseconds on one thread; the weights are a few floats
saved in the checkpoint's config with the budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
import torch
from rank_bm25 import BM25Okapi

from latentwire.data import Example, Paragraph, render_paragraphs

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP_WORDS = """a an the of in on at to for from by with and or is was were are be been which who whom what when
where how why that this these those did does do as its it his her their he she they than both same also has have had
not no one first name named what's whose"""
_STOP = frozenset(_STOP_WORDS.split())
SINGLE_FEATURES = ("bm25", "bm25_rank", "title_in_q", "title_sub", "q_cov", "first_cov", "len")
PAIR_FEATURES = (
    "single_sum",
    "single_min",
    "bridge",
    "bridge_title_cov",
    "union_cov",
    "shared_caps",
    "anchored_bridge",
    "anchored_title_cov",
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _title_key(title: str) -> str:
    return re.sub(r"\s*\(.*?\)\s*", " ", title).strip().lower()


def _caps(text: str) -> set[str]:
    """Capitalised words (names): what two paragraphs of one bridge usually share."""
    return {w.lower() for w in re.findall(r"\b[A-Z][\w'-]+", text)} - _STOP


@dataclass
class SelectorConfig:
    """The budget and the fitted weights (standardisation included): all a sender needs to select."""

    paragraphs: int = 4  # budget: paragraphs selected (the best pair, then the best partners of those chosen)
    # reading order of the selection: "score" puts the best pair first, its better-scoring paragraph (the one the
    # question names) before the bridge, then further picks in pick order; "source" keeps the context's order
    order: str = "source"
    single: list[float] = field(default_factory=list)  # logistic weights over SINGLE_FEATURES (+ bias), standardised
    single_mu: list[float] = field(default_factory=list)
    single_sd: list[float] = field(default_factory=list)
    pair: list[float] = field(default_factory=list)
    pair_mu: list[float] = field(default_factory=list)
    pair_sd: list[float] = field(default_factory=list)
    version: int = 1  # bumps when features change: cached evidence and readings key on it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    indices: list[int]  # selected paragraphs, in reading order (`SelectorConfig.order`)
    pair: tuple[int, int]  # the best pair

    def text(self, paragraphs: Sequence[Paragraph]) -> str:
        return render_paragraphs([paragraphs[i] for i in self.indices])


def single_features(question: str, paragraphs: Sequence[Paragraph]) -> np.ndarray:
    """(P, len(SINGLE_FEATURES)) features of each paragraph against the question."""
    q = words(question)
    qs = set(q)
    ql = question.lower()
    docs = [words(f"{p.title} {p.text}") for p in paragraphs]
    bm = np.asarray(BM25Okapi(docs).get_scores(q) if any(docs) else np.zeros(len(docs)), dtype=np.float64)
    rank = np.empty(len(bm))
    rank[np.argsort(-bm, kind="stable")] = np.arange(len(bm))
    rows = []
    for p, d, b, r in zip(paragraphs, docs, bm, rank, strict=True):
        tw = set(words(p.title))
        first = set(words(p.sentences[0])) if p.sentences else set()
        ds = set(d)
        rows.append(
            [
                b / (bm.max() + 1e-9),
                1.0 / (1.0 + r),
                len(tw & qs) / max(len(tw), 1),
                float(_title_key(p.title) in ql),
                len(qs & ds) / max(len(qs), 1),
                len(qs & first) / max(len(qs), 1),
                np.log1p(len(d)),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(paragraphs), len(SINGLE_FEATURES))


def pair_features(question: str, paragraphs: Sequence[Paragraph], single_logit: np.ndarray) -> tuple[list, np.ndarray]:
    """All unordered pairs and their (n_pairs, len(PAIR_FEATURES)) features."""
    qs = set(words(question))
    texts = [p.text.lower() for p in paragraphs]
    sets = [set(words(f"{p.title} {p.text}")) for p in paragraphs]
    titles = [_title_key(p.title) for p in paragraphs]
    tws = [set(words(p.title)) for p in paragraphs]
    caps = [_caps(p.text) for p in paragraphs]
    pairs = list(combinations(range(len(paragraphs)), 2))
    rows = []
    for i, j in pairs:
        to_j, to_i = float(bool(titles[j]) and titles[j] in texts[i]), float(bool(titles[i]) and titles[i] in texts[j])
        cov_j, cov_i = len(tws[j] & sets[i]) / max(len(tws[j]), 1), len(tws[i] & sets[j]) / max(len(tws[i]), 1)
        bridge, tcov = to_j + to_i, max(cov_j, cov_i)
        # a bridge counts most when it leaves from the paragraph that matches the question (the first hop)
        anchor_i, anchor_j = 1 / (1 + np.exp(-single_logit[i])), 1 / (1 + np.exp(-single_logit[j]))
        rows.append(
            [
                single_logit[i] + single_logit[j],
                min(single_logit[i], single_logit[j]),
                bridge,
                tcov,
                len(qs & (sets[i] | sets[j])) / max(len(qs), 1),
                np.log1p(len(caps[i] & caps[j])),
                anchor_i * to_j + anchor_j * to_i,
                anchor_i * cov_j + anchor_j * cov_i,
            ]
        )
    return pairs, np.asarray(rows, dtype=np.float64).reshape(len(pairs), len(PAIR_FEATURES))


def _logit(x: np.ndarray, w: Sequence[float], mu: Sequence[float], sd: Sequence[float]) -> np.ndarray:
    w = np.asarray(w)
    return ((x - np.asarray(mu)) / np.asarray(sd)) @ w[:-1] + w[-1]


class Selector:
    """Question + paragraphs -> the selected paragraphs (see the module docstring)."""

    def __init__(self, cfg: SelectorConfig):
        if not cfg.single or not cfg.pair:
            raise ValueError("the selector has no weights: fit it first (Selector.fit)")
        self.cfg = cfg

    def select(self, question: str, paragraphs: Sequence[Paragraph], budget: int | None = None) -> Selection:
        budget = self.cfg.paragraphs if budget is None else budget
        if budget < 1:
            raise ValueError(f"the evidence budget must be at least one paragraph, not {budget}")
        n = len(paragraphs)
        s = self.single_scores(question, paragraphs)
        if n <= 2 or budget == 1:
            order = [int(i) for i in np.argsort(-s, kind="stable")]
            return Selection(self._ordered(order[:budget]), (order[0], order[min(1, n - 1)]))
        pairs, pf = pair_features(question, paragraphs, s)
        logits = _logit(pf, self.cfg.pair, self.cfg.pair_mu, self.cfg.pair_sd)
        joint = np.full((n, n), -np.inf)
        for (i, j), v in zip(pairs, logits, strict=True):
            joint[i, j] = joint[j, i] = v
        best = pairs[int(np.argmax(logits))]
        chosen = sorted(best, key=lambda i: -s[i])[:budget]  # the question's own paragraph, then its bridge
        while len(chosen) < min(budget, n):  # each further pick: the best partner of what is already chosen
            rest = [c for c in range(n) if c not in chosen]
            chosen.append(max(rest, key=lambda c: joint[c, chosen].max()))
        return Selection(self._ordered(chosen), best)

    def _ordered(self, picks: list[int]) -> list[int]:
        """The picks (best first) in the configured reading order."""
        if self.cfg.order not in ("score", "source"):
            raise ValueError(f"unknown selection order {self.cfg.order!r}; choose score or source")
        return [int(i) for i in picks] if self.cfg.order == "score" else sorted(int(i) for i in picks)

    def single_scores(self, question: str, paragraphs: Sequence[Paragraph]) -> np.ndarray:
        c = self.cfg
        return _logit(single_features(question, paragraphs), c.single, c.single_mu, c.single_sd)

    def evidence(self, ex: Example, budget: int | None = None) -> str:
        return self.select(ex.question, ex.paragraphs, budget).text(ex.paragraphs)

    @classmethod
    def fit(cls, rows: Sequence[Example], paragraphs: int = 4, l2: float = 1e-3, order: str = "source") -> Selector:
        """Fit both regressions on examples with gold paragraphs (seconds on `train`)."""
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
            pairs, pf = pair_features(ex.question, ex.paragraphs, _logit(x, w1, mu1, sd1))
            gold = tuple(ex.gold_indices)
            xp.append(pf)
            yp.append(np.asarray([float(p == gold) for p in pairs]))
        w2, mu2, sd2 = _fit_logistic(np.concatenate(xp), np.concatenate(yp), l2)
        return cls(SelectorConfig(paragraphs, order, w1, mu1, sd1, w2, mu2, sd2))


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
    """Pair recall (both gold paragraphs selected) and supporting-sentence recall by budget, size, speed.

    Size is in words, and in tokens of `tokenizer` (the sharer's) when given; speed is the median per question.
    """
    import time

    out: dict = {"n": len(rows), "by_budget": {}}
    for b in budgets:
        pair_hits, sent_recall, n_words, n_tokens, secs = [], [], [], [], []
        for ex in rows:
            t0 = time.perf_counter()
            sel = selector.select(ex.question, ex.paragraphs, b)
            secs.append(time.perf_counter() - t0)
            chosen = set(sel.indices)
            pair_hits.append(float(set(ex.gold_indices) <= chosen))
            if ex.supporting:
                sent_recall.append(sum(p in chosen for p, _ in ex.supporting) / len(ex.supporting))
            text = sel.text(ex.paragraphs)
            n_words.append(len(text.split()))
            if tokenizer is not None:
                n_tokens.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        out["by_budget"][b] = {
            "pair_recall": float(np.mean(pair_hits)),
            "sentence_recall": float(np.mean(sent_recall)) if sent_recall else None,
            "words": float(np.mean(n_words)),
            **({"tokens": float(np.mean(n_tokens))} if n_tokens else {}),
            "ms_per_question": 1000 * float(np.median(secs)),
        }
    return out
