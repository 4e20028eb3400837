"""`latentwire up`: run the processes (a sender, one receiver per model, an arbiter), prefix their output,
restart one that dies, stop all cleanly. The process list is generated from the receivers (`processes`): each
process is a `Command`, an argument list whose settings (`Setting`: a variable, else its default) are read from the
environment it starts in. `up` runs the lists themselves, no shell; the committed Procfile is the default list
written as shell lines (`Command.shell`), for `honcho start`.

Why not honcho's Manager: it stops the whole system when one process exits, while a receiver that crashes
should be restarted alone and rejoin (the Procfile still runs unchanged under `honcho start`). Processes get
their own session, so a stop signal reaches a process and not its parent shell only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from honcho.environ import parse_procfile

from latentwire.processes import net
from latentwire.processes.client import Client

RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
SETTING_ERROR_RC = 2  # a process that refused its settings (one line, exit 2): restarting it would refuse them again
STOP_GRACE_S = 15.0  # a receiver may be mid-generation when asked to stop


@dataclass(frozen=True)
class Setting:
    """An argument read where the process starts: `$var`, else its default (the parts joined by commas)."""

    var: str
    default: tuple[str | Setting, ...] = ()

    def value(self, env: Mapping[str, str]) -> str:
        return env.get(self.var) or ",".join(_value(d, env) for d in self.default)

    def shell(self) -> str:
        return f"${{{self.var}:-{','.join(_shell(d) for d in self.default)}}}"


Arg = str | Setting


def _value(arg: Arg, env: Mapping[str, str]) -> str:
    return arg.value(env) if isinstance(arg, Setting) else arg


def _shell(arg: Arg) -> str:
    return arg.shell() if isinstance(arg, Setting) else shlex.quote(arg)


@dataclass(frozen=True)
class Command:
    """One process: `latentwire [--debug] ROLE ARGS...`, its settings resolved when it starts."""

    role: str  # the subcommand: sender, receiver, arbiter (what `up` counts its receivers by)
    args: tuple[Arg, ...] = ()
    debug: bool = False

    def argv(self, env: Mapping[str, str]) -> list[str]:
        """The argument list, each setting read from `env` (the executable is found on its PATH)."""
        return ["latentwire", *(["--debug"] if self.debug else []), self.role, *(_value(a, env) for a in self.args)]

    def shell(self) -> str:
        """The Procfile line: what `argv` runs, each setting as `${VAR:-default}`."""
        return " ".join(["exec latentwire", *(["--debug"] if self.debug else []), self.role, *map(_shell, self.args)])


_SETTING = re.compile(r"\$\{(\w+)(?::-(.*))?\}|\$(\w+)")


def parse_command(line: str) -> Command:
    """A Procfile line (`[exec] latentwire [--debug] ROLE ARGS...`) as a Command; raises ValueError for another
    program, or a setting inside a longer argument (`up` runs no shell to expand it)."""
    words = shlex.split(line, posix=False)
    words = words[1:] if words[:1] == ["exec"] else words
    if not words or Path(words[0]).name != "latentwire":
        raise ValueError(f"{line!r}: `up` runs latentwire processes (`latentwire ROLE ...`)")
    debug = words[1:2] == ["--debug"]
    rest = words[2:] if debug else words[1:]
    if not rest or rest[0].startswith("-"):
        raise ValueError(f"{line!r}: no process role (sender, receiver, arbiter)")
    return Command(rest[0], tuple(_parse_arg(w) for w in rest[1:]), debug)


def _parse_arg(word: str) -> Arg:
    m = _SETTING.fullmatch(word)
    if m is None:
        if "$" in word:
            raise ValueError(f"{word!r}: a setting must be a whole argument (`${{VAR:-default}}`)")
        return shlex.split(word)[0] if word[:1] in "'\"" else word
    if m[3]:
        return Setting(m[3])
    return Setting(m[1], tuple(_parse_arg(part) for part in _top_level(m[2] or "")))


def _top_level(text: str) -> list[str]:
    """`text` split at the commas outside `${...}`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p for p in [*parts, text[start:]] if p]


