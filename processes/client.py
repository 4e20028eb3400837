"""Python client of a running LatentWire system (what `latentwire ask` and `ask-batch` use).

One DEALER socket to the arbiter's frontend. `ask` sends one question and waits; `ask_many` keeps at most
`window` questions in flight (backpressure: the system never holds more than the caller allows) and yields
answers as they complete. Every question yields exactly one `Answer`: the joint reply, the arbiter's error,
a client-side `timeout` if the arbiter itself went silent, `refused` if it refused this client's handshake
(an unknown CURVE key), or `bad_request` for an item that cannot be sent (the other items go on).
Every socket call is bounded by the caller's timeout. No torch here: importing this is fast.
"""

from __future__ import annotations

import itertools
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from latentwire.processes import net
from latentwire.protocol import (
    Ask,
    ErrorReply,
    Heartbeat,
    JointReply,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_reply,
    path_spec,
)

GRACE_S = 5.0  # the client waits this much longer than the arbiter's own timeout before giving up
_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the arbiter refused this client's CURVE key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (CURVE on one side only?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (wrong arbiter key, or CURVE on one side only?)",
}


class Refused(TimeoutError):
    """The arbiter refused this client's connection. A TimeoutError, so whoever waits for readiness handles
    it like an arbiter that does not answer, but at once and saying why."""


def path_options(options: dict[str, Any], stacklevel: int = 2) -> dict[str, Any]:
    """Ask options with the path under `path`: `mode=`, its old name, still works with a DeprecationWarning
    (`stacklevel` as `warnings.warn`'s, from the function that calls this one); both given is a TypeError."""
    if "mode" not in options:
        return options
    if "path" in options:
        raise TypeError("give path= only: mode= is its old name")
    warnings.warn("the ask option mode= is now path=", DeprecationWarning, stacklevel=stacklevel + 1)
    return {("path" if k == "mode" else k): v for k, v in options.items()}


def ask_fields(options: dict[str, Any]) -> dict[str, Any]:
    """Ask options (`path`, quant, group_size, budget, max_new_tokens, deadline) as `protocol.Ask`'s fields: the
    path is the Ask's `mode` field, the wire's name for it."""
    options = path_options(options)
    return {("mode" if k == "path" else k): v for k, v in options.items()}


@dataclass
class Answer:
    """One question's outcome as the client saw it."""

    tag: Any  # the caller's key for the question (an example id, an index)
    ask: Ask
    reply: JointReply | None = None
    error: ErrorReply | None = None
    latency_s: float = 0.0  # client-measured end-to-end
    bytes_in: int = 0  # size of the answer frame

    @property
    def ok(self) -> bool:
        return self.reply is not None

    @property
    def answer(self) -> str:
        return self.reply.answer if self.reply else ""

    @property
    def degraded(self) -> bool:
        return self.reply is None or bool(self.reply.degraded)

    def to_row(self) -> dict[str, Any]:
        """A flat JSON-able record (ask-batch writes one per line)."""
        r = self.reply
        row: dict[str, Any] = {
            "id": self.tag,
            "path": self.ask.path,
            "quant": self.ask.quant if path_spec(self.ask.path).latent else None,
            "ok": self.ok,
            "answer": self.answer,
            "model": r.model if r else None,
            "score": r.score if r else None,
            "agreement": bool(r.agreement) if r else False,
            "degraded": self.degraded,
            "error": f"{self.error.code}: {self.error.message}" if self.error else None,
            "receivers": {
                m: {
                    "answer": r.answers.get(m),
                    "score": r.scores.get(m),
                    "calibrated": r.calibrated.get(m),
                    "error": r.errors.get(m),
                    "durations": {k.split(".", 1)[1]: v for k, v in r.durations.items() if k.startswith(m + ".")},
                }
                for m in sorted(set(r.answers) | set(r.errors))
            }
            if r
            else {},
            "durations": {k: v for k, v in r.durations.items() if k == "e2e" or k.startswith("sender.")} if r else {},
            "bytes": {**(r.nbytes if r else {}), "answer": self.bytes_in},
            "e2e_s": self.latency_s,
        }
        return row


@dataclass
class _Flight:
    tag: Any
    ask: Ask
    sent: float
    deadline: float


