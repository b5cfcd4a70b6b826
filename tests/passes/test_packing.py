"""ir/packing.py: the hardware weight stream round-trips exactly, has the documented layout and
size, and the sparse matrix-vector product read straight from it matches a dense numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.ir.packing import ChainLayout, PackedWeight, pack, pack_bits, sparse_matvec, unpack, unpack_bits
from llmfab.ir.quant import QuantError, QuantizedWeight, QuantScheme

BITS = (2, 3, 4, 8)
GROUPS = (0, 32, 64, 128)
SPARSITY = (None, (2, 4), (1, 4), (4, 8), (2, 8))
SCHEMES = [QuantScheme(b, g, s) for b in BITS for g in GROUPS for s in SPARSITY]


# ---- bit fields ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 8), st.booleans())
def test_pack_bits_round_trip(data, bits, signed):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = np.array(data.draw(st.lists(st.integers(lo, hi), max_size=200)), dtype=np.int64)
    b = pack_bits(v, bits, signed=signed)
    assert len(b) == (v.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(b, bits, v.size, signed=signed), v)


@pytest.mark.parametrize("bits", BITS)
def test_pack_bits_dense_random(bits):
    count = 70001                           # more than one internal chunk of 2^16 fields
    v = np.random.default_rng(bits).integers(-(1 << (bits - 1)), 1 << (bits - 1), count)
    b = pack_bits(v, bits)
    assert len(b) == (count * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(b, bits, count), v)
    i = 66000                                             # one field read by hand, as documented
    field = sum(((b[t // 8] >> (t % 8)) & 1) << j for j, t in enumerate(range(i * bits, (i + 1) * bits)))
    assert field == v[i] % (1 << bits)


def test_pack_bits_layout():
    assert pack_bits(np.array([1, -1]), 4) == bytes([0xF1])               # field 0 in the low nibble
    assert pack_bits(np.array([1, 2, 3]), 3) == bytes([0b11010001, 0])    # fields straddle bytes, zero padding
    assert pack_bits(np.array([-2, 1]), 2) == bytes([0b0110])
    v = np.array([0x1234, 0x7FFF, 0])
    assert pack_bits(v, 16, signed=False) == v.astype("<u2").tobytes()    # 16-bit fields = uint16 LE
    assert pack_bits(np.array([-3, 127]), 8) == np.array([-3, 127], "i1").tobytes()


def test_pack_bits_rejects_out_of_range():
    with pytest.raises(QuantError, match=r"^values in \[-3, 1\] do not fit signed 2-bit fields \[-2, 1\]$"):
        pack_bits(np.array([-3, 1]), 2)
    with pytest.raises(QuantError, match=r"^values in \[0, 4\] do not fit unsigned 2-bit fields \[0, 3\]$"):
        pack_bits(np.array([0, 4]), 2, signed=False)
    with pytest.raises(QuantError, match=r"^3 bytes hold fewer than 7 fields of 4 bits$"):
        unpack_bits(bytes(3), 4, 7)


# ---- whole weights ------------------------------------------------------------------------------

@st.composite
def weights(draw, scheme: QuantScheme) -> QuantizedWeight:
    """A random QuantizedWeight of `scheme`: random N:M mask, codes, mantissas and shifts."""
    m = scheme.sparsity[1] if scheme.sparsity else 1
    n = draw(st.integers(1, 5))
    if scheme.group == 0:
        k = m * draw(st.integers(1, 40))
    else:   # whole groups, or K below the group (one group per row)
        k = draw(st.one_of(st.integers(1, 3).map(lambda a: a * scheme.group),
                           st.integers(1, scheme.group // m).map(lambda a: a * m)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = scheme.group_size(k)
    codes = rng.integers(-scheme.qmax, scheme.qmax + 1, (n, k))
    codes[0, 0], codes[-1, -1] = -scheme.qmax, scheme.qmax
    mask = None
    if scheme.sparsity:
        nn, m = scheme.sparsity
        order = np.argsort(rng.random((n, k // m, m)), axis=-1)
        mask = np.zeros((n, k // m, m), dtype=bool)
        np.put_along_axis(mask, order[..., :nn], True, axis=-1)
        mask = mask.reshape(n, k)
        codes[~mask] = 0
    mant = rng.integers(0, 1 << 15, (n, k // g))
    mant[0, 0] = (1 << 15) - 1
    shift = rng.integers(-128, 128, n)
    return QuantizedWeight(scheme, (n, k), codes.astype(np.int8), mant, shift, mask)


def storage_bits_of(p: PackedWeight) -> dict[str, int]:
    n, k = p.shape
    s = p.scheme
    kept = n * k * s.kept_fraction()
    return {"values": kept * s.bits, "indices": kept * s.index_bits(),
            "mant": n * (k // s.group_size(k)) * 16, "shift": n * 8}


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_pack_round_trip_and_size(scheme, data):
    qw = data.draw(weights(scheme))
    p = pack(qw)
    back = unpack(p)
    np.testing.assert_array_equal(back.codes, qw.codes)
    np.testing.assert_array_equal(back.mant, qw.mant)
    np.testing.assert_array_equal(back.shift, qw.shift)
    if scheme.sparsity is None:
        assert back.mask is None and p.indices == b""
    else:
        np.testing.assert_array_equal(back.mask, qw.mask)
    assert back.shape == qw.shape and back.scheme == scheme
    np.testing.assert_array_equal(back.scales(), qw.scales())
    # each stream is exactly its fields, padded to a byte; together they are scheme.storage_bits
    for stream, bits in storage_bits_of(p).items():
        assert len(getattr(p, stream)) == (int(bits) + 7) // 8, stream
    assert 0 <= 8 * p.nbytes - qw.storage_bits() < 32


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_sparse_matvec_equals_dense(scheme, data):
    qw = data.draw(weights(scheme))
    n, k = qw.shape
    rng = np.random.default_rng(k * n)
    x = rng.integers(-127, 128, k)
    ref = (x[None, :] * qw.codes.astype(np.int64)).reshape(n, k // qw.group, qw.group).sum(axis=-1)
    p = pack(qw)
    got = sparse_matvec(p, x)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    xs = rng.integers(-127, 128, (3, k))   # a batch of rows gives [R, N, G]
    np.testing.assert_array_equal(sparse_matvec(p, xs)[2], sparse_matvec(p, xs[2]))


def test_packed_layout_by_hand():
    """int4 2:4, one row of K=8 (per-channel group): the streams written out bit by bit."""
    codes = np.array([[0, 3, 0, -2, 5, 0, 0, 1]], dtype=np.int8)
    mask = codes != 0
    qw = QuantizedWeight(QuantScheme(4, 0, (2, 4)), (1, 8), codes, np.array([[0x1234]]), np.array([-3]), mask)
    p = pack(qw)
    assert p.values == bytes([0xE3, 0x15])          # 3, -2 (0xE), 5, 1: LSB nibble first
    assert p.indices == bytes([0b11_00_11_01])      # positions 1, 3 | 0, 3 within the 4-blocks
    assert p.mant == b"\x34\x12"
    assert p.shift == b"\xfd"


def test_packed_rejects_bad_streams():
    s = QuantScheme(4, 0, (2, 4))
    with pytest.raises(QuantError, match=r"^values stream of a int4-ch-2:4 \[1, 8\] weight must be 2 bytes, not 3$"):
        PackedWeight((1, 8), s, bytes(3), bytes(1), bytes(2), bytes(1))
    bad = PackedWeight((1, 8), s, bytes(2), bytes([0b00_00_01_01]), bytes(2), bytes(1))   # index 1 twice
    with pytest.raises(QuantError, match=r"^indices stream: the 2 positions of every 4-block must be strictly asc"):
        unpack(bad)
    # QuantizedWeight itself refuses shifts that the int8 shift stream could not hold
    with pytest.raises(QuantError, match=r"^w: row shifts must fit int8, not \[130, 130\]$"):
        QuantizedWeight(QuantScheme(8, 0), (1, 4), np.zeros((1, 4), np.int8), np.array([[1]]), np.array([130]), name="w")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.sampled_from([1, 2, 4, 16]), st.integers(1, 40), st.integers(1, 70), st.data())
def test_chain_layout_round_trip(chains, word_bytes, rows, row_bits, data):
    lay = ChainLayout(chains, word_bytes)
    bits = data.draw(st.lists(st.integers(0, 1), min_size=rows * row_bits, max_size=rows * row_bits))
    stream = pack_bits(np.array(bits, np.int64), 1, signed=False)
    out = lay.interleave(stream, rows, row_bits)
    assert len(out) == lay.stream_bytes(rows, row_bits) and len(out) % (chains * word_bytes) == 0
    assert lay.deinterleave(out, rows, row_bits) == stream
    # chain c's word j is at word j * chains + c: bit t of chain c's sub-stream is row c + chains * (t // row_bits)
    flat = np.unpackbits(np.frombuffer(out, np.uint8), bitorder="little").reshape(-1, chains, 8 * word_bytes)
    for c in range(chains):
        sub = flat[:, c].reshape(-1)
        mine = [bits[r * row_bits:(r + 1) * row_bits] for r in range(c, rows, chains)]
        want = [b for row in mine for b in row]
        assert list(sub[:len(want)]) == want and not sub[len(want):].any()


def test_chain_layout_of_one_byte_chain_is_the_stream():
    s = bytes(range(7))
    assert ChainLayout().interleave(s, 7, 8) == s and ChainLayout().stream_bytes(7, 8) == 7
    with pytest.raises(QuantError, match="chains must be a positive integer"):
        ChainLayout(0, 4)
