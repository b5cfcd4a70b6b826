"""Linear and Embedding: matrix products with a weight, and table lookups of token ids.

MatMul(x, W[K,N]) becomes Linear(x, W^T[N,K]) (a lazy transposed view, no copy), a following
Add of a [N] constant becomes its bias, and Gather(table, ids) on a weight becomes Embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmfab.ir import ArrayData, Graph, LinearAttrs, OpKind, TransposedData

from .pass_base import Pass
from .patterns import replace, sole_user


def _weight_node(g: Graph, name: str):
    n = g.node(name)
    return n if n.op is OpKind.CONST and n.attrs.weight and n.type.rank == 2 else None


@dataclass(frozen=True)
class FuseLinear(Pass):
    name: ClassVar[str] = "fuse-linear"

    def apply(self, g: Graph) -> None:
        for n in g.nodes():
            if n.op is OpKind.MATMUL and (w := _weight_node(g, n.inputs[1])) is not None \
                    and g.node(n.inputs[0]).op is not OpKind.CONST:
                d = w.data
                data = d.base if isinstance(d, TransposedData) else TransposedData(d)
                base = w.name[:-2] if w.name.endswith(".T") else w.name + ".T"
                wt = g.add_const(g.unique_name(base), data, weight=True)
                replace(g, n.name, OpKind.LINEAR, [n.inputs[0], wt.name], LinearAttrs())
            elif n.op is OpKind.GATHER and n.attrs.axis == 0 and _weight_node(g, n.inputs[0]) \
                    and g.node(n.inputs[1]).type.dtype.is_int:
                replace(g, n.name, OpKind.EMBEDDING, list(n.inputs), None)
        for n in g.nodes():  # Add(Linear(x), b) -> Linear(x, b)
            if n.op is not OpKind.ADD or n.name not in g:
                continue
            for lin, b in (n.inputs, n.inputs[::-1]):
                ln = g.node(lin)
                if ln.op is not OpKind.LINEAR or len(ln.inputs) != 2 or sole_user(g, lin) is None:
                    continue
                N = ln.type.shape[-1]
                bt = g.node(b).type
                # a [N]-sized constant that broadcasts without changing the result's shape
                if bt.numel != N or not bt.shape or bt.shape[-1] != N or n.type.shape != ln.type.shape:
                    continue
                bv = g.const_value(b)
                if bv is None:
                    continue
                bias = b if bt.rank == 1 and g.node(b).attrs.weight else g.add_const(
                    g.unique_name(b + ".bias"), ArrayData(np.ascontiguousarray(bv.reshape(N))), weight=True).name
                replace(g, n.name, OpKind.LINEAR, [*ln.inputs, bias], ln.attrs)
                break
        g.eliminate_dead_code()
