"""Any K (issue 15): weights whose K is not whole groups or N:M blocks, through the integer
contract (a partial last group, a partial last block), the packed streams and the padding to the
hardware's K (zero codes, whose products are 0 whatever the activation codes there)."""
import numpy as np
import pytest

from llmfab.ir.integer_ops import group_partial_sums
from llmfab.ir.packing import hardware_k, pack, pad_k, sparse_matvec, unpack
from llmfab.ir.quant import QuantError, QuantScheme, kept
from llmfab.passes.quant_methods import gptq, rtn, sparsegpt

SCHEMES = (QuantScheme(8, 128), QuantScheme(4, 32), QuantScheme(3, 64), QuantScheme(4, 128, (2, 4)),
           QuantScheme(4, 0, (2, 4)), QuantScheme(4, 32, (1, 4)), QuantScheme(2, 64, (4, 8)))
WIDTHS = (160, 162, 250, 61)


def _weights(k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, k))
    x = rng.normal(size=(64, k))
    return w, 2 * x.T @ x / len(x)


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_partial_last_group_takes_its_scale_from_its_real_columns(scheme, k):
    w, _ = _weights(k)
    q = rtn(w, scheme)
    g = q.group
    assert q.mant.shape == (6, -(-k // g)) and scheme.groups(k) == -(-k // g)
    last = slice((scheme.groups(k) - 1) * g, k)
    real = np.abs(np.where(q.mask, w, 0) if q.mask is not None else w)[:, last].max(axis=1) / scheme.qmax
    want = np.maximum(np.floor(real * np.exp2(q.shift) + 0.5), 1)       # rtn's fixed point, this row's shift
    np.testing.assert_array_equal(q.mant[:, -1], want)
    assert np.abs(q.codes).max() <= scheme.qmax
    assert q.storage_bits() == 6 * (kept(k, scheme.sparsity) * (scheme.bits + scheme.index_bits())
                                    + 16 * scheme.groups(k) + 8)


@pytest.mark.parametrize("k", (162, 61, 250))
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.sparsity], ids=str)
def test_a_partial_last_block_keeps_min_n_r(scheme, k):
    w, h = _weights(k)
    n, m = scheme.sparsity
    r = k % m
    for q in (rtn(w, scheme), gptq(w, h, scheme), sparsegpt(w, h, scheme)):
        full = q.mask[:, :k - r].reshape(6, -1, m).sum(axis=-1)
        assert (full == n).all()
        assert (q.mask[:, k - r:].sum(axis=1) == min(n, r)).all()
        assert (q.codes[~q.mask] == 0).all()
        assert kept(k, scheme.sparsity) == q.mask[0].sum()


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_streams_and_the_hardware_padding_compute_the_contract(scheme, k):
    """pack/unpack round trip; the sparse multiplexer's sums; and the weight padded to the engine's
    K gives the same group sums with any activation codes in the padding."""
    w, h = _weights(k, 1)
    rng = np.random.default_rng(2)
    for q in (gptq(w, h, scheme), rtn(w, scheme)):
        u = unpack(pack(q))
        np.testing.assert_array_equal(u.codes, q.codes)
        np.testing.assert_array_equal(u.mant, q.mant)
        x = rng.integers(-127, 128, (3, k))
        want = group_partial_sums(x, q)
        np.testing.assert_array_equal(sparse_matvec(pack(q), x), want)
        for chain_len in (4, 32):
            k_hw = hardware_k(scheme, k, chain_len)
            g = scheme.group_size(k)
            assert k_hw >= k and k_hw % (g if g < k else chain_len) == 0
            hw = pad_k(q, k_hw)
            assert hw.shape == (6, k_hw) and (hw.codes[:, k:] == 0).all()
            assert kept(k_hw, scheme.sparsity) % chain_len == 0 or g < k
            xh = np.concatenate([x, rng.integers(-127, 128, (3, k_hw - k))], axis=1)
            np.testing.assert_array_equal(sparse_matvec(pack(hw), xh), want)


def test_diagonal_hessian_gives_rtn_on_partial_groups():
    w, _ = _weights(162)
    for scheme in (QuantScheme(4, 128), QuantScheme(3, 64, (2, 4))):
        a, b = gptq(w, 3.0 * np.eye(162), scheme), rtn(w, scheme)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.mant, b.mant)


def test_gptq_beats_rtn_with_a_partial_group():
    w, h = _weights(160, 3)
    s = QuantScheme(4, 128)
    err = [float(np.trace((w - q.numpy()) @ h @ (w - q.numpy()).T)) for q in (gptq(w, h, s), rtn(w, s))]
    assert err[0] < err[1]


def test_padding_that_would_add_a_group_is_refused():
    q = rtn(_weights(160)[0], QuantScheme(8, 32), name="weight")
    assert pad_k(q, 160) is q
    with pytest.raises(QuantError, match=r"^weight: cannot pad K=160 \(group 32\) to 192 without adding a scale group$"):
        pad_k(q, 192)
