"""Lowering: a quantized fused graph -> the instruction program of one length bucket (docs/compile.md).

Each instruction is emitted with the on-chip regions it reads and writes; `TokenTracker` turns the
hazards into dependency tokens, so loads overlap compute exactly as far as the buffers allow
(weight tiles ping-pong between the two halves of their buffer; KV tiles rotate over up to
`lower_attention.KV_SLOTS` parts of theirs).

A program runs `rows` tokens through every layer at the positions the length register gives: a
decode program one token at position LEN - 1, a prefill program a chunk of `prefill_step` tokens
at positions [LEN - rows, LEN) (the host runs a prompt's chunks in order, buckets.py). Everything
but positions and attention is fixed; attention streams the KV cache in tiles of `kv_step` keys
and its last tile, the softmax, the RoPE and position rows and the new K/V and logits rows are
LEN-relative fields (docs/isa.md, length register), so a program does not grow with the prompt.

Activations are int32 Q.16 rows in the act buffer (docs/integer.md); q, k and v are made
head-major ([H, S, D]) by the transposes of the graph (one strided COPY per head; free for one
token), which is the order the attention functions and RoPE read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmfab.ir import Graph, InputRole, OpKind
from llmfab.ir.integer import softcap_fixed
from llmfab.ir.isa import QUEUE_OF as ISA_QUEUE_OF
from llmfab.ir.isa import (BROADCAST, BufferId, Instruction, IsaError, MiscFunc, Opcode, Program, SysFunc, lookup_field,
                           make, quant_row_bytes, weight_fields)
from llmfab.ir.memory import Region
from llmfab.ir.quant import QuantizedWeight
from llmfab.ir.verify import unfused_message, unfused_nodes

from .buckets import Bucket, Stage
from .buffer_alloc import Allocator
from .hbm_layout import HbmLayout, LayoutError, const_operand, embed_parts, embed_row_bytes
from .lower_attention import attention, quant_rows
from .lower_copies import lower_concat, lower_slice, seq_axes
from .tokens import TokenTracker

# the token tracker's queue index of each opcode: the bit of its ISA queue. SYS has none; it is
# recorded under MISC's index with no regions, so it orders nothing and waits for nothing.
QUEUE_INDEX = {op: int(q).bit_length() - 1 for op, q in ISA_QUEUE_OF.items() if q is not None}
QUEUE_INDEX[Opcode.SYS] = QUEUE_INDEX[Opcode.MISC]
ACT, SCRATCH, KV, WEIGHT = BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT
IDS_ADDR = 0      # the host writes the step's token ids (int32, one per row) at the start of the act buffer


@dataclass(frozen=True)
class Engine:
    """What lowering needs of the Target."""
    n_chains: int
    buffers: dict[str, int]      # buffer name -> bytes


@dataclass
class Lowered:
    bucket: Bucket
    program: Program
    peak: dict[str, int]         # bytes used per on-chip buffer
    sections: list[tuple[int, str]] = field(default_factory=list)   # (first instruction, "layers.N" or op)
    # (instructions run when the value is whole, node, act address) of every value the program
    # computes into the act buffer, in program order: what compile's check compares
    probes: list[tuple[int, str, int]] = field(default_factory=list)


def section_of(node_name: str) -> str:
    """The part of the model a node belongs to, for per-layer reports: `layers.N`, else its name."""
    parts = node_name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else node_name


class Lowerer:
    def __init__(self, g: Graph, lay: HbmLayout, eng: Engine, bucket: Bucket):
        self.g, self.lay, self.eng, self.bucket = g, lay, eng, bucket
        self.seq = g.meta.get("seq_len", 1)
        self.ops: list[tuple[Opcode, dict, str | None]] = []
        self.tokens = TokenTracker()
        # [0, ids): the host writes the token ids there (the chunk's, or the decode token)
        ids = -(-4 * bucket.rows // 64) * 64
        self.act = Allocator("act", ids, eng.buffers["act"] - ids)
        self.scratch = Allocator("scratch", 0, eng.buffers["scratch"])
        self.half = {"weight": eng.buffers["weight"] // 2, "kv": eng.buffers["kv"] // 2}
        self.ping = {"weight": 0, "kv": 0}
        self.view: dict[str, str] = {}
        self.left: dict[str, int] = {}
        self.outputs = {n for _, n in g.outputs}
        self.logits = logits_value(g)

    # -- emission ---------------------------------------------------------------------------
    def emit(self, op: Opcode, reads=(), writes=(), len_field: str | None = None, **fields) -> None:
        writes = list(writes)
        for w in list(writes):  # the first write of a reused block also orders the old owners
            alloc = {"act": self.act, "scratch": self.scratch}.get(w[0])
            if alloc is not None and w[1] in alloc.reused:
                writes += [(w[0], k) for k in alloc.reused.pop(w[1])]
        self.tokens.add(QUEUE_INDEX[op], reads, writes)
        self.ops.append((op, fields, len_field))

    def next_half(self, buf: str, slots: int = 2, align: int = 1) -> tuple[int, tuple]:
        """The next of `slots` equal parts of `buf` in turn (two: ping-pong halves), each starting
        on a multiple of `align` bytes: (address, token key)."""
        h = self.ping[buf] % slots
        self.ping[buf] = h + 1
        return h * (2 * self.half[buf] // slots // align * align), (buf, h)

    def dma(self, op: Opcode, obj: Region, row0: int, rows: int, buf: BufferId, buf_addr: int, reads=(), writes=(),
            len_field=None, **extra) -> None:
        self.emit(op, reads, writes, len_field, channel=obj.channel, channels=obj.channels,
                  hbm_addr=obj.addr + row0 * obj.pitch, hbm_stride=obj.pitch, buf=buf, buf_addr=buf_addr,
                  buf_stride=obj.row_bytes, rows=rows, row_bytes=obj.pitch, **extra)

    # -- values -------------------------------------------------------------------------------
    def key(self, v: str) -> str:
        while v in self.view:
            v = self.view[v]
        return v

    def addr(self, v: str) -> int:
        return self.act.live[self.key(v)][0]

    def rows_cols(self, v: str) -> tuple[int, int]:
        t = self.g.node(v).type
        per_token = int(np.prod(t.shape[:-1])) // self.seq
        return max(1, per_token * self.p_rows), t.shape[-1]

    def new_act(self, v: str, rows: int | None = None, cols: int | None = None) -> int:
        r, c = self.rows_cols(v)
        return self.act.alloc(v, 4 * (rows or r) * (cols or c), f"activation {v!r}")

    def alias(self, v: str, src: str) -> None:
        self.view[v] = src
        k = self.key(src)
        self.left[k] = self.left.get(k, 0) + self.left.pop(v, 0)

    def done_with(self, node) -> None:
        for i in node.inputs:
            k = self.key(i)
            if k in self.left:
                self.left[k] -= 1
                if self.left[k] == 0 and k in self.act.live and k not in self.outputs:
                    self.act.free(k)

    # -- the program ---------------------------------------------------------------------------
    def lower(self) -> Lowered:
        b = self.bucket
        # rows, first position and keys at LEN = hi; fields that depend on them are LEN-relative
        self.p_rows, self.p_first, self.p_keys = b.rows, b.hi - b.rows, b.hi
        self.sections: list[tuple[int, str]] = []
        self.probes: list[tuple[int, str, int]] = []
        check_lowerable(self.g)
        self.seq_axis = seq_axes(self.g)
        self.left = {n.name: len(self.g.users(n.name)) for n in self.g.nodes()}
        label = None
        for node in (n for n in self.g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT)):
            if section_of(node.name) != label:       # a new layer
                label = section_of(node.name)
                if self.sections and self.sections[-1][0] == len(self.ops):
                    self.sections.pop()              # the previous section emitted nothing
                self.sections.append((len(self.ops), label))
            LOWER[node.op](self, node)
            if node.name == self.logits:
                _store_logits(self, node)
            if node.name in self.act.live:        # computed here, not a view of another value
                self.probes.append((len(self.ops), node.name, self.act.live[node.name][0]))
            self.done_with(node)
        self.emit(Opcode.SYS, func=SysFunc.END)
        insts = []
        for (op, fields, len_field), wait, release in zip(self.ops, self.tokens.wait, self.tokens.release):
            insts.append(self._instruction(op, fields, len_field, wait, release))
        peak = {"act": self.act.peak, "scratch": self.scratch.peak}
        return Lowered(b, Program(b.name, tuple(insts)), peak, self.sections, self.probes)

    def _instruction(self, op, fields, len_field, wait, release) -> Instruction:
        len_reg = False
        if len_field is not None:  # store the field relative to LEN (docs/isa.md): value at LEN = hi
            hi = self.bucket.hi
            f = lookup_field(op, len_field)
            delta = hi * fields["hbm_stride"] if len_field == "hbm_addr" else hi
            fields = dict(fields, **{len_field: (fields[len_field] - delta) % (1 << f.bits)})
            if f.signed and fields[len_field] >= 1 << (f.bits - 1):
                fields[len_field] -= 1 << f.bits
            if op is not Opcode.MM:
                fields["len_pos"] = 1 if len_field in ("hbm_addr", "imm") else 0
            len_reg = True
        if op is Opcode.SYS:
            wait = release = 0
        try:
            return make(op, wait=wait, release=release, len_reg=len_reg, **fields)
        except IsaError as e:
            raise LayoutError(f"bucket {self.bucket.name}: {e}") from None


# ---- one function per op ----------------------------------------------------------------------


MISC_CHUNK = 1 << 15   # columns of one MISC over a row wider than its 16-bit `cols` (a 256k-vocabulary's logits)


def _unary(func: MiscFunc, imm=lambda node: 0):
    def lower(lw: Lowerer, node) -> None:
        x = node.inputs[0]
        rows, cols = lw.rows_cols(node.name)
        dst = lw.new_act(node.name)
        for c0 in range(0, cols, MISC_CHUNK):   # elementwise: a wide row goes in pieces, rows 4 cols apart
            n = min(MISC_CHUNK, cols - c0)
            pitch = {} if n == cols else dict(src_stride=4 * cols, dst_stride=4 * cols)
            lw.emit(Opcode.MISC, [("act", lw.key(x))], [("act", node.name)], func=func, rows=rows, cols=n,
                    imm=imm(node), src_buf=ACT, src_addr=lw.addr(x) + 4 * c0, dst_buf=ACT, dst_addr=dst + 4 * c0,
                    **pitch)
    return lower


def _binary(func: MiscFunc):
    def lower(lw: Lowerer, node) -> None:
        if const_operand(lw.g, node):
            return _broadcast(lw, node, func)
        a, b = node.inputs
        rows, cols = lw.rows_cols(node.name)
        dst = lw.new_act(node.name)
        lw.emit(Opcode.MISC, [("act", lw.key(a)), ("act", lw.key(b))], [("act", node.name)], func=func, rows=rows,
                cols=cols, src_buf=ACT, src_addr=lw.addr(a), src2_buf=ACT, src2_addr=lw.addr(b), dst_buf=ACT,
                dst_addr=dst)
    return lower


def _broadcast(lw: Lowerer, node, func: MiscFunc) -> None:
    """x op c with c one constant row (hbm_layout.const_operand): LD the row, BROADCAST over x's rows."""
    x, _ = const_operand(lw.g, node)
    rows, cols = lw.rows_cols(node.name)
    key = (node.name, "param")
    at = lw.scratch.alloc(key, 4 * cols, f"constant of {node.name!r}")
    lw.dma(Opcode.LD, lw.lay.params[node.name], 0, 1, SCRATCH, at, writes=[("scratch", key)])
    dst = lw.new_act(node.name)
    lw.emit(Opcode.MISC, [("act", lw.key(x)), ("scratch", key)], [("act", node.name)], func=func, rows=rows,
            cols=cols, flags=BROADCAST, src_buf=ACT, src_addr=lw.addr(x), src2_buf=SCRATCH, src2_addr=at,
            dst_buf=ACT, dst_addr=dst)
    lw.scratch.free(key)


