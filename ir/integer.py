"""The integer interpreter: the executable integer contract (docs/integer.md). The arithmetic of
each op is in `integer_ops.py`; this module runs a graph with it and re-exports it.

Every value of a fused graph is an int64 numpy array. Activations (every value of float IR type)
hold Q.16 fixed point saturated to int32; token ids and other integer values are plain ints;
linear / lm_head / embedding weights are `QuantizedWeight`s (the quantize pass makes them). One
kernel per op, `INT_KERNELS`, each exactly the formula of docs/integer.md, with every
intermediate exact in int64. `run_integer_raw` returns the raw Q.16 outputs the simulator and the
RTL must match bit for bit; `run_integer` returns them as floats (q / 2^16).

docs/integer.md is the prose of every formula here (norm normalisation to 23 significant bits,
table edges, saturating shifts, the ops outside the contract); change both together.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from .fixed_point import FRAC, from_fixed, quantize_rows, to_fixed
from .graph import Graph, Node
from .integer_ops import (I64, MAX_HEAD_DIM, MAX_K, MAX_NORM_D, MEAN_BITS, IntegerError, Lut, _check_weight, _i64,
                          _shr_sat, act_table, group_accumulate, group_partial_sums, int_add, int_attention,
                          int_embedding, int_exp, int_gelu, int_layer_norm, int_linear, int_mul, int_relu, int_rms_norm,
                          int_rope, int_silu, int_softcap, int_softmax_rows, isqrt, lut_eval, quantize_activation, softcap_fixed)
from .ops import OpKind
from .quant import QuantizedWeight
from .verify import unfused_message, unfused_nodes


def _softmax(a, x) -> np.ndarray:
    return np.moveaxis(int_softmax_rows(np.moveaxis(_i64(x), a.axis, -1)), -1, a.axis)


def _attention(a, q, k, v, mask=None) -> np.ndarray:
    if mask is not None:
        raise IntegerError("an additive attention mask is not part of the integer contract "
                           "(only causal attention, `causal=True`, is)")
    return int_attention(q, k, v, a.scale, a.causal, a.num_kv_heads, a.softcap)


def _slice(x, a) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(a.starts, a.ends, a.axes, a.steps):
        idx[ax] = slice(st, en, sp)
    return x[tuple(idx)]


INT_KERNELS: dict[OpKind, Callable] = {
    OpKind.EMBEDDING: lambda a, table, ids: int_embedding(table, ids),
    OpKind.LINEAR: lambda a, x, w, b=None: int_linear(x, w, b, a.act_amax),
    OpKind.LMHEAD: lambda a, x, w, b=None: int_linear(x, w, b, a.act_amax),
    OpKind.RMSNORM: lambda a, x, w: int_rms_norm(x, w, a.eps),
    OpKind.LAYERNORM: lambda a, x, w, b: int_layer_norm(x, w, b, a.eps),
    OpKind.ROPE: lambda a, x, c, s: int_rope(x, c, s),
    OpKind.ATTENTION: _attention,
    OpKind.SOFTMAX: _softmax,
    OpKind.SILU: lambda a, x: int_silu(x),
    OpKind.GELU: lambda a, x: int_gelu(x, a.approx),
    OpKind.RELU: lambda a, x: int_relu(x),
    OpKind.SOFTCAP: lambda a, x: int_softcap(x, softcap_fixed(a.cap)),
    OpKind.ADD: lambda a, x, y: int_add(x, y),
    OpKind.MUL: lambda a, x, y: int_mul(x, y),
    OpKind.RESHAPE: lambda a, x: np.reshape(x, a.shape),
    OpKind.TRANSPOSE: lambda a, x: np.transpose(x, a.perm),
    OpKind.CONCAT: lambda a, *xs: np.concatenate(xs, axis=a.axis),
    OpKind.SLICE: lambda a, x: _slice(x, a),
    OpKind.GATHER: lambda a, x, i: np.take(x, i, axis=a.axis),
    OpKind.CAST: lambda a, x: x,  # on Q.16 activations (see `_cast` for integer values)
}

_STRUCTURAL = frozenset({OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.CONCAT, OpKind.SLICE, OpKind.GATHER})
# input positions that take a QuantizedWeight
_WEIGHT_SLOTS: dict[OpKind, int] = {OpKind.LINEAR: 1, OpKind.LMHEAD: 1, OpKind.EMBEDDING: 0}


# ---------------------------------------------------------------------------------------------
# the interpreter


class _Run:
    """One execution: values (int64 arrays), which of them are Q.16, and the weights."""

    def __init__(self, graph: Graph, feeds: Mapping[str, np.ndarray]):
        self.graph, self.feeds = graph, feeds
        self.env: dict[str, np.ndarray] = {}
        self.fixed: dict[str, bool] = {}  # True: Q.16 activation; False: plain integers

    def feed(self, node: Node):
        if node.name not in self.feeds:
            raise IntegerError(f"missing value for graph input {node.name!r} ({node.type})")
        v = np.asarray(self.feeds[node.name])
        if tuple(v.shape) != node.type.shape:
            raise IntegerError(f"graph input {node.name!r} expects shape {list(node.type.shape)}, "
                               f"got {list(v.shape)}")
        is_float = node.type.dtype.is_float
        if not is_float and v.dtype.kind not in "biu":
            raise IntegerError(f"graph input {node.name!r} ({node.type}) needs integer values, not {v.dtype}")
        self.env[node.name] = to_fixed(v) if is_float else _i64(v)
        self.fixed[node.name] = is_float

    def value(self, name: str, user: Node) -> np.ndarray:
        """A computed value, or a constant converted on first use (cached for the run)."""
        if name not in self.env:
            node = self.graph.node(name)  # a CONST: INPUTs and ops are in env already
            if isinstance(node.data, QuantizedWeight):
                raise IntegerError(f"node {user.name!r} ({user.op}) reads the quantized weight {name!r}, "
                                   f"which only linear, lm_head and embedding can use")
            a = np.asarray(node.data.numpy())
            is_float = a.dtype.kind == "f"
            self.env[name] = to_fixed(a) if is_float else _i64(a)
            self.fixed[name] = is_float
        return self.env[name]

    def weight(self, node: Node, slot: int) -> QuantizedWeight:
        name = node.inputs[slot]
        w = self.graph.node(name)
        data = w.data if w.op is OpKind.CONST else None
        if not isinstance(data, QuantizedWeight):
            what = f"the float tensor {name!r} ({w.type})" if w.type.dtype.is_float else f"{name!r} ({w.op})"
            raise IntegerError(f"node {node.name!r} ({node.op}) has weight {what}: the integer "
                               f"interpreter needs a QuantizedWeight; run the quantize pass first")
        return _check_weight(data)

    def step(self, node: Node):
        op = node.op
        slot = _WEIGHT_SLOTS.get(op)
        args, kinds = [], []
        for i, name in enumerate(node.inputs):
            if i == slot:
                args.append(self.weight(node, i))
                kinds.append(None)
            else:
                args.append(self.value(name, node))
                kinds.append(self.fixed[name])
        if op is OpKind.CAST:
            self.env[node.name], self.fixed[node.name] = _cast(node, args[0], kinds[0])
            return
        if op in (OpKind.EMBEDDING, OpKind.GATHER) and kinds[1] is not False:
            raise IntegerError(f"node {node.name!r} ({op}) needs integer indices, but "
                               f"{node.inputs[1]!r} holds activations")
        if op in _STRUCTURAL:
            data = kinds[:1] if op is OpKind.GATHER else kinds
            if len(set(data)) != 1:
                raise IntegerError(f"node {node.name!r} ({op}) mixes activations and integer values")
            out_fixed = data[0]
        else:
            out_fixed = True
            ints = [node.inputs[i] for i, k in enumerate(kinds)
                    if k is False and not (op is OpKind.EMBEDDING and i == 1)]
            if ints:
                raise IntegerError(f"node {node.name!r} ({op}) needs activations, but {ints[0]!r} "
                                   "holds integer values")
        try:
            self.env[node.name] = INT_KERNELS[op](node.attrs, *args)
        except IntegerError as e:
            raise IntegerError(f"node {node.name!r} ({op}): {e}") from None
        except (ValueError, IndexError, TypeError) as e:
            raise IntegerError(f"node {node.name!r} ({op}) failed: {e}") from None
        self.fixed[node.name] = out_fixed


def _cast(node: Node, x: np.ndarray, fixed: bool) -> tuple[np.ndarray, bool]:
    to_float = node.attrs.to.is_float
    if fixed and not to_float:
        raise IntegerError(f"node {node.name!r} (cast) turns an activation into {node.attrs.to}: "
                           "not part of the integer contract")
    if not fixed and to_float:
        return _shr_sat(x, -FRAC, 32), True
    return x, fixed


def check_kernels(graph: Graph) -> None:
    """IntegerError naming every node without an integer kernel (ops fusion left), before any runs."""
    missing = unfused_nodes(graph, INT_KERNELS)
    if missing:
        raise IntegerError(unfused_message(missing, "the integer contract (docs/integer.md)", graph=graph))


def _execute(graph: Graph, feeds: Mapping[str, np.ndarray], values=()) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    check_kernels(graph)
    r = _Run(graph, feeds)
    nodes = graph.nodes()
    remaining = {n.name: len(graph.users(n.name)) for n in nodes}
    keep = set(graph.output_names()) | set(values)
    for node in nodes:
        if node.op is OpKind.INPUT:
            r.feed(node)
        elif node.op is not OpKind.CONST:
            r.step(node)
            for i in set(node.inputs):  # free values no one needs any more
                remaining[i] -= 1
                if remaining[i] == 0 and i not in keep:
                    r.env.pop(i, None)
    raw, fixed = {}, {}
    for out, n in graph.outputs:
        raw[out] = r.value(n, graph.node(n))
        fixed[out] = r.fixed[n]
    for n in values:
        raw[n], fixed[n] = r.env[n], r.fixed[n]
    return raw, fixed


def run_integer_raw(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute `graph` under the integer contract; outputs as raw int64 (Q.16 for activations)."""
    return _execute(graph, feeds)[0]


def run_integer_values(graph: Graph, feeds: Mapping[str, np.ndarray], names) -> dict[str, np.ndarray]:
    """`run_integer_raw`'s outputs and the raw values of the nodes `names` (intermediates kept)."""
    return _execute(graph, feeds, tuple(names))[0]


def run_integer(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute `graph` under the integer contract; activation outputs as float64 (q / 2^16)."""
    raw, fixed = _execute(graph, feeds)
    return {k: from_fixed(v) if fixed[k] else v for k, v in raw.items()}


__all__ = [
    "I64", "MAX_HEAD_DIM", "MAX_K", "MAX_NORM_D", "MEAN_BITS", "INT_KERNELS", "IntegerError", "Lut", "act_table", "check_kernels", "group_accumulate", "group_partial_sums",
    "int_add", "int_attention", "int_embedding", "int_exp", "int_gelu", "int_layer_norm", "int_linear",
    "int_mul", "int_relu", "int_rms_norm", "int_rope", "int_silu", "int_softcap", "int_softmax_rows", "isqrt",
    "lut_eval", "quantize_activation", "quantize_rows", "run_integer", "run_integer_raw", "run_integer_values",
    "softcap_fixed",
]
