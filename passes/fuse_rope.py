"""Rotary position embedding: x * cos + rotate_half(x) * sin  ->  RoPE(x, cos, sin).

rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2]) on the last axis (LLaMA, Qwen2, Mistral);
cos and sin are the constant tables the position-id subgraph folded to at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmfab.ir import Graph, Node, OpKind, RopeAttrs

from .pass_base import Pass
from .patterns import other_input, replace


def _half_slice(g: Graph, name: str, first: bool) -> str | None:
    """x if `name` is x[..., :d/2] (first) or x[..., d/2:] (second half) on the last axis."""
    n = g.node(name)
    if n.op is not OpKind.SLICE or len(n.attrs.axes) != 1:
        return None
    x = g.node(n.inputs[0])
    d = x.type.shape[-1]
    if n.attrs.axes[0] != x.type.rank - 1 or n.attrs.steps != (1,) or d % 2:
        return None
    want = (0, d // 2) if first else (d // 2, d)
    return x.name if (n.attrs.starts[0], n.attrs.ends[0]) == want else None


def _rotate_half(g: Graph, n: Node) -> str | None:
    """x if `n` computes rotate_half(x)."""
    if n.op is not OpKind.CONCAT or len(n.inputs) != 2 or n.attrs.axis != n.type.rank - 1:
        return None
    neg, lo = (g.node(i) for i in n.inputs)
    if neg.op is not OpKind.NEG:
        return None
    x = _half_slice(g, neg.inputs[0], first=False)
    return x if x is not None and _half_slice(g, lo.name, first=True) == x else None


@dataclass(frozen=True)
class FuseRope(Pass):
    name: ClassVar[str] = "fuse-rope"

    def apply(self, g: Graph) -> None:
        for n in g.nodes():
            if n.name not in g or (x := _rotate_half(g, n)) is None:
                continue
            for mul_sin in g.users(n.name):
                if mul_sin.op is not OpKind.MUL:
                    continue
                sin = other_input(mul_sin, n.name)
                if sin is None or g.const_value(sin) is None:
                    continue
                for add in g.users(mul_sin.name):
                    if add.op is not OpKind.ADD:
                        continue
                    mul_cos = g.node(other_input(add, mul_sin.name) or add.inputs[0])
                    if mul_cos.op is not OpKind.MUL or x not in mul_cos.inputs:
                        continue
                    cos = other_input(mul_cos, x)
                    if cos is None or g.const_value(cos) is None:
                        continue
                    if g.node(cos).type != g.node(sin).type or add.type != g.node(x).type:
                        continue  # (tables that broadcast x to a larger shape are not RoPE)
                    replace(g, add.name, OpKind.ROPE, [x, cos, sin], RopeAttrs())
        g.eliminate_dead_code()
