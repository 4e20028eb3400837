"""A non-editable install works on its own: the wheel carries what the core reads at run time (the committed
checkpoints, the bench's rows that seed the evaluation cache), and the core finds them inside the installed package,
never beside a checkout. CI installs the wheel into a fresh venv and runs `latentwire smoke` too (.ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole-system or packaging tests: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_FILES = ("config.json", "weights.safetensors")


def _source_tree(dest: Path) -> Path:
    """The files git would ship (tracked, plus new ones it does not ignore) copied to `dest`: the build then writes
    its `build/` and egg-info there, not in the checkout another test or engineer may be building from."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a deleted but still tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree the wheel is built from; the checks compare with it, not with the checkout, which others may
    change meanwhile (a new default checkpoint)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files ship")
    return _source_tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("latentwire-*.whl")
    return whl


def test_the_wheel_carries_the_checkpoints_and_the_rows(wheel: Path, src: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for ckpt in ("default",):
        for f in CHECKPOINT_FILES:
            assert f"latentwire/checkpoints/{ckpt}/{f}" in names, sorted(n for n in names if "checkpoints" in n)
    rows = {n for n in names if n.startswith("latentwire/rows/")}
    assert rows == {f"latentwire/rows/{p.name}" for p in (src / "latentwire" / "rows").glob("*.jsonl")}
    assert rows, "no committed rows shipped"
    # byte for byte: a fingerprint (stamped in every latent frame) covers both checkpoint files
    with zipfile.ZipFile(wheel) as z:
        for f in CHECKPOINT_FILES:
            assert z.read(f"latentwire/checkpoints/default/{f}") == (src / "checkpoints" / "default" / f).read_bytes()


def test_the_installed_core_finds_its_data_inside_the_package(wheel: Path, src: Path, tmp_path: Path) -> None:
    """The wheel unpacked (its purelib is the install) and imported ahead of the editable checkout: DEFAULT_CKPT,
    ROWS_DIR and the default process list resolve under the unpacked package."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, latentwire, latentwire.checkpoint as c, latentwire.evaluate as e, latentwire.processes.up as n\n"
        "print(json.dumps({'pkg': latentwire.__file__, 'ckpt': str(c.DEFAULT_CKPT), 'rows': str(e.ROWS_DIR),"
        " 'fp': c.fingerprint(c.DEFAULT_CKPT), 'procs': sorted(n.read_procfile())}))"
    )
    # cwd outside the checkout, so its `latentwire/` folder cannot shadow the unpacked one
    res = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    pkg = site / "latentwire"
    assert Path(got["pkg"]).parent == pkg
    assert Path(got["ckpt"]) == pkg / "checkpoints" / "default"
    assert Path(got["rows"]) == pkg / "rows"
    from latentwire import checkpoint

    assert got["fp"] == checkpoint.fingerprint(src / "checkpoints" / "default")
    assert got["procs"] == ["arbiter", "gemma", "llama", "qwen", "sender"]
