"""The evidence selector: fitted on labelled examples, budget handling, recall well above chance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentwire import checkpoint
from latentwire.data import Paragraph, load_split
from latentwire.sender.features import PAIR_FEATURES, SINGLE_FEATURES, pair_features, single_features
from latentwire.sender.selector import Selector, SelectorConfig, _fit_listwise_mlp, _mlp, selection_report


@pytest.fixture(scope="module")
def selector() -> Selector:
    """Three paragraphs in the context's order, a fixed budget: what the budget tests count on."""
    return Selector.fit(load_split("train", limit=300), paragraphs=3, order="source", unsure_below=0.0)


def test_budget_is_respected(selector):
    ex = load_split("val", limit=1)[0]
    n = len(ex.paragraphs)
    for b in (1, 2, 3, 5, n, n + 4):
        sel = selector.select(ex.question, ex.paragraphs, b)
        assert len(sel.indices) == min(b, n)
        assert sel.indices == sorted(set(sel.indices))  # source order, no repeats
        if b >= 2:
            assert set(sel.pair) <= set(sel.indices)  # the best pair is always kept
    assert len(selector.select(ex.question, ex.paragraphs).indices) == 3  # the config's budget
    with pytest.raises(ValueError, match="at least one paragraph"):
        selector.select(ex.question, ex.paragraphs, 0)


def test_small_contexts():
    sel = Selector.fit(load_split("train", limit=50), order="source")
    one = (Paragraph("Only", ("A sentence.",)),)
    assert sel.select("What?", one).indices == [0]
    two = (*one, Paragraph("Other", ("More.",)))
    assert sel.select("What?", two, 4).indices == [0, 1]


def test_recall_beats_chance_and_grows_with_budget(selector):
    rep = selection_report(selector, load_split("val", limit=100), (2, 3, 4))["by_budget"]
    # chance of both gold paragraphs among 2 of 10 is 1/45 (2%); among 4 of 10, 13%
    assert rep[2]["pair_recall"] > 0.4
    assert rep[2]["pair_recall"] <= rep[3]["pair_recall"] <= rep[4]["pair_recall"]
    assert rep[4]["sentence_recall"] > 0.8
    assert rep[2]["words"] < rep[4]["words"]


def test_one_more_paragraph_where_the_scorer_is_unsure(selector):
    """`unsure_below`: the default budget grows by one exactly where the best pair's softmax share is under it;
    an explicit budget stays exact; the report's `default` entry is what the sender selects."""
    rows = load_split("val", limit=40)
    sharp = Selector(SelectorConfig(**{**selector.cfg.to_dict(), "paragraphs": 2, "unsure_below": 0.9}))
    grew = 0
    for ex in rows:
        sel = sharp.select(ex.question, ex.paragraphs)
        assert 0.0 < sel.confidence <= 1.0
        assert len(sel.indices) == (3 if sel.confidence < 0.9 else 2)
        assert set(sharp.select(ex.question, ex.paragraphs, 2).indices) <= set(sel.indices)  # the same best pair
        assert len(sharp.select(ex.question, ex.paragraphs, 2).indices) == 2
        grew += len(sel.indices) == 3
    assert 0 < grew < len(rows)  # the threshold splits these questions: the test can tell both branches apart
    rep = selection_report(sharp, rows, (2, 3))
    assert rep["default"]["paragraphs"] == 2 + grew / len(rows)
    assert rep["by_budget"][2]["pair_recall"] <= rep["default"]["pair_recall"] <= rep["by_budget"][3]["pair_recall"]
    assert sharp.cfg.to_dict()["unsure_below"] == 0.9
    fixed = selection_report(Selector(SelectorConfig(**{**sharp.cfg.to_dict(), "unsure_below": 0.0})), rows, (2,))
    for key in ("pair_recall", "sentence_recall", "paragraphs", "words"):
        assert fixed["default"][key] == fixed["by_budget"][2][key]


