"""The hardware weight stream: a `QuantizedWeight` as four densely packed byte streams.

This layout is a contract with the RTL's weight loader and the DSP chain's sparse multiplexer.

Bit packing (`pack_bits`): field i of a stream of `b`-bit fields occupies stream bits
[i*b, (i+1)*b), least significant bit first, where stream bit t is bit (t mod 8) of byte t // 8
(little-endian bit order). Fields are packed back to back with no alignment; the last byte is
padded with zero bits. Signed fields are two's complement. (So 16-bit fields are plain uint16
little-endian, and 8-bit fields plain bytes.)

A weight [N, K] with b-bit codes, group size g (G = K / g groups per row) and optional n:m
sparsity (kept = n / m, or 1 when dense) is four streams, each padded to whole bytes on its own:

    values   b bits, signed    the kept codes of row r = 0..N-1; within a row, groups j = 0..G-1;
                               within a group its m-blocks in K order; within a block the n kept
                               codes in ascending K (dense: every code in K order). Groups and
                               blocks being consecutive in K, this is simply: row-major, ascending
                               K, kept weights only. N * K * kept fields.
    indices  ceil(log2 m) bits, unsigned
                               per kept code, in the same order, its position k mod m within its
                               m-block (strictly ascending within a block). Empty when dense.
    mant     16 bits, unsigned the scale mantissas mant[r, j] < 2^15, row-major. N * G fields.
    shift    8 bits, signed    the row shifts shift[r] in [-128, 127]. N fields.

Group j of row r starts at field (r * G + j) * g * kept of `values` and of `indices`; its codes
multiply the activations x[j * g + (block) * m + index], and its scale is mant[r, j] * 2^-shift[r].
The four streams hold exactly `scheme.storage_bits(N, K)` bits plus at most 7 padding bits each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import MANT_BITS, QuantError, QuantizedWeight, QuantScheme, kept

MANT_FIELD_BITS = 16
SHIFT_FIELD_BITS = 8
CHUNK = 1 << 16                       # fields per step of pack_bits/unpack_bits (a multiple of 8)


def pack_bits(values: np.ndarray, bits: int, signed: bool = True) -> bytes:
    """1-D integers as back-to-back `bits`-bit fields, LSB first (two's complement if signed)."""
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 63):
        raise QuantError(f"bits must be an integer in 1..63, not {bits!r}")
    v = np.asarray(values)
    if v.ndim != 1 or not (v.size == 0 or np.issubdtype(v.dtype, np.integer)):
        raise QuantError(f"pack_bits needs a 1-D integer array, not {v.dtype} {list(v.shape)}")
    v = v.astype(np.int64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if v.size and (v.min() < lo or v.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise QuantError(f"values in [{v.min()}, {v.max()}] do not fit {kind} {bits}-bit fields [{lo}, {hi}]")
    out = bytearray()
    for i in range(0, v.size, CHUNK):        # chunks of whole bytes, to bound the memory of the bit planes
        planes = ((v[i:i + CHUNK, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
        out += np.packbits(planes.reshape(-1), bitorder="little").tobytes()
    return bytes(out)


def unpack_bits(data: bytes, bits: int, count: int, signed: bool = True) -> np.ndarray:
    """The first `count` fields of `bits` bits of `data` as int64 (sign-extended if signed)."""
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 63):
        raise QuantError(f"bits must be an integer in 1..63, not {bits!r}")
    if count < 0 or len(data) * 8 < count * bits:
        raise QuantError(f"{len(data)} bytes hold fewer than {count} fields of {bits} bits")
    raw = np.frombuffer(data, dtype=np.uint8)
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    v = np.empty(count, dtype=np.int64)
    for i in range(0, count, CHUNK):
        c = min(CHUNK, count - i)
        start = i * bits // 8
        flat = np.unpackbits(raw[start:start + (c * bits + 7) // 8], bitorder="little", count=c * bits)
        v[i:i + c] = flat.reshape(c, bits).astype(np.int64) @ weights
    if signed:
        v = np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return v


def _nbytes(fields: int, bits: int) -> int:
    return (fields * bits + 7) // 8


@dataclass(frozen=True)
class PackedWeight:
    """The streams of one weight (layout in the module docstring)."""
    shape: tuple[int, int]
    scheme: QuantScheme
    values: bytes
    indices: bytes
    mant: bytes
    shift: bytes

    def __post_init__(self):
        n, k = self.shape
        g = self.scheme.group_size(k)
        kept = self.kept_per_row() * n
        want = {"values": _nbytes(kept, self.scheme.bits), "indices": _nbytes(kept, self.scheme.index_bits()),
                "mant": _nbytes(n * (k // g), MANT_FIELD_BITS), "shift": _nbytes(n, SHIFT_FIELD_BITS)}
        for stream, size in want.items():
            if len(getattr(self, stream)) != size:
                raise QuantError(f"{stream} stream of a {self.scheme} [{n}, {k}] weight must be {size} bytes, "
                                 f"not {len(getattr(self, stream))}")

    def kept_per_row(self) -> int:
        return kept(self.shape[1], self.scheme.sparsity)

    @property
    def nbytes(self) -> int:
        return len(self.values) + len(self.indices) + len(self.mant) + len(self.shift)


def pack(qw: QuantizedWeight) -> PackedWeight:
    """The streams of `qw` (QuantError if a mantissa or shift does not fit its field)."""
    if not qw.has_values:
        raise QuantError(f"{qw.name or 'weight'}: cannot pack a quantized weight without values")
    s = qw.scheme
    codes = np.asarray(qw.codes)
    mant, shift = np.asarray(qw.mant, dtype=np.int64), np.asarray(qw.shift, dtype=np.int64)
    if mant.size and (mant.min() < 0 or mant.max() >= 1 << MANT_BITS):
        raise QuantError(f"{qw.name or 'weight'}: scale mantissas must be in [0, 2^{MANT_BITS}), "
                         f"not [{mant.min()}, {mant.max()}]")
    if shift.min() < -128 or shift.max() > 127:
        raise QuantError(f"{qw.name or 'weight'}: row shifts must fit int8, not [{shift.min()}, {shift.max()}]")
    if s.sparsity is None:
        values, indices = codes.reshape(-1), b""
    else:
        m = s.sparsity[1]
        values = codes[qw.mask]                                   # row-major, ascending K
        pos = np.broadcast_to(np.arange(qw.shape[1]) % m, qw.shape)[qw.mask]
        indices = pack_bits(pos, s.index_bits(), signed=False)
    return PackedWeight(qw.shape, s, pack_bits(values, s.bits), indices,
                        pack_bits(mant.reshape(-1), MANT_FIELD_BITS, signed=False),
                        pack_bits(shift, SHIFT_FIELD_BITS))


def _fields(p: PackedWeight) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(codes [N, kept], absolute K positions [N, kept] or None if dense, mant [N, G], shift [N])."""
    n, k = p.shape
    s = p.scheme
    g = s.group_size(k)
    kept = p.kept_per_row()
    codes = unpack_bits(p.values, s.bits, n * kept).reshape(n, kept)
    mant = unpack_bits(p.mant, MANT_FIELD_BITS, n * (k // g), signed=False).reshape(n, k // g)
    shift = unpack_bits(p.shift, SHIFT_FIELD_BITS, n)
    if s.sparsity is None:
        return codes, None, mant, shift
    nn, m = s.sparsity
    idx = unpack_bits(p.indices, s.index_bits(), n * kept, signed=False).reshape(n, k // m, nn)
    if (idx >= m).any() or (np.diff(idx, axis=-1) <= 0).any():
        raise QuantError(f"indices stream: the {nn} positions of every {m}-block must be strictly ascending "
                         f"in 0..{m - 1}")
    pos = idx + (np.arange(k // m) * m)[None, :, None]
    return codes, pos.reshape(n, kept), mant, shift


def unpack(p: PackedWeight, name: str = "") -> QuantizedWeight:
    codes, pos, mant, shift = _fields(p)
    n, k = p.shape
    if pos is None:
        return QuantizedWeight(p.scheme, p.shape, codes.astype(np.int8), mant, shift, name=name)
    dense = np.zeros((n, k), dtype=np.int8)
    mask = np.zeros((n, k), dtype=bool)
    rows = np.arange(n)[:, None]
    dense[rows, pos] = codes
    mask[rows, pos] = True
    return QuantizedWeight(p.scheme, p.shape, dense, mant, shift, mask, name)


def sparse_matvec(p: PackedWeight, x_q: np.ndarray) -> np.ndarray:
    """Group partial sums int64 [..., N, G], P[n, j] = sum of x_q[k] * code over the kept weights
    of group j of row n, read straight from the streams: each kept code multiplies the activation
    its index selects (the DSP chain's sparse multiplexer). x_q: int activation codes [..., K]."""
    x = np.asarray(x_q)
    n, k = p.shape
    if x.shape[-1:] != (k,) or not np.issubdtype(x.dtype, np.integer):
        raise QuantError(f"x_q must be integer codes [..., {k}], not {x.dtype} {list(x.shape)}")
    codes, pos, _, _ = _fields(p)
    groups = k // p.scheme.group_size(k)
    x = x.astype(np.int64)
    xs = x[..., None, :] if pos is None else x[..., pos]         # the activation of each kept code
    return (xs * codes).reshape(*x.shape[:-1], n, groups, -1).sum(axis=-1)
