"""The Board under peers that lie: forged receiver heartbeats (plain TCP: anyone may push to the replies socket)
never delay an answer, change a pick or lock a real receiver out; a receiver counts once it answered; clients get a
fair share of the in-flight window."""

from __future__ import annotations

from boardkit import FP, beat, open_ask, prove, proven_board, reply, sent

from latentwire.arbiter import board
from latentwire.arbiter.board import Board
from latentwire.calibration import Calibration
from latentwire.protocol import Ask, Heartbeat, JointReply

# ---- forged heartbeats (plain TCP: anyone may push to the replies socket) ----


def _forge(b: Board, t: float, n: int, model: str = "llama", tag: str = "f", calibration: dict | None = None) -> None:
    """`n` receiver heartbeats under made-up ids: a process that never answers a request."""
    for i in range(n):
        forged = Heartbeat("", f"{tag}{i}", "receiver", "alive", {"model": model, "fingerprint": FP}, calibration or {})
        b.roster.heartbeat(forged, t, role="receiver")


def test_a_forged_heartbeat_never_delays_a_degraded_answer() -> None:
    b = proven_board(timeout=60.0)
    beat(b, 5.0, models=("qwen",))  # the real llama died at t=0
    _forge(b, 5.0, 1)  # someone announces a llama that will never answer
    p = open_ask(b, now=5.0)
    assert p.expected == {"qwen"}
    done = b.on_receiver(reply(p, "qwen"), 90, 5.2)
    assert done is p  # answered now, not at the deadline a minute later
    j = b.finish(p, 5.2)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["llama"].startswith("unproven"), j.errors


def test_a_forged_heartbeat_cannot_change_the_calibration_of_the_pick() -> None:
    b = proven_board(qwen={"latent": (1.0, 0.0)})
    _forge(b, 1.0, 1, model="qwen", calibration={"latent": (50.0, 50.0)})
    assert b.roster.calibration("qwen") == Calibration(1.0, 0.0)


def test_forged_heartbeats_never_lock_a_real_receiver_out() -> None:
    b = proven_board(timeout=60.0)
    for t in (5.0, 5.5):  # the real llama died at t=0; 64 made-up ones keep beating
        beat(b, t, models=("qwen",))
        _forge(b, t, board.MAX_PEERS)
    real = Heartbeat("", "r-llama-2", "receiver", "ready", {"model": "llama", "fingerprint": FP})
    assert b.roster.heartbeat(real, 6.0, role="receiver") is not None  # the restarted llama gets a seat
    _forge(b, 6.2, board.MAX_PEERS, tag="g")  # ever new made-up ids
    p = open_ask(b, now=6.5)
    b.on_receiver(reply(p, "qwen"), 90, 7.0)  # the sender fanned it out to the real llama too: it answers
    b.on_receiver(reply(p, "llama", sender="r-llama-2"), 90, 7.0)
    b.roster.heartbeat(real, 7.0, role="receiver")
    _forge(b, 7.2, 2 * board.MAX_PEERS, tag="h")
    assert "r-llama-2" in b.roster.peers
    beat(b, 7.5, models=("qwen",))
    assert open_ask(b, now=7.5, rid="c-2").expected == {"llama", "qwen"}
    assert len(b.roster.peers) <= 2 * board.MAX_PEERS


def test_a_receiver_counts_once_it_answered_a_probe() -> None:
    b = Board("arb", timeout=10.0, dead_after=4.0)
    beat(b, 0.0)  # both announce themselves; neither has answered anything yet
    st = b.status(0.0)
    assert st.status == "waiting" and st.info["n_receivers"] == 0 and st.info["unproven"] == "llama,qwen"
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_receivers" and "being probed" in p.failure.message
    b.finish(p, 0.0)
    prove(b, 0.1)
    assert b.probe(10.0) is None  # nobody left to prove
    st = b.status(0.2)
    assert st.status == "ready" and st.info["receivers"] == "llama,qwen" and "unproven" not in st.info
    assert st.info["inflight"] == 0 and b.stats["probes"] == 1 and b.stats["served"] == 0


def test_probes_go_one_at_a_time_and_a_late_answer_still_proves() -> None:
    b = proven_board(timeout=60.0)
    beat(b, 5.0, models=("qwen",))  # llama died at t=0 and comes back under a new id
    real = Heartbeat("", "r-llama-2", "receiver", "ready", {"model": "llama", "fingerprint": FP})
    b.roster.heartbeat(real, 5.0, role="receiver")
    p, sender = b.probe(5.0)
    assert p.expected == {"llama"} and b.probe(5.0 + 2 * board.PROBE_EVERY_S) is None  # one in flight at a time
    b.on_sender(sent(p.rid, sender.pid), route=sender.route)
    assert b.due(5.0 + board.PROBE_TIMEOUT_S - 0.1) == []  # a probe waits for the unproven, not for the live
    (late,) = b.due(5.0 + board.PROBE_TIMEOUT_S)
    assert b.finish(late, 5.0 + board.PROBE_TIMEOUT_S) is None
    assert b.on_receiver(reply(p, "llama", sender="r-llama-2"), 10, 16.0) is None and b.stats["late"] == 1
    beat(b, 16.0, models=("qwen",))
    b.roster.heartbeat(real, 16.0, role="receiver")
    assert {q.pid for q in b.roster.receivers(16.0).ok} == {"r-llama-2", "r-qwen"} and b.probe(16.0) is None


# ---- fair admission: a fair share of the in-flight window per client ----

FLOODER, POLITE = (b"flooder",), (b"polite", b"")  # ROUTER envelopes: a DEALER's identity, a REQ's


def _ask(b: Board, client: tuple[bytes, ...], now: float) -> bool:
    """Ask the way `serve` does: admitted unless the Board says why not."""
    if b.busy(client):
        return False
    b.open(client, Ask(f"q-{now}", "client", "Who?", "Ada."), 10, now)
    return True


def test_a_polite_client_is_admitted_while_another_floods() -> None:
    b = Board("arb", timeout=60.0, dead_after=4.0, max_inflight=16)
    beat(b, 0.0)
    prove(b, 0.0)
    polite = admitted = flooder_most = 0
    t = 0.0
    for step in range(1, 1201):  # 60 s: the system finishes 20 requests a second, the flooder asks 200 times
        t = step * 0.05
        if step % 20 == 0:
            beat(b, t)
            polite += 1
            admitted += _ask(b, POLITE, t)
        oldest = next(iter(b.pending.values()), None)
        if oldest is not None:
            b.finish(oldest, t)
        for _ in range(10):
            _ask(b, FLOODER, t)
        flooder_most = max(flooder_most, sum(p.client == FLOODER for p in b.pending.values()))
        assert len(b.pending) <= 16
    assert admitted >= 0.95 * polite, (admitted, polite)
    assert flooder_most >= 16 // 3  # the flood was real: the flooder kept its share of the window in flight


def test_a_lone_client_keeps_a_share_free_for_the_next() -> None:
    b = proven_board()
    b.max_inflight = 8
    assert sum(_ask(b, FLOODER, 0.1) for _ in range(20)) == 4  # half the window: the rest is for newcomers
    assert "fair share" in b.busy(FLOODER)
    assert _ask(b, POLITE, 0.1) and b.status(0.1).info["clients"] == 2
    assert "fair share" in b.busy(FLOODER)  # two clients asking: a third of the window each, one third free
    for p in [p for p in b.pending.values() if p.client == POLITE]:
        b.finish(p, 0.2)
    assert b.busy(FLOODER) and b.status(0.2).info["inflight"] == 4
