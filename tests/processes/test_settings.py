"""Settings from the environment are checked where a process starts: a malformed one is one line naming the
variable, exit code 2, within seconds and before any model or socket; `up` never restarts a process that refused
its settings, and `LocalSystem` refuses an unknown engine at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from latentwire.processes import net, settings
from latentwire.processes.settings import SettingError
from latentwire.processes.up import Command, LocalSystem, Supervisor, child_env

LATENTWIRE = str(Path(sys.executable).parent / "latentwire")

BAD = [
    ("LATENTWIRE_THREADS", "many"),
    ("LATENTWIRE_THREADS", "-1"),  # 0 is every core
    ("LATENTWIRE_TIMEOUT", "-1"),
    ("LATENTWIRE_TIMEOUT", "nan"),
    ("LATENTWIRE_N_RECEIVERS", "two"),
    ("LATENTWIRE_ARBITER", "127.0.0.1:5555"),
    ("LATENTWIRE_BACKEND", "tcp://127.0.0.1:99999"),
    ("LATENTWIRE_RECEIVERS", "tcp://127.0.0.1:5561,tcp://nowhere"),
    ("LATENTWIRE_CURVE", "/nonexistent/keys"),
]


@pytest.mark.parametrize(("var", "value"), BAD)
def test_a_malformed_setting_is_named(var, value):
    with pytest.raises(SettingError, match=rf"^\${var}="):
        settings.check(env={var: value})


@pytest.mark.parametrize("value", ["bogus", " float32", "FLOAT32"])
def test_an_unknown_engine_is_refused_by_the_engine_registry(value):
    settings.check(env={"LATENTWIRE_ENGINE": value})  # only processes that load a model read it
    with pytest.raises(SettingError, match=r"^\$LATENTWIRE_ENGINE=.*unknown engine .*choose one of auto, float32"):
        settings.check(engine=True, env={"LATENTWIRE_ENGINE": value})


def test_good_settings_pass():
    good = {
        "LATENTWIRE_THREADS": "2",
        "LATENTWIRE_TIMEOUT": "2.5",
        "LATENTWIRE_ARBITER": "tcp://0.0.0.0:5555",
        "LATENTWIRE_RECEIVERS": "tcp://hostb:5562, tcp://127.0.0.1:5561",
        "LATENTWIRE_REPLIES": "ipc:///tmp/replies",
        "LATENTWIRE_ENGINE": "float32",
    }
    settings.check(engine=True, env=good)


def _run(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if k != "LATENTWIRE_DEBUG"} | env
    t0 = time.monotonic()
    out = subprocess.run([LATENTWIRE, *args], capture_output=True, text=True, env=full, timeout=60)
    return out, time.monotonic() - t0


@pytest.mark.parametrize(
    ("args", "var", "value"),
    [
        (["receiver", "--model", "tiny-qwen"], "LATENTWIRE_ENGINE", "bogus"),
        (["receiver", "--model", "tiny-qwen"], "LATENTWIRE_ENGINE", " float32"),
        (["sender"], "LATENTWIRE_ENGINE", "bogus"),
        (["up", "--receiver", "q=tiny-qwen"], "LATENTWIRE_ENGINE", "bogus"),
        (["arbiter"], "LATENTWIRE_TIMEOUT", "soon"),
        (["arbiter"], "LATENTWIRE_ARBITER", "localhost"),
        (["sender"], "LATENTWIRE_THREADS", "x"),
    ],
)
def test_each_process_refuses_a_bad_setting_in_one_line(args, var, value):
    out, took = _run(args, **{var: value})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: ${var}="), out.stderr
    assert took < 15.0  # ~2 s on an idle core (torch's import for the engine check is most of it)


def test_receiver_bind_flag_is_checked():
    out, _ = _run(["receiver", "--model", "tiny-qwen", "--bind", "tcp://127.0.0.1"])
    assert out.returncode == 2 and out.stderr.startswith("error: --bind="), out.stderr


def test_local_system_refuses_an_unknown_engine_at_once(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(SettingError, match="unknown engine"):
        LocalSystem(tmp_path, receivers={"q": "tiny-qwen"}, engine="bogus")
    assert time.monotonic() - t0 < 5.0


def test_up_stops_instead_of_restarting_a_process_that_refused_its_settings(tmp_path):
    log = tmp_path / "up.log"
    with log.open("w") as out:
        ports = {k: f"tcp://127.0.0.1:{net.free_port()}" for k in ("--arbiter", "--backend", "--replies")}
        ok = Command("arbiter", tuple(a for kv in ports.items() for a in kv))
        sup = Supervisor({"bad": Command("arbiter", ("--timeout", "soon")), "ok": ok}, env=child_env(None), out=out)
        stop = net.StopFlag(install=False)
        t = threading.Thread(target=sup.run, args=(stop,), daemon=True)
        t0 = time.monotonic()
        t.start()
        t.join(20)
    assert not t.is_alive() and time.monotonic() - t0 < 20
    text = log.read_text()
    assert sup.failed == "bad" and "bad refused its settings" in text
    assert text.count("bad started") == 1 and "restarting" not in text