def _gelu(lw: Lowerer, node) -> None:
    _unary(MiscFunc.GELU_TANH if node.attrs.approx.value == "tanh" else MiscFunc.GELU)(lw, node)


def _view(lw: Lowerer, node) -> None:
    lw.alias(node.name, node.inputs[0])


def _transpose(lw: Lowerer, node) -> None:
    """[S, H, D] <-> [H, S, D]: free for one token, else one strided COPY per head."""
    if lw.p_rows == 1:
        return _view(lw, node)
    src = node.inputs[0]
    to_heads = lw.seq_axis.get(src) == 1     # [S, H, D] -> [H, S, D]; else back
    shape = lw.g.node(src).type.shape
    heads, d = (shape[2], shape[3]) if to_heads else (shape[1], shape[3])
    dst = lw.new_act(node.name)
    s = lw.p_rows
    for h in range(heads):
        if to_heads:
            sa, ss, da, ds = lw.addr(src) + 4 * h * d, 4 * heads * d, dst + 4 * h * s * d, 4 * d
        else:
            sa, ss, da, ds = lw.addr(src) + 4 * h * s * d, 4 * d, dst + 4 * h * d, 4 * heads * d
        lw.emit(Opcode.MISC, [("act", lw.key(src))], [("act", node.name)], func=MiscFunc.COPY, rows=s, cols=4 * d,
                src_buf=ACT, src_addr=sa, src_stride=ss, dst_buf=ACT, dst_addr=da, dst_stride=ds)


