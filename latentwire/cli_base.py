"""What the command modules share: the choices (PathName, WirePath, Context, Split) and the one-line error contract.

A failure the user can fix (a missing or garbled checkpoint, an unknown model, bad data, a request the protocol
refuses, a file that cannot be read) ends any command with one line `error: ...` that names the file, and exit
code 2. `OneLineErrors` does it once for the whole app; `latentwire --debug ...` or LATENTWIRE_DEBUG=1 shows the
traceback instead. Nothing here imports torch, so `latentwire ask` starts fast.

`recipe_options` turns a recipe dataclass's fields into a command's options, as Hugging Face's `HfArgumentParser`
does: `dataclasses.fields` gives the names and defaults, `metadata["help"]` the help, `typing.get_type_hints` the
types. A new recipe field is a new option without a hand copy in the command; `--config recipe.json|yaml` sets any
of them from a file.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from latentwire.protocol.paths import PATH_NAMES, WIRE_PATHS

DEBUG_ENV = "LATENTWIRE_DEBUG"
DEBUG_META = "latentwire.debug"  # where `--debug` is kept in the click context, for every command to read


# the CLI's `--path` choices: every path of `protocol/paths.py` (members named like `token_budget`)
PathName = Enum("PathName", {p.replace("-", "_"): p for p in PATH_NAMES}, type=str)  # type: ignore[misc]
# `ask`'s and `ask-batch`'s choices: only the paths an Ask may name (the others are measured in-process)
WirePath = Enum("WirePath", {p.replace("-", "_"): p for p in WIRE_PATHS}, type=str)  # type: ignore[misc]
# `--mode`: the old name of `--path`, still read but not shown (`path_option` reads the two)
OLD_PATH_HELP = "old name of --path"
OldPathName = Annotated[PathName | None, typer.Option("--mode", hidden=True, help=OLD_PATH_HELP)]
OldWirePath = Annotated[WirePath | None, typer.Option("--mode", hidden=True, help=OLD_PATH_HELP)]


E = typing.TypeVar("E", bound=Enum)


def path_option(ctx: click.Context | None, path: E, mode: E | None) -> E:
    """The path a command (`ctx`) was given: `--path`, or `--mode` (its old name) when that is given instead. Both
    given and different: a one-line error."""
    if mode is None:
        return path
    source = ctx.get_parameter_source("path") if ctx is not None else None
    if getattr(source, "name", None) not in (None, *_FROM_DEFAULT) and path != mode:
        raise CliError(f"--path {path.value} and --mode {mode.value} (its old name) disagree: give --path only")
    return mode


class Context(str, Enum):
    distractor = "distractor"
    gold = "gold"


class Split(str, Enum):
    dev = "dev"
    val = "val"
    train = "train"


class CliError(Exception):
    """A failure the user can fix; its message (naming the file or option at fault) is the line shown."""


# (module, class) of the project's user-facing errors. Looked up in sys.modules: an error can only come from a
# module that is loaded, and recognising it must not import torch.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("latentwire.checkpoint", "CheckpointError"),
    ("latentwire.models", "ModelNotFound"),
    ("latentwire.data", "DataError"),
    ("latentwire.protocol", "ProtocolError"),
    ("latentwire.processes.settings", "SettingError"),
    ("safetensors", "SafetensorError"),
)
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def debug(ctx: click.Context | None = None) -> bool:
    """Whether `--debug` (or $LATENTWIRE_DEBUG, its default) asked for tracebacks."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is not None and DEBUG_META in ctx.meta:
        return bool(ctx.meta[DEBUG_META])
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def user_error(exc: BaseException) -> str | None:
    """The one line to show for `exc`, or None when it is a bug (then the traceback is the useful output)."""
    if isinstance(exc, (CliError, *_FILE_ERRORS)):
        return str(exc)
    for module, name in USER_ERRORS:
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and isinstance(exc, kind):
            return (
                f"{_safetensors_file(exc)}: unreadable safetensors file ({exc})"
                if module == "safetensors"
                else str(exc)
            )
    return None


def _safetensors_file(exc: BaseException) -> str:
    """The file a SafetensorError is about: its message does not say, safetensors' loaders take it as `filename`."""
    tb, found = exc.__traceback__, "a safetensors file"
    while tb is not None:
        name = tb.tb_frame.f_locals.get("filename")
        if isinstance(name, str | os.PathLike):
            found = os.fspath(name)
        tb = tb.tb_next
    return found


