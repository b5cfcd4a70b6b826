"""RMSNorm and LayerNorm from their decomposed forms.

RMSNorm:   w * (x * 1/sqrt(mean(x^2) + eps))          (also x / sqrt(...), Reciprocal, Div(1, .))
LayerNorm: w * ((x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)) + b

A norm of each head with weights of its own (StableLM's q/k_layernorm: split q into heads, a
LayerNorm each, concat) becomes one norm of all heads whose parameters have a row per head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmfab.ir import ArrayData, Graph, Node, NormAttrs, OpKind

from .pass_base import Pass
from .patterns import other_input, replace, scalar, sole_user


def _is_square_of(g: Graph, name: str) -> str | None:
    """x if `name` computes x*x or x**2."""
    n = g.node(name)
    if n.op is OpKind.POW and scalar(g, n.inputs[1]) == 2.0:
        return n.inputs[0]
    if n.op is OpKind.MUL and n.inputs[0] == n.inputs[1]:
        return n.inputs[0]
    return None


def _mean_last(g: Graph, n: Node) -> bool:
    return n.op is OpKind.REDUCE_MEAN and n.attrs.keepdims and n.attrs.axes == (g.node(n.inputs[0]).type.rank - 1,)


def _normalized(g: Graph, var: str, x: str) -> tuple[str, float] | None:
    """Follow var -> +eps -> sqrt -> (x / s | x * 1/s); returns (node computing the result, eps)."""
    add = sole_user(g, var)
    if add is None or add.op is not OpKind.ADD or (eps := scalar(g, other_input(add, var) or "")) is None:
        return None
    sq = sole_user(g, add.name)
    if sq is None or sq.op is not OpKind.SQRT:
        return None
    u = sole_user(g, sq.name)
    if u is None:
        return None
    if u.op is OpKind.DIV and u.inputs == (x, sq.name):
        return u.name, eps
    if u.op is OpKind.RECIPROCAL or (u.op is OpKind.DIV and u.inputs[1] == sq.name and scalar(g, u.inputs[0]) == 1.0):
        m = sole_user(g, u.name)
        if m is not None and m.op is OpKind.MUL and other_input(m, u.name) == x:
            return m.name, eps
    return None


def _affine(g: Graph, y: str, dim: int, bias: bool) -> tuple[str, str | None, str | None]:
    """Absorb a following `* w` (and `+ b`) with [dim]-sized constants: (result, w, b)."""
    w = b = None

    def param_of(u) -> str | None:
        """The other operand of `u` if it is a [dim] constant that leaves y's shape unchanged."""
        other = other_input(u, y)
        if other is None or u.type.shape != g.node(y).type.shape:
            return None
        t = g.node(other).type
        ok = t.numel == dim and t.shape and t.shape[-1] == dim and g.const_value(other) is not None
        return other if ok else None

    u = sole_user(g, y)
    if u is not None and u.op is OpKind.MUL and (w := param_of(u)) is not None:
        y = u.name
        u = sole_user(g, y)
    if bias and u is not None and u.op is OpKind.ADD and (b := param_of(u)) is not None:
        y = u.name
    return y, w, b


def _param(g: Graph, out: str, suffix: str, const: str | None, fill: float) -> str:
    """A [dim] parameter: the matched constant itself when it is already 1-D, else a new one."""
    dim = g.node(out).type.shape[-1]
    if const is not None and g.node(const).type.shape == (dim,):
        return const
    v = np.full(dim, fill, np.float32) if const is None else g.const_value(const).reshape(dim).astype(np.float32)
    return g.add_const(g.unique_name(f"{out}.{suffix}"), ArrayData(v), weight=True).name


