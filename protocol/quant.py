"""Latent quantisation: fp32, fp16, and symmetric int8 / int4 with float32 scales.

Every `QuantizedLatent` that exists is valid (checked in `__post_init__`), so `dequantize`
cannot fail and always returns finite float32 values. Byte layouts are in SPEC.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .base import INT32_MAX, ProtocolError, check_int
from .codes import ErrorCode

FP16_MAX = 65504.0
F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, the smallest normal float32
F32_MAX = float(np.finfo(np.float32).max)


class Quant(str, Enum):
    """Wire name of a quantisation scheme."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


BITS = {Quant.FP32: 32, Quant.FP16: 16, Quant.INT8: 8, Quant.INT4: 4}
QMAX = {Quant.INT8: 127, Quant.INT4: 7}  # symmetric code range is -QMAX..QMAX


def _max_scale(qmax: int) -> float:
    """Largest float32 scale whose top code still dequantises to a finite float32."""
    s = np.float32(F32_MAX / qmax)
    while float(s) * qmax > F32_MAX:
        s = np.nextafter(s, np.float32(0))
    return float(s)


MAX_SCALE = {scheme: _max_scale(qmax) for scheme, qmax in QMAX.items()}


def body_nbytes(scheme: Quant, m: int, d_z: int) -> int:
    """Exact body length: M*d_z*bits/8, int4 rounded up to whole bytes."""
    return (m * d_z * BITS[scheme] + 7) // 8


def _codes(scheme: Quant, body: bytes, n: int) -> np.ndarray:
    """The n integer codes of an int8/int4 body as int8, flat in row-major order."""
    b = np.frombuffer(body, dtype=np.uint8)
    if scheme is Quant.INT8:
        return b.view(np.int8)
    nib = np.empty(b.size * 2, dtype=np.uint8)
    nib[0::2] = b & 0x0F  # low nibble first
    nib[1::2] = b >> 4
    return (nib[:n] ^ 8).astype(np.int8) - 8  # sign-extend the 4-bit two's complement


