"""The arbiter's join without sockets (`Board`): the pick on calibrated scores, timeouts and degraded answers,
and its behaviour under hostile or failing peers: counters stay in range, state stays bounded, and only known
peers count."""

from __future__ import annotations

import pytest
from boardkit import FP, beat, hb, open_ask, proven_board, reply, sent

from latentwire.arbiter import board
from latentwire.arbiter.board import Board, agree, pick
from latentwire.calibration import Calibration
from latentwire.calibration import pick as calibration_pick
from latentwire.protocol import Ask, ErrorReply, Heartbeat, JointReply, Reply, encode_frame

# ---- the join and the pick ----


def test_join_two_replies_picks_on_calibrated_score() -> None:
    # raw scores favour llama, but qwen's calibration says it is more often right at that score
    b = proven_board(llama={"latent": (1.0, -3.0)}, qwen={"latent": (1.0, 0.0)})
    p = open_ask(b)
    assert b.on_receiver(reply(p, "llama", "Ada Lovelace", -0.1), 90, 0.2) is None
    done = b.on_receiver(reply(p, "qwen", "ada lovelace.", -0.5), 90, 0.3)
    assert done is p
    j = b.finish(p, 0.3)
    assert isinstance(j, JointReply)
    assert (j.model, j.answer, j.rid, j.degraded, j.agreement) == ("qwen", "ada lovelace.", "c-1", 0, 1)
    assert j.score == pytest.approx(Calibration(1.0, 0.0)(-0.5))
    counts = {"request": 150, "header": 22, "payload": 128, "scales": 0, "fanout": 300}
    assert j.nbytes == {"ask": 100, **counts, "replies": 180}
    assert j.durations["e2e"] == pytest.approx(0.3) and j.durations["llama.rtt"] == pytest.approx(0.2)
    assert b.stats["served"] == 1 and not b.pending


def test_ties_break_by_model_name_and_empty_answers_lose() -> None:
    r = {m: Reply("x", m, m, a, -1.0, {}) for m, a in (("qwen", "Paris"), ("llama", "Rome"))}
    assert pick(r, lambda m: Calibration())[0] == "llama"
    r["llama"] = Reply("x", "llama", "llama", "  ", 0.0, {})  # higher score but empty
    assert pick(r, lambda m: Calibration())[0] == "qwen"
    assert agree(r) == 0 and agree({"qwen": r["qwen"]}) == 0


def test_each_proven_receivers_calibration_comes_from_its_heartbeat() -> None:
    b = proven_board(llama={"latent": (2.0, -1.0), "relay": (0.5, 1.0)})
    assert b.roster.calibration("llama") == Calibration(2.0, -1.0)  # only a and b travel: the map, not its sample
    assert b.roster.calibration("llama", "relay") == Calibration(0.5, 1.0)
    assert (
        b.roster.calibration("llama", "text") == b.roster.calibration("qwen") == Calibration()
    )  # none announced: raw scores
    b.roster.heartbeat(hb("r-llama", "receiver", "llama"), 1.0, role="receiver")  # the latest heartbeat's maps count
    assert b.roster.calibration("llama") == Calibration()


def test_the_arbiter_picks_with_the_calibration_of_the_request_path() -> None:
    # for relay, qwen's calibration says its answer is the better one; for the latent, llama's does
    b = proven_board(
        llama={"latent": (1.0, 2.0), "relay": (1.0, -3.0)}, qwen={"latent": (1.0, -3.0), "relay": (1.0, 2.0)}
    )
    for path, winner in (("latent", "llama"), ("relay", "qwen"), ("text", "llama")):
        p = open_ask(b, rid=f"c-{path}", path=path)
        b.on_receiver(reply(p, "llama", "Ada", -0.5), 90, 0.1)
        b.on_receiver(reply(p, "qwen", "Bob", -0.6), 90, 0.1)
        assert b.finish(p, 0.2).model == winner, path


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
    b = proven_board(timeout=5.0)
    p = open_ask(b)
    assert b.on_receiver(reply(p, "llama", "Ada", -0.2), 90, 1.0) is None
    assert b.on_receiver(reply(p, "llama", "Ada", -0.2), 90, 1.1) is None  # duplicate
    for t in (2.0, 3.0):  # both receivers still alive: keep waiting until the deadline
        beat(b, t)
        assert b.due(t) == []
    assert b.due(5.0) == [p]
    j = b.finish(p, 5.0)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.answer == "Ada"
    assert j.errors["qwen"].startswith("timeout")
    b.on_receiver(reply(p, "qwen", "Ada", -0.3), 90, 6.0)  # late
    assert (b.stats["duplicate"], b.stats["late"], b.stats["degraded"]) == (1, 1, 1)


