"""ONNX ops that exist in LLM exports only to compute shapes, masks and positions: each runs on
known values at import time (`_const_only`) and is never part of the imported graph."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from llmfab.ir.host import require

from .onnx_args import axes_arg, norm_axis


def _broadcast_numel(*vals, **_) -> int:
    return math.prod(np.broadcast_shapes(*(v.shape for v in vals if v is not None)))


def _const_only(fn: Callable, numel: Callable = _broadcast_numel) -> Callable:
    """A handler computing `fn` on known values; `numel` (of the same arguments) is the result's
    element count, checked against the memory budget before `fn` allocates it."""
    def handler(ctx, *ins, **attrs):
        vals = [None if i is None else ctx.const(i, f"#{k}") for k, i in enumerate(ins)]
        n = numel(*vals, **attrs)
        require(16 * n, f"{ctx.where()}: its constant of {n:,} elements")
        return ctx.constant(fn(*vals, **attrs), "")
    return handler


def _range_numel(start, limit, delta) -> int:
    start, limit, delta = (np.asarray(v).item() for v in (start, limit, delta))
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        raise ValueError(f"Range({start}, {limit}, {delta}) has no finite length")
    return max(0, math.ceil((limit - start) / delta))


def _trilu(x, k=None, upper=1):
    kk = int(k) if k is not None else 0
    return np.triu(x, kk) if upper else np.tril(x, kk)


def _cumsum(x, axis, exclusive=0, reverse=0):
    ax = int(axis)
    y = np.flip(x, ax) if reverse else x
    out = np.cumsum(y, axis=ax)
    if exclusive:
        out = out - y
    return (np.flip(out, ax) if reverse else out).astype(x.dtype)


def _scatter_nd(data, indices, updates, reduction="none"):
    combine = {"none": lambda old, new: new, "add": np.add, "mul": np.multiply,
               "max": np.maximum, "min": np.minimum}
    if reduction not in combine:
        raise ValueError(f"ScatterND reduction {reduction!r} is not supported")
    out = np.array(data, copy=True)
    for idx in np.ndindex(indices.shape[:-1]):
        at = tuple(indices[idx])
        out[at] = combine[reduction](out[at], updates[idx])
    return out


def _gather_nd(data, indices, batch_dims=0):
    if batch_dims:
        raise ValueError("GatherND with batch_dims is not supported")
    k = indices.shape[-1]
    flat = indices.reshape(-1, k)
    out = np.stack([data[tuple(ix)] for ix in flat]) if len(flat) else np.zeros((0,) + data.shape[k:], data.dtype)
    return out.reshape(indices.shape[:-1] + data.shape[k:])


def _const_of_shape(shape, value=None):
    v = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full([int(d) for d in shape], v.ravel()[0], dtype=v.dtype)


def _range(start, limit, delta):
    start, limit, delta = (np.asarray(v) for v in (start, limit, delta))
    return np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _tile(x, repeats):
    return np.tile(x, [int(r) for r in repeats])


def _mod(a, b, fmod=0):
    return np.fmod(a, b) if fmod else np.mod(a, b)


def _clip(x, lo=None, hi=None, min=None, max=None):
    lo = lo if lo is not None else min
    hi = hi if hi is not None else max
    return np.clip(x, lo, hi)


ConstantOfShape = _const_only(_const_of_shape, lambda shape, value=None: math.prod(int(d) for d in shape))
Range = _const_only(_range, _range_numel)
Trilu = _const_only(_trilu)
CumSum = _const_only(_cumsum, lambda x, *_, **__: x.size)
ScatterND = _const_only(_scatter_nd, lambda data, *_, **__: data.size)
GatherND = _const_only(_gather_nd, lambda d, i, batch_dims=0: math.prod(i.shape[:-1]) * math.prod(d.shape[i.shape[-1]:]))
Tile = _const_only(_tile, lambda x, r: x.size * math.prod(int(k) for k in r))
Mod = _const_only(_mod)
Clip = _const_only(_clip)
Equal = _const_only(np.equal)
Less = _const_only(np.less)
LessOrEqual = _const_only(np.less_equal)
Greater = _const_only(np.greater)
GreaterOrEqual = _const_only(np.greater_equal)
Not = _const_only(np.logical_not)
And = _const_only(np.logical_and)
Or = _const_only(np.logical_or)
Xor = _const_only(np.logical_xor)
Abs = _const_only(np.abs)
Floor = _const_only(np.floor)
Ceil = _const_only(np.ceil)
Sin = _const_only(lambda x: np.sin(x).astype(x.dtype))
Cos = _const_only(lambda x: np.cos(x).astype(x.dtype))
Log = _const_only(np.log)
Sign = _const_only(np.sign)
IsInf = _const_only(lambda x, detect_negative=1, detect_positive=1:
                    (np.isneginf(x) & bool(detect_negative)) | (np.isposinf(x) & bool(detect_positive)))
def _const_reduce(fn):
    """A reduction used only on known values, with ReduceMean's axes rules (input or attribute)."""
    def handler(ctx, x, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = axes_arg(ctx, axes if isinstance(axes, str) else None, None if isinstance(axes, str) else axes)
        v = ctx.const(x, "data")
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(v.ndim))
        return ctx.constant(fn(v, axis=tuple(norm_axis(a, v.ndim) for a in ax), keepdims=bool(keepdims)), "")
    return handler


ReduceMin = _const_reduce(np.min)
ReduceProd = _const_reduce(np.prod)
