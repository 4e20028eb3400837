"""One request being joined (`Pending`), and how it ends (`outcome`): the joint answer from whoever answered, or
the error that says why there is none.

The pick: raw log-probs of two models are not comparable, so the winner is the answer with the best calibrated
P(correct) (`calibration.pick`, each receiver's Platt map for the request's path, ties broken by model name). The
answer is `degraded` whenever fewer receivers answered than the system is configured with, and `errors` names
every receiver that did not answer and why. With no answer at all: the receivers' common code when all refused
the request for one reason (`COMMON_CODES`); `no_answer` when none answered in time, `expired` errors included (a
receiver that drops a request at its deadline did not answer in time, it did not fail); `shutting_down` when the
arbiter stops; else `all_failed`. Socket-free and pure: the Board
passes in what only it knows (the calibrations, the configured count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from latentwire.calibration import Calibration, agreement
from latentwire.calibration import pick as pick_answer
from latentwire.protocol import Ask, ErrorReply, JointReply, Reply, Sent, error_reply
from latentwire.protocol.base import INT64_MAX

# receiver error codes that describe the request itself: when every receiver says the same, the client hears it
REQUEST_FAULTS = frozenset({"too_large", "bad_shape", "bad_frame", "bad_request", "no_match"})
# ... and those every receiver may say at once for another common reason
COMMON_CODES = REQUEST_FAULTS | {"shutting_down"}
MAX_ENTRIES = 64  # errors and durations kept per answer: names come from peers, a reply must fit a frame


@dataclass
class Pending:
    """One request being joined."""

    rid: str  # the arbiter's id, unique across clients and arbiter restarts
    client: tuple[bytes, ...]  # ROUTER envelope of the client (identity, plus b"" for REQ clients); () for a probe
    ask: Ask  # as the client sent it (its rid is the client's)
    expected: frozenset[str]  # model names alive when the request was opened
    started: float
    deadline: float
    sender: str = ""  # pid of the sender it was dispatched to ("" while waiting for one)
    reported: bool = False  # the sender said it went out (its report, or a reply that proves it did)
    sent: Sent | None = None  # the sender's report, when it was believed
    replies: dict[str, Reply] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # model -> "code: message"
    arrived: dict[str, float] = field(default_factory=dict)
    nbytes: Counter = field(default_factory=Counter)
    failure: ErrorReply | None = None  # set when the request failed before reaching receivers
    configured: int = 0  # receivers the system is configured with: fewer answers means degraded
    models: tuple[str, ...] = ()  # the checkpoint's receiver models (to name the missing ones)
    absent: dict[str, str] = field(default_factory=dict)  # model -> why it was not expected although it is up
    probe: bool = False  # the arbiter's own request, to prove receivers; no client hears of it
    admission: object = None  # who the client is for fair admission (`Board.busy`); None: its envelope
    dispatches: int = 0
    wait_until: float = 0.0  # while waiting for a sender: give up then

    def answered(self) -> set[str]:
        return set(self.replies) | set(self.errors)

    def complete(self) -> bool:
        return self.failure is not None or (self.reported and self.expected <= self.answered())


def pick(replies: dict[str, Reply], calibration: Callable[[str], Calibration]) -> tuple[str, float]:
    """The model whose answer wins (`calibration.pick`) and its calibrated score."""
    cals = {m: calibration(m) for m in replies}
    best = pick_answer({m: (r.answer, r.score) for m, r in replies.items()}, cals)
    return best, cals[best](replies[best].score)


def agree(replies: dict[str, Reply]) -> int:
    """1 when at least two receivers answered and their normalised answers are all equal."""
    return int(agreement([r.answer for r in replies.values()]))


def add(counter: Counter, key: str, n: int) -> None:
    counter[key] = min(INT64_MAX, counter[key] + n)  # saturate: a frame field is int64, never overflow it


def outcome(
    p: Pending, pid: str, now: float, why: str, calibration: Callable[[str], Calibration], configured: int
) -> JointReply | ErrorReply:
    """What the client of finished request `p` hears. `why` names what ended it early ("" for the deadline or
    receivers that went away); `calibration` maps a model to its calibration for the request's path; `configured`
    is how many receivers the system is configured with now."""
    missing = sorted(p.expected - p.answered())
    why = why or ("timeout" if now >= p.deadline else "gone")
    errors = dict(p.errors)
    for m in missing:
        errors[m] = f"{why}: no reply after {now - p.started:.1f} s"
    if p.failure is not None:
        return p.failure
    if not p.replies:
        return _no_answer(p, pid, errors, bool(missing), why)
    model, prob = pick(p.replies, calibration)
    # fewer answers than receivers configured, whatever the reason (missing, failed, down at the start)
    configured = max(p.configured, configured)
    degraded = int(len(p.replies) < configured)
    if degraded and len(p.replies) + len(errors) < configured:  # say who is missing, by name if known
        for m in p.models:
            if m not in p.expected and m not in errors and m not in p.replies:
                # up (on another checkpoint, or yet to answer) is not down: say so, or the operator looks for a
                # dead process
                errors[m] = p.absent.get(m, "down: not ready when the request came in")
        if not errors:
            errors["missing"] = f"down: {len(p.replies)} of {configured} configured receivers answered"
    return JointReply(
        p.ask.rid,
        pid,
        p.replies[model].answer,
        model,
        prob,
        agree(p.replies),
        degraded,
        answers={m: r.answer for m, r in p.replies.items()},
        scores={m: r.score for m, r in p.replies.items()},
        calibrated={m: calibration(m)(r.score) for m, r in p.replies.items()},
        errors=dict(list(errors.items())[:MAX_ENTRIES]),
        durations=dict(list(_durations(p, now).items())[:MAX_ENTRIES]),
        nbytes=dict(p.nbytes),
    )


def _no_answer(p: Pending, pid: str, errors: dict[str, str], missing: bool, why: str) -> ErrorReply:
    detail = "; ".join(f"{m}: {e}" for m, e in sorted(errors.items())) or "no receiver answered"
    codes = {e.split(":", 1)[0] for e in p.errors.values()}
    if len(codes) == 1 and not missing and codes <= COMMON_CODES:
        code = codes.pop()  # every receiver refused the request for the same reason: say which
    elif codes <= {"expired"}:  # a receiver that dropped it at its deadline did not answer in time: nothing failed
        code = "shutting_down" if why == "shutting_down" else "no_answer"
    else:
        code = "all_failed"
    return error_reply(p.ask.rid, pid, code, detail)


def _durations(p: Pending, now: float) -> dict[str, float]:
    """End to end, the sender's own timings, and each receiver's, with its round trip from the arbiter."""
    durations = {"e2e": max(0.0, now - p.started)}
    if p.sent is not None:
        durations.update({f"sender.{k}": v for k, v in p.sent.durations.items()})
    for m, r in p.replies.items():
        durations.update({f"{m}.{k}": v for k, v in r.durations.items()})
        durations[f"{m}.rtt"] = max(0.0, p.arrived[m] - p.started)  # ask in -> this reply in
    return durations
