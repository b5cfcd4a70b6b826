"""Lowering of attention (K/V cache rows, QK and PV on the matrix engine, softmax) and of the
activation quantization every matrix op starts from; the rest of lowering is in lower.py."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llmfab.ir.integer import softcap_fixed
from llmfab.ir.isa import CAUSAL, CONTINUE, HOLD, BufferId, MiscFunc, Opcode, quant_row_bytes

from .buckets import Stage
from .hbm_layout import LayoutError

if TYPE_CHECKING:
    from .lower import Lowerer

ACT, SCRATCH, KV = BufferId.ACT, BufferId.SCRATCH, BufferId.KV
KV_SLOTS = 8     # KV tiles the KV buffer holds at once, at most: a head's K and V, and the next heads'
KV_ALIGN = 256   # bytes a KV slot's start is a multiple of


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
    step = lw.bucket.kv_step                            # keys per KV tile (the bucket's)
    if step * qrow > lw.half["kv"]:
        raise LayoutError(f"a KV tile of {step} keys of {qrow} bytes does not fit half the KV buffer "
                          f"({lw.half['kv']} bytes)")
    tiles = lw.bucket.kv_tiles
    # KV tiles rotate over up to KV_SLOTS parts of the KV buffer, so the next head's K and V load
    # (side by side, from their channels) while this head's are read; each part starts on a
    # multiple of KV_ALIGN bytes (a whole read group of the widest target: no partial first group)
    slots = max(2, min(KV_SLOTS, 2 * lw.half["kv"] // (-(-step * qrow // KV_ALIGN) * KV_ALIGN)))
    align = KV_ALIGN if 2 * lw.half["kv"] // slots // KV_ALIGN * KV_ALIGN >= step * qrow else 1
    # the new rows join the cache at positions [LEN - s, LEN): quantized per (head, token) row, one
    # ST per KV head; attention then reads the cache up to LEN, these rows included
    for name, src in (("k", k), ("v", v)):
        key = (node.name, name)
        at = quant_rows(lw, src, key, a.num_kv_heads * s, dh, pitch=qrow)
        for h, kvh in enumerate(heads_kv):
            obj = kvh.k if name == "k" else kvh.v
            lw.dma(Opcode.ST, obj, lw.p_first, s, SCRATCH, at + h * s * qrow, reads=[("scratch", key)],
                   writes=[("hbm", a.layer, name, h)], len_field="hbm_addr")
        lw.scratch.free(key)
    qkey = (node.name, "q")
    qat = quant_rows(lw, q, qkey, rows, dh)
    q_row = quant_row_bytes(dh)
    dst = lw.new_act(node.name)
    width = 4 * lw.p_keys                               # bytes of one row of scores
    scale = int(np.floor(a.scale * 2 ** 16 + 0.5))

    def kv_tiles(obj, name: str, h: int):
        """LD each KV tile of head h into the next KV slot; yields (j, keys, last, address, slot)."""
        for j in range(tiles):
            last = j == tiles - 1   # its extent comes from the length register
            n_keys = min(step, lw.p_keys - j * step)
            at, half = lw.next_half("kv", slots, align)
            lw.dma(Opcode.LD, obj, j * step, n_keys, KV, at, writes=[("kv", half)], len_field="rows" if last else None,
                   reads=[("hbm", a.layer, name, h)])
            yield j, n_keys, last, at, half

    g_rows = rep * s                                    # a KV head's query rows

    def scores(h, kvh):
        """Head h's QK over its K tiles, then its softcap and softmax (SFU); returns the scores' key and address."""
        skey = (node.name, "scores", h)
        sat = lw.scratch.alloc(skey, g_rows * width, f"attention scores of {node.name!r}")
        q_at = qat + h * g_rows * q_row
        for j, n_keys, last, at, half in kv_tiles(kvh.k, "k", h):
            lw.emit(Opcode.ATTN, [("kv", half), ("scratch", qkey)], [("scratch", skey)],
                    "cols" if last else None, func=MiscFunc.ATTN_QK, rows=g_rows, cols=n_keys, depth=dh, imm=scale,
                    src2_pad=pad,
                    src_buf=SCRATCH, src_addr=q_at, src2_buf=KV, src2_addr=at, dst_buf=SCRATCH,
                    dst_addr=sat + 4 * j * step, dst_stride=width)
        # decode: the LEN keys; a chunk: every column, causal from its first position LEN - s, so
        # keys at LEN and past (not scored in this run) are masked
        causal = a.causal and not decode
        if a.softcap is not None:   # Gemma2: softcap tanh(scores) in place (the 1 / softcap is in `scale`)
            lw.emit(Opcode.MISC, [("scratch", skey)], [("scratch", skey)], None if causal else "cols",
                    func=MiscFunc.SOFTCAP, rows=g_rows, cols=lw.p_keys, imm=softcap_fixed(a.softcap),
                    src_buf=SCRATCH, src_addr=sat, src_stride=width, dst_buf=SCRATCH, dst_addr=sat, dst_stride=width)
        lw.emit(Opcode.MISC, [("scratch", skey)], [("scratch", skey)], "imm" if causal else "cols",
                func=MiscFunc.SOFTMAX, rows=g_rows, cols=lw.p_keys, period=s, imm=lw.p_first if causal else 0,
                flags=CAUSAL if causal else 0, src_buf=SCRATCH, src_addr=sat, src_stride=width,
                dst_buf=SCRATCH, dst_addr=sat, dst_stride=width)
        return skey, sat

    def values(h, kvh, skey, sat):
        """Head h's PV over its V tiles, from its scores."""
        for j, n_keys, last, at, half in kv_tiles(kvh.v, "v", h):
            flags = (CONTINUE if j else 0) | (HOLD if j < tiles - 1 else 0)
            lw.emit(Opcode.ATTN, [("kv", half), ("scratch", skey)], [("act", node.name)],
                    "cols" if last else None, func=MiscFunc.ATTN_PV, rows=g_rows, cols=n_keys, depth=dh, flags=flags,
                    src2_pad=pad,
                    src_buf=SCRATCH, src_addr=sat + 4 * j * step, src_stride=width, src2_buf=KV, src2_addr=at,
                    dst_buf=ACT, dst_addr=dst + 4 * h * g_rows * dh)
        lw.scratch.free(skey)

    # one KV head and its `rep` query heads at a time, software-pipelined while the scratch buffer
    # holds two heads' scores (a decode row's are small, a prefill chunk's may not fit twice): head
    # h + 1's QK runs on the matrix unit while head h's softmax runs on the SFU, then head h's PV
    pending = None
    for h, kvh in enumerate(heads_kv):
        if pending is not None and not lw.scratch.fits(g_rows * width):
            values(*pending)
            pending = None
        got = scores(h, kvh)
        if pending is not None:
            values(*pending)
        pending = (h, kvh, *got)
    if pending is not None:
        values(*pending)
    lw.scratch.free(qkey)
