"""The README's results table says what the committed bench run measured: every F1 figure (and its 95% CI, where the
cell gives one) equals bench/results/results.json's, rounded to 3 decimals.

The table is read as it is, whatever its paths and receivers: its header names the columns (`path`, one column per
receiver, `joint ...`, `oracle`; the first word of each counts), its first cell the path (`**latent** (8 × 256)` is
`latent`). Receivers' cells come from `quality.distractor.models.<receiver>.<path>`, the joint pick's from
`quality.distractor.joint.<path>.joint`, the oracle's from `...<path>.oracle`. A README that shows figures while
results.json has no distractor block (a bench run that measured no quality) fails: nothing measured them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from latentwire.protocol import PATH_NAMES

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results" / "results.json"
SECTION = "## Results"
# a figure, optionally followed by its CI: `0.245 [0.216, 0.276]` (bold markers removed first)
FIGURE = re.compile(r"(?P<f1>-?\d+\.\d+)(?:\s*\[(?P<lo>-?\d+\.\d+),\s*(?P<hi>-?\d+\.\d+)\])?")


@dataclass(frozen=True)
class Cell:
    path: str
    column: str  # a receiver's name, `joint` or `oracle` (the header cell's first word)
    text: str  # the cell as written, bold markers removed

    @property
    def id(self) -> str:
        return f"{self.path}-{self.column}"


def _plain(cell: str) -> str:
    return cell.replace("**", "").replace("__", "").strip()


def _first_word(cell: str) -> str:
    words = re.split(r"[\s(]+", _plain(cell).lower(), maxsplit=1)
    return words[0] if words else ""


def _section(text: str) -> list[str]:
    """The lines of the README's results section (up to the next second-level heading)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Markdown tables as rows of cells, the separator row (`|---|`) dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*lines, ""]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def results_cells(text: str) -> list[Cell]:
    """Every figure of the results tables (those whose first header cell is `path`)."""
    out = []
    for header, *rows in _tables(_section(text)):
        if _first_word(header[0]) != "path":
            continue
        columns = [_first_word(c) for c in header]
        for row in rows:
            path = _first_word(row[0])
            out += [Cell(path, col, _plain(cell)) for col, cell in zip(columns[1:], row[1:], strict=False)]
    return out


CELLS = results_cells(README.read_text(encoding="utf-8"))


def distractor_block(path: Path) -> dict | None:
    """results.json's `quality.distractor` block; None for a bench run that measured no quality."""
    return json.loads(path.read_text(encoding="utf-8")).get("quality", {}).get("distractor") or None


@pytest.fixture(scope="module")
def distractor() -> dict:
    block = distractor_block(RESULTS)
    assert block is not None, f"README.md shows F1 figures, {RESULTS.relative_to(ROOT)} has no quality.distractor"
    return block


def _measured(distractor: dict, cell: Cell) -> dict | None:
    """results.json's entry behind a cell (`f1`, `f1_ci`), None when it has none; a column that is no receiver of
    results.json, nor the joint pick or the oracle, fails: the README would show figures nothing measured."""
    if cell.column in distractor["models"]:
        return distractor["models"][cell.column].get(cell.path)
    if cell.column in ("joint", "oracle"):
        return distractor.get("joint", {}).get(cell.path, {}).get(cell.column)
    known = ", ".join(sorted(distractor["models"]))
    pytest.fail(f"README column {cell.column!r}: no receiver of results.json ({known}), nor joint or oracle")


def test_the_results_table_is_there_and_names_receivers_and_the_joint_pick(distractor: dict) -> None:
    assert CELLS, f"no results table (first header cell `path`) under {SECTION!r} in README.md"
    columns = {c.column for c in CELLS}
    assert columns & set(distractor["models"]), f"no receiver column among {sorted(columns)}"
    assert "joint" in columns, f"no joint column among {sorted(columns)}"
    unknown = sorted({c.path for c in CELLS} - set(PATH_NAMES))
    assert not unknown, f"rows naming no path of protocol/paths.py: {unknown}"


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_each_figure_is_the_measured_one(distractor: dict, cell: Cell) -> None:
    measured = _measured(distractor, cell)
    figure = FIGURE.search(cell.text)
    if figure is None:  # e.g. `—`: right only where nothing was measured
        assert measured is None, f"{cell.id}: README shows {cell.text!r}, results.json has F1 {measured['f1']}"
        return
    assert measured is not None, f"{cell.id}: README shows {cell.text!r}, results.json has no such figure"
    assert figure["f1"] == f"{measured['f1']:.3f}", f"{cell.id}: README {cell.text!r}, results.json {measured['f1']}"
    if figure["lo"] is not None:
        lo, hi = measured["f1_ci"]
        assert (figure["lo"], figure["hi"]) == (f"{lo:.3f}", f"{hi:.3f}"), f"{cell.id}: CI {cell.text!r} vs {lo, hi}"


# ---- the reader itself, on tables of other shapes ----


def test_the_reader_takes_whatever_paths_and_receivers_the_table_has(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "## Results",
            "",
            "| Path | phi (Phi-3) | **llama** | joint pick (calibrated) |",
            "|:---|---:|---|---|",
            "| **relay-tuned** (trained prompt) | **0.250 [0.200, 0.300]** | — | 0.260 |",
            "",
            "| model | F1 |",  # another table: not a results table
            "|---|---|",
            "| phi | 0.1 |",
            "## Processes",
            "| path | phi | joint |",  # past the section
        ]
    )
    cells = results_cells(text)
    assert [(c.path, c.column, c.text) for c in cells] == [
        ("relay-tuned", "phi", "0.250 [0.200, 0.300]"),
        ("relay-tuned", "llama", "—"),
        ("relay-tuned", "joint", "0.260"),
    ]
    no_quality = tmp_path / "results.json"
    no_quality.write_text(json.dumps({"quality": {}, "live": {}}))
    assert distractor_block(no_quality) is None
    block = {"models": {"phi": {"relay-tuned": {"f1": 0.25}}}, "joint": {}}
    with_quality = tmp_path / "with_quality.json"
    with_quality.write_text(json.dumps({"quality": {"distractor": block}}))
    assert distractor_block(with_quality) == block
