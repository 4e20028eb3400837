"""The selector's lexical features: of each paragraph against the question (BM25, title and question-word
overlap) and of a pair of paragraphs together (one's title inside the other's text, the question words of the
sentence that names it, the question words the second covers that the first lacks). `selector.py` scores them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

import numpy as np
from rank_bm25 import BM25Okapi

from latentwire.data import Paragraph

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP_WORDS = """a an the of in on at to for from by with and or is was were are be been which who whom what when
where how why that this these those did does do as its it his her their he she they than both same also has have had
not no one first name named what's whose"""
_STOP = frozenset(_STOP_WORDS.split())
SINGLE_FEATURES = ("bm25", "bm25_rank", "title_in_q", "title_sub", "q_cov", "first_cov", "len")
# of the pair together: how the two score alone, whether one names the other (its title in the other's text; anchored:
# weighted by how well the naming paragraph matches the question, the first hop), the question words both cover,
# the names they share, the question words of the sentence where one names the other (anchored, and the best of both
# directions), the question words the second covers and the first lacks, whether the name is in the first sentence,
# the gap between the two single scores; then each paragraph's own single features, the higher-scoring one first
PAIR_FEATURES = (
    "single_sum",
    "single_min",
    "bridge",
    "bridge_title_cov",
    "union_cov",
    "shared_caps",
    "anchored_bridge",
    "anchored_title_cov",
    "anchored_link_cov",
    "link_cov",
    "anchored_complement",
    "link_in_first",
    "single_gap",
    *(f"hi_{f}" for f in SINGLE_FEATURES),
    *(f"lo_{f}" for f in SINGLE_FEATURES),
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _title_key(title: str) -> str:
    return re.sub(r"\s*\(.*?\)\s*", " ", title).strip().lower()


def _caps(text: str) -> set[str]:
    """Capitalised words (names): what two paragraphs of one bridge usually share."""
    return {w.lower() for w in re.findall(r"\b[A-Z][\w'-]+", text)} - _STOP


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


def pair_features(
    question: str, paragraphs: Sequence[Paragraph], single_logit: np.ndarray, single_x: np.ndarray | None = None
) -> tuple[list, np.ndarray]:
    """All unordered pairs and their (n_pairs, len(PAIR_FEATURES)) features; `single_x` saves recomputing the
    paragraphs' single features."""
    qs = set(words(question))
    texts = [p.text.lower() for p in paragraphs]
    sets = [set(words(f"{p.title} {p.text}")) for p in paragraphs]
    titles = [_title_key(p.title) for p in paragraphs]
    tws = [set(words(p.title)) for p in paragraphs]
    caps = [_caps(p.text) for p in paragraphs]
    pairs = list(combinations(range(len(paragraphs)), 2))
    qn = max(len(qs), 1)
    sents = [[x.lower() for x in p.sentences] for p in paragraphs]
    singles = single_features(question, paragraphs) if single_x is None else single_x
    rows = []
    for i, j in pairs:
        to_j, to_i = float(bool(titles[j]) and titles[j] in texts[i]), float(bool(titles[i]) and titles[i] in texts[j])
        cov_j, cov_i = len(tws[j] & sets[i]) / max(len(tws[j]), 1), len(tws[i] & sets[j]) / max(len(tws[i]), 1)
        bridge, tcov = to_j + to_i, max(cov_j, cov_i)
        # a bridge counts most when it leaves from the paragraph that matches the question (the first hop)
        anchor_i, anchor_j = 1 / (1 + np.exp(-single_logit[i])), 1 / (1 + np.exp(-single_logit[j]))
        (l_ij, first_ij), (l_ji, first_ji) = _link(sents[i], titles[j], qs), _link(sents[j], titles[i], qs)
        hi, lo = (i, j) if single_logit[i] >= single_logit[j] else (j, i)
        rows.append(
            [
                single_logit[i] + single_logit[j],
                min(single_logit[i], single_logit[j]),
                bridge,
                tcov,
                len(qs & (sets[i] | sets[j])) / qn,
                np.log1p(len(caps[i] & caps[j])),
                anchor_i * to_j + anchor_j * to_i,
                anchor_i * cov_j + anchor_j * cov_i,
                anchor_i * l_ij + anchor_j * l_ji,
                max(l_ij, l_ji),
                (anchor_i * len((qs - sets[i]) & sets[j]) + anchor_j * len((qs - sets[j]) & sets[i])) / qn,
                float(first_ij or first_ji),
                abs(single_logit[i] - single_logit[j]),
                *singles[hi],
                *singles[lo],
            ]
        )
    return pairs, np.asarray(rows, dtype=np.float64).reshape(len(pairs), len(PAIR_FEATURES))


def _link(sentences: Sequence[str], title: str, qs: set[str]) -> tuple[float, bool]:
    """Where a paragraph names `title`: the share of the question's words in the best sentence that does, and
    whether the first sentence does (0, False when none does)."""
    if not title:
        return 0.0, False
    hits = [k for k, snt in enumerate(sentences) if title in snt]
    if not hits:
        return 0.0, False
    return max(len(qs & set(words(sentences[k]))) for k in hits) / max(len(qs), 1), hits[0] == 0
