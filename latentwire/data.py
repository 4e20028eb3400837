"""HotpotQA data: local JSON Lines (the default) or the hub dataset, splits and contexts (distractor, gold).

Splits: `train` = train.jsonl minus a fixed, seeded 200-example validation slice (`val`) used for all tuning
and periodic evaluation; `dev` (dev.jsonl, 500) is only reported; `train_extra` is an optional supplement.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SPLITS = ("train", "val", "dev", "train_extra")
CONTEXTS = ("distractor", "gold")
VAL_SIZE = 200
VAL_SEED = 1234
_FILES = {
    "train": "train.jsonl",
    "val": "train.jsonl",
    "dev": "dev.jsonl",
    "train_extra": "train_extra.jsonl",
}


class DataError(ValueError):
    """A missing, empty or malformed data file; the message names the file and line."""


class Paragraph(NamedTuple):
    """One context paragraph as the source splits it: a title and its sentences (leading spaces kept)."""

    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.sentences).strip()

    def render(self, keep: Sequence[int] | None = None) -> str:
        """`Title: text`, the line the text path reads; `keep` restricts it to those sentence ids."""
        sents = self.sentences if keep is None else [self.sentences[i] for i in sorted(keep)]
        body = "".join(sents).strip()
        return f"{self.title}: {body}" if self.title else body


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def parse_context(text: str) -> tuple[Paragraph, ...]:
    """A context as a client sends it (one `Title: text` line per paragraph, as the text path renders it) back
    into paragraphs; sentences are split at sentence ends. A line without a title becomes an untitled paragraph."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, rest = line.partition(": ")
        title, body = (head, rest) if sep and 0 < len(head) <= 120 else ("", line)
        sents = _SENTENCE_END.split(body)
        out.append(Paragraph(title, tuple(s if i == 0 else f" {s}" for i, s in enumerate(sents))))
    return tuple(out)


def render_paragraphs(paragraphs: Sequence[Paragraph]) -> str:
    """The context text of some paragraphs, one line each (shared by the text, gold and evidence paths)."""
    return "\n".join(p.render() for p in paragraphs)


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    paragraphs: tuple[Paragraph, ...]  # in the source order
    gold_titles: frozenset[str]
    supporting: frozenset[tuple[int, int]] = frozenset()  # (paragraph index, sentence index) facts, when labelled

    def context(self, context: str = "distractor") -> str:
        """`distractor`: all paragraphs; `gold`: only the supporting ones, in source order."""
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; choose one of {', '.join(CONTEXTS)}")
        return render_paragraphs(self.paragraphs if context == "distractor" else self.gold_paragraphs)

    @property
    def gold_paragraphs(self) -> list[Paragraph]:
        return [p for p in self.paragraphs if p.title in self.gold_titles]

    @property
    def gold_indices(self) -> list[int]:
        return [i for i, p in enumerate(self.paragraphs) if p.title in self.gold_titles]


def default_data_dir() -> Path:
    """`$LATENTWIRE_DATA`, else the shared HotpotQA slice next to the checkout."""
    env = os.environ.get("LATENTWIRE_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent
    for cand in (
        here.parent / "shared" / "data" / "hotpotqa",
        Path.cwd().parent / "shared" / "data" / "hotpotqa",
    ):
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "data" / "hotpotqa"


def _parse(row: dict, where: str) -> Example:
    try:
        paragraphs = tuple(
            Paragraph(str(title), (sents,) if isinstance(sents, str) else tuple(str(s) for s in sents))
            for title, sents in row["context"]
        )
        facts = [(str(t), int(i)) for t, i in row.get("supporting_facts") or []]
        gold = {t for t, _ in facts} or {str(t) for t in row.get("supporting_titles") or []}
        index = {p.title: k for k, p in enumerate(paragraphs)}
        # facts pointing past a paragraph's end exist in the official data: they label nothing we can read
        supporting = {(index[t], i) for t, i in facts if t in index and i < len(paragraphs[index[t]].sentences)}
        ex = Example(
            str(row["id"]),
            str(row["question"]).strip(),
            str(row["answer"]).strip(),
            paragraphs,
            frozenset(gold),
            frozenset(supporting),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: not a HotpotQA record ({type(e).__name__}: {e})") from None
    if not ex.question or not ex.paragraphs:
        raise DataError(f"{where}: empty question or context")
    return ex


def read_jsonl(path: Path) -> list[Example]:
    if not path.is_file():
        raise DataError(f"{path}: no such data file (set --data-dir or LATENTWIRE_DATA)")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            out.append(_parse(row, f"{path}:{lineno}"))
    if not out:
        raise DataError(f"{path}: empty data file")
    return out


def split_train_val(rows: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """The fixed, seeded validation slice: shuffle indices once with VAL_SEED, first VAL_SIZE are `val`."""
    idx = list(range(len(rows)))
    random.Random(VAL_SEED).shuffle(idx)
    n_val = min(VAL_SIZE, len(rows) // 5) if len(rows) < 5 * VAL_SIZE else VAL_SIZE
    val = set(idx[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def _hub_rows(split: str) -> list[Example]:
    from datasets import load_dataset

    hf_split = "validation" if split == "dev" else "train"
    ds = load_dataset("hotpotqa/hotpot_qa", "distractor", split=hf_split)
    rows = []
    for i, r in enumerate(ds):
        ctx = list(zip(r["context"]["title"], r["context"]["sentences"], strict=True))
        sf = list(zip(r["supporting_facts"]["title"], r["supporting_facts"]["sent_id"], strict=True))
        rows.append(
            _parse(
                {
                    "id": r["id"],
                    "question": r["question"],
                    "answer": r["answer"],
                    "context": ctx,
                    "supporting_facts": sf,
                },
                f"hotpotqa/hotpot_qa[{hf_split}][{i}]",
            )
        )
    return rows


def load_split(
    split: str, data_dir: str | Path | None = None, limit: int | None = None, source: str = "local"
) -> list[Example]:
    """Examples of one split. `source="hub"` reads `hotpotqa/hotpot_qa` (distractor) for users with a network."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rows = _hub_rows(split) if source == "hub" else read_jsonl(Path(data_dir or default_data_dir()) / _FILES[split])
    if split in ("train", "val"):
        train, val = split_train_val(rows)
        rows = train if split == "train" else val
    return rows[:limit] if limit else rows
