"""Recipe fields as command options (`cli_base.recipe_options`): no hand copy between a recipe and its command."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from latentwire import cli_base
from latentwire.cli import app
from latentwire.cli_base import recipe_fields, recipe_options


def _app_for(recipe: str | type) -> tuple[typer.Typer, list]:
    seen: list = []
    cmd = typer.Typer()

    @cmd.command()
    @recipe_options(recipe)
    def run(recipe: Any, verbose: bool = False) -> None:
        seen.append(recipe)

    return cmd, seen


RECIPE_V1 = """
    from dataclasses import dataclass, field

    @dataclass
    class Recipe:
        steps: int = field(default=3, metadata={"help": "how many steps"})
        name: str = field(default="x", metadata={"help": "what to call it"})
        grid: list = field(default_factory=list)
"""


def test_a_new_recipe_field_is_a_new_option_without_other_edits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "recipe_mod.py"
    src.write_text(textwrap.dedent(RECIPE_V1))
    cmd, _ = _app_for("recipe_mod:Recipe")
    res = CliRunner().invoke(cmd, ["--help"], env={"COLUMNS": "200"})
    assert "--steps" in res.stdout and "how many steps" in res.stdout and "what to call it" in res.stdout
    assert "--lr" not in res.stdout and "--grid" not in res.stdout

    lr = '    lr: float | None = field(default=None, metadata={"help": "learning rate"})\n'
    src.write_text(textwrap.dedent(RECIPE_V1) + lr)
    sys.modules.pop("recipe_mod", None)
    cmd, seen = _app_for("recipe_mod:Recipe")
    res = CliRunner().invoke(cmd, ["--help"], env={"COLUMNS": "200"})
    assert "--lr" in res.stdout and "learning rate" in res.stdout
    res = CliRunner().invoke(cmd, ["--lr", "0.5", "--steps", "7", "--verbose"])
    assert res.exit_code == 0, res.output
    (recipe,) = seen
    assert (recipe.lr, recipe.steps, recipe.name, recipe.grid) == (0.5, 7, "x", [])


def test_an_imported_dataclass_works_the_same() -> None:
    @dataclasses.dataclass
    class Knobs:
        k: int = 1
        tag: str | None = dataclasses.field(default=None, metadata={"help": "a label"})

    cmd, seen = _app_for(Knobs)
    assert "a label" in CliRunner().invoke(cmd, ["--help"], env={"COLUMNS": "200"}).stdout
    assert CliRunner().invoke(cmd, ["--k", "4", "--tag", "t"]).exit_code == 0
    assert seen == [Knobs(k=4, tag="t")]


RECIPES = ["latentwire.trainer.recipes:TrainRecipe", "latentwire.trainer.recipes:ExtendRecipe"]


@pytest.mark.parametrize("target", RECIPES)
def test_every_recipe_field_has_its_help_in_metadata(target: str) -> None:
    fields = recipe_fields(target)
    assert len(fields) >= 10
    assert [f.name for f in fields if not f.help.strip()] == []


def test_recipe_options_neither_parses_source_nor_evaluates_strings() -> None:
    """Options come from `dataclasses.fields` and `typing.get_type_hints` alone, as in `HfArgumentParser`."""
    source = Path(cli_base.__file__).read_text()
    assert not re.search(r"^\s*(import ast\b|from ast import)|\bast\.", source, re.MULTILINE)
    assert not re.search(r"\b(eval|literal_eval)\(|eval_str", source)


@pytest.mark.parametrize(
    ("command", "target", "rename"),
    [
        ("train", "latentwire.trainer.recipes:TrainRecipe", {"train_limit": "limit_train"}),
        ("train-adapter", "latentwire.trainer.recipes:ExtendRecipe", {}),
    ],
)
def test_a_commands_options_are_its_recipes_fields(command: str, target: str, rename: dict[str, str]) -> None:
    """Every recipe field an option can carry is a parameter of the command (under its renamed name if any), and
    every parameter is a field or one the command declares for itself."""
    group = typer.main.get_command(app)
    params = {p.name for p in group.commands[command].params}  # type: ignore[attr-defined]
    options = {rename.get(f.name, f.name) for f in recipe_fields(target) if f.is_option}
    assert options <= params, options - params
    own = {"train": {"out", "models", "dev_eval", "threads"}, "train-adapter": {"ckpt", "out", "threads"}}[command]
    assert params - options - own == {cli_base.CONFIG_PARAM}


def test_train_adapter_builds_the_extend_recipe(monkeypatch) -> None:
    from latentwire.trainer import extend as ext

    got: list = []
    monkeypatch.setattr(ext, "extend", lambda recipe, parent, out, log: got.append(recipe) or out)
    args = ["train-adapter", "--model", "tiny-gemma", "--tau", "5", "--no-tune", "--min-cos", "0.3", "--eval-n", "7"]
    res = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert got == [ext.ExtendRecipe(model="tiny-gemma", tau=5.0, tune=False, min_cos=0.3, eval_n=7, device="cpu")]


def test_train_builds_the_recipe(monkeypatch, tmp_path: Path) -> None:
    from latentwire.trainer import recipe

    got: list = []
    monkeypatch.setattr(recipe, "build", lambda r, out: got.append(r) or out / "ckpt")
    args = ["train", "--out", str(tmp_path), "--model", "a", "--model", "b", "--sharer", "a", "--topk", "3", "-M", "4"]
    args += ["--d-z", "64", "--context", "gold", "--limit-train", "9", "--tau", "5", "--no-dev-eval", "--eval-n", "2"]
    args += ["--steps", "7", "--prompt-len", "3", "--no-channel"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    want = recipe.TrainRecipe(
        models=["a", "b"], sharer="a", topk=3, m=4, d_z=64, context="gold", train_limit=9, tau=5.0, eval_n=2,
        steps=7, prompt_len=3, channel=False,
    )  # fmt: skip
    assert got == [want]


def test_the_cli_starts_without_torch() -> None:
    code = "import sys, typer, latentwire.cli as c; typer.main.get_command(c.app); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_a_config_file_sets_fields_and_the_command_line_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "recipe_cfg.py").write_text(textwrap.dedent(RECIPE_V1))
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps({"steps": 9, "name": "y", "grid": [1, 2]}))
    cmd, seen = _app_for("recipe_cfg:Recipe")
    res = CliRunner().invoke(cmd, ["--config", str(cfg), "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert [(r.steps, r.name, r.grid) for r in seen] == [(4, "y", [1, 2])]


def test_train_reads_a_yaml_recipe(monkeypatch, tmp_path: Path) -> None:
    from latentwire.trainer import recipe

    got: list = []
    monkeypatch.setattr(recipe, "build", lambda r, out: got.append(r) or out / "ckpt")
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("context: gold\nm: 6\ntau: 7.5\nmodels: [a]\ntrain_limit: 3\n")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path), "--config", str(cfg), "--no-dev-eval", "-M", "5"])
    assert res.exit_code == 0, res.output
    assert got == [recipe.TrainRecipe(models=["a"], context="gold", m=5, tau=7.5, train_limit=3)]


@pytest.mark.parametrize(
    ("text", "says"),
    [('{"bogus": 1}', "unknown recipe field 'bogus'"), ("[1]", "one mapping"), ("{", "unreadable recipe file")],
)
def test_a_bad_config_file_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["train-adapter", "--config", str(cfg)])
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {cfg}: ") and says in res.stderr, res.output
