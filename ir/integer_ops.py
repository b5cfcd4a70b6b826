"""The integer contract's arithmetic: one function per fixed-point op (docs/integer.md).

Every function takes and returns int64 numpy arrays (activations in Q.16 saturated to int32) and
keeps every intermediate exact in int64; `llmfab.ir.integer` runs a graph with them, the
simulator and the RTL compute the same numbers. docs/integer.md is the prose of each formula;
change both together.
"""
from __future__ import annotations

import math
from enum import Enum
from functools import cache
from typing import Callable

import numpy as np

from .fixed_point import FRAC, ONE, bit_length, div_round, quantize_rows, quantize_rows_static, row_multiplier, rshr, sat, to_fixed
from .ops import GeluApprox
from .quant import QuantizedWeight

I64 = np.int64
MAX_K = 1 << 17           # linear: |P| < 2^31 and |acc * m_x| < 2^61
MAX_NORM_D = 1 << 15      # norms: 2 * sum Xs^2 + D < 2^63
MAX_HEAD_DIM = 1 << 10    # attention: |t1 * m_q| < D 2^52
MEAN_BITS = 8             # LayerNorm: extra fractional bits of the mean and the deviations


class IntegerError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# exact integer helpers


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=I64)


def _round_away(v: float) -> int:
    """round_half_away(v) of one float (as `to_fixed` does elementwise)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _shr_sat(x, s, bits: int) -> np.ndarray:
    """sat(rshr(x, s), bits), exact for |x| < 2^61 and any shift s (also s <= 0 and s > 62)."""
    x, s = np.broadcast_arrays(_i64(x), _i64(s))
    lim = (1 << (bits - 1)) - 1
    down = np.clip(rshr(x, np.clip(s, 0, 62)), -lim, lim)  # s > 62 rounds |x| < 2^61 to 0 as s = 62 does
    k = np.clip(-s, 0, 62)
    big = np.abs(x) > (lim >> k)                           # |x 2^k| > lim: saturates
    up = np.where(big, np.sign(x) * lim, np.where(big, 0, x) << k)
    return np.where(s > 0, down, up)


def isqrt(x) -> np.ndarray:
    """floor(sqrt(x)) of non-negative int64 values, exact (float estimate, then corrected)."""
    x = _i64(x)
    if (x < 0).any():
        raise ValueError("isqrt of a negative value")
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(I64)
    while True:
        hi = r * r > x
        lo = (r + 1) * (r + 1) <= x
        if not (hi.any() or lo.any()):
            return r
        r = r - hi + lo


def quantize_activation(x_fx, static_amax: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes of each row of `x_fx` and the row scale as (m, e): row ~= codes * m * 2^-e.
    `static_amax`: every row with that one amax (a static per-tensor scale) instead of its own."""
    codes, amax = quantize_rows(x_fx) if static_amax is None else quantize_rows_static(x_fx, static_amax)
    m, e = row_multiplier(amax)
    return codes, m, e


# ---------------------------------------------------------------------------------------------
# matrix engine: linear, lm_head, embedding


def _check_weight(qw) -> QuantizedWeight:
    if not isinstance(qw, QuantizedWeight):
        raise IntegerError(f"expected a QuantizedWeight, not {type(qw).__name__}")
    if not qw.has_values:
        raise IntegerError(f"quantized weight {qw.name or '<unnamed>'} has no values (config-only model)")
    return qw


