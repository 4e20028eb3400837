"""A receiver: one frozen LLM + its adapter, answering latent and text frames (the socket loop is `process.py`).

`Receiver.handle` is the whole per-frame logic and never raises: a bad frame gets an ErrorReply and the loop keeps
serving.

Work nobody waits for is dropped with an `expired` error instead of being generated (SPEC.md "Deadlines"): a frame
past its deadline, or opened before this receiver came back from a silence the arbiter took for death (`Liveness`:
a stopped process finds its socket full of such frames, and answering them would delay the ones still waited for).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from latentwire.checkpoint_config import CheckpointConfig
from latentwire.processes import net
from latentwire.protocol import (
    ErrorReply,
    LatentRequest,
    ProtocolError,
    Reply,
    TextRequest,
    decode_frame,
    dequantize,
    error_reply,
    peek_rid,
)

from .backlog import Backlog, sub_batches

__all__ = [
    "MAX_BACKLOG",
    "MAX_BATCH",
    "MAX_BATCH_POSITIONS",
    "MAX_PAUSED",
    "PREFILL_CHUNK",
    "Backlog",
    "Liveness",
    "Receiver",
    "positions",
    "sub_batches",
]

log = logging.getLogger("latentwire.receiver")
T = TypeVar("T")  # what a caller tags its queued requests with (the frame's index, or nothing)
R = TypeVar("R")


# text and token-budget slots: a longer prompt would hold the receiver for minutes (every dev context fits,
# even one byte per token); further capped by the model's own context window
MAX_SLOT_TOKENS = 16384
PROMPT_ROOM = 256  # positions kept for the chat template around the slot and the answer
MAX_BATCH = 8  # requests decoded through one generate call at most (serve's `max_batch`)
# requests read off the socket and waiting for a generate call (`Backlog`): enough that a short ask is read past a
# window of long ones and goes next; what waits is small (token ids, latent slots), the rest stays on the socket
MAX_BACKLOG = 64
# padded positions (requests x the longest one's slot + answer) decoded through one generate call: memory grows with
# it, and eight text asks near the slot cap together would need ~10 GB; one request over it is decoded alone
MAX_BATCH_POSITIONS = 8192
# prompt positions a generate call reads per step (`lm.Decoding`; then one token a step): between two steps a
# receiver may answer shorter work first, so a short ask waits for about one such step of a long call, not for the
# whole call; a latent prompt fits in one step
PREFILL_CHUNK = 256
# generate calls paused at once for shorter work (each keeps its KV cache meanwhile): a call runs between two steps
# of one at most half its size, which may itself be paused for one at most half of that
MAX_PAUSED = 2
# after a silence the arbiter took for death, work opened up to this long after the return is dropped too: the
# arbiter may have opened it before it heard the heartbeat that ends the silence (then nobody waits for it)
RETURN_GRACE_S = 0.5


class Liveness:
    """When this process last told the arbiter it is alive, and when it last came back from a silence of more than
    `dead_after` (the arbiter's net.DEAD_AFTER_S): meanwhile the arbiter took it for dead, closed the requests that
    waited only on it and opened the next ones without it, so work opened before its return is waited for by no one.
    The arbiter hears of the return a moment later (`grace`): work opened that moment is dropped too, at the cost of
    a degraded answer where the arbiter had heard it already, rather than generated for a request that is gone.

    Shared by two threads: the heartbeat thread calls `beat` before each heartbeat, the serving thread asks `back`
    before it serves (a stopped process resumes both at once, so either may notice the silence first)."""

    def __init__(
        self,
        dead_after: float = net.DEAD_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        grace: float = RETURN_GRACE_S,
    ) -> None:
        self.dead_after, self._clock, self._wall, self.grace = dead_after, clock, wall, grace
        self._lock = threading.Lock()
        self._last = clock()  # the last heartbeat (monotonic: runs on while the process is stopped)
        self._back = 0.0  # Unix time of the last return from a silence (0: never silent)
        self.silences = 0

    def _silent(self) -> bool:
        return self._clock() - self._last > self.dead_after

    def beat(self) -> None:
        """A heartbeat goes out now (called before sending it, so the arbiter never hears it before `back` moves)."""
        with self._lock:
            if self._silent():
                self._back = self._wall() + self.grace
                self.silences += 1
            self._last = self._clock()

    def back(self) -> float:
        """Unix time before which opened work is waited for by no one: the last return from a silence, or now while
        still silent (the heartbeat that ends it has not gone out yet)."""
        with self._lock:
            if self._silent():
                self._back = self._wall() + self.grace
            return self._back


@dataclass
class _Prepared:
    """A request that passed every check, with its slot embeddings, ready to generate."""

    msg: LatentRequest | TextRequest
    slot: torch.Tensor
    durations: dict[str, float]
    fingerprint: str  # stamped on the reply (latent answers only)
    ids: bool = False  # `slot` holds token ids (text), embedded only for the generate call; else embeddings


@dataclass
class Receiver:
    """Frame in, Reply or ErrorReply out; holds the LLM, the adapter and the checkpoint's fingerprint."""

    llm: object  # latentwire.models.LLM
    adapter: torch.nn.Module
    name: str  # the model's name in the checkpoint (what the arbiter calibrates and reports by)
    fingerprint: str
    pid: str  # this process's id, the `sender` of its frames
    max_new_tokens: int = 64  # cap on what a request may ask for (generation time is the receiver's cost)
    m: int | None = None  # soft tokens per latent of the checkpoint (`encoder.m`); None accepts any M
    max_slot_tokens: int = MAX_SLOT_TOKENS  # cap on the slot of the text and token-budget paths
    max_batch_positions: int = MAX_BATCH_POSITIONS  # cap on one generate call's padded positions
    prefill_chunk: int | None = PREFILL_CHUNK  # prompt positions a generate step reads (None: the whole prompt)
    liveness: Liveness | None = None  # set by `serve`: work opened before a silence is dropped; None: never
    wall: Callable[[], float] = time.time  # the clock deadlines are read on (Unix time)

    def replies(self, frames: Sequence[bytes]) -> Iterator[tuple[int, Reply | ErrorReply]]:
        """(index of the frame, its reply) for frames that arrived together, each as soon as it is ready; never
        raises. Refusals come first, then one `generate` call after another as `Backlog.take` picks them (the
        shortest first, so short asks are not kept waiting behind long ones)."""
        backlog: Backlog[tuple[int, _Prepared]] = Backlog(self.max_batch_positions, len(frames))
        for i, data in enumerate(frames):
            refused = self.enqueue(data, backlog, i)
            if refused is not None:
                yield i, refused
        while backlog:
            yield from self.generate_next(backlog)

    def enqueue(self, data: bytes, backlog: Backlog[tuple[T, _Prepared]], tag: T) -> ErrorReply | None:
        """Check and prepare one frame and queue it in `backlog` under `tag`; its refusal instead, if any."""
        prep = self._prepare(data)
        if isinstance(prep, ErrorReply):
            return prep
        cap = min(prep.msg.max_new_tokens, self.max_new_tokens)
        backlog.add((tag, prep), (isinstance(prep.msg, LatentRequest), cap), positions(prep.slot, cap))
        return None

    def generate_next(
        self,
        backlog: Backlog[tuple[T, _Prepared]],
        read: Callable[[], Iterable[tuple[T, ErrorReply]]] | None = None,
    ) -> Iterator[tuple[T, Reply | ErrorReply]]:
        """(tag, reply) for the requests of the next generate call `backlog` picks: one call of at most
        `max_batch_positions` padded positions (left-padded, so each answer is the one it would get alone); a
        failing request costs only its own answer. Right before the call, and once more after it, a request nobody
        waits for any more (`expired`) gets that error instead: earlier calls take time.

        The call runs as steps (`lm.Decoding`: `prefill_chunk` prompt positions, then one token a step). Between
        two steps `read` queues in `backlog` what arrived meanwhile (its refusals are passed on); a call the backlog
        then holds whose longest request is at most half this one's positions runs to completion first, and its
        replies go out before this one's (token-level preemption). That shorter call may be paused the same way,
        `MAX_PAUSED` calls deep at most (each keeps its KV cache), and a call is paused at most
        `backlog.max_passed` times (a stream of short asks does not starve it). A paused call resumes exactly where
        it stopped: its answers are the ones it gets uninterrupted, bit for bit."""
        yield from self._next(backlog, read, None, 0)

    def _next(
        self,
        backlog: Backlog[tuple[T, _Prepared]],
        read: Callable[[], Iterable[tuple[T, ErrorReply]]] | None,
        at_most: int | None,
        depth: int,
    ) -> Generator[tuple[T, Reply | ErrorReply], None, bool | None]:
        """`generate_next` for the call `backlog.take(at_most)` picks, `depth` calls paused below it; returns None
        when there was none, else whether it generated (all of it may have expired)."""
        group, items = backlog.take(at_most)
        if not items:
            return None
        _, cap = group
        live = []
        for tag, p in items:
            gone = self._expired(p.msg)
            if gone is None:
                live.append((tag, p))
            else:
                yield tag, gone
        if not live:
            return False
        preps = [p for _, p in live]
        size = max(positions(p.slot, cap) for p in preps)
        call, paused = self._generate(preps, cap), 0
        while True:
            try:
                next(call)
            except StopIteration as end:
                replies = end.value
                break
            if read is None:
                continue
            yield from read()
            while depth < MAX_PAUSED and paused < backlog.max_passed:
                ran = yield from self._next(backlog, read, size // 2, depth + 1)
                if ran is None:
                    break
                paused += ran
        for (tag, p), reply in zip(live, replies, strict=True):
            # stopped mid-generate: the answer would arrive after the arbiter stopped waiting for it
            yield tag, (self._expired(p.msg) if isinstance(reply, Reply) else None) or reply
        return True

    def refuse_all(self, backlog: Backlog[tuple[T, _Prepared]], why: str) -> Iterator[tuple[T, ErrorReply]]:
        """`shutting_down` for everything still queued in `backlog` (the process is stopping)."""
        for tag, p in backlog.drain():
            yield tag, error_reply(p.msg.rid, self.pid, "shutting_down", why)

    def _expired(self, msg: LatentRequest | TextRequest) -> ErrorReply | None:
        """An `expired` error when nobody waits for `msg`'s answer any more (SPEC.md "Deadlines"), else None."""
        now = self.wall()
        if msg.deadline is not None and now >= msg.deadline:
            why = f"deadline passed {now - msg.deadline:.1f} s ago"
        elif msg.opened is not None and self.liveness is not None and msg.opened < (back := self.liveness.back()):
            why = f"opened {back - msg.opened:.1f} s before it came back from a silence (taken for dead)"
        else:
            return None
        return error_reply(msg.rid, self.pid, "expired", f"{self.name}: dropped, nobody waits for it: {why}")

    def _prepare(self, data: bytes) -> _Prepared | ErrorReply:
        cpu0 = time.process_time()
        prep = self._parse(data)
        if isinstance(prep, _Prepared):
            prep.durations["cpu"] = time.process_time() - cpu0
        return prep

    def _parse(self, data: bytes) -> _Prepared | ErrorReply:
        t0 = time.perf_counter()
        try:
            msg = decode_frame(data)
        except ProtocolError as e:
            return error_reply(peek_rid(data), self.pid, e.code.value, str(e))
        try:
            if isinstance(msg, (LatentRequest, TextRequest)) and (gone := self._expired(msg)) is not None:
                return gone  # before any work: a stopped receiver wades through its backlog at decoding speed
            if isinstance(msg, LatentRequest):
                return self._latent(msg, t0)
            if isinstance(msg, TextRequest):
                return self._text(msg, t0)
            return error_reply(
                msg.rid, self.pid, "unexpected_kind", f"a receiver answers lat and txt frames, not {type(msg).__name__}"
            )
        except Exception as e:  # noqa: BLE001 - one failed request must not take the receiver down
            log.exception("request %s failed", getattr(msg, "rid", ""))
            return error_reply(getattr(msg, "rid", ""), self.pid, "internal", f"{type(e).__name__}: {e}")

    def _latent(self, msg: LatentRequest, t0: float) -> _Prepared | ErrorReply:
        if msg.fingerprint != self.fingerprint:
            return error_reply(
                msg.rid,
                self.pid,
                "wrong_checkpoint",
                f"latent from checkpoint {msg.fingerprint[:12]}, this receiver serves {self.fingerprint[:12]}",
            )
        m, d = msg.latent.shape
        d_z = int(self.adapter.cfg.d_z)
        if d != d_z or (self.m is not None and m != self.m):
            want = f"{self.m}x{d_z}" if self.m is not None else f"Mx{d_z}"
            return error_reply(msg.rid, self.pid, "bad_shape", f"latent is {m}x{d}, the checkpoint's is {want}")
        x = dequantize(msg.latent)
        if not np.isfinite(x).all():
            return error_reply(msg.rid, self.pid, "bad_frame", "latent: values must be finite (nan or inf found)")
        z = torch.from_numpy(x).to(self.llm.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            slot = self.adapter.to_slots(z[None])[0].to(self.llm.model.dtype)
        if not torch.isfinite(slot).all():  # finite but extreme values overflow in the adapter
            return error_reply(msg.rid, self.pid, "bad_frame", "latent: values out of range (the adapter overflows)")
        if slot.shape[0] <= int(getattr(self.adapter.cfg, "prompt_len", 0)):  # the trained prompt alone is no question
            why = "latent: no row matches a token of this receiver's vocabulary (every row dropped)"
            return error_reply(msg.rid, self.pid, "no_match", why)
        t2 = time.perf_counter()
        return _Prepared(msg, slot, {"decode": t1 - t0, "adapt": t2 - t1}, self.fingerprint)

    def _text(self, msg: TextRequest, t0: float) -> _Prepared | ErrorReply:
        from latentwire.prompts import slot_ids

        if msg.budget is not None and msg.budget > self.max_slot_tokens:
            why = f"token budget {msg.budget} is over this receiver's cap of {self.max_slot_tokens} slot tokens"
            return error_reply(msg.rid, self.pid, "too_large", why)
        ids = slot_ids(self.llm.tokenizer, msg.text, msg.budget)
        if not ids:
            return error_reply(msg.rid, self.pid, "bad_frame", "text: no tokens (empty prompt)")
        if len(ids) > self.max_slot_tokens:
            why = f"prompt of {len(ids)} tokens is over this receiver's cap of {self.max_slot_tokens}"
            return error_reply(msg.rid, self.pid, "too_large", why)
        # token ids until the call (what waits in the backlog stays small): embedded in `_generate`
        slot = torch.tensor(ids, device=self.llm.device)
        return _Prepared(msg, slot, {"tokenize": time.perf_counter() - t0}, "", ids=True)

    def _generate(self, preps: list[_Prepared], cap: int) -> Generator[None, None, list[Reply | ErrorReply]]:
        """One generate call for `preps`, a step (`lm.Decoding`) each time it is resumed; returns the replies. If it
        fails, each is retried alone so only the culprit fails. Its durations count its own steps only, not what
        ran while it was paused."""
        from latentwire.lm import Decoding
        from latentwire.metrics import postprocess

        def start() -> Decoding:
            slots = [self.llm.embed(p.slot) if p.ids else p.slot for p in preps]  # text: token ids until now
            return Decoding(self.llm, slots, cap, prefill_chunk=self.prefill_chunk)

        spent = _Spent()
        try:
            run = spent(start)
            while not spent(run.step):
                yield  # paused here while shorter work runs
            gens = run.results()
        except Exception as e:  # noqa: BLE001 - one failed request must not take the receiver down
            if len(preps) > 1:
                out: list[Reply | ErrorReply] = []
                for p in preps:
                    out += yield from self._generate([p], cap)
                return out
            log.exception("request %s failed", preps[0].msg.rid)
            return [error_reply(preps[0].msg.rid, self.pid, "internal", f"{type(e).__name__}: {e}")]
        cpu_share = spent.cpu / len(preps)  # every thread of this process, split evenly
        out = []
        for p, gen in zip(preps, gens, strict=True):
            durations = {**p.durations, "generate": spent.wall}
            durations["total"] = sum(v for k, v in durations.items() if k != "cpu")
            durations["cpu"] = durations.get("cpu", 0.0) + cpu_share  # CPU-seconds, for the cost of a question
            try:
                out.append(
                    Reply(p.msg.rid, self.pid, self.name, postprocess(gen.text), gen.score, durations, p.fingerprint)
                )
            except ProtocolError as e:  # e.g. a non-finite score: say so, not "internal"
                out.append(error_reply(p.msg.rid, self.pid, "bad_output", f"the model's answer is unusable: {e}"))
        return out


class _Spent:
    """Wall and CPU seconds of the work run through it: a generate call's own steps, not what ran while it was
    paused (CPU time is the whole process's, every thread)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, work: Callable[[], R]) -> R:
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            return work()
        finally:
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - cpu0


def positions(slot: torch.Tensor, cap: int) -> int:
    """What a request adds to its batch's padded length: its slot (embeddings or token ids) and the tokens it may
    generate (the chat template around them is the same few dozen positions for every request)."""
    return int(slot.shape[0]) + cap


def load_receiver(
    model: str,
    ckpt: str | Path,
    name: str | None,
    pid: str,
    device: str,
    dtype: str,
    engine: str = "auto",
    cfg: CheckpointConfig | None = None,
) -> Receiver:
    """Load the frozen LLM (run by `engine`) and the checkpoint's adapter for it (refused if they do not match);
    `cfg`: the checkpoint's config, if the caller has read it already (validated against the adapter kinds)."""
    from latentwire import checkpoint
    from latentwire.models import load_llm

    from .adapter import adapter_schemas, load_adapter

    name = name or model
    # the whole config first: a broken one is one line naming the field, not a failure after a slow model load
    cfg = cfg or checkpoint.load_config(ckpt, adapters=adapter_schemas())
    if name not in cfg.models:
        raise checkpoint.CheckpointError(f"{ckpt} has no adapter for model {name!r} (it has: {', '.join(cfg.models)})")
    llm = load_llm(model, device=device, dtype=dtype, engine=engine)
    adapter = load_adapter(ckpt, name, llm, cfg)
    rx = Receiver(llm, adapter, name, checkpoint.fingerprint(ckpt), pid, m=cfg.encoder["m"])
    rx.max_slot_tokens = slot_cap(llm)
    return rx


def slot_cap(llm: object, cap: int = MAX_SLOT_TOKENS) -> int:
    """`cap`, or less where the model's context window is smaller."""
    window = getattr(getattr(getattr(llm, "model", None), "config", None), "max_position_embeddings", None)
    return min(cap, window - PROMPT_ROOM) if isinstance(window, int) and window > 2 * PROMPT_ROOM else cap