def _norm(lw: Lowerer, node) -> None:
    """One MISC over all rows; a norm with parameters per head one per head (its rows, strided when
    the heads are not the outer axis), each with that head's row of parameters."""
    x = node.inputs[0]
    rows, cols = lw.rows_cols(node.name)
    obj = lw.lay.params[node.name]
    key = (node.name, "param")
    at = lw.scratch.alloc(key, obj.row_bytes * obj.rows, f"parameters of {node.name!r}")
    lw.dma(Opcode.LD, obj, 0, obj.rows, SCRATCH, at, writes=[("scratch", key)])
    dst = lw.new_act(node.name)
    func = MiscFunc.RMSNORM if node.op is OpKind.RMSNORM else MiscFunc.LAYERNORM
    pieces = [(0, rows, 0)] if obj.rows == 1 else _head_rows(lw, node, obj.rows)
    for h, (offset, n, stride) in enumerate(pieces):
        lw.emit(Opcode.MISC, [("act", lw.key(x)), ("scratch", key)], [("act", node.name)], func=func, rows=n,
                cols=cols, imm=int(np.floor(node.attrs.eps * 2 ** 32 + 0.5)), src_buf=ACT,
                src_addr=lw.addr(x) + offset, src_stride=stride, src2_buf=SCRATCH, src2_addr=at + h * obj.row_bytes,
                dst_buf=ACT, dst_addr=dst + offset, dst_stride=stride)
    lw.scratch.free(key)


