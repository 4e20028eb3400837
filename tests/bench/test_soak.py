"""The soak entry point (`python -m latentwire.bench.soak`) for 20 s on the tiny checkpoint: normal traffic beside
garbage, forged heartbeats, a flooding client, oversized asks, contexts over the sender's bounds, many identities and
rotating envelopes, asks past their deadline, a small ask beside long ones, and a receiver stopped and resumed; every
role's figures are printed and returned, nothing is lost, no process restarts, and the system answers in full at the
end."""

from __future__ import annotations

import pytest

from latentwire.bench import soak

ROLES = ("normal", "oversized", "flood", "contexts", "identities", "expired", "long", "small", "garbage", "forged")


@pytest.mark.slow
def test_a_short_soak_loses_nothing(tiny_trained, capsys: pytest.CaptureFixture[str]) -> None:
    result = soak.run(20, ckpt=tiny_trained[0])
    out = capsys.readouterr().out
    roles = result["roles"]
    assert set(roles) == set(ROLES), roles  # and no `errors` role: none of them failed
    assert all(roles[r]["lost"] == 0 for r in ROLES), roles
    assert roles["normal"]["answered"] > 0 and roles["normal"]["p50_s"] is not None
    assert roles["flood"]["failed"] > 0  # refused with `busy` over its fair share, answered all the same
    assert roles["oversized"]["failed"] > 0 and roles["garbage"]["answered"] == roles["garbage"]["sent"] > 0
    assert result["stops"] == 1 and roles["normal"]["degraded"] > 0  # the stopped receiver was missed meanwhile
    procs = result["processes"]
    assert all(p["restarts"] == 0 for p in procs.values()), procs
    # every process was sampled; the arbiter holds no model (no torch), so it stays far below every model process,
    # and its bounded book-keeping keeps it under 200 MiB through the flood
    peaks = {name: p["peak_rss_mb"] for name, p in procs.items()}
    assert None not in peaks.values(), peaks
    assert peaks["arbiter"] < 200 and all(peaks["arbiter"] < v for n, v in peaks.items() if n != "arbiter"), peaks
    assert roles["contexts"]["failed"] == roles["contexts"]["sent"] > 0  # too_large / bad_request, each answered
    assert roles["identities"]["answered"] == roles["identities"]["sent"] > 0
    assert roles["expired"]["failed"] == roles["expired"]["sent"] > 0
    assert roles["small"]["answered"] > 0 and roles["long"]["answered"] > 0
    arbiter = result["arbiter"]
    assert arbiter["expired_unsent"] > 0 and arbiter["bad_envelope"] > 0, arbiter
    assert result["final_ok"] and result["arbiter"]["late_reply"] == 0, result["arbiter"]
    assert result["arbiter"]["internal_error"] == 0
    lines = out.splitlines()
    assert lines[1].split() == ["role", "sent", "lost", "failed", "degraded", "p50_s", "p95_s", "peak_rss_mb"]
    for name in (*ROLES, *soak.PROCESSES):
        assert any(line.split()[0] == name for line in lines[2:]), out


def test_seconds_override_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    monkeypatch.setattr(soak, "run", lambda seconds, ckpt, seed: seen.append(seconds) or {})
    soak.main(["--minutes", "2"])
    soak.main(["--minutes", "2", "--seconds", "20"])
    assert seen == [120.0, 20.0]