@dataclass
class _Proc:
    name: str
    cmd: Command
    popen: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN_S
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs the processes of a Procfile; `run` returns when stopped (signal or `stop.set()`)."""

    procs: dict[str, Command]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    restart: bool = True
    out: TextIO = sys.stdout
    failed: str = ""  # the process that refused its settings, when one did (everything was then stopped)
    _state: dict[str, _Proc] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:8s} | {line.rstrip()}\n")
            self.out.flush()

    def _spawn(self, p: _Proc) -> None:
        p.popen = subprocess.Popen(
            p.cmd.argv(self.env),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        p.started, p.restart_at = time.monotonic(), None
        self.say("up", f"{p.name} started (pid={p.popen.pid})")
        threading.Thread(target=self._pipe, args=(p.name, p.popen), daemon=True).start()

    def _pipe(self, name: str, popen: subprocess.Popen) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            self.say(name, line)

    def run(self, stop: net.StopFlag, on_start: Callable[[], None] | None = None) -> int:
        self._state = {n: _Proc(n, c) for n, c in self.procs.items()}
        for p in self._state.values():
            self._spawn(p)
        if on_start:
            on_start()
        while not stop.wait(0.2):
            now = time.monotonic()
            for p in self._state.values():
                if p.restart_at is not None:
                    if now >= p.restart_at:
                        p.restarts += 1
                        self._spawn(p)
                    continue
                rc = p.popen.poll() if p.popen else None
                if rc is None:
                    continue
                if rc == SETTING_ERROR_RC:
                    self.failed = p.name
                    self.say("up", f"{p.name} refused its settings (rc={rc}, its error above); stopping everything")
                    stop.set()
                    break
                if not self.restart:
                    self.say("up", f"{p.name} exited (rc={rc}); stopping everything (--no-restart)")
                    stop.set()
                    break
                if now - p.started > 60:
                    p.backoff = RESTART_MIN_S  # it had been healthy: restart quickly
                self.say("up", f"{p.name} exited (rc={rc}); restarting in {p.backoff:.0f} s")
                p.restart_at = now + p.backoff
                p.backoff = min(RESTART_MAX_S, p.backoff * 2)
        return self.shutdown()

    def shutdown(self) -> int:
        """SIGTERM every process group, wait for them, SIGKILL what is left after STOP_GRACE_S."""
        live = {n: p.popen for n, p in self._state.items() if p.popen and p.popen.poll() is None}
        for name, popen in live.items():
            self.say("up", f"stopping {name} (pid={popen.pid})")
            _signal_group(popen.pid, signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        for name, popen in live.items():
            try:
                popen.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("up", f"{name} did not stop in {STOP_GRACE_S:.0f} s: killing it")
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
            self.say("up", f"{name} stopped (rc={popen.returncode})")
        return 0


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the group of a process we started in its own session


def child_env(ckpt: Path | None, receivers: Mapping[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    """The environment of the processes: the venv's `latentwire` on PATH, the checkpoint, receivers' model specs.

    Specs given here win over the environment (a flag beats a variable); receivers not given keep theirs."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if ckpt is not None:
        env["LATENTWIRE_CKPT"] = str(Path(ckpt).resolve())
    for name, spec in (receivers or {}).items():
        env[model_var(name)] = spec
    return env


def count_receivers(procs: Mapping[str, Command]) -> int:
    return sum(cmd.role == "receiver" for cmd in procs.values())


# ---- the process list: one sender, one receiver per entry, one arbiter ----

# The default checkpoint's three families; `--receiver NAME=SPEC` (repeated) replaces the list.
DEFAULT_RECEIVERS: dict[str, str] = {"gemma": "gemma", "llama": "llama", "qwen": "qwen"}
# torch threads per role, measured live (docs/EXPERIMENTS.md E20): the sender reads while the receivers wait for its
# frame and the receivers answer while it waits for the next ask, so the reading takes every core (0) and each
# receiver one
THREADS: dict[str, int] = {"sender": 0, "receiver": 1}
FIRST_RECEIVER_PORT = 5561  # receiver i binds FIRST_RECEIVER_PORT + i on loopback by default
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # what a Procfile process name may be (honcho's rule)
_SPEC = re.compile(r"[A-Za-z0-9_.,/:@+-]+")  # written unquoted into a shell line: no spaces, quotes or `$`
_RESERVED = ("sender", "arbiter", "up")  # the other processes' names
# LATENTWIRE_<NAME> must not be another setting's variable (LATENTWIRE_BACKEND, LATENTWIRE_CKPT, ...)
_TAKEN = frozenset(env for env, _ in net.ADDRESSES.values()) | {
    f"LATENTWIRE_{v}"
    for v in ("CKPT", "TIMEOUT", "CURVE", "CACHE", "DATA", "THREADS", "DEBUG", "N_RECEIVERS", "SENDER", "UP")
}
PROCFILE_HEADER = (
    "# One line per process: `latentwire up` (restarts a process that dies) and `honcho start` both run this list.\n"
    "# Generated by `latentwire procfile` (receivers: {receivers}; `--receiver NAME=SPEC` for others).\n"
    "# Models, checkpoint and addresses come from the environment (LATENTWIRE_CKPT, LATENTWIRE_<NAME>_MODEL, ...).\n"
)


