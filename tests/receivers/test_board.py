"""The arbiter's join without sockets (`Board`): the pick on calibrated scores, timeouts and degraded answers,
and its behaviour under hostile or failing peers: counters stay in range, state stays bounded, and only known
peers count."""

from __future__ import annotations

import pytest

from latentwire.protocol import Ask, ErrorReply, Heartbeat, JointReply, Reply, Sent, encode_frame
from latentwire.receivers import board
from latentwire.receivers.board import Board, agree, pick
from latentwire.receivers.calibration import Calibration
from latentwire.receivers.calibration import pick as calibration_pick

FP = "f" * 64
SENDER_INFO = {"fingerprint": FP, "models": "llama,qwen", "receivers": 2}


def _hb(pid: str, role: str, model: str = "", status: str = "ready", **cal: tuple[float, float]) -> Heartbeat:
    """A heartbeat; a receiver's announces its model, the checkpoint FP and its calibration per path."""
    if role == "sender":
        return Heartbeat("", pid, role, status, SENDER_INFO)
    return Heartbeat("", pid, role, status, {"model": model, "fingerprint": FP}, cal)


def _sent(rid: str, sender: str, reached: int = 2, request: int = 150, payload: int = 128, **kw: float) -> Sent:
    """A sender's report: a frame of `request` bytes (`payload` of them payload) queued to `reached` receivers."""
    header = request - payload
    return Sent(rid, sender, request, header, payload, 0, request * reached, reached, max(2, reached), kw)


def _board(timeout: float = 10.0, **cals: dict) -> Board:
    """Sender s1 and receivers r-llama, r-qwen, all heard at t=0 (with `cals`: {model: calibration}) and proven."""
    b = Board("arb", timeout=timeout, dead_after=4.0)
    _beat(b, 0.0, cals=cals)
    _prove(b, 0.0)
    return b


def _prove(b: Board, t: float, models: tuple[str, ...] = ("llama", "qwen")) -> None:
    """What the arbiter does for receivers that only announced themselves: it probes them, they answer."""
    p, sender = b.probe(t)
    assert p.ask.mode == "text" and p.ask.max_new_tokens == 1 and not p.client
    b.on_sender(_sent(p.rid, sender.pid, len(models)), route=sender.route)
    for m in models:
        done = b.on_receiver(_reply(p, m), 10, t)
    assert done is p and b.finish(p, t) is None  # nobody to answer


def _beat(
    b: Board, t: float, models: tuple[str, ...] = ("llama", "qwen"), sender: str = "s1", cals: dict | None = None
) -> None:
    b.heartbeat(_hb(sender, "sender"), t, route=sender.encode(), role="sender")
    for m in models:
        b.heartbeat(_hb(f"r-{m}", "receiver", m, **(cals or {}).get(m, {})), t, role="receiver")


def _open(b: Board, now: float = 0.0, rid: str = "c-1", report: dict | None = None, mode: str = "latent"):
    p, sender = b.open((b"client",), Ask(rid, "client", "Who?", "Ada wrote it.", mode=mode), 100, now)
    assert sender is not None
    assert b.on_sender(_sent(p.rid, sender.pid, **(report or {})), route=sender.route) is None
    return p


def _reply(p, model: str, answer: str = "Ada", score: float = -0.5, sender: str | None = None) -> Reply:
    return Reply(p.rid, sender or f"r-{model}", model, answer, score, {"generate": 0.1})


# ---- the join and the pick ----


def test_join_two_replies_picks_on_calibrated_score() -> None:
    # raw scores favour llama, but qwen's calibration says it is more often right at that score
    b = _board(llama={"latent": (1.0, -3.0)}, qwen={"latent": (1.0, 0.0)})
    p = _open(b)
    assert b.on_receiver(_reply(p, "llama", "Ada Lovelace", -0.1), 90, 0.2) is None
    done = b.on_receiver(_reply(p, "qwen", "ada lovelace.", -0.5), 90, 0.3)
    assert done is p
    j = b.finish(p, 0.3)
    assert isinstance(j, JointReply)
    assert (j.model, j.answer, j.rid, j.degraded, j.agreement) == ("qwen", "ada lovelace.", "c-1", 0, 1)
    assert j.score == pytest.approx(Calibration(1.0, 0.0)(-0.5))
    sent = {"request": 150, "header": 22, "payload": 128, "scales": 0, "fanout": 300}
    assert j.nbytes == {"ask": 100, **sent, "replies": 180}
    assert j.durations["e2e"] == pytest.approx(0.3) and j.durations["llama.rtt"] == pytest.approx(0.2)
    assert b.stats["served"] == 1 and not b.pending


