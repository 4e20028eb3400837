"""The Board's test kit: a sender and two receivers heard and proven, asks opened, replies and reports made up
(shared by the Board's test modules)."""

from __future__ import annotations

from latentwire.arbiter.board import Board
from latentwire.protocol import Ask, Heartbeat, Reply, Sent

FP = "f" * 64
SENDER_INFO = {"fingerprint": FP, "models": "llama,qwen", "receivers": 2}


def hb(pid: str, role: str, model: str = "", status: str = "ready", **cal: tuple[float, float]) -> Heartbeat:
    """A heartbeat; a receiver's announces its model, the checkpoint FP and its calibration per path."""
    if role == "sender":
        return Heartbeat("", pid, role, status, SENDER_INFO)
    return Heartbeat("", pid, role, status, {"model": model, "fingerprint": FP}, cal)


def sent(rid: str, sender: str, reached: int = 2, request: int = 150, payload: int = 128, **kw: float) -> Sent:
    """A sender's report: a frame of `request` bytes (`payload` of them payload) queued to `reached` receivers."""
    header = request - payload
    return Sent(rid, sender, request, header, payload, 0, request * reached, reached, max(2, reached), kw)


def proven_board(timeout: float = 10.0, **cals: dict) -> Board:
    """Sender s1 and receivers r-llama, r-qwen, all heard at t=0 (with `cals`: {model: calibration}) and proven."""
    b = Board("arb", timeout=timeout, dead_after=4.0)
    beat(b, 0.0, cals=cals)
    prove(b, 0.0)
    return b


def prove(b: Board, t: float, models: tuple[str, ...] = ("llama", "qwen")) -> None:
    """What the arbiter does for receivers that only announced themselves: it probes them, they answer."""
    p, sender = b.probe(t)
    assert p.ask.mode == "text" and p.ask.max_new_tokens == 1 and not p.client
    b.on_sender(sent(p.rid, sender.pid, len(models)), route=sender.route)
    for m in models:
        done = b.on_receiver(reply(p, m), 10, t)
    assert done is p and b.finish(p, t) is None  # nobody to answer


def beat(
    b: Board, t: float, models: tuple[str, ...] = ("llama", "qwen"), sender: str = "s1", cals: dict | None = None
) -> None:
    b.roster.heartbeat(hb(sender, "sender"), t, route=sender.encode(), role="sender")
    for m in models:
        b.roster.heartbeat(hb(f"r-{m}", "receiver", m, **(cals or {}).get(m, {})), t, role="receiver")


def open_ask(b: Board, now: float = 0.0, rid: str = "c-1", report: dict | None = None, path: str = "latent"):
    p, sender = b.open((b"client",), Ask(rid, "client", "Who?", "Ada wrote it.", mode=path), 100, now)
    assert sender is not None
    assert b.on_sender(sent(p.rid, sender.pid, **(report or {})), route=sender.route) is None
    return p


def reply(p, model: str, answer: str = "Ada", score: float = -0.5, sender: str | None = None) -> Reply:
    return Reply(p.rid, sender or f"r-{model}", model, answer, score, {"generate": 0.1})
