"""Scalar scalings folded into the weights that produce them (Gemma, Gemma2).

    Embedding(table, ids) * c                 ->  Embedding(table * c, ids)      (sqrt(hidden))
    tanh(Linear(x, W, b) / c) * c             ->  Softcap{c}(Linear(x, W / c, b / c))
    tanh(Linear(x, W, b))                     ->  Softcap{1}(Linear(x, W, b))   (c = 1: exporters drop / 1, * 1)

The soft-cap's 1 / c joins the Linear's weights so the hardware computes c tanh(y) on the
Linear's output with one table lookup and one product (MISC SOFTCAP); an attention's soft-capped
scores are fuse-attention's (its `softcap` attribute, the 1 / c in its scale). A scaled table
that another op also reads (a tied LM head) is a lazy `ScaledData` view: one set of parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmfab.ir import Graph, OpKind, SoftcapAttrs

from .pass_base import Pass
from .patterns import replace, sole_user, split_const


def _softcap_source(g: Graph, mul) -> tuple[str, float] | None:
    """(the Linear, c) if `mul` is tanh(Linear / c) * c (or tanh(Linear * (1/c)) * c), each inner
    node used only there."""
    found = split_const(g, mul)
    if found is None or g.node(found[0]).op is not OpKind.TANH or sole_user(g, found[0]) is None:
        return None
    t, c = found
    inner = g.node(g.node(t).inputs[0])
    if inner.op not in (OpKind.DIV, OpKind.MUL) or sole_user(g, inner.name) is None \
            or (sc := split_const(g, inner)) is None:
        return None
    src, k = sc
    if inner.op is OpKind.DIV and inner.inputs[1] == src:
        return None   # c / x
    inv = 1.0 / k if inner.op is OpKind.DIV else k
    lin = g.node(src)
    if c <= 0 or abs(inv * c - 1) > 1e-6 or lin.op is not OpKind.LINEAR or sole_user(g, src) is None:
        return None
    return src, c


@dataclass(frozen=True)
class FoldScales(Pass):
    name: ClassVar[str] = "fold-scales"

    def apply(self, g: Graph) -> None:
        for n in g.nodes():
            if n.name in g and n.op is OpKind.TANH and g.node(n.inputs[0]).op is OpKind.LINEAR \
                    and sole_user(g, n.inputs[0]) is not None:
                replace(g, n.name, OpKind.SOFTCAP, [n.inputs[0]], SoftcapAttrs(1.0))
        for n in g.nodes():
            if n.name not in g or n.op is not OpKind.MUL:
                continue
            if (sc := split_const(g, n)) is not None and g.node(sc[0]).op is OpKind.EMBEDDING \
                    and sole_user(g, sc[0]) is not None:
                emb = g.node(sc[0])
                replace(g, n.name, OpKind.EMBEDDING, [g.add_scaled(emb.inputs[0], sc[1]), emb.inputs[1]], None,
                        name=emb.name)
            elif (cap := _softcap_source(g, n)) is not None:
                lin = g.node(cap[0])
                w, *b = lin.inputs[1:]
                ins = [lin.inputs[0], g.add_scaled(w, 1 / cap[1])] + [g.add_scaled(x, 1 / cap[1]) for x in b]
                y = replace(g, lin.name, OpKind.LINEAR, ins, lin.attrs)
                replace(g, n.name, OpKind.SOFTCAP, [y], SoftcapAttrs(cap[1]))
        g.eliminate_dead_code()