def test_no_reply_at_all_is_an_explicit_error() -> None:
    b = proven_board(timeout=5.0)
    p = open_ask(b)
    e = b.finish(p, 5.0)
    assert isinstance(e, ErrorReply) and e.code == "no_answer" and e.rid == "c-1"
    assert "llama: timeout" in e.message and "qwen: timeout" in e.message


def test_receiver_errors_degrade_or_fail() -> None:
    b = proven_board()
    p = open_ask(b)
    b.on_receiver(ErrorReply(p.rid, "r-llama", "internal", "boom"), 60, 0.1)
    j = b.finish(b.on_receiver(reply(p, "qwen", "Paris", -1.0), 60, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors == {"llama": "internal: boom"}
    p = open_ask(b, rid="c-2")
    b.on_receiver(ErrorReply(p.rid, "r-llama", "wrong_checkpoint", "x"), 60, 0.1)
    e = b.finish(b.on_receiver(ErrorReply(p.rid, "r-qwen", "wrong_checkpoint", "y"), 60, 0.2), 0.2)
    assert isinstance(e, ErrorReply) and e.code == "all_failed"


@pytest.mark.parametrize(
    ("codes", "want"),
    [
        (("expired", "expired"), "no_answer"),  # dropped at the deadline by each: nobody answered in time
        (("shutting_down", "shutting_down"), "shutting_down"),
        (("expired", "internal"), "all_failed"),
    ],
)
def test_receivers_that_drop_a_request_at_its_deadline_did_not_fail_it(codes: tuple[str, str], want: str) -> None:
    b = proven_board()
    p = open_ask(b)
    for m, code in zip(("llama", "qwen"), codes, strict=True):
        b.on_receiver(ErrorReply(p.rid, f"r-{m}", code, "why"), 50, 0.5)
    e = b.finish(p, 0.5)
    assert isinstance(e, ErrorReply) and e.code == want and e.rid == "c-1", e


def test_a_request_the_sender_dropped_at_its_deadline_is_no_answer_to_the_client() -> None:
    b = proven_board()
    p, sender = b.open((b"client",), Ask("c-1", "client", "Who?", "Ada wrote it.", mode="text"), 100, 0.0)
    done = b.on_sender(ErrorReply(p.rid, sender.pid, "expired", "dropped unread"), route=sender.route)
    e = b.finish(done, 0.1)
    assert isinstance(e, ErrorReply) and (e.code, e.rid) == ("no_answer", "c-1"), e


def test_dead_or_stopping_receiver_finishes_early_and_leaves_the_expected_set() -> None:
    b = proven_board(timeout=60.0)
    p = open_ask(b)
    b.on_receiver(reply(p, "llama", "Ada", -0.2), 90, 0.5)
    b.roster.heartbeat(hb("r-qwen", "receiver", "qwen", status="stopping"), 1.0)
    assert b.due(1.0) == [p]
    assert b.finish(p, 1.0).errors["qwen"].startswith("gone")
    beat(b, 1.0, models=("llama",))
    assert open_ask(b, now=1.5, rid="c-2").expected == {"llama"}
    assert b.status(1.5).info["receivers"] == "llama"
    assert proven_board().status(10.0).status == "waiting"  # nobody heard from for 10 s


def test_open_without_processes_and_sender_failures() -> None:
    b = Board("arb")
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_receivers"
    assert b.finish(p, 0.0).rid == "c-1"
    b.roster.heartbeat(hb("r-llama", "receiver", "llama"), 0.0)
    p, sender = b.open((b"c",), Ask("c-2", "client", "Q?"), 10, 0.0)
    assert sender is None and p.failure.code == "no_sender"
    b = proven_board()
    p, _ = b.open((b"c",), Ask("c-3", "client", "Q?", quant="fp16"), 10, 0.0)
    done = b.on_sender(ErrorReply(p.rid, "s1", "bad_request", "value exceeds the fp16 range"))
    assert done is p and b.finish(p, 0.0).code == "bad_request"
    p, _ = b.open((b"c",), Ask("c-4", "client", "Q?"), 10, 0.0)
    assert b.on_sender(sent(p.rid, "s1", reached=0)) is p
    assert b.finish(p, 0.0).code == "no_receivers"


# ---- hostile or failing peers ----


def test_a_second_report_or_one_from_another_sender_is_ignored_and_the_request_answered() -> None:
    b = proven_board()
    p = open_ask(b)
    huge = dict(request=2**20, payload=0)
    assert b.on_sender(sent(p.rid, "s1", **huge), route=b"s1") is None  # a second report
    assert b.on_sender(sent(p.rid, "s2", **huge), route=b"s2") is None  # not its sender
    b.on_receiver(reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(reply(p, "qwen"), 90, 0.2), 0.2)
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
    b = proven_board()
    p = open_ask(b, report={**report, "encode": 0.01})
    assert b.stats["bad_report"] == 1 and "request" not in p.nbytes and p.failure is None
    b.on_receiver(reply(p, "llama"), 90, 0.1)
    j = b.finish(b.on_receiver(reply(p, "qwen"), 90, 0.2), 0.2)
    assert isinstance(j, JointReply) and j.durations["sender.encode"] == 0.01 and "fanout" not in j.nbytes


def test_finish_never_raises_it_answers_internal() -> None:
    b = proven_board()
    p = open_ask(b)
    b.on_receiver(reply(p, "llama"), 90, 0.1)
    p.nbytes["replies"] = 2**64  # anything that cannot become a frame
    e = b.finish(p, 0.2)
    assert isinstance(e, ErrorReply) and e.code == "internal" and e.rid == "c-1"
    assert b.stats["internal_error"] == 1 and not b.pending


def test_peers_and_counters_stay_bounded() -> None:
    b = proven_board()
    for i in range(5_000):  # unique ids, unique error codes, unknown roles
        t = 10.0 + i * 0.01
        b.roster.heartbeat(Heartbeat("", f"x{i}", "receiver", "alive", {"model": f"m{i}"}), t, role="receiver")
        b.roster.heartbeat(Heartbeat("", f"y{i}", "sender", "alive"), t, route=b"y", role="sender")
        b.roster.heartbeat(Heartbeat("", f"z{i}", f"role{i}", "alive"), t, role="receiver")
        b.on_receiver(ErrorReply(f"nope{i}", f"x{i}", f"code{i}", "x"), 10, t)
    assert len(b.roster.peers) <= 2 * board.MAX_PEERS
    assert len(b.stats) < 20, sorted(b.stats)
    assert b.stats["error.other"] == 5_000 and b.stats["bad_role"] == 5_000
    b.roster.expire(10.0 + 50.0 + board.PEER_MEMORY_S + 1)
    assert b.roster.peers == {}


def test_answers_flagged_degraded_when_fewer_receivers_than_configured() -> None:
    b = proven_board()
    beat(b, 5.0, models=("qwen",))  # llama silent since t=0: past the liveness window at t=5
    p = open_ask(b, now=5.0)
    assert p.expected == {"qwen"}
    j = b.finish(b.on_receiver(reply(p, "qwen"), 90, 5.1), 5.1)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["llama"].startswith("down")
    assert b.status(5.1).info["configured"] == 2


def test_heartbeats_only_from_their_own_socket_and_forged_replies_ignored() -> None:
    b = proven_board()
    assert (
        b.roster.heartbeat(Heartbeat("", "fake", "sender", "alive"), 0.0, role="receiver") is None
    )  # on replies socket
    assert [s.pid for s in b.roster.alive("sender", 0.0)] == ["s1"]
    p = open_ask(b)
    assert b.on_receiver(reply(p, "qwen", sender="stranger"), 90, 0.1) is None  # no such receiver
    assert b.on_receiver(reply(p, "qwen", sender="r-llama"), 90, 0.1) is None  # llama answering as qwen
    assert b.stats["forged"] == 2 and not p.replies


def test_receiver_outside_the_checkpoint_or_of_another_checkpoint_is_not_ready() -> None:
    b = proven_board()
    evil = {"model": "evil", "fingerprint": FP}
    other = {"model": "llama", "fingerprint": "0" * 64}
    b.roster.heartbeat(Heartbeat("", "r-evil", "receiver", "alive", evil), 0.0, role="receiver")
    b.roster.heartbeat(Heartbeat("", "r-llama2", "receiver", "alive", other), 0.0, role="receiver")
    b.roster.prove("r-evil")  # real receivers: they answered a probe (the next test: until then they are only counted)
    b.roster.prove("r-llama2")
    st = b.status(0.0).info
    assert st["receivers"] == "llama,qwen" and st["n_receivers"] == 2
    assert (
        "evil: not a model of checkpoint" in st["mismatch"]
        and "llama: serving another checkpoint (fingerprint 000000000000)" in st["mismatch"]
    )
    p = open_ask(b)
    assert p.expected == {"llama", "qwen"}


def test_sender_vanishing_before_its_report_sends_the_request_again() -> None:
    b = proven_board()
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 0.0)
    assert sender.pid == "s1"
    beat(b, 3.0, sender="s2")  # s1 goes silent; a restarted sender comes up under a new id
    assert b.due(5.0) == [] and p.sender == "" and b.stats["redispatched"] == 1
    (w,) = b.waiting()
    assert b.assign(w, 5.0).pid == "s2"
    b.on_sender(sent(p.rid, "s2"), route=b"s2")
    b.on_receiver(reply(p, "llama"), 90, 5.1)
    j = b.finish(b.on_receiver(reply(p, "qwen"), 90, 5.2), 5.2)
    assert isinstance(j, JointReply) and j.degraded == 0


def test_request_waits_for_a_restarting_sender_then_fails_clearly() -> None:
    b = proven_board(timeout=100.0)
    beat(b, 5.0)
    b.roster.peers["s1"].last_seen = 0.0  # the sender went silent (it is restarting); receivers are fine
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 5.0)
    assert sender is None and p.failure is None and b.waiting() == [p]
    (late,) = b.due(5.0 + board.SENDER_WAIT_S)
    e = b.finish(late, 5.0 + board.SENDER_WAIT_S)
    assert isinstance(e, ErrorReply) and e.code == "no_sender"


