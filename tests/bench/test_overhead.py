"""The messaging-overhead breakdown: the parts it reports add up from the timings every reply carries."""

from __future__ import annotations

import pytest

from latentwire.bench.live import overhead_s, stages
from latentwire.bench.overhead import _cpu_seconds, breakdown


def _row(e2e_client: float, e2e: float, encode: float, frame: float, receivers: dict[str, tuple]) -> dict:
    """An `Answer.to_row()` shape: client e2e, the arbiter's durations, each receiver's (rtt, adapt, generate)."""
    durations = {"e2e": e2e, "sender.encode": encode, "sender.frame": frame}
    rec = {
        m: {"durations": {"rtt": rtt, "decode": 0.0002, "adapt": a, "generate": g, "total": 0.0002 + a + g}}
        for m, (rtt, a, g) in receivers.items()
    }
    return {"ok": True, "e2e_s": e2e_client, "durations": durations, "receivers": rec}


def test_parts_come_from_the_slowest_receiver():
    row = _row(0.0110, 0.0100, 0.002, 0.0005, {"a": (0.0095, 0.001, 0.005), "b": (0.0080, 0.001, 0.004)})
    b = breakdown([row])
    assert b["client_arbiter"]["p50_ms"] == pytest.approx(1.0)
    assert b["arbiter_after_last_reply"]["p50_ms"] == pytest.approx(0.5)
    # hops: the slowest receiver's rtt less its own work and the sender's
    assert b["hops"]["p50_ms"] == pytest.approx(9.5 - 6.2 - 2.0 - 0.5)
    assert b["receiver_non_model"]["p50_ms"] == pytest.approx(0.2)
    # overhead: end to end less the encoder and the slowest model work
    assert overhead_s(row) == pytest.approx(0.0110 - 0.002 - 0.006)
    st = stages([row, {**row, "ok": False}])
    assert st["sender_encode_p50_s"] == pytest.approx(0.002)
    assert st["slowest_receiver_model_p50_s"] == pytest.approx(0.006)
    assert stages([]) == {}


def test_cpu_seconds_names_this_process():
    cpu = _cpu_seconds()
    assert cpu["client"] > 0 and set(cpu) <= {"client", "sender", "receiver", "arbiter"}
