"""Scalar scalings folded into the weights that produce them (Gemma, Gemma2) or attention's scale (Phi-3).

    Embedding(table, ids) * c                 ->  Embedding(table * c, ids)      (sqrt(hidden))
    tanh(Linear(x, W, b) / c) * c             ->  Softcap{c}(Linear(x, W / c, b / c))
    tanh(Linear(x, W, b))                     ->  Softcap{1}(Linear(x, W, b))   (c = 1: exporters drop / 1, * 1)

    Attention(Rope(q, g cos, g sin), Rope(k, g cos, g sin)){scale}
                                              ->  Attention(Rope(q, cos, sin), Rope(k, cos, sin)){scale g^2}
                                              (Phi-3's longrope: tables times its attention_factor g)

The soft-cap's 1 / c joins the Linear's weights so the hardware computes c tanh(y) on the
Linear's output with one table lookup and one product (MISC SOFTCAP); an attention's soft-capped
scores are fuse-attention's (its `softcap` attribute, the 1 / c in its scale). A scaled table
that another op also reads (a tied LM head) is a lazy `ScaledData` view: one set of parameters.
RoPE tables stay within [-1, 1] (the integer contract's); their common magnitude g, where q and k
are rotated by the same tables and read by nothing else, is attention's (q k^T gains g^2).
"""
from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import ClassVar

import numpy as np

from llmfab.ir import ArrayData, Graph, OpKind, SoftcapAttrs

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
        unit: dict[tuple[str, str], tuple[float, list[str]] | None] = {}
        for a in [n for n in g.nodes() if n.op is OpKind.ATTENTION]:
            ropes = [_rope_above(g, x) for x in a.inputs[:2]]
            if None in ropes or len({r.inputs[1:] for r in ropes}) != 1:
                continue
            tables = ropes[0].inputs[1:]
            if tables not in unit:
                unit[tables] = _unit_tables(g, *tables)
            if unit[tables] is None:
                continue
            gain, new = unit[tables]
            for r in ropes:
                g.set_node(dc_replace(r, inputs=(r.inputs[0], *new)))
            g.set_node(dc_replace(a, attrs=dc_replace(a.attrs, scale=a.attrs.scale * gain * gain)))
        g.eliminate_dead_code()


def _rope_above(g: Graph, x: str):
    """The rope whose output reaches attention input `x` through layout ops alone, each read only there."""
    n = g.node(x)
    while n.op in (OpKind.TRANSPOSE, OpKind.RESHAPE) and sole_user(g, n.name) is not None:
        n = g.node(n.inputs[0])
    return n if n.op is OpKind.ROPE and sole_user(g, n.name) is not None else None


def _unit_tables(g: Graph, cos: str, sin: str) -> tuple[float, list[str]] | None:
    """(g, the tables / g as new constants) if cos^2 + sin^2 is one g^2 != 1 over the tables."""
    c, s = g.const_value(cos), g.const_value(sin)
    if c is None or s is None or c.shape != s.shape:
        return None
    m = np.asarray(c, np.float64) ** 2 + np.asarray(s, np.float64) ** 2
    gain2 = float(m.mean())
    if abs(gain2 - 1) < 1e-5 or np.abs(m - gain2).max() > 1e-5 * gain2:
        return None
    gain = float(np.float32(np.sqrt(gain2)))   # the float32 factor the tables were multiplied by
    return gain, [g.add_const(g.unique_name(f"{t}.unit"), ArrayData((np.asarray(v, np.float64) / gain).astype(np.float32))
                              ).name for t, v in ((cos, c), (sin, s))]