def test_every_receiver_refusing_for_the_same_reason_says_which() -> None:
    b = proven_board()
    p = open_ask(b)
    b.on_receiver(ErrorReply(p.rid, "r-llama", "too_large", "slot of 9000 tokens, the cap is 4096"), 60, 0.1)
    e = b.finish(b.on_receiver(ErrorReply(p.rid, "r-qwen", "too_large", "slot of 9100 tokens"), 60, 0.2), 0.2)
    assert isinstance(e, ErrorReply) and e.code == "too_large" and "4096" in e.message


def test_degraded_judged_against_the_configuration_while_the_sender_restarts() -> None:
    b = proven_board(timeout=100.0)
    beat(b, 5.0, models=("llama",))  # qwen down since t=0
    b.roster.peers["s1"].last_seen = 0.0  # the sender is restarting too: the request waits for it
    p, sender = b.open((b"c",), Ask("c-1", "client", "Q?"), 10, 5.0)
    assert sender is None and p.expected == {"llama"}
    beat(b, 6.0, models=("llama",), sender="s2")
    (w,) = b.waiting()
    assert b.assign(w, 6.0).pid == "s2"
    b.on_sender(sent(p.rid, "s2", reached=1), route=b"s2")
    j = b.finish(b.on_receiver(reply(p, "llama"), 90, 6.1), 6.1)
    assert isinstance(j, JointReply) and j.degraded == 1 and j.errors["qwen"].startswith("down")


