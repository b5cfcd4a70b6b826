"""Small helpers the fusion passes share to read the dataflow graph."""
from __future__ import annotations

import numpy as np

from llmfab.ir import Graph, Node, OpKind


def scalar(g: Graph, name: str) -> float | None:
    """The value of `name` if it is a constant holding a single number (any shape of size 1)."""
    if g.node(name).type.numel != 1:  # decide from the type: never read a large weight here
        return None
    v = g.const_value(name)
    if v is None:
        return None
    return float(np.ravel(v)[0])


def is_op(g: Graph, name: str, *ops: OpKind) -> Node | None:
    n = g.node(name)
    return n if n.op in ops else None


def split_const(g: Graph, node: Node) -> tuple[str, float] | None:
    """For a binary node with one scalar-constant operand: (the other operand, the scalar)."""
    a, b = node.inputs
    if (s := scalar(g, b)) is not None:
        return a, s
    if node.op in (OpKind.ADD, OpKind.MUL) and (s := scalar(g, a)) is not None:
        return b, s
    return None


def sole_user(g: Graph, name: str) -> Node | None:
    users = g.users(name)
    return users[0] if len(users) == 1 and name not in g.output_names() else None


def other_input(node: Node, name: str) -> str | None:
    """The input of a binary node that is not `name` (None if both are `name`)."""
    a, b = node.inputs
    return b if a == name else a if b == name else None


def replace(g: Graph, old: str, op: OpKind, inputs, attrs, name: str | None = None) -> str:
    """Add a node computing what `old` computed, move every use of `old` to it; old dies by DCE."""
    new = g.add_op(g.unique_name(name or old + ".fused"), op, inputs, attrs, origin=g.node(old).origin)
    g.replace_all_uses(old, new.name)
    return new.name


def find_or_add(g: Graph, name: str, op: OpKind, inputs, attrs) -> str:
    """An existing node computing op(inputs, attrs), or a new one (a local CSE)."""
    inputs = tuple(inputs)
    if inputs:
        for u in g.users(inputs[0]):
            if u.op is op and u.inputs == inputs and u.attrs == attrs:
                return u.name
    return g.add_op(g.unique_name(name), op, inputs, attrs).name