def address_var(name: str) -> str:
    """The variable holding where receiver `name` binds: `qwen` -> LATENTWIRE_QWEN."""
    return "LATENTWIRE_" + name.upper().replace("-", "_")


def model_var(name: str) -> str:
    """The variable holding receiver `name`'s model spec: `qwen` -> LATENTWIRE_QWEN_MODEL."""
    return address_var(name) + "_MODEL"


def receiver_name(spec: str) -> str:
    """A process name for a model spec: its last path part, other characters than [A-Za-z0-9_-] as `-`."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(spec).name or spec).strip("-")
    return name or "receiver"


def parse_receivers(items: Iterable[str]) -> dict[str, str]:
    """`NAME=SPEC` (or a bare SPEC, named by `receiver_name`) items -> {name: spec}; raises ValueError clearly."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = (name.strip(), spec.strip()) if sep else (receiver_name(item.strip()), item.strip())
        if name in out:
            raise ValueError(f"receiver {item!r}: the name {name!r} is given twice")
        out[name] = spec
    return check_receivers(out)


def check_receivers(receivers: Mapping[str, str]) -> dict[str, str]:
    """Refuse names a Procfile or an environment variable cannot carry, and specs a shell line cannot."""
    seen: dict[str, str] = {}
    for name, spec in receivers.items():
        if not _NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(f"receiver name {name!r}: use letters, digits, `_` or `-`, and not {', '.join(_RESERVED)}")
        if address_var(name) in _TAKEN or address_var(name).endswith("_MODEL"):
            raise ValueError(f"receiver name {name!r}: {address_var(name)} is another setting's variable")
        if not _SPEC.fullmatch(spec):
            raise ValueError(f"receiver {name}={spec!r}: a model spec without spaces, quotes or `$`")
        if address_var(name) in seen:
            raise ValueError(f"receivers {seen[address_var(name)]!r} and {name!r} share {address_var(name)}")
        seen[address_var(name)] = name
    if not receivers:
        raise ValueError("no receivers: give at least one --receiver NAME=SPEC")
    return dict(receivers)


def processes(
    receivers: Mapping[str, str] | None = None,
    threads: Mapping[str, int] | None = None,
    engine: str = "auto",
    debug: bool = False,
) -> dict[str, Command]:
    """The process list for `receivers` ({name: model spec}): sender, one receiver each, arbiter.

    Each receiver's model and bind address can be overridden by LATENTWIRE_<NAME>_MODEL and LATENTWIRE_<NAME>;
    the sender fans out to those same addresses (or to $LATENTWIRE_RECEIVERS across hosts). `threads`: torch
    threads per role (`sender`, `receiver`; 0 = every core), `THREADS` for a role not given; `engine` runs the
    models of the sender and the receivers (`auto`: each process's own default); `debug` shows tracebacks."""
    receivers = check_receivers(DEFAULT_RECEIVERS if receivers is None else receivers)
    n = {**THREADS, **(threads or {})}
    engines = ("--engine", engine) if engine != "auto" else ()
    binds = {
        name: Setting(address_var(name), (f"tcp://127.0.0.1:{FIRST_RECEIVER_PORT + i}",))
        for i, name in enumerate(receivers)
    }
    fan_out = Setting("LATENTWIRE_RECEIVERS", tuple(binds.values()))
    procs = {"sender": Command("sender", ("--receivers", fan_out, "--threads", str(int(n["sender"])), *engines), debug)}
    for name, spec in receivers.items():
        model = Setting(model_var(name), (spec,))
        args = ("--model", model, "--bind", binds[name], "--threads", str(int(n["receiver"])), *engines)
        procs[name] = Command("receiver", args, debug)
    procs["arbiter"] = Command("arbiter", (), debug)
    return procs


def procfile_text(receivers: Mapping[str, str] | None = None) -> str:
    """The Procfile (honcho's format) of `processes(receivers)`; the committed Procfile is the default's."""
    receivers = check_receivers(DEFAULT_RECEIVERS if receivers is None else receivers)
    header = PROCFILE_HEADER.format(receivers=" ".join(f"{n}={s}" for n, s in receivers.items()))
    return header + "".join(f"{name}: {cmd.shell()}\n" for name, cmd in processes(receivers).items())


