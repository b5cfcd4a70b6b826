"""ir/integer.py, the integer contract (docs/integer.md): every kernel bit for bit against an
independent reference written here with Python ints (no overflow possible), and the measured
error of each kernel against the float interpreter (ir/interpret.py), with the bound in the name."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.frontend.config import load_config, with_random_weights
from llmfab.ir import (LLM_OPS, STRUCTURAL_OPS, ArrayData, AttentionAttrs, AxisAttrs, CastAttrs, ConstAttrs,
                       DType, GeluApprox, Graph, NoAttrs, Node, OpKind, TensorType, run, verify)
from llmfab.ir import interpret
from llmfab.ir.fixed_point import ONE, bit_length, div_round, from_fixed, rshr, sat, to_fixed
from llmfab.ir.integer import (INT_KERNELS, IntegerError, Lut, act_table, group_accumulate, group_partial_sums,
                               int_attention, int_embedding, int_exp, int_gelu, int_layer_norm, int_linear,
                               int_mul, int_rms_norm, int_rope, int_silu, int_softcap, int_softmax_rows, isqrt, lut_eval,
                               quantize_activation, run_integer, run_integer_raw, softcap_fixed)
from llmfab.ir.integer import _shr_sat
from llmfab.ir.quant import BITS, GROUPS, PATTERNS, QuantizedWeight, QuantScheme, scale_multipliers

LIM32 = (1 << 31) - 1


# =============================================================================================
# the reference: docs/integer.md in Python ints


def p_rshr(x: int, s: int) -> int:
    return (x + (1 << (s - 1))) >> s if s > 0 else x << -s


def p_div_round(n: int, d: int) -> int:
    return (2 * n + d) // (2 * d)


def p_sat(x: int, bits: int) -> int:
    lim = (1 << (bits - 1)) - 1
    return max(-lim, min(lim, x))


def p_round_away(v: float) -> int:
    f = Fraction(v)
    n = math.floor(abs(f) + Fraction(1, 2))
    return n if f >= 0 else -n


def p_quant_row(xs: list[int]) -> tuple[list[int], int, int]:
    """int8 codes of a Q.16 row and its scale (m, e): row ~= codes * m * 2^-e."""
    a = max(abs(x) for x in xs)
    if a == 0:
        return [0] * len(xs), 0, 0
    inv = p_div_round(127 << 32, a)
    e = 21 - a.bit_length()
    return [p_sat(p_rshr(x * inv, 32), 8) for x in xs], p_div_round(p_rshr(a, -e), 127), e


def p_linear_row(xs: list[int], qw: QuantizedWeight, bias: list[int] | None) -> list[int]:
    xq, m, e = p_quant_row(xs)
    n, k = qw.shape
    g = qw.group
    out = []
    for i in range(n):
        acc = 0
        for j in range(k // g):
            part = sum(xq[c] * int(qw.codes[i, c]) for c in range(j * g, (j + 1) * g))
            acc += part * int(qw.mant[i, j])
        y = p_sat(p_rshr(acc * m, int(qw.shift[i]) + e), 32)
        out.append(p_sat(y + bias[i], 32) if bias is not None else y)
    return out


def p_normalize(xs: list[int], eps: float, frac: int) -> list[int]:
    """x / rms(x) in Q.16 of a Q.`frac` row (the norm steps, as resolved in ir/integer.py)."""
    d = len(xs)
    a = max(abs(x) for x in xs)
    s = max(a.bit_length() - 23, frac - 32)
    sc = [p_rshr(x, s) for x in xs]
    ms = p_div_round(sum(v * v for v in sc), d)
    e = p_rshr(p_round_away(eps * 2 ** 32), 2 * s - 2 * (frac - 16))
    r = p_div_round(1 << 46, max(math.isqrt(ms + e), 1))
    return [p_sat(p_rshr(v * r, 30), 32) for v in sc]


def p_rms_norm(xs, w, eps):
    return [p_sat(p_rshr(n * wi, 16), 32) for n, wi in zip(p_normalize(xs, eps, 16), w)]


def p_layer_norm(xs, w, b, eps):
    x24 = [x << 8 for x in xs]
    mu = p_div_round(sum(x24), len(xs))
    n = p_normalize([x - mu for x in x24], eps, 24)
    return [p_sat(p_rshr(ni * wi, 16) + bi, 32) for ni, wi, bi in zip(n, w, b)]


P_FUNCS = {
    Lut.SILU: lambda x: x / (1.0 + math.exp(-x)),
    Lut.GELU: lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
    Lut.GELU_TANH: lambda x: 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    Lut.EXP: math.exp,
    Lut.TANH: math.tanh,
}
P_LO = {Lut.SILU: -8, Lut.GELU: -8, Lut.GELU_TANH: -8, Lut.EXP: -16, Lut.TANH: -8}


def p_table(kind: Lut) -> list[int]:
    return [p_round_away(P_FUNCS[kind](P_LO[kind] + j / 16) * 2 ** 16) for j in range(257)]


def p_lut(t: list[int], x: int, lo: int, below: int = 0) -> int:
    u = x - lo * ONE
    if u < 0:
        return below
    if u >= 1 << 20:
        return t[256]
    j = u >> 12
    return t[j] + p_rshr((t[j + 1] - t[j]) * (u & 4095), 12)


def p_softcap(t: list[int], x: int, cap: int) -> int:
    """cap tanh(x): tanh's table, -1 (T[0]) below -8, times the Q.16 cap."""
    return p_sat(p_rshr(p_lut(t, x, -8, t[0]) * cap, 16), 32)


