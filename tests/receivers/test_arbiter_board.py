"""The arbiter's join under hostile or failing peers (no sockets): counters stay in range, state stays bounded,
answers are flagged degraded whenever fewer receivers answered than are configured, and only known peers count."""

from __future__ import annotations

from latentwire.protocol import Ask, ErrorReply, Heartbeat, JointReply, Reply, encode_frame
from latentwire.receivers import board
from latentwire.receivers.board import Board

FP = "f" * 64
SENDER_INFO = {"fingerprint": FP, "models": "llama,qwen", "receivers": 2}


def _board(timeout: float = 10.0) -> Board:
    b = Board("arb", timeout=timeout, dead_after=4.0)
    _beat(b, 0.0)
    return b


def _beat(b: Board, t: float, models: tuple[str, ...] = ("llama", "qwen"), sender: str = "s1") -> None:
    b.heartbeat(Heartbeat("", sender, "sender", "alive", SENDER_INFO), t, route=sender.encode(), role="sender")
    for m in models:
        b.heartbeat(Heartbeat("", f"r-{m}", "receiver", "alive", {"model": m, "fingerprint": FP}), t, role="receiver")


def _open(b: Board, now: float = 0.0, rid: str = "c-1", report: dict | None = None):
    p, sender = b.open((b"client",), Ask(rid, "client", "Who?", "Ada wrote it."), 100, now)
    assert sender is not None
    info = {"request": 150, "payload": 128, "fanout": 300, "reached": 2} if report is None else report
    b.on_sender(Heartbeat(p.rid, sender.pid, "sender", "sent", info), route=sender.route)
    return p


def _reply(p, model: str, answer: str = "Ada", sender: str | None = None) -> Reply:
    return Reply(p.rid, sender or f"r-{model}", model, answer, -0.5, {"generate": 0.1})


def test_repeated_report_with_int64_max_bytes_is_ignored_and_the_request_answered() -> None:
    b = _board()
    p = _open(b)
    huge = {"request": 2**63 - 1, "fanout": 2**63 - 1, "reached": 2}
    assert b.on_sender(Heartbeat(p.rid, "s1", "sender", "sent", huge), route=b"s1") is None  # a second report
    assert b.on_sender(Heartbeat(p.rid, "s2", "sender", "sent", huge), route=b"s2") is None  # not its sender
    b.on_receiver(_reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.nbytes["request"] == 150 and j.degraded == 0
    encode_frame(j)
    assert b.stats["duplicate"] == 1 and b.stats["forged"] == 1


def test_first_report_with_impossible_counts_keeps_the_request() -> None:
    b = _board()
    p = _open(b, report={"request": 2**63 - 1, "payload": -5, "reached": 2**40, "encode_s": 0.01})
    assert b.stats["bad_report"] == 1 and "request" not in p.nbytes
    b.on_receiver(_reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.durations["sender.encode"] == 0.01


def test_finish_never_raises_it_answers_internal() -> None:
    b = _board()
    p = _open(b)
    b.on_receiver(_reply(p, "llama"), 90, 0.1)
    p.nbytes["replies"] = 2**64  # anything that cannot become a frame
    e = b.finish(p, 0.2)
    assert isinstance(e, ErrorReply) and e.code == "internal" and e.rid == "c-1"
    assert b.stats["internal_error"] == 1 and not b.pending


def test_peers_and_counters_stay_bounded() -> None:
    b = _board()
    for i in range(5_000):  # unique ids, unique error codes, unknown roles
        t = 10.0 + i * 0.01
        b.heartbeat(Heartbeat("", f"x{i}", "receiver", "alive", {"model": f"m{i}"}), t, role="receiver")
        b.heartbeat(Heartbeat("", f"y{i}", "sender", "alive"), t, route=b"y", role="sender")
        b.heartbeat(Heartbeat("", f"z{i}", f"role{i}", "alive"), t, role="receiver")
        b.on_receiver(ErrorReply(f"nope{i}", f"x{i}", f"code{i}", "x"), 10, t)
    assert len(b.peers) <= 2 * board.MAX_PEERS
    assert len(b.stats) < 20, sorted(b.stats)
    assert b.stats["error.other"] == 5_000 and b.stats["bad_role"] == 5_000
    b.expire(10.0 + 50.0 + board.PEER_MEMORY_S + 1)
    assert b.peers == {}


def test_answers_flagged_degraded_when_fewer_receivers_than_configured() -> None:
    b = _board()
    _beat(b, 5.0, models=("qwen",))  # llama silent since t=0: past the liveness window at t=5
    p = _open(b, now=5.0)
    assert p.expected == {"qwen"}
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 5.1), 5.1)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["llama"].startswith("down")
    assert b.status(5.1).info["configured"] == 2