def test_ties_break_by_model_name_and_empty_answers_lose() -> None:
    r = {m: Reply("x", m, m, a, -1.0, {}) for m, a in (("qwen", "Paris"), ("llama", "Rome"))}
    assert pick(r, lambda m: Calibration())[0] == "llama"
    r["llama"] = Reply("x", "llama", "llama", "  ", 0.0, {})  # higher score but empty
    assert pick(r, lambda m: Calibration())[0] == "qwen"
    assert agree(r) == 0 and agree({"qwen": r["qwen"]}) == 0


def test_each_proven_receivers_calibration_comes_from_its_heartbeat() -> None:
    b = _board(llama={"latent": (2.0, -1.0), "relay": (0.5, 1.0)})
    assert b.calibration("llama") == Calibration(2.0, -1.0)  # only a and b travel: the map, not its sample
    assert b.calibration("llama", "relay") == Calibration(0.5, 1.0)
    assert b.calibration("llama", "text") == b.calibration("qwen") == Calibration()  # none announced: raw scores
    b.heartbeat(_hb("r-llama", "receiver", "llama"), 1.0, role="receiver")  # the latest heartbeat's maps count
    assert b.calibration("llama") == Calibration()


def test_the_arbiter_picks_with_the_calibration_of_the_request_path() -> None:
    # for relay, qwen's calibration says its answer is the better one; for the latent, llama's does
    b = _board(llama={"latent": (1.0, 2.0), "relay": (1.0, -3.0)}, qwen={"latent": (1.0, -3.0), "relay": (1.0, 2.0)})
    for mode, winner in (("latent", "llama"), ("relay", "qwen"), ("text", "llama")):
        p = _open(b, rid=f"c-{mode}", mode=mode)
        b.on_receiver(_reply(p, "llama", "Ada", -0.5), 90, 0.1)
        b.on_receiver(_reply(p, "qwen", "Bob", -0.6), 90, 0.1)
        assert b.finish(p, 0.2).model == winner, mode


def test_joint_pick_is_a_soft_vote_over_calibrated_scores() -> None:
    cals = {m: Calibration() for m in ("gemma", "llama", "qwen")}
    # qwen alone is the surest, but llama and gemma agree (after normalisation) and together outweigh it
    answers = {"qwen": ("Bob", 1.0), "llama": ("Ada Lovelace", -0.2), "gemma": ("ada lovelace.", -0.3)}
    assert calibration_pick(answers, cals) == "llama"
    # a sure one beats a weak agreement
    answers = {"qwen": ("Bob", 5.0), "llama": ("Ada", -3.0), "gemma": ("Ada", -3.0)}
    assert calibration_pick(answers, cals) == "qwen"
    # two receivers: the higher calibrated score, whatever the raw scores say
    two = {"qwen": ("Bob", -1.0), "llama": ("Ada", -0.5)}
    assert calibration_pick(two, {"qwen": Calibration(1.0, 3.0), "llama": Calibration()}) == "qwen"


def test_timeout_answers_from_those_that_did_and_counts_late_and_duplicates() -> None:
    b = _board(timeout=5.0)
    p = _open(b)
    assert b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 1.0) is None
    assert b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 1.1) is None  # duplicate
    for t in (2.0, 3.0):  # both receivers still alive: keep waiting until the deadline
        _beat(b, t)
        assert b.due(t) == []
    assert b.due(5.0) == [p]
    j = b.finish(p, 5.0)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.answer == "Ada"
    assert j.errors["qwen"].startswith("timeout")
    b.on_receiver(_reply(p, "qwen", "Ada", -0.3), 90, 6.0)  # late
    assert (b.stats["duplicate"], b.stats["late"], b.stats["degraded"]) == (1, 1, 1)


