"""passes/quant_methods.py: RTN, magnitude N:M masks, GPTQ and SparseGPT.

The calibration problem is synthetic: X = Z A with Gaussian Z [512, 128] and a random mixing A, so
the inputs are correlated (which is what GPTQ and SparseGPT exploit); W is Gaussian [64, 128].
Output error is ||X W^T - X Wq^T||_F / ||X W^T||_F.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llmfab.ir.quant import QuantError, QuantScheme
from llmfab.passes.quant_methods import gptq, nm_mask_magnitude, round_half_away, rtn, sparsegpt

PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    k, n, t = 128, 64, 512
    x = rng.standard_normal((t, k)) @ (rng.standard_normal((k, k)) / np.sqrt(k))
    w = rng.standard_normal((n, k)) * 0.05
    return x, w, 2 * x.T @ x


def out_err(x, w, qw) -> float:
    y = x @ w.T
    return float(np.linalg.norm(y - x @ qw.numpy().astype(np.float64).T) / np.linalg.norm(y))


def random_mask(rng, shape, n, m):
    order = np.argsort(rng.random((shape[0], shape[1] // m, m)), axis=-1)
    mask = np.zeros((shape[0], shape[1] // m, m), dtype=bool)
    np.put_along_axis(mask, order[..., :n], True, axis=-1)
    return mask.reshape(shape)


# ---- RTN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", (None, (2, 4), (1, 4)))
@pytest.mark.parametrize("group", (0, 32, 128))
@pytest.mark.parametrize("bits", (2, 3, 4, 8))
def test_rtn_range_and_error(bits, group, sparsity):
    scheme = QuantScheme(bits, group, sparsity)
    w = np.random.default_rng(bits * 1000 + group).standard_normal((16, 256)) * 0.02
    qw = rtn(w, scheme)
    assert np.abs(qw.codes).max() == scheme.qmax                      # in range, and the range is used
    assert ((qw.mant >= 1) & (qw.mant < 2**15)).all()
    s = np.repeat(qw.scales(), qw.group, axis=1)
    ulp = np.exp2(-qw.shift.astype(np.float64))[:, None]
    # rounding error s/2, or clipping where the mantissa rounded the scale down (<= qmax * ulp / 2)
    bound = np.maximum(s / 2, scheme.qmax * ulp / 2) * (1 + 1e-9)
    err = np.abs(w - qw.numpy())
    if sparsity is None:
        assert (err <= bound).all()
    else:
        assert (err[qw.mask] <= bound[qw.mask]).all()
        assert (qw.numpy()[~qw.mask] == 0).all()
        np.testing.assert_array_equal(qw.mask, nm_mask_magnitude(w, *sparsity))


@pytest.mark.parametrize("bits", (4, 8))
def test_rtn_rounds_against_exact_scales(bits):
    w = np.random.default_rng(1).standard_normal((64, 128))
    qw = rtn(w, QuantScheme(bits, 32))
    exact = np.repeat(qw.mant * np.exp2(-qw.shift.astype(np.float64))[:, None], 32, axis=1)
    np.testing.assert_array_equal(qw.codes, np.clip(round_half_away(w / exact), -qw.scheme.qmax, qw.scheme.qmax))
    np.testing.assert_array_equal(qw.numpy(), (qw.codes * exact).astype(np.float32))
    # the mantissa of each row's largest scale keeps 15 significant bits
    assert (qw.mant.max(axis=1) >= 2**14).all()


def test_rtn_zero_groups():
    w = np.random.default_rng(2).standard_normal((3, 96))
    w[0] = 0.0                      # all-zero row: scale 1.0
    w[1, 32:64] = 0.0               # zero group: the row's smallest positive scale
    qw = rtn(w, QuantScheme(4, 32))
    assert (qw.codes[0] == 0).all() and (qw.scales()[0] == 1.0).all()
    assert (qw.codes[1, 32:64] == 0).all()
    assert qw.mant[1, 1] == min(qw.mant[1, 0], qw.mant[1, 2])


def test_rtn_mask_scales_from_kept_weights():
    w = np.full((1, 32), 0.5)
    w[0, 0] = 100.0                 # a large weight that the mask prunes
    mask = np.zeros((1, 32), dtype=bool)
    mask[0, 1::2] = True            # 2:4 keeping positions 1 and 3 of every block
    qw = rtn(w, QuantScheme(4, 32, (2, 4)), mask=mask)
    assert qw.codes[0, 0] == 0 and (qw.codes[0, 1::2] == 7).all()
    np.testing.assert_allclose(qw.scales()[0, 0], 0.5 / 7, rtol=1e-4)
    np.testing.assert_array_equal(qw.mask, mask)


# ---- magnitude masks ----------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", PATTERNS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_nm_mask_magnitude_keeps_the_largest(n, m, data):
    rows, blocks = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    w = data.draw(arrays(np.float64, (rows, blocks * m), elements=st.floats(-4, 4).map(lambda v: round(v, 1))))
    mask = nm_mask_magnitude(w, n, m)
    kept, a = mask.reshape(rows, blocks, m), np.abs(w).reshape(rows, blocks, m)
    assert (kept.sum(axis=-1) == n).all()
    if n < m:
        assert (np.where(kept, a, np.inf).min(axis=-1) >= np.where(kept, -np.inf, a).max(axis=-1)).all()


def test_nm_mask_ties_keep_lower_index():
    mask = nm_mask_magnitude(np.array([[1.0, -1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 0.0]]), 2, 4)
    np.testing.assert_array_equal(mask, [[True, True, False, False, True, True, False, False]])


# ---- GPTQ ---------------------------------------------------------------------------------------

def gptq_reference(w, H, scheme, damp=0.01):
    """GPTQ without Cholesky or lazy batches: after each column, eliminate it from the full inverse
    Hessian of the remaining columns (OBS, Frantar et al. eq. 3 with a fixed order). Dense only."""
    w = w.copy()
    k = w.shape[1]
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(k)
    Hinv = np.linalg.inv(Hd)
    g, qmax = scheme.group_size(k), scheme.qmax
    shift = rtn(w, scheme).shift
    codes = np.zeros(w.shape, dtype=np.int64)
    for c in range(k):
        if c % g == 0:
            mant = np.clip(round_half_away(np.abs(w[:, c:c + g]).max(axis=1) / qmax * np.exp2(shift)), 1, 2**15 - 1)
            s = mant * np.exp2(-shift.astype(np.float64))
        codes[:, c] = np.clip(round_half_away(w[:, c] / s), -qmax, qmax)
        err = (w[:, c] - codes[:, c] * s) / Hinv[c, c]
        w[:, c:] -= np.outer(err, Hinv[c, c:])
        Hinv = Hinv - np.outer(Hinv[:, c], Hinv[c, :]) / Hinv[c, c]
    return codes


@pytest.mark.parametrize("bits,group", ((4, 32), (3, 0)))
def test_gptq_matches_plain_obs_reference(problem, bits, group):
    _, w, H = problem
    scheme = QuantScheme(bits, group)
    np.testing.assert_array_equal(gptq(w, H, scheme).codes, gptq_reference(w, H, scheme))


@pytest.mark.parametrize("bits,group", ((4, 32), (4, 128), (3, 128), (3, 32), (8, 128)))
def test_gptq_beats_rtn(problem, bits, group):
    x, w, H = problem
    scheme = QuantScheme(bits, group)
    e_gptq, e_rtn = out_err(x, w, gptq(w, H, scheme)), out_err(x, w, rtn(w, scheme))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)       # measured: about 0.67x


@pytest.mark.parametrize("block", (16, 5))
def test_gptq_lazy_batches_are_exact(problem, block):
    _, w, H = problem
    scheme = QuantScheme(4, 32, (2, 4))
    a, b = gptq(w, H, scheme), gptq(w, H, scheme, block=block)      # groups and M-blocks span batches
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.mant, b.mant)
    a, b = sparsegpt(w, H, scheme), sparsegpt(w, H, scheme, block=block)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_gptq_respects_mask(problem):
    x, w, H = problem
    scheme = QuantScheme(4, 128, (2, 4))
    mask = random_mask(np.random.default_rng(3), w.shape, 2, 4)
    qw = gptq(w, H, scheme, mask=mask)
    np.testing.assert_array_equal(qw.mask, mask)
    assert (qw.codes[~mask] == 0).all() and (qw.codes[mask] != 0).mean() > 0.8
    assert out_err(x, w, qw) < out_err(x, w, rtn(w, scheme, mask=mask))


@pytest.mark.parametrize("scheme", (QuantScheme(4, 32), QuantScheme(3, 0, (2, 4)), QuantScheme(8, 64, (1, 4))), ids=str)
def test_diagonal_hessian_gives_rtn(problem, scheme):
    """Without correlation there is nothing to compensate: GPTQ is RTN, SparseGPT is magnitude + RTN."""
    _, w, _ = problem
    ref = rtn(w, scheme)
    eye = 3.0 * np.eye(128)
    for qw in [gptq(w, eye, scheme)] + ([sparsegpt(w, eye, scheme)] if scheme.sparsity else []):
        np.testing.assert_array_equal(qw.codes, ref.codes)
        np.testing.assert_array_equal(qw.mant, ref.mant)
        np.testing.assert_array_equal(qw.shift, ref.shift)


def test_gptq_dead_inputs(problem):
    x, w, _ = problem
    x = x.copy()
    x[:, [5, 77]] = 0.0
    qw = gptq(w, 2 * x.T @ x, QuantScheme(4, 32))
    assert (qw.codes[:, [5, 77]] == 0).all()
    assert out_err(x, w, qw) < out_err(x, w, rtn(w, QuantScheme(4, 32)))


# ---- SparseGPT ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", (QuantScheme(8, 128, (2, 4)), QuantScheme(4, 128, (2, 4)),
                                    QuantScheme(4, 32, (2, 4)), QuantScheme(4, 64, (4, 8))), ids=str)
def test_sparsegpt_beats_magnitude(problem, scheme):
    x, w, H = problem
    qw = sparsegpt(w, H, scheme)
    n, m = scheme.sparsity
    assert (qw.mask.reshape(64, -1, m).sum(axis=-1) == n).all() and (qw.codes[~qw.mask] == 0).all()
    e_sparse, e_mag = out_err(x, w, qw), out_err(x, w, rtn(w, scheme))
    assert e_sparse < 0.85 * e_mag, (e_sparse, e_mag)   # measured: about 0.77x
    assert (qw.mask != nm_mask_magnitude(w, n, m)).any()   # the saliency mask is not the magnitude one


def test_deterministic(problem):
    _, w, H = problem
    s = QuantScheme(4, 32, (2, 4))
    for f in (lambda: gptq(w, H, s), lambda: sparsegpt(w, H, s), lambda: rtn(w, s)):
        a, b = f(), f()
        for field in ("codes", "mant", "shift", "mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ---- errors -------------------------------------------------------------------------------------

def test_errors(problem):
    _, w, H = problem
    assert rtn(np.ones((4, 48)), QuantScheme(4, 128)).group == 48   # a group larger than K: per row
    with pytest.raises(QuantError, match=r"^H must be the \[K, K\] = \[128, 128\] Hessian 2 X\^T X, "
                                         r"not shape \[64, 64\]$"):
        gptq(w, np.eye(64), QuantScheme(4, 32))
    with pytest.raises(QuantError, match=r"^sparsegpt needs a sparse scheme \(n:m\), not int4-g128$"):
        sparsegpt(w, H, QuantScheme(4, 128))
    with pytest.raises(QuantError, match=r"^a mask needs a sparse scheme; int4-g32 stores every weight$"):
        rtn(w, QuantScheme(4, 32), mask=np.ones(w.shape, dtype=bool))
    bad = random_mask(np.random.default_rng(0), w.shape, 2, 4)
    bad[3, 8] = ~bad[3, 8]
    with pytest.raises(QuantError, match=r"^mask keeps [13] of the 4 weights at row 3, columns 8\.\.11; "
                                         r"int4-g32-2:4 needs exactly 2$"):
        gptq(w, H, QuantScheme(4, 32, (2, 4)), mask=bad)
    with pytest.raises(QuantError, match=r"^H is not positive definite even with damping 10 \* mean\(diag H\)"):
        gptq(w, -np.eye(128), QuantScheme(4, 32))
    with pytest.raises(QuantError, match=r"^layers\.0\.q_proj\.weight: H is not positive definite even with damping"):
        gptq(w, -np.eye(128), QuantScheme(4, 32), name="layers.0.q_proj.weight")
    with pytest.raises(QuantError, match=r"^w: H has non-finite values \(NaN or inf\): the float model's inputs to "
                                         r"this weight are not finite on the calibration tokens$"):
        sparsegpt(w, np.full((128, 128), np.inf), QuantScheme(4, 32, (2, 4)), name="w")
    with pytest.raises(QuantError, match=r"^the weight has non-finite values \(NaN or inf\)$"):
        rtn(np.full((2, 32), np.nan), QuantScheme(4, 32))
    with pytest.raises(QuantError, match=r"^damp must be positive, not 0$"):
        gptq(w, H, QuantScheme(4, 32), damp=0)
    with pytest.raises(QuantError, match=r"^an 2:4 mask needs a \[N, K\] weight, not shape \[6\]$"):
        nm_mask_magnitude(np.ones(6), 2, 4)
