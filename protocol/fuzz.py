"""Seeded mutation fuzzer for decode_frame, shared by the tests and the benchmark.

Contract checked per case: decode_frame returns a message or raises ProtocolError, nothing else;
and an accepted message re-encodes and decodes to an equal message.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .base import DEFAULT_LIMITS, Limits, ProtocolError
from .frames import decode_frame, encode_frame
from .messages import Ask, ErrorReply, Heartbeat, JointReply, Message, Reply, Sent, TextRequest, latent_request

_MAX_FAILURES = 50  # keep the first few; one is enough to fail a test


@dataclass
class FuzzStats:
    """Outcome of a fuzz run; `failures` describes cases that broke the contract (should be empty)."""

    count: int = 0
    accepted: int = 0
    rejected: int = 0
    failures: list[str] = field(default_factory=list)


def sample_messages() -> list[Message]:
    """One or more valid messages of every kind and quant scheme, used as fuzz seeds."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    small = rng.standard_normal((3, 5)).astype(np.float32) * 1e3
    return [
        latent_request("r1", "sender", "ckpt-abc", x[:2, :16], "fp32"),
        latent_request("r2", "sender", "ckpt-abc", x, "fp16"),
        latent_request("r3", "sender", "ckpt-abc", x, "int8"),
        latent_request("r4", "sender", "ckpt-abc", x, "int4", group_size=64, max_new_tokens=8),
        latent_request("r5", "sender", "ckpt-abc", small, "int4"),  # odd count: padding nibble
        latent_request("r6", "sender", "ckpt-abc", small, "int8", group_size=5),
        TextRequest("r7", "sender", "Question: who?\nContext: Ada Lovelace wrote it.", budget=8),
        TextRequest("r8", "sender", "Question: où?\nContext: à Paris.", max_new_tokens=32),
        # the optional deadline keys, so mutations reach their checks too
        latent_request("r9", "sender", "ckpt-abc", small, "int8", deadline=1.7e9 + 0.25, opened=1.7e9),
        TextRequest("r10", "sender", "Question: who?\nContext: Ada.", deadline=1.7e9 + 60.0, opened=1.7e9),
        Reply("r7", "recv-llama", "llama", "Ada Lovelace", -0.25, {"encode": 0.001, "generate": 0.2}, "ckpt-abc"),
        ErrorReply("", "recv-qwen", "bad_frame", "latent frame: missing field 'b'"),
        Heartbeat("", "recv-qwen", "receiver", "ready", {"model": "qwen", "d_model": 896, "load_s": 1.5}),
        Heartbeat("", "recv-qwen", "receiver", "alive", {}, {"latent": (0.98, -0.8), "relay": (0.9, -1.5)}),
        Sent("r3", "sender", 2100, 52, 2048, 32, 4200, 2, 2, {"encode": 0.5, "frame": 0.001}),
        Ask("c1", "client", "Who wrote it?", "Ada Lovelace wrote it.", "latent", "int4", 8, max_new_tokens=8),
        Ask("c2", "client", "Où?", "à Paris.", "token-budget", budget=8),
        Ask("c3", "arbiter", "Who?", "Ada.", "text", deadline=1.7e9 + 60.0, opened=1.7e9),
        JointReply(
            "c1", "arbiter", "Ada Lovelace", "llama", 0.75, 1, 0,
            {"llama": "Ada Lovelace", "qwen": "ada lovelace"}, {"llama": -0.25, "qwen": -0.5},
            {"llama": 0.75, "qwen": 0.6}, {}, {"e2e": 0.4, "llama.generate": 0.2}, {"request": 1100, "fanout": 2200},
        ),
        JointReply("c2", "arbiter", "Paris", "qwen", 0.5, 0, 1, {"qwen": "Paris"}, errors={"llama": "timeout: ..."}),
    ]  # fmt: skip


_POOL: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**31, 2**63 - 1, -(2**63), 2**64 - 1,
    0.0, -0.0, 1.5, -1.0, math.nan, math.inf, -math.inf, 1e300,
    "", "x", "latentwire", "int4", "int8", "fp16", "lat", "rep", "\u00e9\u4e2d", "a" * 2000,
    b"", b"\x00", bytes(7), b"\x80" * 16, b"\xff\xff\x7f\x7f" * 8,
    [], [1, 2], {}, {"a": 1.0}, {"a": "b"}, {"a": -1.0}, {"a": [1]}, {1: 2},
    msgpack.ExtType(1, b"x"),
]  # fmt: skip