# ---- what an answer says about receivers that did not take part ----

OTHER_FP = "0" * 64


def test_a_receiver_of_another_checkpoint_is_named_as_such_not_as_down() -> None:
    b = proven_board()
    other = Heartbeat("", "r-llama", "receiver", "alive", {"model": "llama", "fingerprint": OTHER_FP})
    b.roster.heartbeat(other, 1.0, role="receiver")  # up and beating, but restarted on another checkpoint
    beat(b, 1.0, models=("qwen",))
    p = open_ask(b, now=1.0, path="text")
    assert p.expected == {"qwen"}
    j = b.finish(b.on_receiver(reply(p, "qwen"), 90, 1.1), 1.1)
    assert isinstance(j, JointReply) and j.degraded == 1
    assert "serving another checkpoint (fingerprint 000000000000)" in j.errors["llama"], j.errors
    assert "down" not in j.errors["llama"] and "not ready" not in j.errors["llama"]


def test_unproven_receivers_put_no_text_of_theirs_in_the_status_or_an_answer() -> None:
    """A heartbeat costs nothing to forge: a receiver that announces another checkpoint is counted, not named, until
    it answers a request id; the arbiter probes it (a real one answers and is then named)."""
    b = proven_board()
    forged = {"model": "buy cheap pills at example.com", "fingerprint": "visit-example-com" * 3}
    b.roster.heartbeat(Heartbeat("", "r-spam", "receiver", "alive", forged), 0.0, role="receiver")
    st = b.status(0.0).info
    assert st["mismatch_unproven"] == 1 and "mismatch" not in st, st
    assert not any("example" in str(v) for v in st.values()), st
    p = open_ask(b, path="text")
    assert p.expected == {"llama", "qwen"} and not any("example" in why for why in p.absent.values()), p.absent
    probe = b.probe(2.5)  # PROBE_EVERY_S after the one that proved llama and qwen
    assert probe is not None and "buy cheap pills at example.com" in probe[0].expected
    b.on_receiver(Reply(probe[0].rid, "r-spam", forged["model"], "yes", -0.1, {}), 10, 3.0)  # it was real
    assert "buy cheap pills at example.com: not a model of checkpoint" in b.status(3.0).info["mismatch"]


