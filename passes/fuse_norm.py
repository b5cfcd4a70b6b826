"""RMSNorm and LayerNorm from their decomposed forms.

RMSNorm:   w * (x * 1/sqrt(mean(x^2) + eps))          (also x / sqrt(...), Reciprocal, Div(1, .))
LayerNorm: w * ((x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)) + b
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
