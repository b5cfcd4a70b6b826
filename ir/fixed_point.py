"""Integer helpers of the integer contract (docs/integer.md): every rounding rule lives here.

All functions work elementwise on numpy int64 arrays (or Python ints) and are exact.
"""
from __future__ import annotations

import numpy as np

FRAC = 16                   # activations are int32 fixed point with 16 fractional bits ("Q.16")
ONE = 1 << FRAC
INT32_MAX = (1 << 31) - 1


def rshr(x, s):
    """Round-half-up arithmetic shift: floor((x + 2^(s-1)) / 2^s); s <= 0 shifts left exactly."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    pos = np.maximum(s, 0)
    rounded = (x + np.where(s > 0, np.left_shift(np.int64(1), np.maximum(pos - 1, 0)), 0)) >> pos
    return np.where(s > 0, rounded, x << np.maximum(-s, 0))


def div_round(n, d):
    """Round-half-up integer division for d > 0: floor((2n + d) / 2d)."""
    n = np.asarray(n, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    return (2 * n + d) // (2 * d)


def sat(x, bits: int):
    """Symmetric saturation to [-(2^(bits-1) - 1), 2^(bits-1) - 1]."""
    lim = (1 << (bits - 1)) - 1
    return np.clip(np.asarray(x, dtype=np.int64), -lim, lim)


def to_fixed(x: np.ndarray, frac: int = FRAC) -> np.ndarray:
    """Real values -> saturated int32 fixed point (round half away from zero, in float64)."""
    v = np.asarray(x, dtype=np.float64) * (1 << frac)
    return sat(np.sign(v) * np.floor(np.abs(v) + 0.5), 32)


def from_fixed(x, frac: int = FRAC) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) / (1 << frac)


def bit_length(x) -> np.ndarray:
    """Number of bits of |x| (0 for 0), elementwise."""
    a = np.abs(np.asarray(x, dtype=np.int64))
    out = np.zeros(a.shape, dtype=np.int64)
    nz = a > 0
    out[nz] = np.floor(np.log2(a[nz].astype(np.float64))).astype(np.int64) + 1
    # float log2 can be off by one right at powers of two: fix exactly
    too_big = nz & (np.left_shift(np.int64(1), np.maximum(out - 1, 0)) > a)
    out[too_big] -= 1
    too_small = nz & (np.left_shift(np.int64(1), out) <= a)
    out[too_small] += 1
    return out


def row_multiplier(amax):
    """amax / 127 as (mantissa, shift): amax/127 ~= m * 2^-e with m in [2^20/127, 2^21/127].

    e = 21 - bit_length(amax); m = div_round(amax * 2^e, 127) (amax * 2^e rounded by rshr if e < 0).
    Rows with amax == 0 get m = 0, e = 0.
    """
    amax = np.asarray(amax, dtype=np.int64)
    e = 21 - bit_length(amax)
    scaled = rshr(amax, -e)
    m = np.where(amax > 0, div_round(scaled, 127), 0)
    return m, np.where(amax > 0, e, 0)


def quantize_rows(x):
    """int8 codes of each row of a Q.16 tensor: x_q = sat8(rshr(x * inv, 32)), inv = div_round(127 << 32, amax).

    Returns (codes int64 [..., K], amax int64 [...]). A zero row gives zero codes."""
    x = np.asarray(x, dtype=np.int64)
    amax = np.max(np.abs(x), axis=-1)
    inv = np.where(amax > 0, div_round(np.int64(127) << 32, np.maximum(amax, 1)), 0)
    codes = sat(rshr(x * inv[..., None], 32), 8)
    return codes, amax


def quantize_rows_static(x, amax: int):
    """`quantize_rows` with one given amax for every row (a static per-tensor scale): x is clamped to
    [-amax, amax] first, which gives the codes saturation would and keeps x * inv within int64."""
    x = np.asarray(x, dtype=np.int64)
    a = max(int(amax), 0)
    inv = int(div_round(np.int64(127) << 32, a)) if a else 0
    codes = sat(rshr(np.clip(x, -a, a) * inv, 32), 8)
    return codes, np.full(x.shape[:-1], a, dtype=np.int64)