@dataclass(frozen=True)
class QuantizedLatent:
    """A (M, d_z) float32 latent as it travels: scheme, shape, raw body and per-group scales."""

    scheme: Quant
    shape: tuple[int, int]
    body: bytes
    scales: bytes = b""  # float32 little-endian, row-major (row, group); empty for fp16/fp32
    group_size: int | None = None  # columns per scale; None = one scale per row (int schemes only)

    def __post_init__(self) -> None:
        scheme = _scheme(self.scheme, "latent.scheme")
        object.__setattr__(self, "scheme", scheme)
        if not isinstance(self.shape, (tuple, list)) or len(self.shape) != 2:
            raise ProtocolError(f"latent.shape: expected (M, d_z), got {self.shape!r}")
        m = check_int("latent.shape[0] (M)", self.shape[0], 1, INT32_MAX)
        d = check_int("latent.shape[1] (d_z)", self.shape[1], 1, INT32_MAX)
        object.__setattr__(self, "shape", (m, d))
        for name in ("body", "scales"):
            if not isinstance(getattr(self, name), bytes):
                raise ProtocolError(f"latent.{name}: expected bytes, got {type(getattr(self, name)).__name__}")
        if len(self.body) != body_nbytes(scheme, m, d):
            raise ProtocolError(
                f"latent.body: {len(self.body)} bytes, {scheme.value} {m}x{d} needs exactly {body_nbytes(scheme, m, d)}"
            )
        if scheme in QMAX:
            self._check_int_scheme(scheme, m, d)
        else:
            self._check_float_scheme(scheme)

    def _check_float_scheme(self, scheme: Quant) -> None:
        if self.group_size is not None:
            raise ProtocolError(f"latent.group_size: must be None for {scheme.value}")
        if self.scales:
            raise ProtocolError(f"latent.scales: must be empty for {scheme.value}, got {len(self.scales)} bytes")
        if scheme is Quant.FP32:
            bits, exp = np.frombuffer(self.body, dtype="<u4"), 0x7F800000
        else:
            bits, exp = np.frombuffer(self.body, dtype="<u2"), 0x7C00
        if np.any(bits & exp == exp):
            raise ProtocolError(f"latent.body: {scheme.value} body contains NaN or inf")

    def _check_int_scheme(self, scheme: Quant, m: int, d: int) -> None:
        g = d if self.group_size is None else check_int("latent.group_size", self.group_size, 1, d)
        if d % g:
            raise ProtocolError(f"latent.group_size: {g} does not divide d_z={d}")
        if self.group_size is not None:
            object.__setattr__(self, "group_size", g)
        want = 4 * m * (d // g)
        if len(self.scales) != want:
            raise ProtocolError(
                f"latent.scales: {len(self.scales)} bytes, expected {want} ({m * (d // g)} float32 scales)"
            )
        s = np.frombuffer(self.scales, dtype="<f4")
        if not np.all((s >= F32_TINY) & (s <= MAX_SCALE[scheme])):
            bad = float(s[~((s >= F32_TINY) & (s <= MAX_SCALE[scheme]))][0])
            raise ProtocolError(
                f"latent.scales: scale {bad!r} must be finite and in [{F32_TINY!r}, {MAX_SCALE[scheme]!r}]"
            )
        if scheme is Quant.INT4 and (m * d) % 2 and self.body[-1] >> 4:
            raise ProtocolError("latent.body: int4 padding nibble (high nibble of the last byte) must be 0")
        if np.any(_codes(scheme, self.body, m * d) == -QMAX[scheme] - 1):
            raise ProtocolError(
                f"latent.body: {scheme.value} code {-QMAX[scheme] - 1} is outside the symmetric range "
                f"-{QMAX[scheme]}..{QMAX[scheme]}"
            )

    @property
    def groups(self) -> int:
        """Scales per row (1 when group_size is None); 0 for float schemes."""
        if self.scheme not in QMAX:
            return 0
        return self.shape[1] // (self.group_size or self.shape[1])


def quantize(x: np.ndarray, scheme: Quant | str, group_size: int | None = None) -> QuantizedLatent:
    """Quantise a 2-D latent; values are first cast to float32, and NaN/inf are refused."""
    scheme = _scheme(scheme, "scheme")
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape:
        raise ProtocolError(f"latent must be a non-empty 2-D (M, d_z) array, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ProtocolError(f"latent must be a real numeric array, got dtype {x.dtype}")
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ProtocolError(
            f"latent has {int(bad.sum())} non-finite value(s) (NaN, inf or beyond float32); "
            f"first at ({i}, {j}): {x[i, j]!r}"
        )
    m, d = x32.shape
    if scheme is Quant.FP32:
        return QuantizedLatent(scheme, (m, d), x32.astype("<f4").tobytes(), b"", _no_group(scheme, group_size))
    if scheme is Quant.FP16:
        big = np.abs(x32) > FP16_MAX
        if big.any():
            i, j = np.argwhere(big)[0]
            raise ProtocolError(
                f"latent value {x32[i, j]!r} at ({i}, {j}) exceeds the fp16 range ±{FP16_MAX:g}; use fp32, int8 or int4"
            )
        return QuantizedLatent(scheme, (m, d), x32.astype("<f2").tobytes(), b"", _no_group(scheme, group_size))
    g = d if group_size is None else check_int("group_size", group_size, 1, d)
    if d % g:
        raise ProtocolError(f"group_size {g} does not divide d_z={d}")
    qmax = QMAX[scheme]
    xs = x32.reshape(m, d // g, g).astype(np.float64)
    scale = np.clip((np.abs(xs).max(axis=2) / qmax).astype(np.float32), F32_TINY, MAX_SCALE[scheme])
    codes = np.clip(np.rint(xs / scale[..., None]), -qmax, qmax).astype(np.int8).ravel()
    if scheme is Quant.INT8:
        body = codes.tobytes()
    else:
        nib = codes.view(np.uint8) & 0x0F
        if nib.size % 2:
            nib = np.append(nib, np.uint8(0))
        body = (nib[0::2] | (nib[1::2] << 4)).tobytes()
    return QuantizedLatent(scheme, (m, d), body, scale.astype("<f4").tobytes(), None if group_size is None else g)


def _scheme(scheme: object, name: str) -> Quant:
    if not isinstance(scheme, str) or scheme not in Quant._value2member_map_:
        raise ProtocolError(
            f"{name}: unknown quant scheme {scheme!r}; expected one of {[q.value for q in Quant]}", ErrorCode.BAD_QUANT
        )
    return Quant(scheme)


def _no_group(scheme: Quant, group_size: int | None) -> None:
    if group_size is not None:
        raise ProtocolError(f"group_size applies to int8/int4 only, not {scheme.value}")


def _scales(q: QuantizedLatent) -> np.ndarray:
    """Scales as a float32 (M, groups, 1) array for broadcasting over (M, groups, group_size)."""
    return np.frombuffer(q.scales, dtype="<f4").astype(np.float32).reshape(q.shape[0], q.groups, 1)


def dequantize(q: QuantizedLatent) -> np.ndarray:
    """The latent as a fresh, writable float32 (M, d_z) array."""
    m, d = q.shape
    if q.scheme is Quant.FP32:
        return np.frombuffer(q.body, dtype="<f4").astype(np.float32).reshape(m, d)
    if q.scheme is Quant.FP16:
        return np.frombuffer(q.body, dtype="<f2").astype(np.float32).reshape(m, d)
    codes = _codes(q.scheme, q.body, m * d).astype(np.float32).reshape(m, q.groups, -1)
    return (codes * _scales(q)).reshape(m, d)


def error_bound(q: QuantizedLatent) -> np.ndarray:
    """Elementwise bound on |x - dequantize(q)| for the float32 x that `quantize` was given (float64).

    fp32: 0. fp16: max(2**-11 * |x_hat|, 2**-25) (half an ulp; 2**-25 covers subnormals).
    int8/int4: scale/2 per group, plus qmax*scale*2**-23 for float32 rounding of scale and product.
    """
    m, d = q.shape
    if q.scheme is Quant.FP32:
        return np.zeros((m, d))
    if q.scheme is Quant.FP16:
        return np.maximum(np.abs(dequantize(q).astype(np.float64)) * 2.0**-11, 2.0**-25)
    s = _scales(q).astype(np.float64) * (0.5 + QMAX[q.scheme] * 2.0**-23)
    return np.broadcast_to(s, (m, q.groups, d // q.groups)).reshape(m, d)