def p_act(t: list[int], x: int) -> int:
    return x if x >= 8 * ONE else p_lut(t, x, -8)


def p_attention(q, k, v, scale: float, causal: bool, hkv: int) -> np.ndarray:
    b_, h_, s_, d_ = q.shape
    t_ = k.shape[2]
    rep = h_ // hkv
    c = p_round_away(scale * 2 ** 16)
    exp_t = p_table(Lut.EXP)
    out = np.zeros(q.shape, np.int64)
    for b in range(b_):
        for h in range(h_):
            kr = [p_quant_row([int(x) for x in k[b, h // rep, t]]) for t in range(t_)]
            vr = [p_quant_row([int(x) for x in v[b, h // rep, t]]) for t in range(t_)]
            for s in range(s_):
                qq, mq, eq = p_quant_row([int(x) for x in q[b, h, s]])
                scores = {}
                for t in range(t_):
                    if causal and t > s + (t_ - s_):
                        continue
                    kq, mk, ek = kr[t]
                    t1 = p_rshr(sum(a * bb for a, bb in zip(qq, kq)) * mk, ek)
                    t2 = p_sat(p_rshr(t1 * mq, eq), 47)
                    scores[t] = p_sat(p_rshr(t2 * c, 32), 32)
                mx = max(scores.values())
                e = {t: p_lut(exp_t, sc - mx, -16) for t, sc in scores.items()}
                z = sum(e.values())
                w = {t: p_rshr(p_div_round(e[t] << 16, z) * vr[t][1], vr[t][2]) for t in e}
                for d in range(d_):
                    out[b, h, s, d] = p_sat(p_rshr(sum(w[t] * vr[t][0][d] for t in w), 16), 32)
    return out


# ---------------------------------------------------------------------------------------------
# data


def random_qw(rng, scheme: QuantScheme, n: int, k: int, shifts=(10, 20)) -> QuantizedWeight:
    """Random codes in range, zero at the pruned positions of a random valid N:M mask, random
    mantissas in [1, 2^15) and one random shift per row."""
    g = scheme.group_size(k)
    codes = rng.integers(-scheme.qmax, scheme.qmax + 1, (n, k))
    mask = None
    if scheme.sparsity is not None:
        keep, m = scheme.sparsity
        mask = (rng.random((n, k // m, m)).argsort(-1) < keep).reshape(n, k)
        codes[~mask] = 0
    mant = rng.integers(1, 1 << 15, (n, k // g))
    shift = rng.integers(shifts[0], shifts[1] + 1, n)
    return QuantizedWeight(scheme, (n, k), codes.astype(np.int8), mant, shift, mask, name="w")


def fx_rows(rng, shape, std=1.0, spread=0.0) -> np.ndarray:
    """Q.16 values; each row's std is `std` times 10^uniform(-spread, spread)."""
    x = rng.standard_normal(shape) * std * 10.0 ** rng.uniform(-spread, spread, shape[:-1] + (1,))
    return to_fixed(x)


def f32(x_fx) -> np.ndarray:
    return from_fixed(x_fx).astype(np.float32)


def rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# =============================================================================================
# rounding helpers


def test_rounding_helpers_by_example():
    # rshr rounds half up, also on negatives: -0.5 -> 0, -1.5 -> -1, -2.5 -> -2
    assert [int(rshr(x, 1)) for x in (-1, -3, -5, 3, 5)] == [0, -1, -2, 2, 3]
    assert [int(rshr(x, 2)) for x in (-6, -7, -10, 6)] == [-1, -2, -2, 2]
    assert int(rshr(3, 0)) == 3 and int(rshr(-3, -2)) == -12
    assert [int(div_round(n, 2)) for n in (-3, -5, 3, 5)] == [-1, -2, 2, 3]
    assert int(div_round(-7, 4)) == -2 and int(div_round(-6, 4)) == -1  # -1.75 -> -2, -1.5 -> -1
    assert int(sat(-200, 8)) == -127 and int(sat(200, 8)) == 127 and int(sat(-(1 << 40), 32)) == -LIM32
    # to_fixed rounds half away from zero
    assert to_fixed(np.array([0.5, -0.5, 1.5, -1.5, 2.5]) / ONE).tolist() == [1, -1, 2, -2, 3]
    assert to_fixed(np.array([1e6, -1e6])).tolist() == [LIM32, -LIM32]


@settings(max_examples=300, deadline=None)
@given(x=st.integers(-(1 << 45), 1 << 45), s=st.integers(-12, 40), d=st.integers(1, 1 << 20),
       bits=st.sampled_from([8, 32, 47]))
def test_rounding_helpers_match_python_ints(x, s, d, bits):
    assert int(rshr(x, s)) == p_rshr(x, s)
    assert int(div_round(x, d)) == p_div_round(x, d)
    assert int(sat(x, bits)) == p_sat(x, bits)
    assert int(bit_length(x)) == abs(x).bit_length()


@settings(max_examples=300, deadline=None)
@given(x=st.integers(-(1 << 60), 1 << 60), s=st.integers(-80, 80), bits=st.sampled_from([8, 32, 47]))
def test_saturating_shift_is_exact_for_any_shift(x, s, bits):
    """sat(rshr(x, s), b) without int64 overflow, also for left shifts far past 2^63."""
    assert int(_shr_sat(x, s, bits)) == p_sat(p_rshr(x, s), bits)


def test_isqrt_exact():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 1 << 31, 2000)
    x = np.concatenate([rng.integers(0, 1 << 62, 2000), r * r, r * r - 1, r * r + 1, [0, 1, 2, 3, 4]])
    x = np.maximum(x, 0)
    assert isqrt(x).tolist() == [math.isqrt(int(v)) for v in x]
    with pytest.raises(ValueError):
        isqrt(np.array([-1]))


def test_activation_rows_match_python_ints():
    rng = np.random.default_rng(1)
    x = fx_rows(rng, (40, 24), std=1.0, spread=4.0)
    x[0] = 0
    x[1, :] = LIM32
    x[2, 3] = -LIM32
    x[3] = [1] + [0] * 23
    codes, m, e = quantize_activation(x)
    for i, row in enumerate(x):
        assert (codes[i].tolist(), int(m[i]), int(e[i])) == p_quant_row([int(v) for v in row])
    assert np.abs(codes).max() <= 127 and m.max() < 1 << 15


# =============================================================================================
# matrix engine: every width, group and sparsity pattern


@pytest.mark.parametrize("sparsity", [None, *PATTERNS], ids=lambda p: f"{p[0]}of{p[1]}" if p else "dense")
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bits", BITS)
def test_matrix_path_exact(bits, group, sparsity):
    rng = np.random.default_rng(bits * 1000 + group * 10 + (sparsity[1] * 3 + sparsity[0] if sparsity else 0))
    n, k = 8, 256
    qw = random_qw(rng, QuantScheme(bits, group, sparsity), n, k)
    g = qw.group
    codes = qw.codes.astype(np.int64)
    x_q = rng.integers(-127, 128, (3, k))

    # group partial sums: a plain einsum per group over the dense codes
    p = group_partial_sums(x_q, qw)
    ref = np.stack([np.einsum("rk,nk->rn", x_q[:, j * g:(j + 1) * g], codes[:, j * g:(j + 1) * g])
                    for j in range(k // g)], axis=-1)
    assert p.dtype == np.int64 and p.shape == (3, n, k // g)
    assert np.array_equal(p, ref)
    assert np.abs(p).max() < 1 << 31
    if sparsity is not None:  # what the packed stream feeds the chain: only kept weights
        for i in range(n):
            kept = np.flatnonzero(qw.mask[i])
            for j in range(k // g):
                sel = kept[(kept >= j * g) & (kept < (j + 1) * g)]
                assert np.array_equal(p[:, i, j], x_q[:, sel] @ codes[i, sel])
    acc = group_accumulate(p, qw)
    assert np.array_equal(acc, np.einsum("rnj,nj->rn", ref, qw.mant.astype(np.int64)))

    # the whole linear against the spec formula in Python ints
    x = fx_rows(rng, (2, k), std=0.5, spread=1.0)
    bias = to_fixed(rng.standard_normal(n)) if bits % 2 else None
    y = int_linear(x, qw, bias)
    for r in range(2):
        assert y[r].tolist() == p_linear_row([int(v) for v in x[r]], qw,
                                             None if bias is None else [int(b) for b in bias])


def test_linear_saturates_exactly_and_keeps_leading_dims():
    """Huge activations times a weight with a tiny shift: shift + e_x <= 0 (exact left shifts that
    saturate), and a zero row (y = bias)."""
    rng = np.random.default_rng(7)
    qw = random_qw(rng, QuantScheme(8, 32), 6, 64, shifts=(0, 3))
    x = fx_rows(rng, (2, 3, 64), std=3e4)
    x[0, 0] = 0
    x[1, 2] = fx_rows(rng, (64,), std=1e-4)
    bias = to_fixed(rng.standard_normal(6) * 1e4)
    y = int_linear(x, qw, bias)
    assert y.shape == (2, 3, 6)
    assert np.array_equal(y[0, 0], bias)
    assert (np.abs(y) == LIM32).any()
    for idx in np.ndindex(2, 3):
        assert y[idx].tolist() == p_linear_row([int(v) for v in x[idx]], qw, [int(b) for b in bias])


def test_linear_float_accuracy_within_1e2():
    """Per-row int8 activations against the float product with the same (dequantized) weight."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((32, 128)) * 0.05
    qw = rtn_int8(w)
    x = fx_rows(rng, (16, 128))
    assert rel_err(from_fixed(int_linear(x, qw)), f32(x) @ qw.numpy().T) < 1e-2


@pytest.mark.parametrize("bits", BITS)
def test_embedding_exact(bits):
    rng = np.random.default_rng(bits)
    qw = random_qw(rng, QuantScheme(bits, 32), 10, 64, shifts=(12, 24))
    ids = rng.integers(0, 10, (2, 5))
    y = int_embedding(qw, ids)
    for b, s in np.ndindex(2, 5):
        t = int(ids[b, s])
        ref = [p_sat(p_rshr(int(qw.codes[t, c]) * int(qw.mant[t, c // 32]), int(qw.shift[t]) - 16), 32)
               for c in range(64)]
        assert y[b, s].tolist() == ref
    # the dequantized table rounded to Q.16 where it is representable
    assert np.abs(from_fixed(y) - qw.numpy()[ids]).max() <= 2 ** -17 + 1e-6 * np.abs(qw.numpy()).max()
    with pytest.raises(IntegerError, match=r"^token ids must be in \[0, 10\), got 0\.\.10$"):
        int_embedding(qw, np.array([0, 10]))


# =============================================================================================
# norms


def test_norms_exact():
    rng = np.random.default_rng(2)
    x = fx_rows(rng, (12, 48), std=1.0, spread=3.0) + to_fixed(rng.standard_normal((12, 1)))
    x[0] = 0
    x[1] = 777
    x[2, :] = LIM32
    x[3] = [5] + [0] * 47
    w, b = to_fixed(1 + 0.1 * rng.standard_normal(48)), to_fixed(0.1 * rng.standard_normal(48))
    w[0], b[1] = to_fixed(3e4), to_fixed(-3e4)  # saturating outputs
    rms, ln = int_rms_norm(x, w, 1e-6), int_layer_norm(x, w, b, 1e-5)
    wl, bl = [int(v) for v in w], [int(v) for v in b]
    for i, row in enumerate(x):
        r = [int(v) for v in row]
        assert rms[i].tolist() == p_rms_norm(r, wl, 1e-6)
        assert ln[i].tolist() == p_layer_norm(r, wl, bl, 1e-5)
    assert (np.abs(rms) == LIM32).any() and (np.abs(ln) == LIM32).any()


@pytest.mark.parametrize("std", [1e-2, 1.0, 100.0])
def test_norms_within_1e4_of_float(std):
    """Relative to max |y|, on the same Q.16 inputs: ~7e-6 measured for every row scale."""
    rng = np.random.default_rng(3)
    x = fx_rows(rng, (64, 256), std=std) + to_fixed(rng.standard_normal((64, 1)) * 3 * std)
    w, b = to_fixed(1 + 0.1 * rng.standard_normal(256)), to_fixed(0.1 * rng.standard_normal(256))
    assert rel_err(from_fixed(int_rms_norm(x, w, 1e-6)), interpret.rms_norm(f32(x), f32(w), 1e-6)) < 1e-4
    assert rel_err(from_fixed(int_layer_norm(x, w, b, 1e-5)),
                   interpret.layer_norm(f32(x), f32(w), f32(b), 1e-5)) < 1e-4


def test_norm_of_a_zero_row_is_zero_or_bias():
    w, b = to_fixed(np.ones(16)), to_fixed(np.full(16, 0.25))
    assert not int_rms_norm(np.zeros((1, 16), np.int64), w, 1e-6).any()
    assert int_layer_norm(np.full((1, 16), 12345), w, b, 1e-5).tolist() == [[ONE // 4] * 16]


# =============================================================================================
# tables, softmax, rope


@pytest.mark.parametrize("kind", list(Lut))
def test_tables_exact(kind):
    t = act_table(kind)
    assert t.shape == (257,) and t.tolist() == p_table(kind)
    assert act_table(kind) is t  # built once
    rng = np.random.default_rng(4)
    lo = P_LO[kind]
    x = np.concatenate([rng.integers((lo - 1) * ONE, (lo + 17) * ONE, 3000),
                        [lo * ONE - 1, lo * ONE, (lo + 16) * ONE - 1, (lo + 16) * ONE, (lo + 16) * ONE + 1]])
    pt = p_table(kind)
    assert lut_eval(t, x, lo).tolist() == [p_lut(pt, int(v), lo) for v in x]
    if kind is Lut.TANH:
        for cap in (1, softcap_fixed(0.5), softcap_fixed(50.0), (1 << 31) - 1):
            assert int_softcap(x, cap).tolist() == [p_softcap(pt, int(v), cap) for v in x]
    elif kind is not Lut.EXP:
        f = {Lut.SILU: int_silu, Lut.GELU: int_gelu,
             Lut.GELU_TANH: lambda v: int_gelu(v, GeluApprox.TANH)}[kind]
        assert f(x).tolist() == [p_act(pt, int(v)) for v in x]


def _all_q16(lo: float, hi: float, step: int = 1) -> np.ndarray:
    return np.arange(int(lo * ONE), int(hi * ONE), step, dtype=np.int64)


def test_softcap_within_4e4_of_cap_tanh():
    """Every Q.16 point of [-10, 10): cap tanh(x) within 4e-4 cap (interpolation h^2/8 max|tanh''|
    = 3.8e-4 at worst), and exactly +-cap (to its Q.16) beyond the table."""
    x = _all_q16(-10, 10, 7)
    for cap in (50.0, 30.0, 1.0):
        y = from_fixed(int_softcap(x, softcap_fixed(cap)))
        assert np.abs(y - cap * np.tanh(from_fixed(x))).max() < 4e-4 * cap
    assert int_softcap(np.array([-(1 << 31), 9 * ONE]), softcap_fixed(50.0)).tolist() == [-50 * ONE, 50 * ONE]
    with pytest.raises(IntegerError, match="soft-cap"):
        softcap_fixed(0.0)


def test_silu_gelu_tables_within_5e4_on_the_table_range():
    """Every Q.16 point of [-8, 8): interpolation error h^2/8 max|f''| plus rounding."""
    x = _all_q16(-8, 8)
    xf = from_fixed(x)
    assert np.abs(from_fixed(int_silu(x)) - xf / (1 + np.exp(-xf))).max() < 5e-4          # 2.5e-4
    tanh = 0.5 * xf * (1 + np.tanh(math.sqrt(2 / math.pi) * (xf + 0.044715 * xf ** 3)))
    assert np.abs(from_fixed(int_gelu(x, GeluApprox.TANH)) - tanh).max() < 5e-4            # 4.0e-4
    xs = x[::13]
    erf = np.array([math.erf(v / math.sqrt(2)) for v in from_fixed(xs)])
    assert np.abs(from_fixed(int_gelu(xs)) - 0.5 * from_fixed(xs) * (1 + erf)).max() < 5e-4  # 4.0e-4


def test_silu_gelu_tails_are_x_and_zero():
    """Outside the table y = x (x >= 8) and y = 0 (x < -8); for SiLU that is off by at most
    8 e^-8 = 2.7e-3 (at |x| = 8), for GELU by < 1e-14."""
    x = np.concatenate([_all_q16(8, 40, 97), [LIM32]])
    assert np.array_equal(int_silu(x), x) and np.array_equal(int_gelu(x), x)
    assert not int_silu(-x - 1).any() and not int_gelu(-x - 1, GeluApprox.TANH).any()
    assert int(int_silu(-8 * ONE)) == act_table(Lut.SILU)[0] == p_round_away(-8 / (1 + math.exp(8)) * ONE)
    xf = from_fixed(x)
    assert np.abs(xf / (1 + np.exp(-xf)) - xf).max() < 2.7e-3


def test_exp_table_within_4_9e4_relative():
    d = _all_q16(-16, 0)
    ref = np.exp(from_fixed(d))
    assert (np.abs(from_fixed(int_exp(d)) - ref) <= 4.9e-4 * ref + 2 ** -16).all()
    assert int(int_exp(0)) == ONE and int(int_exp(-16 * ONE - 1)) == 0


def test_softmax_rows_within_1e3_of_float():
    rng = np.random.default_rng(5)
    s = fx_rows(rng, (300, 50), std=3.0)
    p = int_softmax_rows(s)
    assert np.abs(from_fixed(p) - interpret.softmax(from_fixed(s), -1)).max() < 1e-3      # 1.3e-4
    assert np.abs(p.sum(-1) - ONE).max() <= 25  # each p rounded to nearest: |sum - 1| <= T/2 ulp
    vis = np.arange(50)[None, :] < np.arange(1, 301)[:, None] % 51
    pv = int_softmax_rows(s, vis)
    assert not pv[~vis].any() and not pv[~vis.any(-1)].any()
    with np.errstate(invalid="ignore"):  # rows with no visible key: nan in float
        ref = interpret.softmax(np.where(vis, from_fixed(s), -np.inf), -1)
    assert np.abs(from_fixed(pv) - np.nan_to_num(ref))[vis.any(-1)].max() < 1e-3


def test_rope_exact():
    rng = np.random.default_rng(6)
    x = fx_rows(rng, (1, 2, 5, 8), std=2.0, spread=2.0)
    x[0, 0, 0, 0] = LIM32
    ang = rng.uniform(0, 2 * np.pi, (1, 1, 5, 8))
    c, s = to_fixed(np.cos(ang)), to_fixed(np.sin(ang))
    y = int_rope(x, c, s)
    for i in np.ndindex(1, 2, 5):
        xr, cr, sr = (a[i[0], i[1] if a.shape[1] > 1 else 0, i[2]].tolist() for a in (x, c, s))
        rot = [-v for v in xr[4:]] + xr[:4]
        ref = [p_sat(p_rshr(a * cc + r * ss, 16), 32) for a, cc, r, ss in zip(xr, cr, rot, sr)]
        assert y[i].tolist() == ref
    ref = interpret.rope(f32(x[..., :]), f32(c), f32(s), None)
    assert np.abs(from_fixed(y) - ref)[0, :, 1:].max() < 1e-4  # (row 0 saturates)


def test_mul_exact():
    rng = np.random.default_rng(9)
    a, b = fx_rows(rng, (500,), std=200.0), fx_rows(rng, (500,), std=200.0)
    assert int_mul(a, b).tolist() == [p_sat(p_rshr(int(u) * int(v), 16), 32) for u, v in zip(a, b)]


# =============================================================================================
# attention


@pytest.mark.parametrize("causal", [True, False])
def test_attention_exact(causal):
    """GQA (4 heads, 2 kv heads), past keys (T > S), rows from 1e-3 to 1e3 (left and right shifts)."""
    rng = np.random.default_rng(10 + causal)
    q = fx_rows(rng, (1, 4, 3, 8), spread=3.0)
    k, v = fx_rows(rng, (1, 2, 5, 8), spread=3.0), fx_rows(rng, (1, 2, 5, 8), spread=3.0)
    assert np.array_equal(int_attention(q, k, v, 0.35, causal, 2), p_attention(q, k, v, 0.35, causal, 2))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_within_2e2_of_float(causal):
    """8 heads on 2 kv heads, S = 5 queries over T = 12 keys, q/k/v std 1: relative to max |out|,
    1.45e-2 measured (int8 q, k and v rows)."""
    a = AttentionAttrs(8, 2, 1 / math.sqrt(32), causal)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        q, k, v = fx_rows(rng, (1, 8, 5, 32)), fx_rows(rng, (1, 2, 12, 32)), fx_rows(rng, (1, 2, 12, 32))
        out = int_attention(q, k, v, a.scale, a.causal, a.num_kv_heads)
        assert rel_err(from_fixed(out), interpret.attention(f32(q), f32(k), f32(v), None, a)) < 2e-2


def test_attention_rejects_scales_above_one():
    z = np.zeros((1, 1, 2, 4), np.int64)
    with pytest.raises(IntegerError, match=r"^attention scale must be in \(0, 1\], not 2\.0$"):
        int_attention(z, z, z, 2.0, True, 1)


# =============================================================================================
# whole graphs


CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, vocab_size=256, max_position_embeddings=64),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64),
    "opt": dict(model_type="opt", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                vocab_size=256, max_position_embeddings=64),
}


def rtn_int8(w: np.ndarray) -> QuantizedWeight:
    """Round-to-nearest int8, one scale per output row (max |w_row| / 127)."""
    mant, shift = scale_multipliers(np.abs(w).max(axis=1, keepdims=True) / 127)
    exact = mant * np.exp2(-shift.astype(np.float64))[:, None]
    codes = np.clip(np.round(w / exact), -127, 127).astype(np.int8)
    return QuantizedWeight(QuantScheme(8, 0), w.shape, codes, mant, shift)


def weight_consts(g: Graph) -> list[str]:
    names = [n.inputs[1] for n in g.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD)]
    names += [n.inputs[0] for n in g.nodes() if n.op is OpKind.EMBEDDING]
    return list(dict.fromkeys(names))


def quantized(g: Graph) -> Graph:
    g = g.copy()
    for name in weight_consts(g):
        node = g.node(name)
        qw = rtn_int8(np.asarray(node.data.numpy(), np.float64))
        g.set_node(dataclasses.replace(node, attrs=ConstAttrs(qw, True), type=TensorType(qw.dtype, qw.shape)))
    return g


def tiny(family: str = "llama", past_len: int = 0) -> Graph:
    return quantized(with_random_weights(load_config(CONFIGS[family], past_len=past_len), seed=0))


def feeds_for(g: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n.name: rng.integers(0, 256, n.type.shape) if n.type.dtype.is_int
            else rng.standard_normal(n.type.shape).astype(np.float32) for n in g.inputs()}


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("family", list(CONFIGS))
def test_tiny_model_logits_cosine_0_999(family):
    """int8 per-channel weights; the float interpreter runs the same dequantized weights, so the
    gap is the integer activations alone (0.99995 measured)."""
    g = tiny(family)
    verify(g, fused=True)  # int8-typed weight consts: still a valid fused graph
    for seed in (1, 2):
        feeds = feeds_for(g, seed)
        assert cosine(run_integer(g, feeds)["logits"], run(g, feeds)["logits"]) >= 0.999


def test_tiny_model_is_deterministic():
    g = tiny()
    feeds = feeds_for(g, 3)
    a, b = run_integer_raw(g, feeds), run_integer_raw(tiny(), feeds)
    assert a.keys() == {"logits"} and a["logits"].dtype == np.int64
    assert np.array_equal(a["logits"], b["logits"])
    assert np.abs(a["logits"]).max() <= LIM32
    assert np.array_equal(run_integer(g, feeds)["logits"], from_fixed(a["logits"]))


def test_tiny_model_with_kv_cache():
    g = tiny(past_len=3)
    feeds = feeds_for(g, 4)
    ours, ref = run_integer_raw(g, feeds), run(g, feeds)
    presents = {f"present.{i}.{t}" for i in range(2) for t in ("key", "value")}
    assert set(ours) == set(ref) == {"logits"} | presents
    assert cosine(from_fixed(ours["logits"]), ref["logits"]) >= 0.999
    for i in range(2):
        for t in ("key", "value"):
            present = ours[f"present.{i}.{t}"]
            assert present.shape == (1, 2, 19, 16)
            assert np.array_equal(present[:, :, :3], to_fixed(feeds[f"past_key_values.{i}.{t}"]))
            assert cosine(from_fixed(present), ref[f"present.{i}.{t}"]) >= 0.999


def test_structural_ops_move_values_unchanged():
    """cast / gather / slice / transpose / concat / reshape / softmax / relu on a small graph."""
    g = Graph("structural")
    g.add_input("ids", TensorType(DType.INT64, (2, 3)))
    table = np.linspace(-3, 3, 40, dtype=np.float32).reshape(5, 8)
    g.add_const("table", ArrayData(table))
    g.add_op("ids32", OpKind.CAST, ["ids"], CastAttrs(DType.INT32))
    g.add_op("rows", OpKind.GATHER, ["table", "ids32"], AxisAttrs(0))
    g.add_op("idsf", OpKind.CAST, ["ids"], CastAttrs(DType.FP32))
    g.add_op("relu", OpKind.RELU, ["rows"])
    g.add_op("soft", OpKind.SOFTMAX, ["rows"], AxisAttrs(1))
    for name in ("rows", "idsf", "relu", "soft"):
        g.add_output(name, name)
    ids = np.array([[0, 4, 2], [1, 1, 3]])
    out = run_integer_raw(g, {"ids": ids})
    table = to_fixed(table)
    assert np.array_equal(out["rows"], table[ids])
    assert np.array_equal(out["idsf"], ids << 16)
    assert np.array_equal(out["relu"], np.maximum(table[ids], 0))
    assert np.array_equal(out["soft"], np.moveaxis(int_softmax_rows(np.moveaxis(table[ids], 1, -1)), -1, 1))


def test_every_fused_op_has_an_integer_kernel():
    assert set(INT_KERNELS) == (LLM_OPS | STRUCTURAL_OPS) - {OpKind.INPUT, OpKind.CONST, OpKind.MATMUL}


# =============================================================================================
# errors


def test_float_linear_weight_is_rejected():
    g = tiny()
    name = "model.layers.1.mlp.up_proj.weight"
    float_w = with_random_weights(load_config(CONFIGS["llama"]), seed=0).node(name)
    g.set_node(float_w)
    with pytest.raises(IntegerError, match=(
            r"^node 'layers\.1\.mlp\.up' \(linear\) has weight the float tensor "
            r"'model\.layers\.1\.mlp\.up_proj\.weight' \(fp32\[128,64\]\): "
            r"the integer interpreter needs a QuantizedWeight; run the quantize pass first$")):
        run_integer(g, feeds_for(g, 0))


def test_float_embedding_table_is_rejected():
    g = with_random_weights(load_config(CONFIGS["llama"]), seed=0)
    with pytest.raises(IntegerError, match=r"^node 'embed' \(embedding\) has weight the float tensor .*"
                                           r"run the quantize pass first$"):
        run_integer(g, feeds_for(g, 0))


def _attention_graph(mask: bool) -> Graph:
    g = Graph("attn")
    t = TensorType(DType.FP32, (1, 2, 3, 4))
    for n in ("q", "k", "v") + (("mask",) if mask else ()):
        g.add_input(n, t if n != "mask" else TensorType(DType.FP32, (1, 1, 3, 3)))
    ins = ["q", "k", "v"] + (["mask"] if mask else [])
    g.add_op("o", OpKind.ATTENTION, ins, AttentionAttrs(2, 2, 0.5, True))
    g.add_output("o", "o")
    return g


def test_attention_graph_and_mask_rejection():
    g = _attention_graph(False)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for n in "qkv"}
    out = run_integer_raw(g, feeds)["o"]
    assert np.array_equal(out, int_attention(*(to_fixed(feeds[n]) for n in "qkv"), 0.5, True, 2))
    g = _attention_graph(True)
    feeds["mask"] = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(IntegerError, match=r"^node 'o' \(attention\): an additive attention mask is not "
                                           r"part of the integer contract"):
        run_integer(g, feeds)


def test_unsupported_op_missing_feed_and_misused_weight():
    g = Graph("g")
    g.add_input("x", TensorType(DType.FP32, (2, 4)))
    g.add_op("sig", OpKind.SIGMOID, ["x"])
    g.add_output("y", "sig")
    with pytest.raises(IntegerError, match=r"^1 op left unfused: 'sig' \(sigmoid; expected in fuse-activation "
                                           r"\(silu, gelu, relu\)\); the integer contract \(docs/integer\.md\) "
                                           r"covers fused graphs only, so this model's pattern of sigmoid is not "
                                           r"supported yet"):
        run_integer(g, {"x": np.zeros((2, 4), np.float32)})
    g = Graph("g")  # the feeds are checked on a graph the contract covers
    g.add_input("x", TensorType(DType.FP32, (2, 4)))
    g.add_op("r", OpKind.RELU, ["x"])
    g.add_output("y", "r")
    with pytest.raises(IntegerError, match=r"^missing value for graph input 'x' \(fp32\[2,4\]\)$"):
        run_integer(g, {})
    with pytest.raises(IntegerError, match=r"^graph input 'x' expects shape \[2, 4\], got \[4\]$"):
        run_integer(g, {"x": np.zeros(4)})

    g = Graph("g")
    g.add_input("x", TensorType(DType.FP32, (2, 4)))
    g.add_const("w", rtn_int8(np.ones((2, 4))))
    g.add(Node("y", OpKind.ADD, ("x", "w"), NoAttrs(), TensorType(DType.FP32, (2, 4))))
    g.add_output("y", "y")
    with pytest.raises(IntegerError, match=r"^node 'y' \(add\) reads the quantized weight 'w', which only "
                                           r"linear, lm_head and embedding can use$"):
        run_integer(g, {"x": np.zeros((2, 4), np.float32)})
