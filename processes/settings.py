"""The settings a process reads from the environment, checked where it starts.

A process that reads a malformed setting only when it first needs it fails late and unclearly: a receiver with
`LATENTWIRE_ENGINE=bogus` crashed after loading its model, `up` restarted it over and over, and a client waited
for readiness that never came. So each process command calls `check` first: one line naming the variable
(`SettingError`, shown as `error: ...`, exit code 2) before any socket or model. The engine's name is checked by
`engine.resolve_engine`, the one list of engines.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from latentwire.processes import net

# scheme://rest as ZeroMQ takes it; tcp needs host:port (a port number or `*`)
_ENDPOINT = re.compile(r"(tcp://[^\s:/]+:(\d+|\*))|((ipc|inproc)://\S+)")


class SettingError(ValueError):
    """A malformed setting; the message names the variable and what it must be."""


def check(*, engine: bool = False, env: Mapping[str, str] | None = None) -> None:
    """Check the settings every process reads (raises SettingError): threads, timeout, receivers count, the
    addresses, the CURVE folder; and `$LATENTWIRE_ENGINE` when the process loads a model."""
    env = os.environ if env is None else env
    _number(env, "LATENTWIRE_THREADS", int, lo=0)  # 0: every core
    _number(env, "LATENTWIRE_N_RECEIVERS", int, lo=1)
    _number(env, "LATENTWIRE_TIMEOUT", float, lo=0.0, strict=True)
    for var, _default in net.ADDRESSES.values():
        _endpoints(env, var, many=var == net.ADDRESSES["receivers"][0])
    curve = env.get(net.CURVE_ENV)
    if curve and not os.path.isdir(curve):
        raise SettingError(f"${net.CURVE_ENV}={curve!r}: not a folder (make one with `latentwire keygen FOLDER`)")
    if engine and env.get("LATENTWIRE_ENGINE"):
        check_engine(env["LATENTWIRE_ENGINE"], "$LATENTWIRE_ENGINE")


def check_engine(name: str, label: str = "engine") -> str:
    """`name` resolved (`engine.resolve_engine`), or SettingError naming `label` and the engines there are."""
    from latentwire.engine import resolve_engine  # torch: only the processes that load a model ask

    try:
        return resolve_engine(name)
    except ValueError as e:
        raise SettingError(f"{label}={name!r}: {e}") from None


def check_endpoint(label: str, value: str | None, many: bool = False) -> None:
    """A flag's ZeroMQ endpoint (a comma-separated list when `many`; None: not given), or SettingError naming
    `label`."""
    if value:
        _endpoints({label: value}, label, many)


def _number(env: Mapping[str, str], var: str, kind: type, lo: float, strict: bool = False) -> None:
    raw = env.get(var)
    if raw is None or raw == "":
        return
    try:
        value = kind(raw)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value > lo if strict else value >= lo)
    if not ok:
        what = "an integer" if kind is int else "a number"
        bound = f"> {lo:g}" if strict else f">= {lo:g}"
        raise SettingError(f"{_name(var)}={raw!r}: must be {what} {bound}")


def _endpoints(env: Mapping[str, str], var: str, many: bool = False) -> None:
    raw = env.get(var)
    if not raw:
        return
    items = [a.strip() for a in raw.split(",")] if many else [raw]
    for item in items:
        if not _ENDPOINT.fullmatch(item) or (item.startswith("tcp://") and not _port_ok(item)):
            raise SettingError(
                f"{_name(var)}={raw!r}: {item!r} is not a ZeroMQ endpoint (e.g. tcp://127.0.0.1:5555, tcp://0.0.0.0:5555)"
            )


def _name(var: str) -> str:
    """How a message names a setting: `$VAR` for a variable, the flag as given otherwise."""
    return f"${var}" if var.startswith("LATENTWIRE_") else var


def _port_ok(endpoint: str) -> bool:
    port = endpoint.rsplit(":", 1)[1]
    return port == "*" or 0 < int(port) < 65536
