"""Lowering of the ops that move values between act-buffer layouts: slice and concat on any axis
after the sequence axis, as strided COPYs (the rest of lowering is in lower.py).

A value sits in the act buffer in the row-major order of its shape with the sequence axis sized to
the program's rows (lower.py `rows_cols`). So a slice or concat on axis `a` behind the sequence
axis is `outer` rows of `inner`-element blocks: Falcon's fused qkv split on the head axis of
[1, S, H + 2, D], Phi's partial rotary on the last axis of [1, H, S, D] are both one strided COPY.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llmfab.ir import Graph, InputRole, OpKind
from llmfab.ir.isa import BufferId, MiscFunc, Opcode

from .hbm_layout import LayoutError

if TYPE_CHECKING:
    from .lower import Lowerer

ACT = BufferId.ACT
PAST = (InputRole.PAST_KEY, InputRole.PAST_VALUE)


def seq_axes(g: Graph) -> dict[str, int | None]:
    """The axis of each value that runs over the tokens (None: constants, or not known)."""
    ax: dict[str, int | None] = {}
    for n in g.nodes():
        ins = [ax.get(i) for i in n.inputs]
        if n.op is OpKind.CONST:
            ax[n.name] = None
        elif n.op is OpKind.INPUT:
            ax[n.name] = 2 if n.attrs.role in PAST else 1 if n.attrs.role is InputRole.TOKENS else None
        elif n.op is OpKind.EMBEDDING:
            ax[n.name] = 1
        elif n.op is OpKind.TRANSPOSE:
            ax[n.name] = None if ins[0] is None else list(n.attrs.perm).index(ins[0])
        elif n.op is OpKind.RESHAPE:
            ax[n.name] = _reshaped_axis(ins[0], g.node(n.inputs[0]).type.shape, n.type.shape)
        else:                          # elementwise, norms, linear, rope, attention, slice, concat
            ax[n.name] = next((a for a in ins if a is not None), None)
    return ax


def _reshaped_axis(k: int | None, src: tuple, out: tuple) -> int | None:
    """Where axis k of `src` is in `out`, if a reshape keeps it whole: the axis of the same size
    with as many elements before it (axes of size 1 may come and go around it)."""
    if k is None:
        return None
    before = int(np.prod(src[:k]))
    return next((j for j in range(len(out)) if out[j] == src[k] and int(np.prod(out[:j])) == before), None)


def _blocks(lw: Lowerer, name: str, axis: int) -> tuple[int, int]:
    """(outer rows, elements per step of `axis`) of value `name` as the program lays it out."""
    shape = list(lw.g.node(name).type.shape)
    s = lw.seq_axis.get(name)
    if s is None or axis <= s:
        raise LayoutError(f"node {name!r}: a slice or concat on axis {axis} of {shape} is not behind its sequence "
                          f"axis ({s}); only such copies are lowered")
    shape[s] = lw.p_rows
    return int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))


def lower_slice(lw: Lowerer, node) -> None:
    """One axis [start, end) with step 1: `outer` rows of the kept block, one COPY."""
    a = node.attrs
    src = node.inputs[0]
    rank = node.type.rank
    if len(a.axes) != 1 or a.steps[0] != 1:
        raise LayoutError(f"node {node.name!r}: slice on axes {list(a.axes)} with steps {list(a.steps)} is not "
                          "lowered (one axis, step 1 only)")
    axis = a.axes[0] % rank
    outer, inner = _blocks(lw, src, axis)
    width = lw.g.node(src).type.shape[axis]
    start = a.starts[0] + width if a.starts[0] < 0 else a.starts[0]
    kept = node.type.shape[axis]
    dst = lw.new_act(node.name)
    lw.emit(Opcode.MISC, [("act", lw.key(src))], [("act", node.name)], func=MiscFunc.COPY, rows=outer,
            cols=4 * kept * inner, src_buf=ACT, src_addr=lw.addr(src) + 4 * start * inner,
            src_stride=4 * width * inner, dst_buf=ACT, dst_addr=dst)


def lower_concat(lw: Lowerer, node) -> None:
    """The KV cache (past ++ new rows: attention stores the new rows, so present K/V are the cache
    itself, an alias); any other concat one strided COPY per input into its columns."""
    g = lw.g
    if any(g.node(i).op is OpKind.INPUT and g.node(i).attrs.role in PAST for i in node.inputs):
        lw.alias(node.name, node.inputs[-1])
        return
    axis = node.attrs.axis % node.type.rank
    outer, inner = _blocks(lw, node.name, axis)
    width = node.type.shape[axis]
    dst = lw.new_act(node.name)
    at = 0
    for src in node.inputs:
        part = g.node(src).type.shape[axis]
        lw.emit(Opcode.MISC, [("act", lw.key(src))], [("act", node.name)], func=MiscFunc.COPY, rows=outer,
                cols=4 * part * inner, src_buf=ACT, src_addr=lw.addr(src), dst_buf=ACT,
                dst_addr=dst + 4 * at * inner, dst_stride=4 * width * inner)
        at += part
