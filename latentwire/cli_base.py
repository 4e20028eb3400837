"""What the command modules share: the choices (Mode, Context, Split) and the one-line error contract.

A failure the user can fix (a missing or garbled checkpoint, an unknown model, bad data, a request the protocol
refuses, a file that cannot be read) ends any command with one line `error: ...` that names the file, and exit
code 2. `OneLineErrors` does it once for the whole app; `latentwire --debug ...` or LATENTWIRE_DEBUG=1 shows the
traceback instead. Nothing here imports torch, so `latentwire ask` starts fast.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Any

import click
import typer
from typer.core import TyperGroup

DEBUG_ENV = "LATENTWIRE_DEBUG"


class Mode(str, Enum):
    text = "text"
    token_budget = "token-budget"
    evidence = "evidence"
    relay = "relay"
    latent = "latent"


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
    ("safetensors", "SafetensorError"),
)
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def debug() -> bool:
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
            if line is None or debug():
                raise
            click.secho(f"error: {' '.join(line.split())}", err=True, fg="red")
            raise typer.Exit(2) from None