def test_config_round_trips_through_json(selector):
    cfg = SelectorConfig(**json.loads(json.dumps(selector.cfg.to_dict())))
    ex = load_split("dev", limit=1)[0]
    assert Selector(cfg).select(ex.question, ex.paragraphs) == selector.select(ex.question, ex.paragraphs)
    with pytest.raises(ValueError, match="no weights"):
        Selector(SelectorConfig())


def test_score_order_reads_the_best_pair_first(selector):
    """`order="score"`: the same paragraphs, the best pair first (the question's own paragraph before its bridge),
    further picks after it; `source` keeps the context's order."""
    ranked = Selector(SelectorConfig(**{**selector.cfg.to_dict(), "order": "score"}))
    for ex in load_split("val", limit=20):
        a, b = selector.select(ex.question, ex.paragraphs, 4), ranked.select(ex.question, ex.paragraphs, 4)
        assert sorted(b.indices) == a.indices and a.pair == b.pair
        assert set(b.indices[:2]) == set(b.pair)
        s = ranked.single_scores(single_features(ex.question, ex.paragraphs))
        assert s[b.indices[0]] >= s[b.indices[1]]
        first = ranked.select(ex.question, ex.paragraphs, 2).indices[0]  # what the sharer reads first
        assert first == b.indices[0] and ranked.evidence(ex, 2).split("\n")[0] == ex.paragraphs[first].render()
    with pytest.raises(ValueError, match="selection order"):
        Selector(SelectorConfig(**{**selector.cfg.to_dict(), "order": "random"})).select("Q?", ex.paragraphs)


def test_pair_features_carry_both_paragraphs_singles_higher_first(selector):
    ex = load_split("val", limit=1)[0]
    x1 = single_features(ex.question, ex.paragraphs)
    s = selector.single_scores(x1)
    pairs, pf = pair_features(ex.question, ex.paragraphs, s)
    assert pf.shape == (len(pairs), len(PAIR_FEATURES))
    k = len(SINGLE_FEATURES)
    for (i, j), row in zip(pairs, pf, strict=True):
        hi, lo = (i, j) if s[i] >= s[j] else (j, i)
        assert np.allclose(row[-2 * k : -k], x1[hi]) and np.allclose(row[-k:], x1[lo])
    assert np.array_equal(pair_features(ex.question, ex.paragraphs, s, x1)[1], pf)  # given singles: the same


def test_listwise_mlp_ranks_what_no_linear_scorer_can():
    """Per question, the gold item is the one whose two features agree in sign (an XOR): no weighted sum ranks
    it first in every question, the listwise MLP does."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(200):
        x = rng.uniform(-1, 1, (6, 2))
        x[0] = rng.choice([-1, 1]) * rng.uniform(0.3, 1, 2)  # same sign
        x[1:, 1] = -np.sign(x[1:, 0]) * np.abs(x[1:, 1])  # opposite signs
        perm = rng.permutation(6)
        xs.append(x[perm])
        ys.append((perm == 0).astype(float))
    flat, mu, sd = _fit_listwise_mlp(xs, ys, hidden=8, l2=1e-4)
    hits = [y[np.argmax(_mlp(x, flat, 8, mu, sd))] for x, y in zip(xs, ys, strict=True)]
    assert np.mean(hits) > 0.95
    with pytest.raises(ValueError, match="hidden units"):
        _mlp(xs[0], flat, 4, mu, sd)


def test_the_defaults_are_the_shipped_selector_and_other_feature_versions_are_refused():
    shipped = checkpoint.load_config(checkpoint.DEFAULT_CKPT).encoder["selector"]
    weights = ("single", "single_mu", "single_sd", "pair", "pair_mu", "pair_sd")
    assert SelectorConfig().to_dict() == {**shipped, **{k: [] for k in weights}}  # the knobs; weights are fitted
    assert SelectorConfig(**shipped).to_dict() == shipped  # its cached evidence and readings keep their keys
    with pytest.raises(ValueError, match="selector version 1: these features are version 2, refit the selector"):
        Selector(SelectorConfig(**{**shipped, "version": 1}))