def group_partial_sums(x_q, qw: QuantizedWeight) -> np.ndarray:
    """P[r, n, j] = sum over group j of x_q[r, k] * code[n, k] (exact): int64 [R, N, G]. A partial
    last group sums its K mod g columns (zero-padded here: a zero code adds nothing)."""
    qw = _check_weight(qw)
    x_q = _i64(x_q)
    (n, k), g = qw.shape, qw.group
    if x_q.ndim != 2 or x_q.shape[1] != k:
        raise IntegerError(f"activation codes {list(x_q.shape)} do not fit weight [{n}, {k}]")
    groups = qw.scheme.groups(k)
    pad = groups * g - k
    xg = np.pad(x_q, ((0, 0), (0, pad))).reshape(-1, groups, g).transpose(1, 0, 2)                   # [G, R, g]
    cg = np.pad(_i64(qw.codes), ((0, 0), (0, pad))).reshape(n, groups, g).transpose(1, 2, 0)      # [G, g, N]
    return np.matmul(xg, cg).transpose(1, 2, 0)                        # [R, N, G]


def group_accumulate(p, qw: QuantizedWeight) -> np.ndarray:
    """acc[r, n] = sum_j P[r, n, j] * mant[n, j] (exact): int64 [R, N]."""
    return np.sum(_i64(p) * _i64(qw.mant)[None], axis=-1)


def int_linear(x_fx, qw: QuantizedWeight, bias_fx=None, act_amax: int | None = None) -> np.ndarray:
    """Y = X W^T + b on Q.16 values [..., K] -> [..., N] (docs/integer.md "Linear / LM head").
    `act_amax`: a static per-tensor activation scale (LinearAttrs.act_amax) instead of per row."""
    qw = _check_weight(qw)
    x = _i64(x_fx)
    n, k = qw.shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise IntegerError(f"input {list(x.shape)} does not match weight [{n}, {k}]")
    if k > MAX_K:
        raise IntegerError(f"K={k} exceeds {MAX_K}: int32 partial sums would overflow")
    lead = x.shape[:-1]
    x_q, m_x, e_x = quantize_activation(x.reshape(-1, k), act_amax)
    acc = group_accumulate(group_partial_sums(x_q, qw), qw)
    y = _shr_sat(acc * m_x[:, None], _i64(qw.shift)[None, :] + e_x[:, None], 32)
    if bias_fx is not None:
        y = sat(y + _i64(bias_fx), 32)
    return y.reshape(*lead, n)


def int_embedding(qw: QuantizedWeight, ids) -> np.ndarray:
    """Rows `ids` of the quantized table in Q.16: sat(rshr(code * mant, shift - 16), 32)."""
    qw = _check_weight(qw)
    ids = _i64(ids)
    v = qw.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= v):
        raise IntegerError(f"token ids must be in [0, {v}), got {ids.min()}..{ids.max()}")
    codes = _i64(qw.codes)[ids]                                          # [..., D]
    mant = np.repeat(_i64(qw.mant), qw.group, axis=1)[:, :qw.shape[1]][ids]
    return _shr_sat(codes * mant, (_i64(qw.shift)[ids] - FRAC)[..., None], 32)


# ---------------------------------------------------------------------------------------------
# norms


def _normalize(x, eps: float, frac: int = FRAC) -> np.ndarray:
    """x / rms(x) per row of Q.`frac` values, in Q.16 (norm steps 1-4, see the module docstring)."""
    d = x.shape[-1]
    if d > MAX_NORM_D:
        raise IntegerError(f"norm width {d} exceeds {MAX_NORM_D}")
    eps32 = _round_away(eps * 2.0 ** 32)
    if not 0 <= eps32 < 1 << 29:
        raise IntegerError(f"eps must be in [0, 1/8), not {eps!r}")
    a = np.max(np.abs(x), axis=-1, keepdims=True)
    s = np.maximum(bit_length(a) - 23, frac - 32)                      # xs: at most Q.32
    xs = rshr(x, s)                                                      # |xs| <= 2^23
    ms = div_round(np.sum(xs * xs, axis=-1, keepdims=True), d)          # Q.(2 frac - 2s)
    big_s = isqrt(ms + rshr(I64(eps32), 2 * s - 2 * (frac - FRAC)))    # eps in Q.(2 frac - 2s)
    r = div_round(I64(1) << 46, np.maximum(big_s, 1))
    return _shr_sat(xs * r, 30, 32)


