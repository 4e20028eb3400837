"""`latentwire up`: run every Procfile process, prefix their output, restart one that dies, stop all cleanly.

Why not honcho's Manager: it stops the whole system when one process exits, while a receiver that crashes
should be restarted alone and rejoin (the Procfile still runs unchanged under `honcho start`). Processes get
their own session, so a stop signal reaches a process and not its parent shell only.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from latentwire import net

RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
STOP_GRACE_S = 15.0  # a receiver may be mid-generation when asked to stop


@dataclass
class _Proc:
    name: str
    cmd: str
    popen: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN_S
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs the processes of a Procfile; `run` returns when stopped (signal or `stop.set()`)."""

    procs: dict[str, str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    restart: bool = True
    out: TextIO = sys.stdout
    _state: dict[str, _Proc] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:8s} | {line.rstrip()}\n")
            self.out.flush()

    def _spawn(self, p: _Proc) -> None:
        p.popen = subprocess.Popen(
            p.cmd,
            shell=True,
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

    def pids(self) -> dict[str, int]:
        return {n: p.popen.pid for n, p in self._state.items() if p.popen and p.popen.poll() is None}

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


def child_env(ckpt: Path | None, models: dict[str, str | None], threads: int = 1) -> dict[str, str]:
    """The environment of the processes: the venv's `latentwire` on PATH, the checkpoint, model specs."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if ckpt is not None:
        env["LATENTWIRE_CKPT"] = str(Path(ckpt).resolve())
    for role, spec in models.items():
        if spec:
            env[f"LATENTWIRE_{role.upper()}_MODEL"] = spec
    return env


def count_receivers(procs: dict[str, str]) -> int:
    return sum("latentwire receiver" in cmd for cmd in procs.values())


class LocalSystem:
    """The whole system (`latentwire up`) on free loopback ports, as a context manager (tests, bench).

    with LocalSystem(ckpt, llama="tiny-llama", qwen="tiny-qwen") as system, system.client() as c:
        print(c.ask("Who?", "Ada wrote it.").answer)
    """

    def __init__(
        self,
        ckpt: str | Path,
        *,
        llama: str | None = None,
        qwen: str | None = None,
        log: str | Path | None = None,
        timeout: float = 60.0,
        ready_timeout: float = 300.0,
    ) -> None:
        a, b, r, p1, p2 = _free_ports(5)
        self.env = {
            "LATENTWIRE_ARBITER": f"tcp://127.0.0.1:{a}",
            "LATENTWIRE_BACKEND": f"tcp://127.0.0.1:{b}",
            "LATENTWIRE_REPLIES": f"tcp://127.0.0.1:{r}",
            "LATENTWIRE_LLAMA": f"tcp://127.0.0.1:{p1}",
            "LATENTWIRE_QWEN": f"tcp://127.0.0.1:{p2}",
            "LATENTWIRE_TIMEOUT": str(timeout),
        }
        self.ckpt, self.models, self.ready_timeout = Path(ckpt), {"llama": llama, "qwen": qwen}, ready_timeout
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="latentwire-up-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return self.env["LATENTWIRE_ARBITER"]

    def start(self) -> LocalSystem:
        cmd = [str(Path(sys.executable).parent / "latentwire"), "up", "--ckpt", str(self.ckpt)]
        for role, spec in self.models.items():
            if spec:
                cmd += [f"--{role}", spec]
        env = {**child_env(None, {}), **self.env}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        with self.client() as c:
            c.wait_ready(self.ready_timeout, receivers=2)
        return self

    def client(self, **kw):
        from latentwire.client import Client

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