def test_no_reply_at_all_is_an_explicit_error() -> None:
    b = _board(timeout=5.0)
    p = _open(b)
    e = b.finish(p, 5.0)
    assert isinstance(e, ErrorReply) and e.code == "no_answer" and e.rid == "c-1"
    assert "llama: timeout" in e.message and "qwen: timeout" in e.message


def test_receiver_errors_degrade_or_fail() -> None:
    b = _board()
    p = _open(b)
    b.on_receiver(ErrorReply(p.rid, "r-llama", "internal", "boom"), 60, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen", "Paris", -1.0), 60, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors == {"llama": "internal: boom"}
    p = _open(b, rid="c-2")
    b.on_receiver(ErrorReply(p.rid, "r-llama", "wrong_checkpoint", "x"), 60, 0.1)
    e = b.finish(b.on_receiver(ErrorReply(p.rid, "r-qwen", "wrong_checkpoint", "y"), 60, 0.2), 0.2)
    assert isinstance(e, ErrorReply) and e.code == "all_failed"


def test_dead_or_stopping_receiver_finishes_early_and_leaves_the_expected_set() -> None:
    b = _board(timeout=60.0)
    p = _open(b)
    b.on_receiver(_reply(p, "llama", "Ada", -0.2), 90, 0.5)
    b.heartbeat(_hb("r-qwen", "receiver", "qwen", status="stopping"), 1.0)
    assert b.due(1.0) == [p]
    assert b.finish(p, 1.0).errors["qwen"].startswith("gone")
    _beat(b, 1.0, models=("llama",))
    assert _open(b, now=1.5, rid="c-2").expected == {"llama"}
    assert b.status(1.5).info["receivers"] == "llama"
    assert _board().status(10.0).status == "waiting"  # nobody heard from for 10 s


def test_open_without_processes_and_sender_failures() -> None:
    b = Board("arb")
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_receivers"
    assert b.finish(p, 0.0).rid == "c-1"
    b.heartbeat(_hb("r-llama", "receiver", "llama"), 0.0)
    p, sender = b.open((b"c",), Ask("c-2", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_sender"
    b = _board()
    p, _ = b.open((b"c",), Ask("c-3", "client", "Q?", quant="fp16"), 10, 0.0)
    done = b.on_sender(ErrorReply(p.rid, "s1", "bad_request", "value exceeds the fp16 range"))
    assert done is p and b.finish(p, 0.0).code == "bad_request"
    p, _ = b.open((b"c",), Ask("c-4", "client", "Q?"), 10, 0.0)
    assert b.on_sender(_sent(p.rid, "s1", reached=0)) is p
    assert b.finish(p, 0.0).code == "no_receivers"


# ---- hostile or failing peers ----


def test_a_second_report_or_one_from_another_sender_is_ignored_and_the_request_answered() -> None:
    b = _board()
    p = _open(b)
    huge = dict(request=2**20, payload=0)
    assert b.on_sender(_sent(p.rid, "s1", **huge), route=b"s1") is None  # a second report
    assert b.on_sender(_sent(p.rid, "s2", **huge), route=b"s2") is None  # not its sender
    b.on_receiver(_reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.nbytes["request"] == 150 and j.degraded == 0
    encode_frame(j)
    assert b.stats["duplicate"] == 1 and b.stats["forged"] == 1


@pytest.mark.parametrize(
    "report",
    [
        {"request": 2**63 - 1, "payload": 0, "reached": 1},  # a frame no peer accepts
        {"reached": 2**20},  # a fan-out to more receivers than a sender may have
    ],
)
def test_a_first_report_with_impossible_counts_keeps_the_request(report: dict) -> None:
    b = _board()
    p = _open(b, report={**report, "encode": 0.01})
    assert b.stats["bad_report"] == 1 and "request" not in p.nbytes and p.failure is None
    b.on_receiver(_reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.durations["sender.encode"] == 0.01 and "fanout" not in j.nbytes


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
    assert (
        "evil: not a model of checkpoint" in st["mismatch"]
        and "llama: serving another checkpoint (fingerprint 000000000000)" in st["mismatch"]
    )
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
    b.on_sender(_sent(p.rid, "s2"), route=b"s2")
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
    b.on_sender(_sent(p.rid, "s2", reached=1), route=b"s2")
    j = b.finish(b.on_receiver(_reply(p, "llama"), 90, 6.1), 6.1)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["qwen"].startswith("down")


# ---- what an answer says about receivers that did not take part ----

OTHER_FP = "0" * 64


def test_a_receiver_of_another_checkpoint_is_named_as_such_not_as_down() -> None:
    b = _board()
    other = Heartbeat("", "r-llama", "receiver", "alive", {"model": "llama", "fingerprint": OTHER_FP})
    b.heartbeat(other, 1.0, role="receiver")  # up and beating, but restarted on another checkpoint
    _beat(b, 1.0, models=("qwen",))
    p = _open(b, now=1.0, mode="text")
    assert p.expected == {"qwen"}
    j = b.finish(b.on_receiver(_reply(p, "qwen"), 90, 1.1), 1.1)
    assert isinstance(j, JointReply) and j.degraded == 1
    assert "serving another checkpoint (fingerprint 000000000000)" in j.errors["llama"], j.errors
    assert "down" not in j.errors["llama"] and "not ready" not in j.errors["llama"]


def test_no_receivers_says_they_serve_another_checkpoint_when_all_do() -> None:
    b = Board("arb", timeout=10.0, dead_after=4.0)
    b.heartbeat(_hb("s1", "sender"), 0.0, route=b"s1", role="sender")
    for m in ("llama", "qwen"):
        info = {"model": m, "fingerprint": OTHER_FP}
        b.heartbeat(Heartbeat("", f"r-{m}", "receiver", "alive", info), 0.0, role="receiver")
    p, sender = b.open((b"client",), Ask("c-1", "client", "Who?", "Ada wrote it.", mode="text"), 100, 0.0)
    assert sender is None and p.failure is not None and p.failure.code == "no_receivers"
    msg = p.failure.message
    assert "llama: serving another checkpoint (fingerprint 000000000000)" in msg, msg
    assert "qwen: serving another checkpoint (fingerprint 000000000000)" in msg, msg
    assert "is everything up" not in msg
    assert "serving another checkpoint (fingerprint 000000000000)" in b.status(0.0).info["mismatch"]


# ---- forged heartbeats (plain TCP: anyone may push to the replies socket) ----


def _forge(b: Board, t: float, n: int, model: str = "llama", tag: str = "f", calibration: dict | None = None) -> None:
    """`n` receiver heartbeats under made-up ids: a process that never answers a request."""
    for i in range(n):
        hb = Heartbeat("", f"{tag}{i}", "receiver", "alive", {"model": model, "fingerprint": FP}, calibration or {})
        b.heartbeat(hb, t, role="receiver")


def test_a_forged_heartbeat_never_delays_a_degraded_answer() -> None:
    b = _board(timeout=60.0)
    _beat(b, 5.0, models=("qwen",))  # the real llama died at t=0
    _forge(b, 5.0, 1)  # someone announces a llama that will never answer
    p = _open(b, now=5.0)
    assert p.expected == {"qwen"}
    done = b.on_receiver(_reply(p, "qwen"), 90, 5.2)
    assert done is p  # answered now, not at the deadline a minute later
    j = b.finish(p, 5.2)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["llama"].startswith("unproven"), j.errors


def test_a_forged_heartbeat_cannot_change_the_calibration_of_the_pick() -> None:
    b = _board(qwen={"latent": (1.0, 0.0)})
    _forge(b, 1.0, 1, model="qwen", calibration={"latent": (50.0, 50.0)})
    assert b.calibration("qwen") == Calibration(1.0, 0.0)


def test_forged_heartbeats_never_lock_a_real_receiver_out() -> None:
    b = _board(timeout=60.0)
    for t in (5.0, 5.5):  # the real llama died at t=0; 64 made-up ones keep beating
        _beat(b, t, models=("qwen",))
        _forge(b, t, board.MAX_PEERS)
    real = Heartbeat("", "r-llama-2", "receiver", "ready", {"model": "llama", "fingerprint": FP})
    assert b.heartbeat(real, 6.0, role="receiver") is not None  # the restarted llama gets a seat
    _forge(b, 6.2, board.MAX_PEERS, tag="g")  # ever new made-up ids
    p = _open(b, now=6.5)
    b.on_receiver(_reply(p, "qwen"), 90, 7.0)  # the sender fanned it out to the real llama too: it answers
    b.on_receiver(_reply(p, "llama", sender="r-llama-2"), 90, 7.0)
    b.heartbeat(real, 7.0, role="receiver")
    _forge(b, 7.2, 2 * board.MAX_PEERS, tag="h")
    assert "r-llama-2" in b.peers
    _beat(b, 7.5, models=("qwen",))
    assert _open(b, now=7.5, rid="c-2").expected == {"llama", "qwen"}
    assert len(b.peers) <= 2 * board.MAX_PEERS


def test_a_receiver_counts_once_it_answered_a_probe() -> None:
    b = Board("arb", timeout=10.0, dead_after=4.0)
    _beat(b, 0.0)  # both announce themselves; neither has answered anything yet
    st = b.status(0.0)
    assert st.status == "waiting" and st.info["n_receivers"] == 0 and st.info["unproven"] == "llama,qwen"
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_receivers" and "being probed" in p.failure.message
    b.finish(p, 0.0)
    _prove(b, 0.1)
    assert b.probe(10.0) is None  # nobody left to prove
    st = b.status(0.2)
    assert st.status == "ready" and st.info["receivers"] == "llama,qwen" and "unproven" not in st.info
    assert st.info["inflight"] == 0 and b.stats["probes"] == 1 and b.stats["served"] == 0


def test_probes_go_one_at_a_time_and_a_late_answer_still_proves() -> None:
    b = _board(timeout=60.0)
    _beat(b, 5.0, models=("qwen",))  # llama died at t=0 and comes back under a new id
    real = Heartbeat("", "r-llama-2", "receiver", "ready", {"model": "llama", "fingerprint": FP})
    b.heartbeat(real, 5.0, role="receiver")
    p, sender = b.probe(5.0)
    assert p.expected == {"llama"} and b.probe(5.0 + 2 * board.PROBE_EVERY_S) is None  # one in flight at a time
    b.on_sender(_sent(p.rid, sender.pid), route=sender.route)
    assert b.due(5.0 + board.PROBE_TIMEOUT_S - 0.1) == []  # a probe waits for the unproven, not for the live
    (late,) = b.due(5.0 + board.PROBE_TIMEOUT_S)
    assert b.finish(late, 5.0 + board.PROBE_TIMEOUT_S) is None
    assert b.on_receiver(_reply(p, "llama", sender="r-llama-2"), 10, 16.0) is None and b.stats["late"] == 1
    _beat(b, 16.0, models=("qwen",))
    b.heartbeat(real, 16.0, role="receiver")
    assert {q.pid for q in b.receivers(16.0).ok} == {"r-llama-2", "r-qwen"} and b.probe(16.0) is None


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
    _beat(b, 0.0)
    _prove(b, 0.0)
    polite = admitted = flooder_most = 0
    t = 0.0
    for step in range(1, 1201):  # 60 s: the system finishes 20 requests a second, the flooder asks 200 times
        t = step * 0.05
        if step % 20 == 0:
            _beat(b, t)
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
    b = _board()
    b.max_inflight = 8
    assert sum(_ask(b, FLOODER, 0.1) for _ in range(20)) == 4  # half the window: the rest is for newcomers
    assert "fair share" in b.busy(FLOODER)
    assert _ask(b, POLITE, 0.1) and b.status(0.1).info["clients"] == 2
    assert "fair share" in b.busy(FLOODER)  # two clients asking: a third of the window each, one third free
    for p in [p for p in b.pending.values() if p.client == POLITE]:
        b.finish(p, 0.2)
    assert b.busy(FLOODER) and b.status(0.2).info["inflight"] == 4