def int_rms_norm(x_fx, w_fx, eps: float) -> np.ndarray:
    """RMSNorm of Q.16 rows [..., D] with a Q.16 weight [D]."""
    n = _normalize(_i64(x_fx), eps)
    return _shr_sat(n * _i64(w_fx), 16, 32)


def int_layer_norm(x_fx, w_fx, b_fx, eps: float) -> np.ndarray:
    """LayerNorm of Q.16 rows [..., D] with Q.16 weight and bias [D] (mean and deviations in Q.24)."""
    x = _i64(x_fx) << MEAN_BITS
    mu = div_round(np.sum(x, axis=-1, keepdims=True), x.shape[-1])
    n = _normalize(x - mu, eps, FRAC + MEAN_BITS)
    return sat(rshr(n * _i64(w_fx), 16) + _i64(b_fx), 32)


# ---------------------------------------------------------------------------------------------
# tables: SiLU, GELU, exp, tanh


class Lut(Enum):
    """The 257-knot tables of docs/integer.md: knots lo + j/16, j = 0..256."""
    SILU = "silu"
    GELU = "gelu"
    GELU_TANH = "gelu_tanh"
    EXP = "exp"
    TANH = "tanh"

    @property
    def lo(self) -> int:
        return -16 if self is Lut.EXP else -8

    @property
    def below(self) -> int:
        """The value below the first knot: 0 where the function vanishes there, tanh's T[0] (-1)."""
        return int(act_table(self)[0]) if self is Lut.TANH else 0


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


_LUT_FN: dict[Lut, Callable[[float], float]] = {
    Lut.SILU: _silu, Lut.GELU: _gelu, Lut.GELU_TANH: _gelu_tanh, Lut.EXP: math.exp, Lut.TANH: math.tanh,
}


@cache
def act_table(kind: Lut) -> np.ndarray:
    """T[j] = round_half_away(f(lo + j/16) * 2^16), j = 0..256, in float64 (read-only int64)."""
    f = _LUT_FN[Lut(kind)]
    t = to_fixed(np.array([f(kind.lo + j / 16) for j in range(257)], dtype=np.float64))
    t.flags.writeable = False
    return t


def lut_eval(table, x, lo: int, below: int = 0) -> np.ndarray:
    """Table `table` (knots lo + j/16) at Q.16 `x`: `below` below lo, linear interpolation on
    [lo, lo + 16), the last knot at and above lo + 16."""
    t = _i64(table)
    u = _i64(x) - I64(lo * ONE)
    j = np.clip(u >> 12, 0, 255)
    fr = np.clip(u, 0, 1 << 20) & 4095
    y = t[j] + rshr((t[j + 1] - t[j]) * fr, 12)
    return np.where(u < 0, below, np.where(u >= 1 << 20, t[256], y))


def _act(kind: Lut, x) -> np.ndarray:
    x = _i64(x)
    return np.where(x >= 8 * ONE, x, lut_eval(act_table(kind), x, kind.lo))


def int_silu(x_fx) -> np.ndarray:
    return _act(Lut.SILU, x_fx)


def int_gelu(x_fx, approx: GeluApprox = GeluApprox.NONE) -> np.ndarray:
    return _act(Lut.GELU_TANH if approx is GeluApprox.TANH else Lut.GELU, x_fx)


def softcap_fixed(cap: float) -> int:
    """A soft-cap's Q.16 constant (the MISC SOFTCAP `imm`)."""
    c = _round_away(cap * ONE)
    if not 0 < c < 1 << 31:
        raise IntegerError(f"soft-cap must be in (0, 32768), not {cap!r}")
    return c


def int_softcap(x_fx, cap_fx: int) -> np.ndarray:
    """cap tanh(x) of Q.16 `x` (Gemma2's soft-cap, its 1 / cap already in x): the tanh table
    (-1 below -8, 1 from 8), times the Q.16 cap `cap_fx`, rounded and saturated."""
    t = lut_eval(act_table(Lut.TANH), x_fx, Lut.TANH.lo, Lut.TANH.below)
    return _shr_sat(t * I64(cap_fx), 16, 32)


