"""The package's layers (pyproject's `[tool.importlinter]`): entry points > roles > core > protocol.

import-linter reads a package from one folder, but the role folders are mapped under `latentwire.` by
package-dir; so the check runs over a copy of the package laid out as it is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("sender", "protocol", "receivers", "arbiter", "processes", "trainer", "bench", "system")


def _installed_layout(dest: Path) -> Path:
    """`dest/latentwire/` with the core's files and each role folder as a subpackage; returns `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "rows")
    core = Path(importlib.util.find_spec("latentwire").origin).parent
    shutil.copytree(core, dest / "latentwire", ignore=ignore)
    for sub in SUBPACKAGES:
        (folder,) = importlib.util.find_spec(f"latentwire.{sub}").submodule_search_locations
        shutil.copytree(folder, dest / "latentwire" / sub, ignore=ignore)
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_hold(tmp_path: Path) -> None:
    res = _lint(_installed_layout(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(
    ("importer", "line", "route"),
    [
        (
            "metrics.py",
            "from latentwire.receivers import adapter",
            "latentwire.metrics -> latentwire.receivers.adapter",
        ),
        ("protocol/base.py", "from latentwire import metrics", "latentwire.protocol.base -> latentwire.metrics"),
        ("sender/selector.py", "from latentwire import cli_base", "latentwire.sender.selector -> latentwire.cli_base"),
    ],
    ids=["core-imports-a-role", "protocol-imports-the-core", "role-imports-an-entry-point"],
)
def test_an_import_across_the_layers_breaks_the_contract(tmp_path: Path, importer: str, line: str, route: str) -> None:
    tree = _installed_layout(tmp_path)
    with (tree / "latentwire" / importer).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    res = _lint(tree)
    assert res.returncode != 0 and route in res.stdout, res.stdout


def test_a_new_module_must_be_placed_in_a_layer(tmp_path: Path) -> None:
    tree = _installed_layout(tmp_path)
    (tree / "latentwire" / "stray.py").write_text("")
    res = _lint(tree)
    assert res.returncode != 0 and "stray" in res.stdout, res.stdout
