import pytest

from latentwire.metrics import bootstrap_ci, exact_match, f1_score, normalize_answer, postprocess, summarize


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Paris.", "Paris"),
        ("The answer is Paris.\nBecause...", "Paris"),
        ("\n\nanswer: Denise Levertov!", "Denise Levertov"),
        ("The Eiffel Tower", "The Eiffel Tower"),  # a leading article is not an answer prefix
        ("", ""),
    ],
)
def test_postprocess(raw, expected):
    assert postprocess(raw) == expected


def test_official_normalisation():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert exact_match("the Beatles", "Beatles") == 1.0


def test_f1_yes_no_rule_and_overlap():
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # official rule: yes/no must match exactly
    assert f1_score("yes", "yes") == 1.0
    assert f1_score("Denise Levertov poet", "Denise Levertov") == pytest.approx(0.8)
    assert f1_score("", "Paris") == 0.0


def test_bootstrap_ci_brackets_mean():
    vals = [0.0] * 50 + [1.0] * 50
    lo, hi = bootstrap_ci(vals)
    assert lo < 0.5 < hi and lo > 0.3 and hi < 0.7
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    s = summarize([1.0, 0.0], [1.0, 0.5])
    assert s["n"] == 2 and s["f1"] == 0.75