def int_exp(d_fx) -> np.ndarray:
    """exp of Q.16 values d <= 0 in Q.16 (the softmax table)."""
    return lut_eval(act_table(Lut.EXP), d_fx, Lut.EXP.lo)


# ---------------------------------------------------------------------------------------------
# elementwise, rope, softmax, attention


def int_add(a, b) -> np.ndarray:
    return sat(_i64(a) + _i64(b), 32)


def int_mul(a, b) -> np.ndarray:
    return _shr_sat(_i64(a) * _i64(b), 16, 32)


def int_relu(x) -> np.ndarray:
    return np.maximum(_i64(x), 0)


def int_rope(x_fx, cos_fx, sin_fx) -> np.ndarray:
    """sat(rshr(x cos + rotate_half(x) sin, 16), 32), rotate_half(x) = concat(-x2, x1)."""
    x, c, s = _i64(x_fx), _i64(cos_fx), _i64(sin_fx)
    if max(np.abs(c).max(initial=0), np.abs(s).max(initial=0)) > ONE:
        raise IntegerError("rope cos/sin tables must lie in [-1, 1]")
    h = x.shape[-1] // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return _shr_sat(x * c + rot * s, 16, 32)


def int_softmax_rows(s_fx, visible=None) -> np.ndarray:
    """Q.16 probabilities of each row of Q.16 scores (attention step 5); keys where `visible`
    (broadcast to the scores) is False are skipped and get 0; a row with none visible is 0."""
    s = _i64(s_fx)
    vis = np.ones(s.shape, bool) if visible is None else np.broadcast_to(visible, s.shape)
    mx = np.max(np.where(vis, s, -(I64(1) << 40)), axis=-1, keepdims=True)
    e = np.where(vis, int_exp(np.minimum(s - mx, 0)), 0)
    z = np.sum(e, axis=-1, keepdims=True)
    return np.where(z > 0, div_round(e << FRAC, np.maximum(z, 1)), 0)


def int_attention(q, k, v, scale: float, causal: bool, num_kv_heads: int, softcap: float | None = None) -> np.ndarray:
    """Attention of Q.16 q [B,H,S,D], k, v [B,Hkv,T,D] -> [B,H,S,D] (docs/integer.md "Attention");
    with `softcap`, the Q.16 scores go through `int_softcap` before the softmax."""
    q, k, v = _i64(q), _i64(k), _i64(v)
    _, h, s, d = q.shape
    t = k.shape[2]
    if d > MAX_HEAD_DIM:
        raise IntegerError(f"head dimension {d} exceeds {MAX_HEAD_DIM}")
    c = _round_away(scale * ONE)
    if not 0 < c <= ONE:
        raise IntegerError(f"attention scale must be in (0, 1], not {scale!r}")
    rep = h // num_kv_heads
    q_q, m_q, e_q = quantize_activation(q)
    k_q, m_k, e_k = (np.repeat(a, rep, axis=1) for a in quantize_activation(k))
    v_q, m_v, e_v = (np.repeat(a, rep, axis=1) for a in quantize_activation(v))
    dot = np.matmul(q_q, np.swapaxes(k_q, -1, -2))                        # [B,H,S,T]
    t1 = rshr(dot * m_k[..., None, :], e_k[..., None, :])
    t2 = _shr_sat(t1 * m_q[..., None], e_q[..., None], 47)               # Q.32 of q.k
    score = _shr_sat(t2 * c, 32, 32)                                      # Q.16
    if softcap is not None:
        score = int_softcap(score, softcap_fixed(softcap))
    visible = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s) if causal else None
    p = int_softmax_rows(score, visible)
    w = rshr(p * m_v[..., None, :], e_v[..., None, :])
    return _shr_sat(np.matmul(w, v_q), 16, 32)
