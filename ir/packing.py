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

In the weight buffer a tile's per-row streams (values, indices, mant) are chain-interleaved
(`ChainLayout`): the matrix engine's chain c computes rows c, c + chains, c + 2 * chains, ..., so
each stream is cut into one sub-stream per chain (its rows' fields back to back, as above) and
word j of chain c's sub-stream sits at word j * chains + c. With a bank per chain and banks
picked by word address modulo the bank count, every chain reads its own bank and the chains never
collide. `ChainLayout()` (one chain, byte words) is the row-major stream itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


from .quant import MANT_BITS, QuantError, QuantizedWeight, QuantScheme, block_quota, kept

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
        kept = self.kept_per_row() * n
        want = {"values": _nbytes(kept, self.scheme.bits), "indices": _nbytes(kept, self.scheme.index_bits()),
                "mant": _nbytes(n * self.scheme.groups(k), MANT_FIELD_BITS), "shift": _nbytes(n, SHIFT_FIELD_BITS)}
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


@dataclass(frozen=True)
class ChainLayout:
    """Chain interleaving of a tile's per-row streams in the weight buffer (module docstring):
    `chains` matrix chains, `word_bytes` the weight buffer's word (one bank read), `chain_len` the
    kept weights a chain takes per beat (what `hardware_k` pads a per-row group to)."""
    chains: int = 1
    word_bytes: int = 1
    chain_len: int = 1

    def __post_init__(self):
        for name in ("chains", "word_bytes", "chain_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise QuantError(f"ChainLayout.{name} must be a positive integer, not {v!r}")

    def words(self, rows: int, row_bits: int) -> int:
        """Words of the longest chain's sub-stream (chain 0's: it has the most rows)."""
        return -(-(-(-rows // self.chains) * row_bits) // (8 * self.word_bytes))

    def align(self, addr: int) -> int:
        """The first word boundary at or after byte `addr`."""
        return -(-addr // self.word_bytes) * self.word_bytes

    def stream_bytes(self, rows: int, row_bits: int) -> int:
        """Bytes of a stream of `rows` rows of `row_bits` bits each, interleaved (0 if empty)."""
        return self.words(rows, row_bits) * self.chains * self.word_bytes

    def interleave(self, stream: bytes, rows: int, row_bits: int) -> bytes:
        """A row-major packed stream (`pack_bits` of `rows` rows) as the interleaved one."""
        nc, w = self.chains, self.words(rows, row_bits)
        per = -(-rows // nc)                                      # rows of chain 0
        bits = np.unpackbits(np.frombuffer(stream, np.uint8), bitorder="little", count=rows * row_bits)
        bits = np.pad(bits, (0, (per * nc - rows) * row_bits)).reshape(per, nc, row_bits)
        chain = bits.transpose(1, 0, 2).reshape(nc, per * row_bits)   # chain c: rows c, c + nc, ...
        chain = np.pad(chain, ((0, 0), (0, w * 8 * self.word_bytes - per * row_bits)))
        words = np.packbits(chain, axis=1, bitorder="little").reshape(nc, w, self.word_bytes)
        return words.transpose(1, 0, 2).tobytes()

    def deinterleave(self, data: bytes, rows: int, row_bits: int) -> bytes:
        """The row-major packed stream back from `stream_bytes(rows, row_bits)` interleaved bytes."""
        nc, w = self.chains, self.words(rows, row_bits)
        per = -(-rows // nc)
        if len(data) < w * nc * self.word_bytes:
            raise QuantError(f"{len(data)} bytes hold fewer than {rows} interleaved rows of {row_bits} bits")
        words = np.frombuffer(data, np.uint8)[:w * nc * self.word_bytes].reshape(w, nc, self.word_bytes)
        chain = np.unpackbits(words.transpose(1, 0, 2).reshape(nc, -1), axis=1, bitorder="little")
        bits = chain[:, :per * row_bits].reshape(nc, per, row_bits).transpose(1, 0, 2).reshape(-1)
        return np.packbits(bits[:rows * row_bits], bitorder="little").tobytes()


def hardware_k(scheme: QuantScheme, k: int, chain_len: int = 1) -> int:
    """K as the matrix engine runs a weight of K inputs: whole scale groups (a partial last group
    padded to g) and, per row, whole beats of `chain_len` kept weights (K a multiple of
    chain_len * M / N; dense: of chain_len). Equal to K when K is already whole."""
    g = scheme.group_size(k)
    if g < k:
        unit = g
    else:
        nn, m = scheme.sparsity or (1, 1)
        unit = -(-chain_len // nn) * m            # beats of chain_len kept weights hold whole blocks
    return -(-k // unit) * unit


def pad_k(qw: QuantizedWeight, k_hw: int) -> QuantizedWeight:
    """`qw` [N, K] as the [N, k_hw] weight the hardware streams: zero codes past K (their products
    are 0 whatever the activation codes there), the same scales, per row one group of k_hw when the
    group was the row. With N:M, every padded block keeps exactly N: the zero codes at its first pad
    positions make up what a last partial block of real weights kept fewer of."""
    n, k = qw.shape
    if k_hw == k:
        return qw
    s = qw.scheme
    per_row = qw.group == k
    if not (k_hw > k and (per_row or s.groups(k) == -(-k_hw // qw.group))):
        raise QuantError(f"{qw.name or 'weight'}: cannot pad K={k} (group {qw.group}) to {k_hw} without adding "
                         f"a scale group")
    hw = dataclasses.replace(s, group=0) if per_row else s
    if not qw.has_values:                          # config-only: the format alone, for sizes
        return QuantizedWeight(hw, (n, k_hw), name=qw.name)
    codes = np.zeros((n, k_hw), np.int8)
    codes[:, :k] = qw.codes
    mask = None
    if s.sparsity is not None:
        nn, m = s.sparsity
        if k_hw % m:
            raise QuantError(f"{qw.name or 'weight'}: a padded K of {k_hw} is not whole {m}-blocks")
        mask = np.zeros((n, k_hw), bool)
        mask[:, :k] = qw.mask
        quota = block_quota(k, nn, m)
        for c in range(k, k_hw):                   # pad column c: kept while its block is short
            b, first = c // m, max(k, c // m * m)
            real = quota[b] if b < len(quota) else 0
            mask[:, c] = c - first < nn - real
    return QuantizedWeight(hw, (n, k_hw), codes, qw.mant, qw.shift, mask, qw.name)


class TileStream(NamedTuple):
    addr: int           # byte address in the weight buffer
    row_bits: int       # bits of one row's fields
    nbytes: int         # bytes the stream spans


def tile_streams(i, weights: ChainLayout) -> dict[str, TileStream]:
    """The codes, indices (sparse only), shifts and mantissas of the weight tile of an MV or MM
    instruction `i` (its fields by name; docs/isa.md) in a weight buffer laid out by `weights`."""
    n, k, pat = i["n"], i["k"], i["sparsity"].pattern
    n_kept = kept(k, pat)
    mant_bits = MANT_FIELD_BITS * (k // min(i["group"].size or k, k))
    out = {"codes": TileStream(i["wbuf_addr"], n_kept * i["bits"].bits, 0)}
    if pat:
        out["indices"] = TileStream(i["idx_addr"], n_kept * (pat[1] - 1).bit_length(), 0)
    out["shifts"] = TileStream(i["scale_addr"], SHIFT_FIELD_BITS, n)
    out["mantissas"] = TileStream(weights.align(i["scale_addr"] + n), mant_bits, 0)
    return {name: s if s.nbytes else s._replace(nbytes=weights.stream_bytes(n, s.row_bits)) for name, s in out.items()}


def _fields(p: PackedWeight) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(codes [N, kept], absolute K positions [N, kept] or None if dense, mant [N, G], shift [N])."""
    n, k = p.shape
    s = p.scheme
    kept = p.kept_per_row()
    groups = s.groups(k)
    codes = unpack_bits(p.values, s.bits, n * kept).reshape(n, kept)
    mant = unpack_bits(p.mant, MANT_FIELD_BITS, n * groups, signed=False).reshape(n, groups)
    shift = unpack_bits(p.shift, SHIFT_FIELD_BITS, n)
    if s.sparsity is None:
        return codes, None, mant, shift
    nn, m = s.sparsity
    idx = unpack_bits(p.indices, s.index_bits(), n * kept, signed=False).reshape(n, kept)
    block = np.repeat(np.arange(-(-k // m)), block_quota(k, nn, m))     # the m-block of each kept code
    pos = idx + block * m
    same = block[1:] == block[:-1]
    if (pos >= k).any() or (idx >= m).any() or (np.diff(idx, axis=-1)[:, same] <= 0).any():
        raise QuantError(f"indices stream: the {nn} positions of every {m}-block must be strictly ascending "
                         f"in 0..{m - 1} (in 0..{k % m - 1} in a last partial block)")
    return codes, pos, mant, shift


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
    g, groups = p.scheme.group_size(k), p.scheme.groups(k)
    x = x.astype(np.int64)
    if pos is None:
        pos = np.broadcast_to(np.arange(k), (n, k))
    xs = x[..., pos]                                             # the activation of each kept code
    out = np.zeros((*x.shape[:-1], n, groups), np.int64)
    for j in range(groups):                                      # kept codes of group j (a partial last one too)
        cols = (pos[0] >= j * g) & (pos[0] < (j + 1) * g)       # every row keeps the same count per block
        out[..., j] = (xs[..., cols] * codes[:, cols]).sum(axis=-1)
    return out