def read_procfile(path: str | Path | None = None) -> dict[str, Command]:
    """The process list of the Procfile at `path`; without one, the default list as `latentwire procfile`
    generates it (the committed Procfile is that text), so nothing is read from outside the package."""
    if path is None:
        return processes()
    path = Path(path)
    procs = parse_procfile(path.read_text()).processes
    if not procs:
        raise ValueError(f"{path}: no processes (lines `name: command`)")
    return {name: parse_command(line) for name, line in procs.items()}


class LocalSystem:
    """The whole system (`latentwire up`) on free loopback ports, as a context manager (tests, bench).

    with LocalSystem(ckpt, receivers={"llama": "tiny-llama", "qwen": "tiny-qwen"}) as system, system.client() as c:
        print(c.ask("Who?", "Ada wrote it.").answer)

    `receivers` is {process name: model spec} (default: DEFAULT_RECEIVERS); `llama=` and `qwen=` are shorthands
    that replace one entry. Each receiver binds its own free port (`receiver_address(name)`).
    """

    def __init__(
        self,
        ckpt: str | Path,
        receivers: Mapping[str, str] | None = None,
        *,
        llama: str | None = None,
        qwen: str | None = None,
        log: str | Path | None = None,
        timeout: float = 60.0,
        ready_timeout: float = 300.0,
        engine: str | None = None,
        threads: Mapping[str, int] | None = None,
    ) -> None:
        if engine:  # refused here, not after the ready timeout
            from latentwire.processes.settings import check_engine

            check_engine(engine)
        chosen = dict(DEFAULT_RECEIVERS if receivers is None else receivers)
        self.threads = {**THREADS, **(threads or {})}
        chosen.update({n: s for n, s in (("llama", llama), ("qwen", qwen)) if s})
        self.receivers = check_receivers(chosen)
        a, b, r, *ports = _free_ports(3 + len(self.receivers))
        self.env = {
            "LATENTWIRE_ARBITER": f"tcp://127.0.0.1:{a}",
            "LATENTWIRE_BACKEND": f"tcp://127.0.0.1:{b}",
            "LATENTWIRE_REPLIES": f"tcp://127.0.0.1:{r}",
            **{address_var(n): f"tcp://127.0.0.1:{p}" for n, p in zip(self.receivers, ports, strict=True)},
            "LATENTWIRE_TIMEOUT": str(timeout),
        }
        self.engine = engine or "auto"  # `auto`: the processes' own default
        self.ckpt, self.ready_timeout = Path(ckpt), ready_timeout
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="latentwire-up-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def receiver_address(self, name: str) -> str:
        """Where receiver `name` binds (a frame pushed there reaches it directly)."""
        return self.env[address_var(name)]

    @property
    def address(self) -> str:
        return self.env["LATENTWIRE_ARBITER"]

    def start(self) -> LocalSystem:
        cmd = [str(Path(sys.executable).parent / "latentwire"), "up", "--ckpt", str(self.ckpt)]
        for name, spec in self.receivers.items():
            cmd += ["--receiver", f"{name}={spec}"]
        cmd += [f"--{role}-threads={n}" for role, n in self.threads.items()]
        cmd += ["--engine", self.engine]
        env = {**child_env(None), **self.env}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        with self.client() as c:
            c.wait_ready(self.ready_timeout, receivers=len(self.receivers), on_wait=lambda _: self._running())
        return self

    def _running(self) -> None:
        """Raise if `up` has exited (e.g. a process refused its settings): it will never be ready."""
        if self.proc is not None and self.proc.poll() is not None:
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if "error" in x.lower()]
            why = lines[-1].strip() if lines else f"see {self.log}"
            raise RuntimeError(f"latentwire up exited (rc={self.proc.returncode}) before it was ready: {why}")

    def client(self, **kw: Any) -> Client:
        return Client(self.address, **kw)

    def pid(self, name: str) -> int:
        """The pid of the latest `name` process (from the supervisor's `started` lines)."""
        found = re.findall(rf"\| {re.escape(name)} started \(pid=(\d+)\)", self.log.read_text())
        if not found:
            raise KeyError(f"{name} has not started (see {self.log})")
        return int(found[-1])

    def stop(self) -> int:
        """SIGINT to `up` (it stops every process cleanly); returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(STOP_GRACE_S + 20)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def __enter__(self) -> LocalSystem:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(net.free_port())
    return sorted(ports)