def _head_rows(lw: Lowerer, node, heads: int) -> list[tuple[int, int, int]]:
    """(byte offset, rows, row stride in bytes or 0) of each head of a per-head norm's input, as the
    program lays it out: [H, S, D] (heads outer, contiguous rows) or [S, H, D] (strided)."""
    shape = list(node.type.shape)
    a = len(shape) - max(lw.g.node(p).type.rank for p in node.inputs[1:])   # the heads' axis
    s = lw.seq_axis.get(node.inputs[0])
    if s is None or len(shape) != 4 or shape[0] != 1 or {a, s} != {1, 2} or shape[a] != heads:
        raise LayoutError(f"node {node.name!r}: a norm with a parameter row per head needs [1, H, S, D] or "
                          f"[1, S, H, D] (heads on axis 1 or 2), got {shape} with the sequence on axis {s}")
    shape[s] = lw.p_rows
    step = 4 * int(np.prod(shape[a + 1:]))                      # bytes from one head to the next
    row = 4 * int(np.prod(shape[s + 1:]))                       # from one token's row to the next
    return [(h * step, lw.p_rows, row if row != 4 * shape[-1] else 0) for h in range(heads)]


def _rope(lw: Lowerer, node) -> None:
    x = node.inputs[0]
    rows, d = lw.rows_cols(node.name)
    obj = lw.lay.params[f"rope:{node.inputs[1]}"]
    key = (node.name, "table")
    at = lw.scratch.alloc(key, obj.row_bytes * lw.p_rows, f"RoPE rows of {node.name!r}")
    lw.dma(Opcode.LD, obj, lw.p_first, lw.p_rows, SCRATCH, at, writes=[("scratch", key)], len_field="hbm_addr")
    dst = lw.new_act(node.name)
    lw.emit(Opcode.MISC, [("act", lw.key(x)), ("scratch", key)], [("act", node.name)], func=MiscFunc.ROPE,
            rows=rows, cols=d, depth=d, period=lw.p_rows, imm=0, src_buf=ACT, src_addr=lw.addr(x),
            src2_buf=SCRATCH, src2_addr=at, dst_buf=ACT, dst_addr=dst)
    lw.scratch.free(key)


