"""Reference interpreter: the executable meaning of every op, in numpy.

Float ops compute in float32 (fp16/bf16 inputs are widened) in the same order of operations as
the PyTorch reference models, so logits track onnxruntime to ~1e-6 relative.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np

from .graph import Graph
from .ops import GeluApprox, OpKind, RopeStyle


class InterpreterError(RuntimeError):
    pass


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to float32 precision (numpy has none): Abramowitz & Stegun 7.1.26 in float64, |err| < 1.5e-7."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1.0 - poly * np.exp(-z * z)
    return (np.sign(x) * y).astype(x.dtype)


def _sigmoid(x):
    # Split by sign so exp never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def gelu(x, approx: GeluApprox):
    if approx is GeluApprox.TANH:
        c = np.float32(math.sqrt(2.0 / math.pi))
        return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x ** 3)))
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x / np.float32(math.sqrt(2.0))))


def rms_norm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x * (np.float32(1.0) / np.sqrt(var + np.float32(eps))))


def layer_norm(x, w, b, eps):
    mu = np.mean(x, axis=-1, keepdims=True)
    d = x - mu
    var = np.mean(d * d, axis=-1, keepdims=True)
    return d / np.sqrt(var + np.float32(eps)) * w + b


def rope(x, cos, sin, style: RopeStyle):
    h = x.shape[-1] // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return x * cos + rot * sin


def attention(q, k, v, mask, a):
    rep = a.num_heads // a.num_kv_heads
    if rep > 1:
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
    s = (q @ np.swapaxes(k, -1, -2)) * np.float32(a.scale)
    if a.softcap is not None:
        s = np.float32(a.softcap) * np.tanh(s)
    if mask is not None:
        s = s + mask
    if a.causal:
        S, T = q.shape[-2], k.shape[-2]
        allowed = np.arange(T)[None, :] <= np.arange(S)[:, None] + (T - S)
        s = np.where(allowed, s, np.float32(-np.inf))
    return softmax(s, -1) @ v


def _int_div(x, y):
    """Integer division truncating toward zero, as ONNX Div (numpy's // floors)."""
    q = np.abs(x) // np.abs(y)
    return np.where((x < 0) != (y < 0), -q, q).astype(np.result_type(x, y))


def _slice(x, a):
    idx = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(a.starts, a.ends, a.axes, a.steps):
        idx[ax] = slice(st, en, sp)
    return x[tuple(idx)]


def _linear(a, x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


KERNELS: dict[OpKind, Callable] = {
    OpKind.EMBEDDING: lambda a, t, ids: t[ids],  # (fp16 tables arrive widened by evaluate)
    OpKind.LINEAR: _linear,
    OpKind.LMHEAD: _linear,
    OpKind.MATMUL: lambda a, x, y: x @ y,
    OpKind.RMSNORM: lambda a, x, w: rms_norm(x, w, a.eps),
    OpKind.LAYERNORM: lambda a, x, w, b: layer_norm(x, w, b, a.eps),
    OpKind.ROPE: lambda a, x, c, s: rope(x, c, s, a.style),
    OpKind.ATTENTION: lambda a, q, k, v, m=None: attention(q, k, v, m, a),
    OpKind.SOFTMAX: lambda a, x: softmax(x, a.axis),
    OpKind.SILU: lambda a, x: x * _sigmoid(x),
    OpKind.GELU: lambda a, x: gelu(x, a.approx),
    OpKind.RELU: lambda a, x: np.maximum(x, np.zeros((), x.dtype)),
    OpKind.SOFTCAP: lambda a, x: np.float32(a.cap) * np.tanh(x),
    OpKind.ADD: lambda a, x, y: x + y,
    OpKind.MUL: lambda a, x, y: x * y,
    OpKind.SUB: lambda a, x, y: x - y,
    OpKind.DIV: lambda a, x, y: _int_div(x, y) if x.dtype.kind in "iu" else x / y,
    OpKind.POW: lambda a, x, y: np.power(x, y),
    OpKind.MAX: lambda a, x, y: np.maximum(x, y),
    OpKind.MIN: lambda a, x, y: np.minimum(x, y),
    OpKind.SQRT: lambda a, x: np.sqrt(x),
    OpKind.RECIPROCAL: lambda a, x: np.float32(1.0) / x,
    OpKind.NEG: lambda a, x: -x,
    OpKind.EXP: lambda a, x: np.exp(x),
    OpKind.TANH: lambda a, x: np.tanh(x),
    OpKind.ERF: lambda a, x: _erf(x),
    OpKind.SIGMOID: lambda a, x: _sigmoid(x),
    OpKind.REDUCE_MEAN: lambda a, x: np.mean(x, axis=a.axes, keepdims=a.keepdims),
    OpKind.REDUCE_SUM: lambda a, x: np.sum(x, axis=a.axes, keepdims=a.keepdims),
    OpKind.REDUCE_MAX: lambda a, x: np.max(x, axis=a.axes, keepdims=a.keepdims),
    OpKind.WHERE: lambda a, c, x, y: np.where(c, x, y),
    OpKind.EXPAND: lambda a, x: np.broadcast_to(x, np.broadcast_shapes(x.shape, a.shape)),
    OpKind.RESHAPE: lambda a, x: np.reshape(x, a.shape),
    OpKind.TRANSPOSE: lambda a, x: np.transpose(x, a.perm),
    OpKind.CONCAT: lambda a, *xs: np.concatenate(xs, axis=a.axis),
    OpKind.SLICE: lambda a, x: _slice(x, a),
    OpKind.GATHER: lambda a, x, i: np.take(x, i, axis=a.axis),  # (fp16 tables arrive widened)
    OpKind.CAST: lambda a, x: x.astype(a.to.numpy),
}


def evaluate(op: OpKind, attrs, inputs: list[np.ndarray]) -> np.ndarray:
    """Apply one op to numpy inputs (used by the interpreter and by constant folding)."""
    try:
        kernel = KERNELS[op]
    except KeyError:
        raise InterpreterError(f"no reference kernel for {op}") from None
    # Integer-typed math on float values is never produced; widen fp16 so results are float32-exact.
    ins = [np.asarray(x).astype(np.float32) if np.asarray(x).dtype == np.float16 else np.asarray(x)
           for x in inputs]
    return np.asarray(kernel(attrs, *ins))


def run(graph: Graph, feeds: Mapping[str, np.ndarray], keep: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Execute `graph` on `feeds` (graph input name -> array); returns output name -> array,
    plus the values of the nodes named in `keep` (e.g. a Linear's input, for calibration)."""
    nodes = graph.nodes()
    remaining = {n.name: len(graph.users(n.name)) for n in nodes}
    extra = list(keep)
    keep = graph.output_names() | set(extra)
    env: dict[str, np.ndarray] = {}
    for node in nodes:
        if node.op is OpKind.INPUT:
            if node.name not in feeds:
                raise InterpreterError(f"missing value for graph input {node.name!r} ({node.type})")
            v = np.asarray(feeds[node.name])
            if tuple(v.shape) != node.type.shape:
                raise InterpreterError(
                    f"graph input {node.name!r} expects shape {list(node.type.shape)}, got {list(v.shape)}")
            env[node.name] = v.astype(node.type.dtype.numpy, copy=False)
            continue
        if node.op is OpKind.CONST:
            env[node.name] = node.data.numpy()
            continue
        try:
            env[node.name] = evaluate(node.op, node.attrs, [env[i] for i in node.inputs])
        except (ValueError, IndexError, TypeError) as e:
            raise InterpreterError(f"node {node.name!r} ({node.op}) failed: {e}") from None
        for i in set(node.inputs):  # free values no one needs any more
            remaining[i] -= 1
            if remaining[i] == 0 and i not in keep:
                env.pop(i, None)
    result = {out: env[n] for out, n in graph.outputs}
    result.update({n: env[n] for n in extra})
    return result
