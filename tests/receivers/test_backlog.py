"""The receiver's backlog (`Backlog`): which requests go into the next generate call, without any model."""

from __future__ import annotations

from latentwire.receivers.backlog import Backlog


def _fill(backlog: Backlog[str], items: list[tuple[str, str, int]]) -> None:
    for name, group, size in items:
        backlog.add(name, group, size)


def test_a_short_ask_read_after_long_ones_goes_into_the_next_call() -> None:
    backlog: Backlog[str] = Backlog(budget=8192)
    _fill(backlog, [(f"long{i}", "text", 6000) for i in range(3)])
    assert backlog.take() == ("text", ["long0"])  # one long request per call: 2 x 6000 is over the budget
    backlog.add("small", "latent", 24)  # arrives while long0 is generated
    assert backlog.take() == ("latent", ["small"])
    assert [backlog.take()[1] for _ in range(2)] == [["long1"], ["long2"]]
    assert not backlog and backlog.take() == (None, [])


def test_calls_are_shortest_first_within_the_budget_and_the_count() -> None:
    backlog: Backlog[str] = Backlog(budget=1000, max_count=2)
    _fill(backlog, [("a", "g", 400), ("b", "g", 100), ("c", "g", 100), ("d", "g", 100), ("e", "h", 50)])
    assert backlog.take() == ("h", ["e"])
    assert backlog.take() == ("g", ["b", "c"])  # at most two per call, in arrival order
    assert backlog.take() == ("g", ["a", "d"])  # 2 x 400 fits the budget
    assert len(backlog) == 0


def test_a_long_request_passed_over_too_often_goes_first() -> None:
    backlog: Backlog[str] = Backlog(budget=8192, max_passed=3)
    backlog.add("long", "text", 6000)
    taken = []
    for i in range(6):  # a steady stream of short asks, one arriving per call
        backlog.add(f"s{i}", "latent", 24)
        taken.append(backlog.take()[1])
    assert taken[:3] == [["s0"], ["s1"], ["s2"]] and ["long"] in taken[3:4], taken


def test_drain_empties_it_oldest_first() -> None:
    backlog: Backlog[str] = Backlog(budget=100)
    _fill(backlog, [("x", "g", 90), ("y", "g", 10)])
    assert backlog.drain() == ["x", "y"] and len(backlog) == 0


def test_long_requests_waiting_behind_older_long_ones_are_not_starved() -> None:
    """Waiting for older work is not being overtaken: a short ask still goes first after many long calls."""
    backlog: Backlog[str] = Backlog(budget=8192, max_passed=2)
    _fill(backlog, [(f"long{i}", "text", 6000) for i in range(6)])
    assert [backlog.take()[1] for _ in range(4)] == [["long0"], ["long1"], ["long2"], ["long3"]]
    backlog.add("small", "latent", 24)
    assert backlog.take() == ("latent", ["small"])


def test_a_call_run_while_a_longer_one_is_paused_takes_only_short_requests() -> None:
    backlog: Backlog[str] = Backlog(budget=8192)
    _fill(backlog, [("medium", "text", 300), ("long", "text", 600), ("small", "latent", 24)])
    assert backlog.take(at_most=20) == (None, [])
    assert backlog.take(at_most=400) == ("latent", ["small"])
    assert backlog.take(at_most=400) == ("text", ["medium"])  # alone: batched with "long" it would be too long
    assert backlog.take(at_most=400) == (None, []) and backlog.take() == ("text", ["long"])


def test_nothing_short_jumps_a_starved_request() -> None:
    backlog: Backlog[str] = Backlog(budget=8192, max_passed=1)
    _fill(backlog, [("long", "text", 6000), ("s0", "latent", 24)])
    assert backlog.take() == ("latent", ["s0"])  # "long" overtaken once: starved
    backlog.add("s1", "latent", 24)
    assert backlog.take(at_most=100) == (None, [])  # it goes next, not another short one
    assert backlog.take() == ("text", ["long"])