def _embedding(lw: Lowerer, node) -> None:
    table, ids = node.inputs
    obj = lw.lay.tables[table]
    qw: QuantizedWeight = lw.g.node(table).data
    rows, cols = lw.rows_cols(node.name)
    at, half = lw.next_half("weight")
    tokens = lw.g.node(ids).op is OpKind.INPUT and lw.g.node(ids).attrs.role is InputRole.TOKENS
    if rows * obj.row_bytes > lw.half["weight"]:
        raise LayoutError(f"{rows} rows of {table!r} ({rows * obj.row_bytes} bytes) do not fit half the weight "
                          f"buffer ({lw.half['weight']} bytes)")
    if tokens:  # the ids of this chunk (or the decode token), written by the host at IDS_ADDR
        lw.dma(Opcode.LD, obj, 0, rows, WEIGHT, at, writes=[("weight", half)], indirect=1, ids_buf=ACT,
               ids_addr=IDS_ADDR)
    else:  # learned positions: the table row of each position (ids = position + offset; the layout
        offset = int(np.ravel(lw.g.const_value(ids))[0])   # pads the table for a padded last chunk)
        lw.dma(Opcode.LD, obj, offset + lw.p_first, rows, WEIGHT, at, writes=[("weight", half)],
               len_field="hbm_addr")
    dst = lw.new_act(node.name)
    parts = embed_parts(qw)
    src = at
    for c0, n, group in parts:   # one EMBED per part of the row (a partial last group is its own)
        lw.emit(Opcode.MISC, [("weight", half)], [("act", node.name)], func=MiscFunc.EMBED, rows=rows, cols=n,
                depth=group, imm=qw.scheme.bits, src_buf=WEIGHT, src_addr=src, src_stride=obj.row_bytes,
                dst_buf=ACT, dst_addr=dst + 4 * c0, dst_stride=4 * cols if len(parts) > 1 else 0)
        src += embed_row_bytes(qw.scheme.bits, n, group)


