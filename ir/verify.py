"""The IR verifier: every node well-formed and well-typed, or an `IRVerifyError` naming it."""
from __future__ import annotations

import networkx as nx

from .graph import Graph
from .ops import LLM_OPS, STRUCTURAL_OPS, OpKind, TypeInferenceError, infer_type


class IRVerifyError(ValueError):
    pass


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
