"""Structural clean-up: collapse reshape chains, undo the 2-D flattening around Linear, DCE."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from llmfab.ir import Graph, OpKind, PermAttrs, ShapeAttrs

from .pass_base import Pass
from .patterns import find_or_add, replace, sole_user, split_const


@dataclass(frozen=True)
class Cleanup(Pass):
    name: ClassVar[str] = "cleanup"

    def apply(self, g: Graph) -> None:
        for n in g.nodes():
            if n.name not in g:
                continue
            n = g.node(n.name)  # earlier rewrites may have changed its inputs
            src = g.node(n.inputs[0]) if n.inputs else None
            if n.op is OpKind.RESHAPE and n.type.shape == src.type.shape:
                g.replace_all_uses(n.name, src.name)  # reshape to the same shape
            elif n.op is OpKind.RESHAPE and src.op is OpKind.RESHAPE:
                # reshape(reshape(x)) == reshape(x)
                inner = g.node(src.inputs[0])
                if inner.type.shape == n.type.shape:
                    g.replace_all_uses(n.name, inner.name)
                else:
                    replace(g, n.name, OpKind.RESHAPE, [inner.name], n.attrs)
            elif n.op is OpKind.TRANSPOSE and src.op is OpKind.TRANSPOSE:
                perm = tuple(src.attrs.perm[p] for p in n.attrs.perm)
                if perm == tuple(range(len(perm))):
                    g.replace_all_uses(n.name, src.inputs[0])
                else:
                    replace(g, n.name, OpKind.TRANSPOSE, [src.inputs[0]], PermAttrs(perm))
            elif n.op in (OpKind.RESHAPE, OpKind.TRANSPOSE) and src.op is OpKind.MUL \
                    and (sc := split_const(g, src)) is not None and sole_user(g, src.name) \
                    and src.type.shape == g.node(sc[0]).type.shape \
                    and g.node(next(i for i in src.inputs if i != sc[0])).type.rank <= n.type.rank:
                # (the scalar must broadcast nothing, before or after the move)
                # sink scalar scales through layout ops, so attention fusion finds them on q/k
                moved = g.add_op(g.unique_name(n.name + ".unscaled"), n.op, [sc[0]], n.attrs)
                c = next(i for i in src.inputs if i != sc[0])
                replace(g, n.name, OpKind.MUL, [moved.name, c], None)
            elif n.op in ROW_WISE and _row_reshape(g, src):
                _sink_reshape(g, n, [src.inputs[0], *n.inputs[1:]])
            elif n.op in (OpKind.ADD, OpKind.MUL) and all(_row_reshape(g, g.node(i)) for i in n.inputs) \
                    and len({g.node(g.node(i).inputs[0]).type.shape for i in n.inputs}) == 1:
                _sink_reshape(g, n, [g.node(i).inputs[0] for i in n.inputs])
            elif n.op is OpKind.RESHAPE and src.op is OpKind.TRANSPOSE:
                _batched_transpose(g, n, src)
            elif n.op is OpKind.RESHAPE and src.op is OpKind.LINEAR and sole_user(g, src.name):
                # reshape(linear(reshape(x, [M, K])), [*L, N]) == linear(reshape(x, [*L, K])), prod(L) == M
                flat = g.node(src.inputs[0])
                L = n.type.shape[:-1]
                if flat.op is OpKind.RESHAPE and flat.type.rank == 2 and math.prod(L) == flat.type.shape[0] \
                        and n.type.shape[-1] == src.type.shape[-1]:
                    x = g.node(flat.inputs[0])
                    K = flat.type.shape[1]
                    xin = x.name if x.type.shape == L + (K,) else find_or_add(
                        g, flat.name + ".rows", OpKind.RESHAPE, [x.name], ShapeAttrs(L + (K,)))
                    replace(g, n.name, OpKind.LINEAR, [xin, *src.inputs[1:]], src.attrs)
        g.eliminate_dead_code()


# Ops that treat each row (last axis) independently: a reshape of the leading axes commutes with them.
ROW_WISE = {OpKind.LINEAR, OpKind.LMHEAD, OpKind.RMSNORM, OpKind.LAYERNORM, OpKind.SILU, OpKind.GELU, OpKind.RELU,
            OpKind.SOFTCAP}


def _row_reshape(g: Graph, n) -> bool:
    """True if `n` is a reshape that only regroups leading axes (OPT flattens [B,S,D] to [B*S,D])."""
    return n.op is OpKind.RESHAPE and n.type.rank >= 1 and g.node(n.inputs[0]).type.rank >= 1 \
        and n.type.shape[-1] == g.node(n.inputs[0]).type.shape[-1]


def _sink_reshape(g: Graph, n, inputs) -> None:
    """op(reshape(x)) -> reshape(op(x)), so the reshape can meet its inverse and vanish."""
    inner = g.add_op(g.unique_name(n.name + ".rows"), n.op, inputs, n.attrs, origin=n.origin)
    replace(g, n.name, OpKind.RESHAPE, [inner.name], ShapeAttrs(n.type.shape))


def _batched_transpose(g: Graph, n, t) -> None:
    """reshape(transpose(reshape(x, [M, *R]), perm keeping axis 0), [*L, *R']) with prod(L) == M
    is a transpose of x's batch dims split as L: rewrite it as transpose(reshape(x, [*L, *R]))."""
    inner = g.node(t.inputs[0])
    if inner.op is not OpKind.RESHAPE or t.attrs.perm[0] != 0:
        return
    x = g.node(inner.inputs[0])
    M, R = inner.type.shape[0], inner.type.shape[1:]
    Rt = t.type.shape[1:]
    L = n.type.shape[:len(n.type.shape) - len(Rt)]
    if n.type.shape[len(L):] != Rt or math.prod(L) != M or not L:
        return
    k = len(L)
    src = x.name
    if x.type.shape != tuple(L) + R:
        src = find_or_add(g, inner.name + ".split", OpKind.RESHAPE, [x.name], ShapeAttrs(tuple(L) + R))
    perm = tuple(range(k)) + tuple(p + k - 1 for p in t.attrs.perm[1:])
    replace(g, n.name, OpKind.TRANSPOSE, [src], PermAttrs(perm))