def _linear(lw: Lowerer, node) -> None:
    if node.attrs.act_amax is not None:   # compile refuses the policy first; a graph built by hand lands here
        raise LayoutError(f"{node.name!r}: a static activation scale (act_amax, a policy's activations: "
                          "static-per-tensor) is a what-if of the integer model: QUANT_ROWS scales each row by its own max")
    x = node.inputs[0]
    rows, k = lw.rows_cols(x)
    _, n = lw.rows_cols(node.name)
    # K as the engine runs it: padded with zero weight codes to whole groups and beats, so the
    # activation rows are that far apart; the codes past K are never written, and multiply only
    # zero weights (docs/integer.md, "K that is not whole groups")
    scheme, k_hw = lw.lay.engine_k[node.name]
    xq = quant_rows(lw, x, (node.name, "xq"), rows, k, pitch=quant_row_bytes(k_hw))
    dst = lw.new_act(node.name)
    decode = lw.bucket.stage is Stage.DECODE
    wf = weight_fields(scheme, k_hw)
    bias = len(node.inputs) == 3
    for t in lw.lay.tiles[node.name]:
        if t.obj.row_bytes > lw.half["weight"]:
            raise LayoutError(f"a weight tile of {node.name!r} ({t.obj.row_bytes} bytes) does not fit half the "
                              f"weight buffer ({lw.half['weight']} bytes)")
        at, half = lw.next_half("weight")
        lw.dma(Opcode.LD, t.obj, 0, 1, WEIGHT, at, writes=[("weight", half)])
        r0, r1 = t.rows
        f = dict(n=r1 - r0, k=k_hw, **wf, has_bias=int(bias), abuf=SCRATCH, obuf=ACT, wbuf_addr=at + t.streams[0],
                 idx_addr=at + t.streams[1] if scheme.sparsity else 0, scale_addr=at + t.streams[2],
                 bias_addr=at + t.streams[4] if bias else 0, a_addr=xq, o_addr=dst + 4 * r0)
        reads = [("weight", half), ("scratch", (node.name, "xq"))]
        if decode:
            lw.emit(Opcode.MV, reads, [("act", node.name)], **f)
        else:
            lw.emit(Opcode.MM, reads, [("act", node.name)], m=rows, o_stride=4 * n, **f)
    lw.scratch.free((node.name, "xq"))


def logits_value(g: Graph) -> str | None:
    """The op computing the logits: the output's value, back through reshapes (views)."""
    v = dict(g.outputs).get("logits", g.outputs[0][1] if g.outputs else None)
    while v is not None and g.node(v).op is OpKind.RESHAPE:
        v = g.node(v).inputs[0]
    return v


def _store_logits(lw: Lowerer, node) -> None:
    """The logits rows to HBM (prefill: the rows of this chunk's positions; decode: row 0), from the
    op that computes them: the LM head, or what follows it (Gemma2's soft-cap)."""
    rows, _ = lw.rows_cols(node.name)
    prefill = lw.bucket.stage is Stage.PREFILL
    lw.dma(Opcode.ST, lw.lay.output, lw.p_first if prefill else 0, rows, ACT, lw.addr(node.name),
           reads=[("act", lw.key(node.name))], writes=[("hbm", "logits")], len_field="hbm_addr" if prefill else None)


LOWER = {
    OpKind.EMBEDDING: _embedding, OpKind.LINEAR: _linear, OpKind.LMHEAD: _linear,
    OpKind.RMSNORM: _norm, OpKind.LAYERNORM: _norm, OpKind.ROPE: _rope, OpKind.ATTENTION: attention,
    OpKind.SILU: _unary(MiscFunc.SILU), OpKind.RELU: _unary(MiscFunc.RELU), OpKind.GELU: _gelu,
    OpKind.SOFTCAP: _unary(MiscFunc.SOFTCAP, lambda node: softcap_fixed(node.attrs.cap)),
    OpKind.ADD: _binary(MiscFunc.ADD), OpKind.MUL: _binary(MiscFunc.MUL),
    OpKind.RESHAPE: _view, OpKind.TRANSPOSE: _transpose, OpKind.SLICE: lower_slice, OpKind.CONCAT: lower_concat,
}


def check_lowerable(g: Graph) -> None:
    """LayoutError naming every node with no lowering (ops fusion left), before anything is emitted."""
    missing = unfused_nodes(g, LOWER)
    if missing:
        raise LayoutError(unfused_message(missing, "lowering to programs", graph=g))


def lower_bucket(g: Graph, lay: HbmLayout, eng: Engine, bucket: Bucket) -> Lowered:
    return Lowerer(g, lay, eng, bucket).lower()