class OneLineErrors(TyperGroup):
    """The app's command group: user-fixable errors of any subcommand become one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # click's Exit and usage errors are not user_error()s: they pass through
            line = user_error(e)
            if line is None or debug(ctx):
                raise
            click.secho(f"error: {' '.join(line.split())}", err=True, fg="red")
            raise typer.Exit(2) from None


@dataclasses.dataclass(frozen=True)
class FieldOption:
    """One recipe field: its name, option type (int, float, str, bool, or one of them | None; None when no option
    carries it), default (MISSING for a default_factory) and help."""

    name: str
    type: Any
    default: Any
    help: str = ""

    @property
    def is_option(self) -> bool:
        return self.type is not None and self.default is not dataclasses.MISSING


def _option_type(annotation: Any) -> Any | None:
    """`annotation` when an option can carry it (a scalar or an optional scalar), else None."""
    scalars = (int, float, str, bool)
    if annotation in scalars:
        return annotation
    args = typing.get_args(annotation)
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    if is_union and len(args) == 2 and type(None) in args and all(a in scalars for a in args if a is not type(None)):
        return annotation
    return None


def _resolve(recipe: str | type) -> type:
    """The recipe class: itself, or `"module:Class"` imported."""
    if not isinstance(recipe, str):
        return recipe
    module, _, name = recipe.partition(":")
    return getattr(importlib.import_module(module), name)


def recipe_fields(recipe: str | type) -> list[FieldOption]:
    """The fields of a recipe dataclass (a class, or `"module:Class"`) as options, the way `HfArgumentParser`
    reads them: `dataclasses.fields` for the names, defaults and `metadata["help"]`, `typing.get_type_hints`
    for the types (string annotations resolved in the class's module, never evaluated from source text)."""
    cls = _resolve(recipe)
    hints = typing.get_type_hints(cls)
    return [
        FieldOption(f.name, _option_type(hints[f.name]), f.default, str(f.metadata.get("help", "")))
        for f in dataclasses.fields(cls)
    ]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value


CONFIG_PARAM, CONTEXT_PARAM = "recipe_config", "recipe_ctx"
_FROM_DEFAULT = ("DEFAULT", "DEFAULT_MAP")  # click's ParameterSource names: not given on the command line


def _read_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file's fields: a JSON object, or a YAML mapping (.yaml, .yml)."""
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml  # a dependency of transformers; only needed here

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as e:  # yaml's and json's errors are ValueErrors
        raise CliError(f"{path}: unreadable recipe file ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a recipe file holds one mapping of field names to values")
    return data


def recipe_options(
    recipe: str | type,
    *,
    param: str = "recipe",
    help_text: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command one option per field of `recipe` and call it with the built recipe as `param`.

    Each field becomes `--field-name` with the field's type and default; its help is `help_text[field]`, else the
    field's `metadata["help"]`. A parameter the command declares itself under a field's name (or `rename[field]`)
    keeps the command's declaration (option names, type, help) and is passed to it as well as into the recipe.
    Fields whose type no option carries (lists, nested configs) keep their dataclass defaults unless the command
    declares them or a file sets them: `--config FILE` (JSON or YAML) sets any field; an option given on the
    command line wins.
    """
    helps, rename, skip = dict(help_text or {}), dict(rename or {}), set(exclude)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        # the command's own annotations resolved as the recipe's are (cli.py's are strings: postponed evaluation)
        hints = typing.get_type_hints(fn, include_extras=True)
        plain = inspect.signature(fn)
        sig = plain.replace(
            parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in plain.parameters.values()]
        )
        own = [p for p in sig.parameters.values() if p.name != param]
        declared = {p.name for p in own}
        every = [f for f in recipe_fields(recipe) if f.name not in skip]
        fields = [f for f in every if f.is_option or rename.get(f.name, f.name) in declared]
        file_only = {f.name for f in every} - {f.name for f in fields}  # lists, nested configs: from a file only
        added = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=f.default,
                annotation=Annotated[f.type, typer.Option(help=helps.get(f.name, f.help))],
            )
            for f in fields
            if rename.get(f.name, f.name) not in declared
        ]

        config = inspect.Parameter(
            CONFIG_PARAM,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option("--config", help="recipe fields from a JSON or YAML file (the command line wins)"),
            ],
        )

        context = inspect.Parameter(CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def command(**kw: Any) -> Any:
            path, ctx, extra = kw.pop(CONFIG_PARAM, None), kw.pop(CONTEXT_PARAM), {}
            if path is not None:
                for name, value in _read_recipe_file(path).items():
                    if name in file_only:
                        extra[name] = value
                        continue
                    key = rename.get(name, name)
                    if key not in kw or name in skip:
                        known = ", ".join(f.name for f in every)
                        raise CliError(f"{path}: unknown recipe field {name!r} (known: {known})")
                    if getattr(ctx.get_parameter_source(key), "name", None) in _FROM_DEFAULT:
                        kw[key] = type(kw[key])(value) if isinstance(kw[key], Enum) else value
            values = {f.name: _plain(kw[rename.get(f.name, f.name)]) for f in fields}
            mine = {k: v for k, v in kw.items() if k in declared}
            return fn(**mine, **{param: _resolve(recipe)(**values, **extra)})

        params = [*own, *added, config, context]
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _engine_setting(value: str) -> str:
    """`--engine` names how the models' inference passes run (`latentwire.engine`), refused here when unknown.
    Each command passes it on to every model it loads for inference and every process it starts (training
    always runs float32); `auto` leaves the choice to `$LATENTWIRE_ENGINE`, else float32."""
    if value != "auto":
        from latentwire.engine import resolve_engine  # torch: only when an engine is named

        try:
            resolve_engine(value)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return value


EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="inference engine: auto ($LATENTWIRE_ENGINE; else bf16-w8 on a CPU with bfloat16 arithmetic, float32 "
        "elsewhere), float32, bf16-w8 (bfloat16, decoding steps on int8 weights)",
        callback=_engine_setting,
    ),
]
