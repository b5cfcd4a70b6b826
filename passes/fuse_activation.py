"""SiLU, GELU (erf and tanh forms) and ReLU, recognised by what a subgraph computes.

Exporters spell GELU a dozen ways (constants folded or not, x*0.5 first or last, x^3 as Pow or
Mul). Instead of matching each spelling, this pass finds every single-input elementwise region
(a "cone": elementwise nodes whose only non-constant leaf is one value x, used by nothing
outside the cone) and evaluates it on probe points; if it equals a known activation to float32
precision, the whole cone becomes that one op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmfab.ir import GeluApprox, GeluAttrs, Graph, NoAttrs, OpKind
from llmfab.ir.interpret import _sigmoid, evaluate, gelu
from llmfab.ir.ops import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY

from .pass_base import Pass
from .patterns import replace

# Dense where the activations bend, plus large magnitudes so a clamp (min(relu(x), 20)) is seen.
PROBE = np.concatenate([np.linspace(-12, 12, 481), [-1e-3, 1e-3, 0.0],
                        [-1e4, -1e3, -64, -16, 16, 64, 1e3, 1e4]]).astype(np.float32)
CANDIDATES = (
    (OpKind.RELU, NoAttrs(), lambda x: np.maximum(x, 0)),
    (OpKind.SILU, NoAttrs(), lambda x: x.astype(np.float64) * _sigmoid(x.astype(np.float64))),
    (OpKind.GELU, GeluAttrs(GeluApprox.NONE), lambda x: gelu(x.astype(np.float64), GeluApprox.NONE)),
    (OpKind.GELU, GeluAttrs(GeluApprox.TANH), lambda x: gelu(x.astype(np.float64), GeluApprox.TANH)),
)
ELEMENTWISE = ELEMENTWISE_UNARY | ELEMENTWISE_BINARY


def _cone(g: Graph, root: str) -> tuple[str, list[str]] | None:
    """(x, interior nodes in topological order) if `root` is an elementwise function of one value x."""
    interior, leaves, stack = set(), set(), [root]
    while stack:
        name = stack.pop()
        n = g.node(name)
        if name in interior:
            continue
        if n.op not in ELEMENTWISE or (name != root and g.node(name).type.shape != g.node(root).type.shape):
            leaves.add(name)
            continue
        interior.add(name)
        for i in n.inputs:
            if g.node(i).type.numel == 1 and g.const_value(i) is not None:
                continue  # a scalar constant
            stack.append(i)
    if len(leaves) != 1:
        return None
    (x,) = leaves
    if g.node(x).type.shape != g.node(root).type.shape:
        return None
    for name in interior - {root}:  # nothing inside may escape the cone
        if name in g.output_names() or any(u.name not in interior for u in g.users(name)):
            return None
    order = [n.name for n in g.nodes() if n.name in interior]
    return x, order


def _probe(g: Graph, x: str, order: list[str]) -> np.ndarray:
    env = {x: PROBE}
    for name in order:
        n = g.node(name)
        ins = [env[i] if i in env else np.ravel(g.const_value(i)).astype(np.float32) for i in n.inputs]
        env[name] = evaluate(n.op, n.attrs, ins).astype(np.float32)
    return env[order[-1]]


@dataclass(frozen=True)
class FuseActivation(Pass):
    name: ClassVar[str] = "fuse-activation"

    def apply(self, g: Graph) -> None:
        for n in reversed(g.nodes()):  # outermost cones first
            if n.name not in g or n.op not in ELEMENTWISE or n.type.dtype.is_int:
                continue
            cone = _cone(g, n.name)
            # one-node cones: only max(x, 0) (ReLU spelt with Max) can be a different activation
            if cone is None or len(cone[1]) < 2 and n.op not in (OpKind.MAX, OpKind.MIN):
                continue
            x, order = cone
            y = _probe(g, x, order)
            # Constants of an fp16 export are rounded to half precision: allow that much.
            half = any(g.node(i).type.dtype.bits == 16 for o in order for i in g.node(o).inputs
                       if g.node(i).op is OpKind.CONST)
            rtol = 5e-4 if half else 1e-5  # fp16 rounding of GELU's constants moves it ~1e-4
            # relative error, absolute (rtol * 0.1) near zero
            errors = [float(np.max(np.abs(y - ref(PROBE)) / (np.abs(ref(PROBE)) + 0.1)))
                      for _, _, ref in CANDIDATES]
            best = int(np.argmin(errors))  # the closest: erf and tanh GELU differ by ~2e-4
            op, attrs, _ = CANDIDATES[best]
            if errors[best] < rtol and not (len(order) == 1 and n.op is op):
                replace(g, n.name, op, [x], attrs)
        g.eliminate_dead_code()
