"""The package's import contracts (pyproject's `[tool.importlinter]`), checked on the real tree.

import-linter reads a package from one folder, but the role folders are mapped under `latentwire.` by package-dir;
so the check runs over a folder of links to the real files and folders, laid out as the package installs (grimp
follows links). A test that adds an import replaces one link by a changed copy; the tree itself is never written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
SKIP = {"__pycache__"}


def _package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: each subpackage of `latentwire` -> its real folder."""
    dirs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix("latentwire."): ROOT / folder for name, folder in dirs.items() if name != "latentwire"}


def _linked_tree(dest: Path) -> Path:
    """`dest/latentwire/`: links to the core's files and to each subpackage's folder; returns `dest`."""
    pkg = dest / "latentwire"
    pkg.mkdir()
    for entry in (ROOT / "latentwire").iterdir():
        if entry.name not in SKIP:
            (pkg / entry.name).symlink_to(entry)
    for sub, folder in _package_dirs().items():
        (pkg / sub).symlink_to(folder, target_is_directory=True)
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
        + ["--config", str(PYPROJECT), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _append(tree: Path, module: str, line: str) -> None:
    """Add `line` to a module of the linked tree: its link becomes a copy (folder links are copied as links)."""
    parts = module.split("/")
    here = tree / "latentwire"
    for part in parts[:-1]:
        if (here / part).is_symlink():
            real = (here / part).resolve()
            (here / part).unlink()
            (here / part).mkdir()
            for entry in real.iterdir():
                if entry.name not in SKIP:
                    (here / part / entry.name).symlink_to(entry)
        here = here / part
    target = here / parts[-1]
    text = target.read_text() if target.exists() else ""
    if target.is_symlink():
        target.unlink()
    target.write_text(text + f"\n{line}  # noqa\n")


def test_the_contracts_hold_on_the_tree(tmp_path: Path) -> None:
    res = _lint(_linked_tree(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout
    # every real folder was read: no module of the tree escaped the contracts
    assert "Analyzed" in res.stdout


def test_the_linked_tree_is_the_installed_package() -> None:
    """The links cover every subpackage the project ships (pyproject's `packages`)."""
    setup = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    assert {f"latentwire.{s}" for s in _package_dirs()} | {"latentwire"} == set(setup["packages"])


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
        ("arbiter/roster.py", "from latentwire.receivers import adapter", "latentwire.arbiter.roster"),
        ("trainer/calibrate.py", "from latentwire.bench import quality", "latentwire.trainer.calibrate"),
        ("processes/net.py", "from latentwire.arbiter import board", "latentwire.processes.net"),
        ("processes/net.py", "from latentwire.processes import up", "No cycles are allowed in latentwire.processes"),
    ],
    ids=[
        "core-imports-a-role",
        "protocol-imports-the-core",
        "role-imports-an-entry-point",
        "arbiter-imports-a-receiver",
        "trainer-imports-the-bench",
        "plumbing-imports-a-role",
        "a-cycle-in-a-package",
    ],
)
def test_an_import_across_the_contracts_breaks_them(tmp_path: Path, importer: str, line: str, route: str) -> None:
    tree = _linked_tree(tmp_path)
    _append(tree, importer, line)
    res = _lint(tree)
    assert res.returncode != 0 and route in res.stdout, res.stdout


def test_a_new_module_must_be_placed_in_a_layer(tmp_path: Path) -> None:
    tree = _linked_tree(tmp_path)
    _append(tree, "stray.py", "")
    res = _lint(tree)
    assert res.returncode != 0 and "stray" in res.stdout, res.stdout


def test_the_tree_is_left_as_it_was(tmp_path: Path) -> None:
    tree = _linked_tree(tmp_path)
    before = (ROOT / "processes" / "net.py").read_text()
    _append(tree, "processes/net.py", "import os")
    assert (ROOT / "processes" / "net.py").read_text() == before
    shutil.rmtree(tree / "latentwire")
    assert (ROOT / "processes" / "net.py").is_file()
