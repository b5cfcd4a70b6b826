"""The IR verifier: every node well-formed and well-typed, or an `IRVerifyError` naming it."""
from __future__ import annotations

import networkx as nx

from .graph import Graph
from .ops import LLM_OPS, STRUCTURAL_OPS, OpKind, TypeInferenceError, infer_type


class IRVerifyError(ValueError):
    pass


# The fusion pass (passes/fuse_*.py, `llmfab inspect --passes`) that lifts each primitive op into an
# LLM-level op in the supported families: an op left over names it, so the user sees which pattern
# of their model was not recognised.
_SCALE = "fuse-attention (a scale on the scores)"
_NORM = "fuse-norm (rms_norm, layer_norm)"
_ACT = "fuse-activation (silu, gelu, relu)"
FUSED_BY = {
    OpKind.MATMUL: "fuse-linear (a MatMul by a constant weight) or fuse-attention (Q K^T, P V)",
    OpKind.SOFTMAX: "fuse-attention", OpKind.WHERE: "fuse-attention (the mask)",
    OpKind.EXPAND: "fuse-attention (the repeat_kv of grouped-query heads)",
    OpKind.GATHER: "fuse-linear (embedding: a Gather from a weight table)",
    OpKind.NEG: "fuse-rope (rotate_half)", OpKind.DIV: f"{_NORM} or {_SCALE}",
    OpKind.SUB: _NORM, OpKind.POW: _NORM, OpKind.SQRT: _NORM, OpKind.RECIPROCAL: _NORM, OpKind.REDUCE_MEAN: _NORM,
    OpKind.EXP: _ACT, OpKind.TANH: _ACT, OpKind.ERF: _ACT, OpKind.SIGMOID: _ACT, OpKind.MAX: _ACT, OpKind.MIN: _ACT,
}


def unfused_nodes(graph: Graph, covered=LLM_OPS | STRUCTURAL_OPS) -> list:
    """The nodes whose op is not in `covered` (what a consumer has a rule for; inputs and
    constants always are): by default the primitives fusion could not lift to LLM-level ops."""
    return [n for n in graph.nodes() if n.op not in covered and n.op not in (OpKind.INPUT, OpKind.CONST)]


def soft_caps(graph: Graph) -> dict[str, float]:
    """tanh nodes of soft-capping `tanh(x / c) * c` (Gemma2's attention scores and final logits) -> c."""
    def scalar(name):
        n = graph.node(name)
        v = n.data.numpy() if n.op is OpKind.CONST and n.type.numel == 1 and n.data.has_values else None
        return None if v is None else float(v.ravel()[0])
    caps = {}
    for t in graph.nodes():
        if t.op is not OpKind.TANH or graph.node(t.inputs[0]).op is not OpKind.DIV:
            continue
        c = scalar(graph.node(t.inputs[0]).inputs[1])
        users = graph.users(t.name)
        if c and len(users) == 1 and users[0].op is OpKind.MUL and any(
                i != t.name and scalar(i) is not None and abs(scalar(i) - c) <= 1e-6 * abs(c) for i in users[0].inputs):
            caps[t.name] = c
    return caps


def unfused_message(nodes, what: str, shown: int = 4, graph: Graph | None = None) -> str:
    """One line for `nodes` that `what` (the integer contract, the lowering) has no rule for: each
    node with its op and ONNX node, the fusion expected to lift it, and what that means. With the
    `graph`, a soft-cap (tanh(x / c) * c) left over is named as such and listed first: it is what stops
    fusion (an attention whose soft-capped scores were not recognised keeps its matmul, softmax and
    expand too)."""
    caps = soft_caps(graph) if graph is not None else {}
    nodes = sorted(nodes, key=lambda n: n.name not in caps)
    parts = []
    for n in nodes[:shown]:
        origin = f" from ONNX {n.origin!r}" if n.origin and n.origin != n.name else ""
        if n.name in caps:
            c = caps[n.name]
            parts.append(f"{n.name!r} ({n.op}{origin}; the soft-cap tanh(x / {c:g}) * {c:g}, as Gemma2 caps its "
                         "attention scores and logits: fused only where x is attention scores or a Linear's "
                         "output used only here, whose scale or weights take the 1 / c)")
            continue
        parts.append(f"{n.name!r} ({n.op}{origin}; expected in {FUSED_BY.get(n.op, 'no fusion pass')})")
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    ops = sorted({str(n.op) for n in nodes})
    return (f"{len(nodes)} op{'s' * (len(nodes) != 1)} left unfused: {', '.join(parts)}{more}; {what} covers "
            f"fused graphs only, so this model's pattern of {', '.join(ops)} is not supported yet "
            "(`llmfab inspect MODEL --print-ir` shows where the ops sit)")


def _where(node) -> str:
    return f"node {node.name!r} ({node.op}" + (f", from ONNX {node.origin}" if node.origin else "") + ")"


def verify(graph: Graph, fused: bool = False) -> None:
    """Check the graph; with `fused=True` also that only LLM-level and structural ops remain."""
    if not nx.is_directed_acyclic_graph(graph._g):
        raise IRVerifyError(f"graph {graph.name!r} has a cycle")
    if not graph.outputs:
        raise IRVerifyError(f"graph {graph.name!r} has no outputs")
    for node in graph.nodes():
        if node.op is OpKind.INPUT:
            continue
        try:
            in_types = [graph.node(i).type for i in node.inputs]
        except KeyError as e:
            raise IRVerifyError(f"{_where(node)} uses a value not in the graph: {e}") from None
        try:
            t = infer_type(node.op, node.attrs, in_types)
        except TypeInferenceError as e:
            ins = ", ".join(f"%{i}: {ty}" for i, ty in zip(node.inputs, in_types))
            raise IRVerifyError(f"{_where(node)} is ill-typed with inputs ({ins}): {e}") from None
        if t != node.type:
            raise IRVerifyError(f"{_where(node)} declares type {node.type} but its inputs give {t}")
        if fused and node.op not in LLM_OPS | STRUCTURAL_OPS:
            raise IRVerifyError(f"{_where(node)} is a primitive op left after fusion")
    for out, n in graph.outputs:
        if n not in graph:
            raise IRVerifyError(f"graph output {out!r} refers to missing node {n!r}")