@dataclass(frozen=True)
class FuseNorm(Pass):
    name: ClassVar[str] = "fuse-norm"

    def apply(self, g: Graph) -> None:
        for n in g.nodes():
            if n.name not in g or not _mean_last(g, n):
                continue
            if (x := _is_square_of(g, n.inputs[0])) is not None and x != n.inputs[0]:
                self._rms(g, n, x)
            else:
                self._layer(g, n)
        g.eliminate_dead_code()
        for n in g.nodes():
            if n.op is OpKind.CONCAT and n.name in g:
                _merge_heads(g, n)
        g.eliminate_dead_code()

    def _rms(self, g: Graph, mean: Node, x: str) -> None:
        found = _normalized(g, mean.name, x)
        if found is None:
            return
        y, eps = found
        dim = g.node(x).type.shape[-1]
        y, w, _ = _affine(g, y, dim, bias=False)
        replace(g, y, OpKind.RMSNORM, [x, _param(g, y, "weight", w, 1.0)], NormAttrs(eps))

    def _layer(self, g: Graph, mean: Node) -> None:
        x = mean.inputs[0]
        sub = next((u for u in g.users(mean.name) if u.op is OpKind.SUB and u.inputs == (x, mean.name)), None)
        if sub is None:
            return
        var = next((u for u in g.users(sub.name)
                    if _is_square_of(g, u.name) == sub.name), None)
        var = sole_user(g, var.name) if var is not None else None
        if var is None or not _mean_last(g, var):
            return
        found = _normalized(g, var.name, sub.name)
        if found is None:
            return
        y, eps = found
        dim = g.node(x).type.shape[-1]
        y, w, b = _affine(g, y, dim, bias=True)
        replace(g, y, OpKind.LAYERNORM,
                [x, _param(g, y, "weight", w, 1.0), _param(g, y, "bias", b, 0.0)], NormAttrs(eps))


def _merge_heads(g: Graph, cat: Node) -> None:
    """concat(norm_i(slice_i(x)), axis a) with the slices tiling x along a (1 <= a < rank - 1), each
    norm read only there: one norm of x whose parameters hold each piece's rows on axis a, [X_a, 1.., D]
    (or [D] when all pieces' are equal)."""
    rank = cat.type.rank
    a = cat.attrs.axis % rank
    norms = [g.node(i) for i in cat.inputs]
    if not 1 <= a < rank - 1 or any(n.op not in (OpKind.RMSNORM, OpKind.LAYERNORM) for n in norms) \
            or len({(n.op, n.attrs.eps) for n in norms}) != 1 or any(len(g.users(n.name)) != 1 for n in norms):
        return
    pieces = [g.node(n.inputs[0]) for n in norms]
    x = pieces[0].inputs[0] if pieces[0].op is OpKind.SLICE else None
    if x is None or g.node(x).type.shape != cat.type.shape:
        return
    at = 0
    for p in pieces:
        if p.op is not OpKind.SLICE or p.inputs[0] != x or len(p.attrs.axes) != 1 or p.attrs.axes[0] % rank != a:
            return
        r = range(cat.type.shape[a])[slice(p.attrs.starts[0], p.attrs.ends[0], p.attrs.steps[0])]
        if r.step != 1 or r.start != at or not len(r):
            return
        at += len(r)
    if at != cat.type.shape[a]:
        return
    d = cat.type.shape[-1]
    params = []
    for j in range(1, len(norms[0].inputs)):
        vals = [g.const_value(n.inputs[j]) for n in norms]
        if any(v is None or v.size != d for v in vals):
            return
        rows = [np.broadcast_to(v.reshape(1, d), (p.type.shape[a], d)) for v, p in zip(vals, pieces)]
        full = np.concatenate(rows).astype(np.float32)
        if (full == full[:1]).all():
            params.append(g.add_const(g.unique_name(f"{cat.name}.p{j}"), ArrayData(full[0]), weight=True).name)
        else:
            shaped = full.reshape((len(full),) + (1,) * (rank - a - 2) + (d,))
            params.append(g.add_const(g.unique_name(f"{cat.name}.p{j}"), ArrayData(shaped), weight=True).name)
    replace(g, cat.name, norms[0].op, [x, *params], norms[0].attrs)