def test_no_receivers_with_only_unproven_foreign_ones_counts_them() -> None:
    b = Board("arb", timeout=10.0, dead_after=4.0)
    b.roster.heartbeat(hb("s1", "sender"), 0.0, route=b"s1", role="sender")
    b.roster.heartbeat(Heartbeat("", "r-x", "receiver", "alive", {"model": "llama", "fingerprint": OTHER_FP}), 0.0)
    p, _ = b.open((b"client",), Ask("c-1", "client", "Who?", "Ada wrote it.", mode="text"), 100, 0.0)
    assert p.failure is not None and p.failure.code == "no_receivers"
    assert "1 receiver(s) announced another checkpoint" in p.failure.message and OTHER_FP[:12] not in p.failure.message


def test_no_receivers_says_they_serve_another_checkpoint_when_all_do() -> None:
    b = Board("arb", timeout=10.0, dead_after=4.0)
    b.roster.heartbeat(hb("s1", "sender"), 0.0, route=b"s1", role="sender")
    for m in ("llama", "qwen"):
        info = {"model": m, "fingerprint": OTHER_FP}
        b.roster.heartbeat(Heartbeat("", f"r-{m}", "receiver", "alive", info), 0.0, role="receiver")
        b.roster.prove(f"r-{m}")
    p, sender = b.open((b"client",), Ask("c-1", "client", "Who?", "Ada wrote it.", mode="text"), 100, 0.0)
    assert sender is None and p.failure is not None and p.failure.code == "no_receivers"
    msg = p.failure.message
    assert "llama: serving another checkpoint (fingerprint 000000000000)" in msg, msg
    assert "qwen: serving another checkpoint (fingerprint 000000000000)" in msg, msg
    assert "is everything up" not in msg
    assert "serving another checkpoint (fingerprint 000000000000)" in b.status(0.0).info["mismatch"]