@dataclass
class Client:
    """A connection to the arbiter; use as a context manager or call `close()`."""

    address: str | None = None  # default: $LATENTWIRE_ARBITER, else loopback
    curve_dir: str | None = None  # default: $LATENTWIRE_CURVE (unset = no encryption)
    timeout: float | None = None  # per question; default: the arbiter's timeout + GRACE_S
    _ctx: zmq.Context = field(init=False, repr=False)
    _sock: zmq.Socket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.address = net.address("arbiter", self.address)
        self.id = net.process_id("client")
        self._ctx = zmq.Context()
        self._sock = net.make_socket(self._ctx, zmq.DEALER)
        self._curve = net.Curve.from_env("client", self.curve_dir)
        if self._curve:
            self._curve.client(self._sock, "arbiter")
        # handshake outcomes: a refused key otherwise looks like an arbiter that never answers
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILED))
        self.refused = ""  # why the arbiter refused this client ("" while not refused)
        self._sock.connect(self.address)
        self._seq = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._inbox: dict[str, tuple[Any, int]] = {}
        self._arbiter_timeout: float | None = None

    # ---- plumbing ----

    def _rid(self) -> str:
        return f"{self._prefix}-{next(self._seq)}"

    def _events(self) -> None:
        """Read handshake events: a failure marks the client refused, a later success clears it."""
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused = ""
            elif event in _HANDSHAKE_FAILED:
                self.refused = f"{self.address}: {_HANDSHAKE_FAILED[event]}"

    def _send(self, data: bytes, deadline: float) -> str:
        """Queue one frame without ever blocking past `deadline`; returns "" or why it was not sent."""
        while True:
            self._events()
            if self.refused:
                return "refused"
            try:
                self._sock.send(data, zmq.NOBLOCK)
                return ""
            except zmq.Again:  # queue full: the arbiter is not reading (down, or refusing us)
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                self._sock.poll(int(min(0.1, left) * 1000) + 1, zmq.POLLOUT)

    def _pump(self, timeout_s: float) -> None:
        """Receive whatever arrives within `timeout_s` into the inbox (by rid)."""
        self._events()
        if self.refused or not self._sock.poll(max(0, int(timeout_s * 1000))):
            return
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than raising zmq.Again
            data = self._sock.recv(zmq.NOBLOCK)
            try:
                msg = decode_frame(data)
            except ProtocolError:
                continue  # not from a LatentWire arbiter; nothing to match it to
            self._inbox[msg.rid] = (msg, len(data))

    def status(self, timeout: float = 1.0) -> Heartbeat | None:
        """The arbiter's status heartbeat (ready/waiting, live receivers, counters), None if it is silent."""
        rid = self._rid()
        end = time.monotonic() + timeout
        if self._send(encode_frame(Heartbeat(rid, self.id, "client", "ping")), end):
            return None
        while time.monotonic() < end and rid not in self._inbox and not self.refused:
            self._pump(min(0.1, end - time.monotonic()))
        msg = self._inbox.pop(rid, (None, 0))[0]
        if isinstance(msg, Heartbeat):
            self._arbiter_timeout = float(msg.info.get("timeout", 0)) or None
            return msg
        return None

    def wait_ready(
        self, timeout: float = 180.0, receivers: int = 1, on_wait: Callable[[Heartbeat | None], None] | None = None
    ) -> Heartbeat:
        """Block until the arbiter reports a sender and at least `receivers` receivers ready (models load slowly).

        Raises TimeoutError after `timeout` s, or Refused (a TimeoutError) as soon as the arbiter refuses us.
        """
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            last = self.status(timeout=min(1.0, max(0.05, end - time.monotonic())))
            if self.refused:
                raise Refused(f"LatentWire refused this client: {self.refused}")
            if last and last.status == "ready" and int(last.info.get("n_receivers", 0)) >= receivers:
                return last
            if on_wait:
                on_wait(last)
            time.sleep(max(0.0, min(0.25, end - time.monotonic())))
        state = f"last status: {last.status} {dict(last.info)}" if last else "the arbiter does not answer"
        raise TimeoutError(f"LatentWire at {self.address} not ready after {timeout:.0f} s ({state})")

    def _deadline(self, now: float) -> float:
        if self.timeout is not None:
            return now + self.timeout
        if self._arbiter_timeout is None:
            self.status(timeout=2.0)
        return now + (self._arbiter_timeout or 60.0) + GRACE_S

    # ---- asking ----

    def ask(self, question: str, context: str = "", **options: Any) -> Answer:
        """Ask one question; options: path, quant, group_size, budget, max_new_tokens, deadline (`ask_fields`)."""
        options = path_options(options)
        return next(self.ask_many([(None, question, context)], window=1, **options))

    def ask_many(self, items: Iterable[tuple[Any, str, str]], window: int = 4, **options: Any) -> Iterator[Answer]:
        """Ask (tag, question, context) items with at most `window` in flight; yields in completion order.

        Never raises for one item: an item that cannot be asked (too large, bad options) yields its own
        `bad_request` Answer and the others go on. Options as `ask`'s.
        """
        return self._ask_many(items, window, path_options(options))

    def _ask_many(
        self, items: Iterable[tuple[Any, str, str]], window: int, options: dict[str, Any]
    ) -> Iterator[Answer]:
        fields = ask_fields(options)
        todo = iter(items)
        flights: dict[str, _Flight] = {}
        exhausted = False
        while True:
            while not exhausted and len(flights) < max(1, window):
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                tag, question, context = item
                rid = self._rid()
                try:
                    ask = Ask(rid, self.id, question, context, **fields)
                    data = encode_frame(ask)
                except (ProtocolError, TypeError) as e:
                    yield self._failed(tag, self._placeholder(rid, fields), "bad_request", str(e), time.monotonic())
                    continue
                deadline = self._deadline(time.monotonic())
                now = time.monotonic()  # latency counts from the send
                why = self._send(data, deadline)
                if why:
                    detail = self.refused if why == "refused" else f"could not send to {self.address}"
                    yield self._failed(tag, ask, why, detail, now)
                    continue
                flights[ask.rid] = _Flight(tag, ask, now, deadline)
            if not flights:
                return
            self._pump(min(0.5, max(0.0, min(f.deadline for f in flights.values()) - time.monotonic())))
            now = time.monotonic()
            for rid in [r for r in flights if r in self._inbox]:
                f = flights.pop(rid)
                msg, size = self._inbox.pop(rid)
                ans = Answer(f.tag, f.ask, latency_s=now - f.sent, bytes_in=size)
                if isinstance(msg, JointReply):
                    ans.reply = msg
                elif isinstance(msg, ErrorReply):
                    ans.error = msg
                else:
                    ans.error = ErrorReply(rid, self.id, "bad_answer", f"unexpected {type(msg).__name__}")
                yield ans
            for rid in [r for r in self._inbox if r not in flights]:
                del self._inbox[rid]  # answers to questions already given up on
            for rid in [r for r, f in flights.items() if now >= f.deadline or self.refused]:
                f = flights.pop(rid)
                if self.refused:
                    yield self._failed(f.tag, f.ask, "refused", self.refused, f.sent)
                else:
                    yield self._failed(f.tag, f.ask, "timeout", f"no answer from {self.address}", f.sent)

    def _failed(self, tag: Any, ask: Ask, code: str, message: str, sent: float) -> Answer:
        now = time.monotonic()
        why = f"{message} ({now - sent:.1f} s)" if code == "timeout" else message
        return Answer(tag, ask, error=error_reply(ask.rid, self.id, code, why), latency_s=now - sent)

    def _placeholder(self, rid: str, fields: dict[str, Any]) -> Ask:
        """An Ask standing for an item that could not be built, keeping its path and quant when they are valid."""
        try:
            return Ask(rid, self.id, "?", "", **fields)
        except (ProtocolError, TypeError):
            return Ask(rid, self.id, "?")

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close(0)
        if self._curve:
            self._curve.stop()
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summarize_answers(rows: list[dict]) -> dict:
    """What a batch of `Answer.to_row()` rows adds up to: EM/F1 of the joint answer, p50/p95 end-to-end latency,
    bytes per request (one frame, and all frames fanned out to the receivers), answered, failed, degraded counts.

    Rows carrying a `gold` answer are scored with latentwire.metrics (postprocess, then EM/F1); a question the
    system failed to answer scores 0 and is counted in `n_errors`. EM/F1 are None when no row has a gold answer
    (a latency run is not a quality run, and must not read as F1 0.0)."""
    import numpy as np

    from latentwire.metrics import exact_match, f1_score, postprocess

    lat = np.array([r["e2e_s"] for r in rows]) if rows else np.zeros(1)
    ok = [r for r in rows if r["ok"]]
    gold = [r for r in rows if r.get("gold") is not None]
    em = [exact_match(postprocess(r["answer"]), r["gold"]) if r["ok"] else 0.0 for r in gold]
    f1 = [f1_score(postprocess(r["answer"]), r["gold"]) if r["ok"] else 0.0 for r in gold]
    return {
        "n": len(rows),
        "n_answered": len(ok),
        "n_errors": len(rows) - len(ok),
        "ok": len(ok),
        "degraded": sum(r["degraded"] for r in rows),
        "agreement": sum(r["agreement"] for r in rows),
        "n_scored": len(gold),
        "em": float(np.mean(em)) if gold else None,
        "f1": float(np.mean(f1)) if gold else None,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "bytes_per_request": float(np.mean([r["bytes"].get("request", 0) for r in ok])) if ok else 0.0,
        "fanout_bytes_per_request": float(np.mean([r["bytes"].get("fanout", 0) for r in ok])) if ok else 0.0,
    }