def _similar(rng: random.Random, value: Any) -> Any:
    """A value close to `value` (same type, edge sizes) so mutations reach the deeper checks."""
    if isinstance(value, bytes) and value:
        n = len(value) + rng.choice((-1, 0, 0, 0, 1))
        if rng.random() < 0.5:
            return rng.randbytes(n)
        b = bytearray(value[:n].ljust(n, b"\x00"))
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if isinstance(value, int) and not isinstance(value, bool):
        v = rng.choice((value - 1, value + 1, value * 2, -value, 0, 2**31 - 1))
        return v if -(2**63) <= v < 2**64 else 0  # msgpack ints are 64-bit
    if isinstance(value, float):
        return rng.choice((-value, math.nan, -1e-9, 1e308, math.inf))
    if isinstance(value, dict) and value:
        d = dict(value)
        d[rng.choice(list(d))] = rng.choice(_POOL)
        return d
    return rng.choice(_POOL)


def _mutate_fields(rng: random.Random, wire: dict[str, Any]) -> bytes:
    """Structure-aware: change, drop or add keys, then re-pack (a well-formed but hostile map)."""
    w = dict(wire)
    for _ in range(rng.randint(1, 2)):
        key = rng.choice(list(w) or ["p"])
        op = rng.random()
        if op < 0.45:
            w[key] = _similar(rng, w.get(key))
        elif op < 0.8:
            w[key] = rng.choice(_POOL)
        elif op < 0.9:
            w.pop(key, None)
        else:
            w[rng.choice(("zz", "extra", "B"))] = rng.choice(_POOL)  # unknown keys must be ignored
    return msgpack.packb(w, use_bin_type=True)


def _mutate_bytes(rng: random.Random, frame: bytes) -> bytes:
    """Byte-level: bit flips, replacements, insertions, deletions, truncation; biased to the header."""
    b = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        n = len(b)
        pos = rng.randrange(min(n, 96) if rng.random() < 0.6 else n) if n else 0
        op = rng.randrange(5)
        if op == 0 and n:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[pos] = rng.choice((0x00, 0x7F, 0x80, 0xC1, 0xD9, 0xDB, 0xDC, 0xDE, 0xFF, rng.randrange(256)))
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del b[pos : pos + rng.randint(1, 8)]
        else:
            del b[rng.randrange(n + 1) :]
    return bytes(b)


def _check(data: bytes, limits: Limits, stats: FuzzStats, case: str) -> None:
    stats.count += 1
    try:
        msg = decode_frame(data, limits)
    except ProtocolError:
        stats.rejected += 1
        return
    except Exception as e:  # anything else escaping decode_frame is a bug: record it
        _fail(stats, f"{case}: {type(e).__name__}: {e}; frame={data[:80].hex()}")
        return
    stats.accepted += 1
    try:
        again = decode_frame(encode_frame(msg, limits), limits)
    except Exception as e:
        _fail(stats, f"{case}: accepted frame does not re-encode: {type(e).__name__}: {e}")
        return
    if again != msg:
        _fail(stats, f"{case}: accepted frame does not round-trip: {msg!r}")


def _fail(stats: FuzzStats, text: str) -> None:
    if len(stats.failures) < _MAX_FAILURES:
        stats.failures.append(text)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """One hostile variant of a valid frame: field-level (40%) or byte-level (60%) mutation."""
    if rng.random() < 0.4:
        return _mutate_fields(rng, msgpack.unpackb(frame, raw=False))
    return _mutate_bytes(rng, frame)


def fuzz(n: int, seed: int = 0, limits: Limits = DEFAULT_LIMITS) -> FuzzStats:
    """Decode n mutated/truncated frames of every kind; deterministic for a given seed."""
    rng = random.Random(seed)
    frames = [encode_frame(m) for m in sample_messages()]  # seeds use the default limits
    wires = [msgpack.unpackb(f, raw=False) for f in frames]
    stats = FuzzStats()
    for case in range(n):
        i = rng.randrange(len(frames))
        data = _mutate_fields(rng, wires[i]) if rng.random() < 0.4 else _mutate_bytes(rng, frames[i])
        _check(data, limits, stats, f"seed {seed} case {case} (seed frame {i})")
    return stats
