"""Where everything lives in HBM, in the ISA's striping (docs/isa.md, LD/ST).

An LD/ST moves rows; each row is cut into `channels` equal slices, slice c in pseudo-channel
`channel + c`, at the same per-channel address. So every object is laid out in the row size its
instructions move, over the channels they name:

- a weight tile (as many `n_chains`-row groups as fit half the weight buffer) is one row: its
  rows' packed streams (ir/packing.py), the per-row ones chain-interleaved (`ChainLayout`) —
  codes, sparsity indices, then the row shifts (a byte each) and, from the next word, the scale
  mantissas — then the rows' int32 Q.16 biases, padded to a multiple of the channels, over every
  channel, so one LD streams a tile at the full HBM bandwidth and lands it as the engine reads it;
- an embedding table is one row per token (codes, mantissas, shift: the EMBED row format), read
  by an indirect LD;
- parameters (norm weights, a norm's weight then bias, a row of them per head for a per-head norm,
  RoPE tables as per position `depth` cos then `depth` sin) are int32 Q.16 rows;
- the KV cache is head-major: per layer K then V, per KV head `max_len` rows of `4 + head_dim`
  bytes (a quantized row: scale record then codes), each K or V of a head in one channel, its rows
  contiguous there, so that a KV tile is one burst stream (the DMA merges contiguous rows) and not
  thousands of few-byte slices; each object goes to the channel that holds least so far;
- the output region holds the logits rows (Q.16).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmfab.ir import Graph, OpKind
from llmfab.ir.isa import quant_row_bytes
from llmfab.ir.memory import Region
from llmfab.ir.packing import MANT_FIELD_BITS, ChainLayout, hardware_k, pad_k
from llmfab.ir.quant import QuantizedWeight, QuantScheme, kept

from .quantize import weight_sites


class LayoutError(ValueError):
    any_length = False    # True: no max length would fit (the weights alone, a weight tile)


@dataclass(frozen=True)
class Tile:
    rows: tuple[int, int]                  # output rows [start, stop)
    obj: Region                            # one row: the tile image
    streams: tuple[int, int, int, int, int]   # offsets of codes, indices, shifts, mantissas, biases


@dataclass(frozen=True)
class KVHead:
    k: Region
    v: Region


@dataclass
class HbmLayout:
    channels: int
    channel_capacity: int
    tiles: dict[str, tuple[Tile, ...]] = field(default_factory=dict)     # linear / lm_head node -> tiles
    engine_k: dict[str, tuple[QuantScheme, int]] = field(default_factory=dict)  # linear -> format and K as run
    tables: dict[str, Region] = field(default_factory=dict)              # embedding table const -> rows
    params: dict[str, Region] = field(default_factory=dict)              # param key -> one row
    kv: dict[int, list[KVHead]] = field(default_factory=dict)            # layer -> per KV head
    output: Region | None = None
    used: list[int] = field(default_factory=list)                        # bytes used per channel
    fixed_bytes: int = 0                   # of objects whose size does not depend on the max length

    def __post_init__(self):
        self.used = [0] * self.channels

    def alloc(self, row_bytes: int, rows: int, channels: int | None = None, group: int = 0,
              per_position: bool = False) -> Region:
        """Place `rows` rows of `row_bytes`, padded to a multiple of the channels used."""
        c = channels or self.channels
        first = (group * c) % self.channels
        pitch = -(-row_bytes // c)
        self.fixed_bytes += 0 if per_position else pitch * c * rows
        addr = max(self.used[first:first + c])
        for ch in range(first, first + c):
            self.used[ch] = addr + pitch * rows
        return Region(addr, first, c, pitch * c, rows)

    def emptiest(self) -> int:
        """The channel that holds the fewest bytes (the first of them)."""
        return min(range(self.channels), key=lambda ch: (self.used[ch], ch))

    @property
    def bytes_used(self) -> int:
        return sum(self.used)


MAX_ROW_PADDING = 1.25   # a row may grow this much to spread over more channels
# KV rows striped over many channels (`kv_channels`, padded per channel: ATTN's src2_pad) instead
# of each head's rows in one channel. Striped rows are a few bytes a channel, one DMA slice each:
# a 7B decode step's KV loads took ~19,000 slices per head (issue 13); kept for the padded path.
KV_STRIPED = False


def kv_channels(row: int, channels: int, max_padding: float | None = None) -> int:
    """The most channels (a power of two dividing `channels`) that a row of `row` bytes spreads over,
    padded to whole bytes per channel by at most `max_padding`: a KV tile load then uses (nearly)
    every channel, instead of the few that divide the row (132-byte LLaMA rows: 32 channels of 5
    bytes, 160 bytes, rather than 4 of 33)."""
    limit = (MAX_ROW_PADDING if max_padding is None else max_padding) * row
    c = 1
    while c * 2 <= channels and channels % (c * 2) == 0 and -(-row // (c * 2)) * c * 2 <= limit:
        c *= 2
    return c


def engine_weight(qw: QuantizedWeight, weights: ChainLayout) -> QuantizedWeight:
    """A linear's weight as the matrix engine streams it: K padded with zero codes to whole groups
    and beats (ir/packing.py `hardware_k`, `pad_k`); the weight itself when K is whole already."""
    return pad_k(qw, hardware_k(qw.scheme, qw.shape[1], weights.chain_len))


def embed_parts(qw: QuantizedWeight) -> tuple[tuple[int, int, int], ...]:
    """(first column, columns, group) of each EMBED over a table row. A partial last group is an
    EMBED of its own (per row, its columns its group), so that every EMBED row is whole groups and
    the SFU's EMBED needs no partial-group mode; a table row stores each part's EMBED row in turn."""
    k, g = qw.shape[1], qw.group
    full = k // g * g
    return ((0, k, g),) if full == k else ((0, full, g), (full, k - full, k - full))


def embed_row_bytes(bits: int, cols: int, group: int) -> int:
    """Bytes of one EMBED row of `cols` codes of `bits` in groups of `group` (docs/isa.md EMBED)."""
    return -(-cols * bits // 8) + 2 * (cols // group) + 1


def row_bytes(qw: QuantizedWeight) -> int:
    """Packed bytes of one table row (per EMBED part: codes, mantissas, shift): an EMBED table row."""
    return sum(embed_row_bytes(qw.scheme.bits, cols, g) for _, cols, g in embed_parts(qw))


def row_bits(qw: QuantizedWeight) -> tuple[int, int, int]:
    """Bits per row of the codes, indices and mantissa streams."""
    n_kept = kept(qw.shape[1], qw.scheme.sparsity)
    return n_kept * qw.scheme.bits, n_kept * qw.scheme.index_bits(), MANT_FIELD_BITS * qw.scheme.groups(qw.shape[1])


def stream_offsets(qw: QuantizedWeight, rows: int, weights: ChainLayout) -> tuple[int, int, int, int, int]:
    """Offsets in a tile of `rows` rows of the codes, indices, shifts, mantissas and biases; the
    per-row streams are interleaved over the chains and start on words (docs/isa.md, MV)."""
    codes, idx, mant = row_bits(qw)
    at_idx = weights.stream_bytes(rows, codes)
    at_shift = at_idx + weights.stream_bytes(rows, idx)
    at_mant = weights.align(at_shift + rows)
    return 0, at_idx, at_shift, at_mant, at_mant + weights.stream_bytes(rows, mant)


def tile_bytes(qw: QuantizedWeight, rows: int, weights: ChainLayout, bias: bool) -> int:
    return stream_offsets(qw, rows, weights)[4] + (4 * rows if bias else 0)


def _bias_of(g: Graph, user: str) -> str | None:
    n = g.node(user)
    return n.inputs[2] if n.op in (OpKind.LINEAR, OpKind.LMHEAD) and len(n.inputs) == 3 else None


def const_operand(g: Graph, n) -> tuple[str, str] | None:
    """(activation, constant) of an ADD or MUL with one constant operand (Gemma's embedding scale),
    which runs as one row broadcast over every row (MISC BROADCAST); None for other nodes."""
    if n.op not in (OpKind.ADD, OpKind.MUL) or len(n.inputs) != 2:
        return None
    a, b = n.inputs
    consts = [x for x in (a, b) if g.node(x).op is OpKind.CONST]
    if len(consts) != 1:
        return None
    c = consts[0]
    t, cols = g.node(c).type, n.type.shape[-1]
    if any(d != 1 for d in t.shape[:-1]) or (t.rank and t.shape[-1] not in (1, cols)):
        raise LayoutError(f"node {n.name!r} ({n.op}): its constant {c!r} {list(t.shape)} is not one row to "
                          f"broadcast over rows of {cols}; only such constants are lowered")
    return (b if c == a else a), c


def _rope_pairs(g: Graph) -> dict[tuple[str, str], str]:
    return {(n.inputs[1], n.inputs[2]): f"rope:{n.inputs[1]}" for n in g.nodes() if n.op is OpKind.ROPE}


def _over(lay: HbmLayout, capacity: int, row_bytes: int, rows: int) -> bool:
    """Whether `rows` rows of `row_bytes` over every channel overfill a channel (even spread)."""
    return max(lay.used) + -(-row_bytes // lay.channels) * rows > capacity


def place(g: Graph, *, channels: int, channel_capacity: int, weights: ChainLayout, half_bytes: int, max_len: int,
          max_rows: int, capacity_label: str) -> HbmLayout:
    """Lay out `g`: quantized, with shapes at `max_len` tokens so its tables cover every position.

    Per-position objects (KV cache, RoPE rows, logits, learned position rows) get `max_len`
    rounded up to whole prefill chunks of `max_rows`: the padded last chunk reads and writes its
    rows too."""
    padded = -(-max_len // max_rows) * max_rows
    lay = HbmLayout(channels, channel_capacity)
    for s in weight_sites(g):
        if not isinstance(g.node(s.const).data, QuantizedWeight):
            raise LayoutError(f"weight {s.const!r} of {s.user!r} is not quantized: run the quantize pass first")
    for e in (n for n in g.nodes() if n.op is OpKind.EMBEDDING):  # rows picked by token or position
        qw = g.node(e.inputs[0]).data
        if qw.scheme.sparsity is not None:
            raise LayoutError(f"embedding table {e.inputs[0]!r} cannot be sparse ({qw.scheme}): EMBED reads dense rows")
        rows = qw.shape[0]
        if g.node(e.inputs[1]).op is OpKind.CONST:  # learned positions: rows up to the padded last chunk
            rows = max(rows, int(np.ravel(g.const_value(e.inputs[1]))[0]) + padded)
        lay.tables[e.inputs[0]] = lay.alloc(row_bytes(qw), rows, per_position=rows > qw.shape[0])
    too_big = None
    for m in (n for n in g.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD)):
        const = m.inputs[1]
        qw = engine_weight(g.node(const).data, weights)
        lay.engine_k[m.name] = (qw.scheme, qw.shape[1])
        n = qw.shape[0]
        bias = _bias_of(g, m.name) is not None
        nc = weights.chains
        groups = max(1, half_bytes // (tile_bytes(qw, nc, weights, bias) or 1))   # chain-row groups a tile
        while groups > 1 and tile_bytes(qw, min(n, groups * nc), weights, bias) > half_bytes:
            groups -= 1                                    # the per-stream padding did not fit
        need = tile_bytes(qw, min(n, nc), weights, bias)
        if need > half_bytes and too_big is None:  # reported after the memory check, the larger problem
            too_big = LayoutError(f"{nc} rows of {const!r} ({need} bytes, {m.attrs.role.value} {qw.scheme}) do "
                                  f"not fit half the weight buffer ({half_bytes} bytes): "
                                  f"{need - half_bytes} bytes too many")
        rows = nc * groups
        full, rest = divmod(n, rows)
        if too_big is not None or _over(lay, channel_capacity, tile_bytes(qw, rows, weights, bias), full):
            # refused below anyway: count the bytes of (maybe millions of) tiles, never build them
            lay.alloc(tile_bytes(qw, rows, weights, bias), full)
            lay.alloc(tile_bytes(qw, rest, weights, bias), 1 if rest else 0)
            continue
        tiles = []
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            tiles.append(Tile((r0, r1), lay.alloc(tile_bytes(qw, r1 - r0, weights, bias), 1),
                              stream_offsets(qw, r1 - r0, weights)))
        lay.tiles[m.name] = tuple(tiles)
    biases = {_bias_of(g, s.user) for s in weight_sites(g)} - {None}
    quantized = {s.const for s in weight_sites(g)}
    ropes = _rope_pairs(g)
    for (cos, sin), key in ropes.items():
        d = g.node(cos).type.shape[-1]
        lay.params[key] = lay.alloc(8 * d, padded, per_position=True)
    for n in g.nodes():
        if n.op in (OpKind.RMSNORM, OpKind.LAYERNORM):
            lay.params[n.name] = lay.alloc(4 * (len(n.inputs) - 1) * n.type.shape[-1], norm_heads(g, n))
        elif n.op is OpKind.EMBEDDING and g.node(n.inputs[1]).op is OpKind.CONST:
            pass  # learned positions: rows of the table, picked by position
        elif const_operand(g, n):
            lay.params[n.name] = lay.alloc(4 * n.type.shape[-1], 1)
        elif n.op is OpKind.CONST and n.attrs.weight and n.name not in quantized | biases \
                and not any(u.op in (OpKind.RMSNORM, OpKind.LAYERNORM) or const_operand(g, u) for u in g.users(n.name)):
            raise LayoutError(f"parameter {n.name!r} is read by no op the accelerator runs")
    for a in (n for n in g.nodes() if n.op is OpKind.ATTENTION):
        kt = g.node(a.inputs[1]).type
        hkv, dh = kt.shape[1], kt.shape[3]
        row = quant_row_bytes(dh)
        c = kv_channels(row, channels) if KV_STRIPED else 1
        if _over(lay, channel_capacity, 2 * hkv * row * padded, 1):   # as for the tiles: its bytes only
            lay.alloc(row, 2 * hkv * padded, per_position=True)
            continue

        def kv_object(h: int) -> Region:
            """Striped: head h's group of channels (K and V alike); else one channel, the emptiest."""
            return lay.alloc(row, padded, c, group=h if KV_STRIPED else lay.emptiest(), per_position=True)
        lay.kv[a.attrs.layer] = [KVHead(kv_object(h), kv_object(h)) for h in range(hkv)]
    vocab = max((n.type.shape[-1] for n in g.nodes() if n.op is OpKind.LMHEAD), default=1)
    lay.output = lay.alloc(4 * vocab, padded, kv_channels(4 * vocab, channels, 1.0), per_position=True)  # a row per prompt position, unpadded
    worst = max(lay.used)
    if worst > channel_capacity:
        need, have = sum(lay.used), channel_capacity * channels
        e = LayoutError(f"weights, parameters and a KV cache of {max_len} tokens need {need / 1e9:.2f} GB of "
                        f"{capacity_label}, which holds {have / 1e9:.2f} GB: the fullest channel needs "
                        f"{worst / 1e6:.1f} MB of its {channel_capacity / 1e6:.1f} MB "
                        f"({(worst - channel_capacity) / 1e6:.1f} MB too much)")
        e.any_length = lay.fixed_bytes > have or too_big is not None   # (a tile too big: said when memory fits)
        raise e
    if too_big is not None:
        too_big.any_length = True
        raise too_big
    return lay


# ---- images -----------------------------------------------------------------------------


def norm_heads(g: Graph, n) -> int:
    """How many rows a norm's parameters have: one, or one per head (StableLM's q/k_layernorm, [H, 1.., D])."""
    return max(g.node(p).type.shape[0] if g.node(p).type.rank > 1 else 1 for p in n.inputs[1:])


def norm_rows(g: Graph, n) -> np.ndarray:
    """A norm's parameter rows, [heads, k * D]: its weight (then its bias) for each head."""
    d, heads = n.type.shape[-1], norm_heads(g, n)
    ps = [np.asarray(g.const_value(p)).reshape(-1, d) for p in n.inputs[1:]]
    return np.concatenate([np.broadcast_to(p, (heads, d)) for p in ps], axis=1)


def _write(images: list[bytearray], obj: Region, row: int, data: bytes) -> None:
    data = data.ljust(obj.row_bytes, b"\0")
    p = obj.pitch
    at = obj.addr + row * p
    for c in range(obj.channels):
        images[obj.channel + c][at:at + p] = data[c * p:(c + 1) * p]


def _packed_rows(qw: QuantizedWeight, r0: int, r1: int):
    from llmfab.ir.packing import pack
    return pack(QuantizedWeight(qw.scheme, (r1 - r0, qw.shape[1]), qw.codes[r0:r1], qw.mant[r0:r1], qw.shift[r0:r1],
                                None if qw.mask is None else qw.mask[r0:r1], name=qw.name))


def _table_part(qw: QuantizedWeight, c0: int, cols: int, group: int) -> QuantizedWeight:
    """Columns [c0, c0 + cols) of a table with their scales: one EMBED part (`embed_parts`)."""
    scheme = QuantScheme(qw.scheme.bits, group if group < cols else 0)
    j0 = c0 // qw.group
    return QuantizedWeight(scheme, (qw.shape[0], cols), qw.codes[:, c0:c0 + cols],
                           qw.mant[:, j0:j0 + scheme.groups(cols)], qw.shift, name=qw.name)


def channel_images(g: Graph, lay: HbmLayout, weights: ChainLayout) -> list[bytearray]:
    """Every channel's bytes: weight tiles, tables and parameters (KV cache and output stay zero)."""
    from llmfab.ir.fixed_point import to_fixed

    def q16(v) -> bytes:
        return np.ascontiguousarray(to_fixed(np.asarray(v, np.float64)).astype("<i4")).tobytes()

    images = [bytearray(max(lay.used)) for _ in range(lay.channels)]
    for user, tiles in lay.tiles.items():
        qw = engine_weight(g.node(g.node(user).inputs[1]).data, weights)
        b = _bias_of(g, user)
        bias = g.const_value(b) if b else None
        bits = row_bits(qw)
        for t in tiles:
            p, rows = _packed_rows(qw, *t.rows), t.rows[1] - t.rows[0]
            at = t.streams
            img = bytearray(at[4] + (4 * rows if bias is not None else 0))
            for (stream, rb), off in zip(((p.values, bits[0]), (p.indices, bits[1]), (p.mant, bits[2])),
                                         (at[0], at[1], at[3])):
                if rb:
                    data = weights.interleave(stream, rows, rb)
                    img[off:off + len(data)] = data
            img[at[2]:at[2] + rows] = p.shift
            if bias is not None:
                img[at[4]:] = q16(bias[t.rows[0]:t.rows[1]])
            _write(images, t.obj, 0, bytes(img))
    for const, obj in lay.tables.items():  # EMBED rows: per part, codes, mantissas, shift of each row
        qw = g.node(const).data
        parts = [_table_part(qw, *part) for part in embed_parts(qw)]
        for r in range(qw.shape[0]):
            rows = [_packed_rows(part, r, r + 1) for part in parts]
            _write(images, obj, r, b"".join(p.values + p.mant + p.shift for p in rows))
    for n in g.nodes():
        if n.op in (OpKind.RMSNORM, OpKind.LAYERNORM):
            for r, row in enumerate(norm_rows(g, n)):
                _write(images, lay.params[n.name], r, q16(row))
        elif (pair := const_operand(g, n)) is not None:
            row = np.broadcast_to(np.ravel(g.const_value(pair[1])), (n.type.shape[-1],))
            _write(images, lay.params[n.name], 0, q16(row))
    for (cos, sin), key in _rope_pairs(g).items():
        c = g.const_value(cos).reshape(-1, g.node(cos).type.shape[-1])
        s = g.const_value(sin).reshape(c.shape)
        for pos in range(min(len(c), lay.params[key].rows)):
            _write(images, lay.params[key], pos, q16(c[pos]) + q16(s[pos]))
    return images


