"""Lowering of attention (K/V cache rows, QK and PV on the matrix engine, softmax) and of the
activation quantization every matrix op starts from; the rest of lowering is in lower.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llmfab.ir.isa import CAUSAL, CONTINUE, HOLD, BufferId, MiscFunc, Opcode, quant_row_bytes

from .buckets import Stage
from .hbm_layout import LayoutError

if TYPE_CHECKING:
    from .lower import Lowerer

ACT, SCRATCH, KV = BufferId.ACT, BufferId.SCRATCH, BufferId.KV


def quant_rows(lw: Lowerer, src: str, key, rows: int, cols: int, offset: int = 0, pitch: int = 0) -> int:
    """Quantize `rows` rows into scratch, `pitch` bytes apart (0: the natural `quant_row_bytes(cols)`)."""
    at = lw.scratch.alloc(key, rows * (pitch or quant_row_bytes(cols)), f"int8 rows of {src!r}")
    lw.emit(Opcode.MISC, [("act", lw.key(src))], [("scratch", key)], func=MiscFunc.QUANT_ROWS, rows=rows, cols=cols,
            src_buf=ACT, src_addr=lw.addr(src) + offset, dst_buf=SCRATCH, dst_addr=at,
            dst_stride=pitch if pitch != quant_row_bytes(cols) else 0)
    return at


def attention(lw: Lowerer, node) -> None:
    q, k, v = node.inputs[:3]
    a = node.attrs
    heads_kv = lw.lay.kv[a.layer]
    rows, dh = lw.rows_cols(node.name)                 # rows = H x S, head-major
    s = lw.p_rows
    rep = a.num_heads // a.num_kv_heads
    decode = lw.bucket.stage is Stage.DECODE
    qrow = heads_kv[0].k.row_bytes                      # 4 + dh, padded to whole bytes per HBM channel
    pad = qrow - quant_row_bytes(dh)
    step = lw.half["kv"] // qrow                        # keys per KV tile: as many as half the buffer holds
    if decode:
        step = min(step, lw.bucket.step)                # (a decode bucket spans one tile)
    if step < 1:
        raise LayoutError(f"one key row of {qrow} bytes does not fit half the KV buffer ({lw.half['kv']} bytes)")
    tiles = -(-lw.p_keys // step)
    # the new rows join the cache: quantized per (head, token) row, one ST per KV head
    # HBM regions of the cache, per row tile: this pass writes its own, attention reads all so far
    # (naming them per tile keeps a store from waiting for loads of rows it does not touch)
    tile_no = 0 if decode else lw.p_first // lw.p_rows   # (a decode step writes one row, reads all)
    for name, src in (("k", k), ("v", v)):
        key = (node.name, name)
        at = quant_rows(lw, src, key, a.num_kv_heads * s, dh, pitch=qrow)
        for h, kvh in enumerate(heads_kv):
            obj = kvh.k if name == "k" else kvh.v
            lw.dma(Opcode.ST, obj, lw.p_first, s, SCRATCH, at + h * s * qrow, reads=[("scratch", key)],
                   writes=[("hbm", a.layer, name, h, tile_no)], len_field="hbm_addr" if decode else None)
        lw.scratch.free(key)
    qkey = (node.name, "q")
    qat = quant_rows(lw, q, qkey, rows, dh)
    q_row = quant_row_bytes(dh)
    dst = lw.new_act(node.name)
    width = 4 * lw.p_keys                               # bytes of one row of scores
    scale = int(np.floor(a.scale * 2 ** 16 + 0.5))

    def kv_tiles(obj, name: str, h: int):
        """LD each KV tile of head h into the next KV half; yields (j, keys, last, address, half)."""
        for j in range(tiles):
            last = decode and j == tiles - 1   # its extent comes from the length register
            n_keys = min(step, lw.p_keys - j * step)
            at, half = lw.next_half("kv")
            lw.dma(Opcode.LD, obj, j * step, n_keys, KV, at, writes=[("kv", half)], len_field="rows" if last else None,
                   reads=[("hbm", a.layer, name, h, t) for t in range(tile_no + 1)])
            yield j, n_keys, last, at, half

    for h, kvh in enumerate(heads_kv):                 # one KV head and its `rep` query heads at a time
        g_rows = rep * s
        skey = (node.name, "scores", h)
        sat = lw.scratch.alloc(skey, g_rows * width, f"attention scores of {node.name!r}")
        q_at = qat + h * g_rows * q_row
        for j, n_keys, last, at, half in kv_tiles(kvh.k, "k", h):
            lw.emit(Opcode.ATTN, [("kv", half), ("scratch", qkey)], [("scratch", skey)],
                    "cols" if last else None, func=MiscFunc.ATTN_QK, rows=g_rows, cols=n_keys, depth=dh, imm=scale,
                    src2_pad=pad,
                    src_buf=SCRATCH, src_addr=q_at, src2_buf=KV, src2_addr=at, dst_buf=SCRATCH,
                    dst_addr=sat + 4 * j * step, dst_stride=width)
        lw.emit(Opcode.MISC, [("scratch", skey)], [("scratch", skey)], "cols" if decode else None,
                func=MiscFunc.SOFTMAX, rows=g_rows, cols=lw.p_keys, period=s, imm=lw.p_first,
                flags=CAUSAL if a.causal and not decode else 0, src_buf=SCRATCH, src_addr=sat, src_stride=width,
                dst_buf=SCRATCH, dst_addr=sat, dst_stride=width)
        for j, n_keys, last, at, half in kv_tiles(kvh.v, "v", h):
            flags = (CONTINUE if j else 0) | (HOLD if j < tiles - 1 else 0)
            lw.emit(Opcode.ATTN, [("kv", half), ("scratch", skey)], [("act", node.name)],
                    "cols" if last else None, func=MiscFunc.ATTN_PV, rows=g_rows, cols=n_keys, depth=dh, flags=flags,
                    src2_pad=pad,
                    src_buf=SCRATCH, src_addr=sat + 4 * j * step, src_stride=width, src2_buf=KV, src2_addr=at,
                    dst_buf=ACT, dst_addr=dst + 4 * h * g_rows * dh)
        lw.scratch.free(skey)
    lw.scratch.free(qkey)
