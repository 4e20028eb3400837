import json

import pytest

from latentwire.data import VAL_SIZE, DataError, load_split, read_jsonl


def test_splits_are_fixed_and_disjoint():
    train, val = load_split("train"), load_split("val")
    assert len(val) == VAL_SIZE
    assert len(train) + len(val) == 1724
    assert not {e.id for e in train} & {e.id for e in val}
    assert [e.id for e in load_split("val")] == [e.id for e in val]  # seeded, stable
    dev = load_split("dev")
    assert len(dev) == 500 and not {e.id for e in dev} & {e.id for e in train}


def test_contexts(dev3):
    ex = dev3[0]
    gold, full = ex.context("gold"), ex.context("distractor")
    assert len(gold) < len(full)
    for title in ex.gold_titles:
        assert f"{title}:" in gold
    with pytest.raises(ValueError, match="unknown context .fullwiki."):
        ex.context("fullwiki")


def test_train_extra_uses_supporting_titles():
    extra = load_split("train_extra", limit=600)
    assert all(e.gold_titles for e in extra)


def test_malformed_file_names_file_and_line(tmp_path):
    good = json.dumps(
        {
            "id": "1",
            "question": "q?",
            "answer": "a",
            "context": [["T", ["s."]]],
            "supporting_facts": [["T", 0]],
        }
    )
    bad = tmp_path / "dev.jsonl"
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"dev.jsonl:2: malformed JSON"):
        read_jsonl(bad)
    bad.write_text(good + "\n" + json.dumps({"id": "2"}) + "\n")
    with pytest.raises(DataError, match=r"dev.jsonl:2: not a HotpotQA record"):
        read_jsonl(bad)
    bad.write_text("\n")
    with pytest.raises(DataError, match="empty data file"):
        read_jsonl(bad)
    with pytest.raises(DataError, match="no such data file"):
        load_split("dev", data_dir=tmp_path / "nowhere")


def test_sentence_labels_match_the_raw_records():
    """Every (paragraph, sentence) fact points at the sentence the raw record names, and nothing is lost."""
    from latentwire.data import default_data_dir

    raw = [json.loads(line) for line in (default_data_dir() / "dev.jsonl").read_text().splitlines()[:50]]
    for row, ex in zip(raw, load_split("dev", limit=50), strict=True):
        assert [p.title for p in ex.paragraphs] == [t for t, _ in row["context"]]
        assert [list(p.sentences) for p in ex.paragraphs] == [s for _, s in row["context"]]
        want = {(t, i) for t, i in row["supporting_facts"]}
        got = {(ex.paragraphs[p].title, s) for p, s in ex.supporting}
        assert got <= want and len(got) >= len(want) - 1  # a fact past a paragraph's end labels nothing
        assert {ex.paragraphs[p].title for p, _ in ex.supporting} == ex.gold_titles


def test_context_text_is_unchanged_by_sentence_structure(dev3):
    """The text path reads exactly the paragraphs' sentences joined, one `Title: text` line each."""
    ex = dev3[0]
    lines = ex.context().split("\n")
    assert lines == [f"{p.title}: {''.join(p.sentences).strip()}" for p in ex.paragraphs]


def test_parse_context_recovers_paragraphs():
    from latentwire.data import parse_context

    paras = parse_context("Alpha: One. Two is here.\n\nBeta (film): Three!\nno title line")
    assert [p.title for p in paras] == ["Alpha", "Beta (film)", ""]
    assert paras[0].sentences == ("One.", " Two is here.")
    assert paras[2].render() == "no title line"