def test_heartbeats_only_from_their_own_socket_and_forged_replies_ignored() -> None:
    b = _board()
    assert b.heartbeat(Heartbeat("", "fake", "sender", "alive"), 0.0, role="receiver") is None  # on replies socket
    assert [s.pid for s in b.alive("sender", 0.0)] == ["s1"]
    p = _open(b)
    assert b.on_receiver(_reply(p, "qwen", sender="stranger"), 90, 0.1) is None  # no such receiver
    assert b.on_receiver(_reply(p, "qwen", sender="r-llama"), 90, 0.1) is None  # llama answering as qwen
    assert b.stats["forged"] == 2 and not p.replies


def test_receiver_outside_the_checkpoint_or_of_another_checkpoint_is_not_ready() -> None:
    b = _board()
    evil = {"model": "evil", "fingerprint": FP}
    other = {"model": "llama", "fingerprint": "0" * 64}
    b.heartbeat(Heartbeat("", "r-evil", "receiver", "alive", evil), 0.0, role="receiver")
    b.heartbeat(Heartbeat("", "r-llama2", "receiver", "alive", other), 0.0, role="receiver")
    st = b.status(0.0).info
    assert st["receivers"] == "llama,qwen" and st["n_receivers"] == 2
    assert "evil: not a model of checkpoint" in st["mismatch"] and "serves checkpoint 000000000000" in st["mismatch"]
    p = _open(b)
    assert p.expected == {"llama", "qwen"}


def test_sender_vanishing_before_its_report_sends_the_request_again() -> None:
    b = _board()
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender.pid == "s1"
    _beat(b, 3.0, sender="s2")  # s1 goes silent; a restarted sender comes up under a new id
    assert b.due(5.0) == [] and p.sender == "" and b.stats["redispatched"] == 1
    (w,) = b.waiting()
    assert b.assign(w, 5.0).pid == "s2"
    b.on_sender(Heartbeat(p.rid, "s2", "sender", "sent", {"reached": 2}), route=b"s2")
    b.on_receiver(_reply(p, "llama"), 90, 5.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 5.2), 5.2)
    assert isinstance(j, JointReply) and j.degraded == 0


def test_request_waits_for_a_restarting_sender_then_fails_clearly() -> None:
    b = _board(timeout=100.0)
    _beat(b, 5.0)
    b.peers["s1"].last_seen = 0.0  # the sender went silent (it is restarting); receivers are fine
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 5.0)
    assert sender is None and p.failure is None and b.waiting() == [p]
    (late,) = b.due(5.0 + board.SENDER_WAIT_S)
    e = b.finish(late, 5.0 + board.SENDER_WAIT_S)
    assert isinstance(e, ErrorReply) and e.code == "no_sender"


def test_every_receiver_refusing_for_the_same_reason_says_which() -> None:
    b = _board()
    p = _open(b)
    b.on_receiver(ErrorReply(p.rid, "r-llama", "too_large", "slot of 9000 tokens, the cap is 4096"), 60, 0.1)
    e = b.finish(b.on_receiver(ErrorReply(p.rid, "r-qwen", "too_large", "slot of 9100 tokens"), 60, 0.2), 0.2)
    assert isinstance(e, ErrorReply) and e.code == "too_large" and "4096" in e.message


def test_degraded_judged_against_the_configuration_while_the_sender_restarts() -> None:
    b = _board(timeout=100.0)
    _beat(b, 5.0, models=("llama",))  # qwen down since t=0
    b.peers["s1"].last_seen = 0.0  # the sender is restarting too: the request waits for it
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 5.0)
    assert sender is None and p.expected == {"llama"}
    _beat(b, 6.0, models=("llama",), sender="s2")
    (w,) = b.waiting()
    assert b.assign(w, 6.0).pid == "s2"
    b.on_sender(Heartbeat(p.rid, "s2", "sender", "sent", {"reached": 1}), route=b"s2")
    j = b.finish(b.on_receiver(_reply(p, "llama"), 90, 6.1), 6.1)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["qwen"].startswith("down")
