"""Chaos: a receiver stopped (SIGSTOP) under a steady load of text asks, then resumed (SIGCONT), with the whole system
live on tiny models (`latentwire up` on free loopback ports).

While it is stopped the sender keeps fanning frames out to it (its socket is still connected), for requests that the
arbiter closes without it once it has been silent for net.DEAD_AFTER_S. Resumed, it must drop that backlog (each
frame answered `expired`, none generated) instead of answering every frame late and keeping the asks that wait for
it now behind them. Checked: no ask is lost or left hanging (each gets an answer, `degraded` while the receiver is
away), no reply is generated for a request that had closed, and once it is back, full answers within twice the
normal latency.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import tiny_system

from latentwire.processes import net
from latentwire.processes.client import Answer
from latentwire.receivers.receiver import RETURN_GRACE_S

pytestmark = pytest.mark.slow  # whole-system or packaging tests: `make test-fast` skips them

BASE_S, STOP_S, AFTER_S = 4.0, net.DEAD_AFTER_S + 1.5, 4.0  # stopped long enough to be taken for dead
CONTEXT = "Ada Lovelace wrote the notes on the Analytical Engine in 1843. " * 48  # ~3 KB: the slowest backlog


@pytest.fixture(scope="module")
def system(tiny_ckpt: Path, tmp_path_factory):
    s = tiny_system(tiny_ckpt, tmp_path_factory.mktemp("chaos"))
    with s:
        yield s


def _items(seconds: float) -> Iterator[tuple[int, str, str]]:
    """Asks for `seconds` from the first one: the client keeps a window of them in flight, a steady load."""
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        yield i, f"Who wrote note {i}?", CONTEXT
        i += 1


def _stop_and_resume(pid: int, marks: dict[str, float]) -> None:
    """SIGSTOP `pid` after BASE_S, SIGCONT it STOP_S later (also when the test fails meanwhile)."""
    time.sleep(BASE_S)
    marks["stop"] = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(STOP_S)
    finally:
        os.kill(pid, signal.SIGCONT)
        marks["cont"] = time.monotonic()


def _counts(info: dict, before: dict) -> dict[str, int]:
    keys = ("late", "late_reply", "error.expired", "degraded", "served", "failed")
    return {k: int(info.get(k, 0)) - int(before.get(k, 0)) for k in keys}


def test_a_stopped_receiver_drops_its_backlog_and_is_back_at_once(system) -> None:
    with system.client() as c:
        assert c.ask("Who wrote it?", CONTEXT, path="text", max_new_tokens=4).ok  # warm
        before = c.status().info
        marks: dict[str, float] = {}
        chaos = threading.Thread(target=_stop_and_resume, args=(system.pid("llama"), marks))
        done: list[tuple[float, Answer]] = []  # (completed at, answer)
        start = time.monotonic()
        chaos.start()
        try:
            for a in c.ask_many(_items(BASE_S + STOP_S + AFTER_S), window=2, path="text", max_new_tokens=4):
                done.append((time.monotonic(), a))
        finally:
            chaos.join()
        took = time.monotonic() - start
        counts = _counts(c.status().info, before)

    # nothing lost, nothing hangs: every ask answered exactly once, with an answer (degraded while llama is away)
    answers = [a for _, a in done]
    assert sorted(a.tag for a in answers) == list(range(len(answers))) and took < BASE_S + STOP_S + AFTER_S + 25
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok]
    degraded = [a for a in answers if a.degraded]
    assert degraded and all(set(a.reply.answers) == {"tiny-qwen"} for a in degraded)  # each one missed llama alone

    # its backlog was dropped, not served: no reply came after its request had closed
    assert counts["error.expired"] >= 1, counts
    assert counts["late_reply"] == 0 and counts["late"] <= counts["error.expired"], counts

    # full answers again at once: asks sent once it is back (its heartbeat out, the grace for work opened meanwhile
    # over) are all answered in full, none kept behind a backlog: at most twice the normal latency, the first too
    normal = statistics.median(a.latency_s for t, a in done if t < marks["stop"])
    back = [a for t, a in done if t - a.latency_s > marks["cont"] + RETURN_GRACE_S + net.HEARTBEAT_S]
    assert back and not [a.reply.errors for a in back if a.degraded]
    assert back[0].latency_s <= 2 * normal and statistics.median(a.latency_s for a in back) <= 2 * normal, (
        [round(a.latency_s, 2) for a in back],
        normal,
    )
