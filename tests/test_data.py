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


def test_context_modes(dev3):
    ex = dev3[0]
    gold, full = ex.context("gold"), ex.context("distractor")
    assert len(gold) < len(full)
    for title in ex.gold_titles:
        assert f"{title}:" in gold
    with pytest.raises(ValueError, match="unknown context mode"):
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
