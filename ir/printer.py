"""Deterministic text form of a graph, one node per line (for tests, diffs and `--print-ir`)."""
from __future__ import annotations

import dataclasses
from enum import Enum

import numpy as np

from .graph import Graph, Node
from .ops import OpKind


def _fmt(v) -> str:
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, float):
        return str(np.float32(v))  # shortest text that round-trips the float32 value
    if isinstance(v, tuple):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _attrs(node: Node) -> str:
    if node.op is OpKind.CONST:
        d = node.data
        if d.has_values and 0 < int(np.prod(d.shape)) <= 8 and not node.attrs.weight:
            vals = np.asarray(d.numpy()).ravel().tolist()
            return "{value=[" + ",".join(_fmt(float(x)) if isinstance(x, float) else str(x) for x in vals) + "]}"
        return "{weight}" if node.attrs.weight else ("{}" if d.has_values else "{no-data}")
    fields = [(f.name, getattr(node.attrs, f.name)) for f in dataclasses.fields(node.attrs)]
    parts = [f"{k}={_fmt(v)}" for k, v in fields if v is not None]
    return "{" + ", ".join(parts) + "}" if parts else ""


def format_node(node: Node) -> str:
    args = ", ".join(f"%{i}" for i in node.inputs)
    a = _attrs(node)
    return f"%{node.name} = {node.op}({args}){(' ' + a) if a else ''} : {node.type}"


def print_graph(graph: Graph, skip_consts: bool = False) -> str:
    lines = [f"graph {graph.name} {{"]
    for n in graph.nodes():
        if skip_consts and n.op is OpKind.CONST:
            continue
        lines.append("  " + format_node(n))
    lines.append("  return " + ", ".join(f"{o}=%{n}" for o, n in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
