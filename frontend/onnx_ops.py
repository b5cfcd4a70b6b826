"""One handler per ONNX op, named after it, with the ONNX attributes as keyword arguments.

A handler receives the import context and the IR value names of its inputs (None for an omitted
optional input) and returns the IR value name(s) of its outputs. `ctx.emit` folds an op to a
constant when all its inputs are known, so the same handler serves shape math and dataflow.
Ops that exist in LLM exports only to compute shapes, masks and positions are in onnx_ops_const.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from llmfab.ir import (AxisAttrs, CastAttrs, DType, GeluApprox, GeluAttrs, LinearAttrs, NormAttrs,
                       OpKind, PermAttrs, ReduceAttrs, ShapeAttrs, SliceAttrs, TransposedData)
from llmfab.ir.host import require

from .onnx_args import axes_arg, norm_axis
from .onnx_loader import ir_dtype
from .onnx_ops_const import (ConstantOfShape, Range, Trilu, CumSum, ScatterND, GatherND, Tile, Mod, Clip,
                             Equal, Less, LessOrEqual, Greater, GreaterOrEqual, Not, And, Or, Xor, Abs, Floor,
                             Ceil, Sin, Cos, Log, Sign, IsInf, ReduceMin, ReduceProd)


# ---- structural and pass-through --------------------------------------------------------------

def Identity(ctx, x):
    return x


def Dropout(ctx, x, ratio=None, training_mode=None, seed=None):
    if training_mode is not None and ctx.value(training_mode) is not None and bool(ctx.value(training_mode)):
        raise ctx.error("Dropout in training mode is not supported")
    return x, None


def Constant(ctx, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             sparse_value=None, value_string=None, value_strings=None):
    for v, dt in ((value, None), (value_float, np.float32), (value_floats, np.float32),
                  (value_int, np.int64), (value_ints, np.int64)):
        if v is not None:
            return ctx.constant(np.asarray(v, dtype=dt), "")
    raise ctx.error("only tensor/float/int Constant values are supported")


def Cast(ctx, x, to, saturate=None, round_mode=None):
    dst = ir_dtype(to, ctx.where())
    src = ctx.type(x).dtype
    if to == onnx.TensorProto.UINT8 and ctx.value(x) is not None:  # wraps like ONNX, widened to int
        return ctx.constant(ctx.value(x).astype(np.uint8).astype(np.int64), "")
    if dst == src:
        return x
    if ctx.value(x) is None:
        if src.is_float and dst.is_float:
            return x  # float activations are fp32 in the IR; precision casts are no-ops here
        raise ctx.error(f"casting a model activation from {src} to {dst} is not supported")
    return ctx.emit(OpKind.CAST, [x], CastAttrs(dst))


def CastLike(ctx, x, like, saturate=None, round_mode=None):
    return Cast(ctx, x, _onnx_type(ctx.type(like).dtype))


def _onnx_type(d: DType) -> int:
    return {DType.FP32: onnx.TensorProto.FLOAT, DType.FP16: onnx.TensorProto.FLOAT16,
            DType.INT64: onnx.TensorProto.INT64, DType.INT32: onnx.TensorProto.INT32,
            DType.INT8: onnx.TensorProto.INT8, DType.BOOL: onnx.TensorProto.BOOL}[d]


def Shape(ctx, x, start=0, end=None):
    return ctx.constant(np.array(ctx.type(x).shape[start:end], np.int64), "")


def Size(ctx, x):
    return ctx.constant(np.array(ctx.type(x).numel, np.int64), "")


def Reshape(ctx, x, shape, allowzero=0):
    target = [int(d) for d in ctx.const(shape, "shape")]
    src = ctx.type(x).shape
    if not allowzero:
        target = [src[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise ctx.error(f"reshape target {target} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        if known == 0 or ctx.type(x).numel % known:
            raise ctx.error(f"cannot reshape {ctx.type(x)} to {target}")
        target[target.index(-1)] = ctx.type(x).numel // known
    if tuple(target) == src:
        return x
    return ctx.emit(OpKind.RESHAPE, [x], ShapeAttrs(tuple(target)))


def Unsqueeze(ctx, x, axes=None):
    # opset >= 13 passes axes as an input (a value name), older opsets as an attribute (a list)
    ax = axes_arg(ctx, axes if isinstance(axes, str) else None, None if isinstance(axes, str) else axes)
    shape = list(ctx.type(x).shape)
    rank = len(shape) + len(ax)
    for a in sorted(norm_axis(a, rank) for a in ax):
        shape.insert(a, 1)
    return _reshape_to(ctx, x, shape)


def Squeeze(ctx, x, axes=None):
    ax = axes_arg(ctx, axes if isinstance(axes, str) else None, None if isinstance(axes, str) else axes)
    shape = ctx.type(x).shape
    drop = {norm_axis(a, len(shape)) for a in ax} if ax else {i for i, d in enumerate(shape) if d == 1}
    return _reshape_to(ctx, x, [d for i, d in enumerate(shape) if i not in drop])


def Flatten(ctx, x, axis=1):
    shape = ctx.type(x).shape
    axis = norm_axis(axis, len(shape))
    return _reshape_to(ctx, x, [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))])


def _reshape_to(ctx, x, shape):
    if tuple(shape) == ctx.type(x).shape:
        return x
    return ctx.emit(OpKind.RESHAPE, [x], ShapeAttrs(tuple(int(d) for d in shape)))


def Transpose(ctx, x, perm=None):
    rank = ctx.type(x).rank
    perm = tuple(perm) if perm is not None else tuple(reversed(range(rank)))
    if perm == tuple(range(rank)):
        return x
    return ctx.emit(OpKind.TRANSPOSE, [x], PermAttrs(perm))


def Concat(ctx, *xs, axis):
    ax = norm_axis(axis, ctx.type(xs[0]).rank)
    # Empty parts (a KV cache with no past tokens) contribute nothing.
    parts = [x for x in xs if ctx.type(x).numel > 0]
    if not parts:  # all empty: an empty constant of the concatenated shape
        shape = list(ctx.type(xs[0]).shape)
        shape[ax] = sum(ctx.type(x).shape[ax] for x in xs)
        return ctx.constant(np.zeros(shape, ctx.type(xs[0]).dtype.numpy), "")   # empty: no memory
    if len(parts) == 1:
        return parts[0]
    return ctx.emit(OpKind.CONCAT, parts, AxisAttrs(ax))


def Slice(ctx, x, starts, ends, axes=None, steps=None):
    st = [int(v) for v in np.ravel(ctx.const(starts, "starts"))]
    en = [int(v) for v in np.ravel(ctx.const(ends, "ends"))]
    rank = ctx.type(x).rank
    ax = [int(v) for v in np.ravel(ctx.const(axes, "axes"))] if axes is not None else list(range(len(st)))
    sp = [int(v) for v in np.ravel(ctx.const(steps, "steps"))] if steps is not None else [1] * len(st)
    ax = [norm_axis(a, rank) for a in ax]
    if any(p < 0 for p in sp):
        xv = ctx.const(x, "data (Slice with a negative step)")
        idx = [slice(None)] * rank
        for s_, e_, a_, p_ in zip(st, en, ax, sp):
            idx[a_] = slice(s_, e_, p_)
        return ctx.constant(xv[tuple(idx)], "")
    shape = ctx.type(x).shape
    # Clamp to the dimension so the IR never carries INT64_MAX sentinels.
    norm = [slice(s_, e_, p_).indices(shape[a_]) for s_, e_, a_, p_ in zip(st, en, ax, sp)]
    if all(n == (0, shape[a_], 1) for n, a_ in zip(norm, ax)):
        return x
    return ctx.emit(OpKind.SLICE, [x], SliceAttrs(tuple(n[0] for n in norm), tuple(n[1] for n in norm),
                                                  tuple(ax), tuple(n[2] for n in norm)))


def Split(ctx, x, split=None, axis=0, num_outputs=None):
    shape = ctx.type(x).shape
    axis = norm_axis(axis, len(shape))
    if isinstance(split, str):
        sizes = [int(v) for v in ctx.const(split, "split")]
    elif split is not None:
        sizes = list(split)
    else:
        n = num_outputs or len(ctx.onnx_node.output)
        size = -(-shape[axis] // n)
        sizes = [min(size, shape[axis] - k * size) for k in range(n)]
    outs, start = [], 0
    for k, sz in enumerate(sizes):
        outs.append(ctx.emit(OpKind.SLICE, [x], SliceAttrs((start,), (start + sz,), (axis,), (1,)), f"split{k}"))
        start += sz
    return tuple(outs)


def Gather(ctx, data, indices, axis=0):
    rank = ctx.type(data).rank
    axis = norm_axis(axis, rank)
    idx = ctx.value(indices)
    if idx is not None and (idx < 0).any():
        indices = ctx.constant(np.where(idx < 0, idx + ctx.type(data).shape[axis], idx), "idx")
    return ctx.emit(OpKind.GATHER, [data, indices], AxisAttrs(axis))


def Expand(ctx, x, shape):
    target = tuple(int(d) for d in ctx.const(shape, "shape"))
    out = tuple(int(d) for d in np.broadcast_shapes(ctx.type(x).shape, target))
    if out == ctx.type(x).shape:
        return x
    return ctx.emit(OpKind.EXPAND, [x], ShapeAttrs(out))


def Where(ctx, cond, x, y):
    c = ctx.value(cond)
    out_shape = tuple(np.broadcast_shapes(ctx.type(cond).shape, ctx.type(x).shape, ctx.type(y).shape))
    if c is not None and (c.all() or not c.any()):  # a constant choice of one branch
        pick = x if c.all() else y
        if ctx.type(pick).shape == out_shape:
            return pick
    return ctx.emit(OpKind.WHERE, [cond, x, y])


def IsNaN(ctx, x):
    if ctx.value(x) is not None:
        return ctx.constant(np.isnan(ctx.value(x)), "")
    if ctx.graph.node(x).op is OpKind.SOFTMAX:
        # PyTorch's SDPA export zeroes NaN rows of the attention weights. A softmax row is NaN
        # only when every key is masked, which causal and all-ones masks never do.
        require(ctx.type(x).numel, f"{ctx.where()}: its constant {ctx.type(x)}")
        return ctx.constant(np.zeros(ctx.type(x).shape, np.bool_), "")
    raise ctx.error("IsNaN is supported on constants and on attention softmax outputs only")


# ---- arithmetic ---------------------------------------------------------------------------

def _binary(op: OpKind) -> Callable:
    def handler(ctx, a, b):
        ta, tb = ctx.type(a).dtype, ctx.type(b).dtype
        # Mixed float widths are fine (fp32 activations, fp16 weights); other mismatches are
        # constants spelt in another type (Pow(x, int 2)), converted to the other operand's type.
        if ta != tb and not (ta.is_float and tb.is_float):
            if op is OpKind.POW and ta.is_float and ctx.value(b) is not None:  # Pow(x, int 2)
                b = ctx.constant(ctx.value(b).astype(np.float32))
            elif ctx.value(b) is not None and ta.is_float == tb.is_float:
                b = ctx.constant(ctx.value(b).astype(ta.numpy))
            elif ctx.value(a) is not None and ta.is_float == tb.is_float:
                a = ctx.constant(ctx.value(a).astype(tb.numpy))
            else:
                raise ctx.error(f"operand types differ: {ctx.type(a)} and {ctx.type(b)}")
        return ctx.emit(op, [a, b])
    handler.__name__ = op.name.title()
    return handler


Add, Sub, Mul, Div, Pow = (_binary(k) for k in (OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV, OpKind.POW))


def _variadic(op: OpKind):
    binary = _binary(op)

    def handler(ctx, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = binary(ctx, out, x)
        return out
    return handler


Max, Min, Sum = _variadic(OpKind.MAX), _variadic(OpKind.MIN), _variadic(OpKind.ADD)


def _unary(op: OpKind) -> Callable:
    def handler(ctx, x):
        return ctx.emit(op, [x])
    return handler


Sqrt, Reciprocal, Neg, Exp, Tanh, Erf, Sigmoid, Relu = (_unary(k) for k in (
    OpKind.SQRT, OpKind.RECIPROCAL, OpKind.NEG, OpKind.EXP, OpKind.TANH, OpKind.ERF,
    OpKind.SIGMOID, OpKind.RELU))


def Gelu(ctx, x, approximate="none"):
    return ctx.emit(OpKind.GELU, [x], GeluAttrs(GeluApprox(approximate)))


def Softmax(ctx, x, axis=-1):
    return ctx.emit(OpKind.SOFTMAX, [x], AxisAttrs(norm_axis(axis, ctx.type(x).rank)))


def MatMul(ctx, a, b):
    return ctx.emit(OpKind.MATMUL, [a, b])


def Gemm(ctx, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    if transA or ctx.value(b) is None or ctx.type(b).rank != 2:
        raise ctx.error("only Gemm of an activation by a constant weight (transA=0) is supported")
    wnode = ctx.graph.node(b)
    data = wnode.data if transB else TransposedData(wnode.data)
    w = ctx.graph.add_const(ctx.graph.unique_name(wnode.name + ("" if transB else ".T")), data,
                            weight=True).name
    bias = None
    if c is not None:
        cv = ctx.value(c)
        n = ctx.graph.node(w).type.shape[0]
        if cv is None or cv.size not in (1, n):
            raise ctx.error(f"Gemm bias must be a constant of {n} values")
        bias = c if beta == 1.0 and cv.shape == (n,) else ctx.constant(
            np.broadcast_to(cv * np.float32(beta), (n,)).astype(np.float32), "bias")
    if alpha == 1.0:  # alpha * A B + beta * C
        return ctx.emit(OpKind.LINEAR, [a, w] + ([bias] if bias else []), LinearAttrs())
    y = ctx.emit(OpKind.LINEAR, [a, w], LinearAttrs())
    y = ctx.emit(OpKind.MUL, [y, ctx.constant(np.float32(alpha), "alpha")])
    return ctx.emit(OpKind.ADD, [y, bias], suffix="bias") if bias else y


def _reduce(op: OpKind):
    def handler(ctx, x, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = axes_arg(ctx, axes if isinstance(axes, str) else None, None if isinstance(axes, str) else axes)
        rank = ctx.type(x).rank
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(rank))
        return ctx.emit(op, [x], ReduceAttrs(tuple(sorted(norm_axis(a, rank) for a in ax)), bool(keepdims)))
    return handler


ReduceMean, ReduceSum, ReduceMax = _reduce(OpKind.REDUCE_MEAN), _reduce(OpKind.REDUCE_SUM), _reduce(OpKind.REDUCE_MAX)


def LayerNormalization(ctx, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    rank = ctx.type(x).rank
    if norm_axis(axis, rank) != rank - 1:
        raise ctx.error(f"LayerNormalization over axis {axis} is not supported (only the last axis)")
    if bias is None:
        bias = ctx.constant(np.zeros(ctx.type(x).shape[-1], np.float32), "bias")
    return ctx.emit(OpKind.LAYERNORM, [x, scale, bias], NormAttrs(float(epsilon))), None, None




HANDLERS: dict[str, Callable] = {
    "Identity": Identity, "Dropout": Dropout, "Constant": Constant, "Cast": Cast, "CastLike": CastLike,
    "Shape": Shape, "Size": Size, "Reshape": Reshape, "Unsqueeze": Unsqueeze, "Squeeze": Squeeze,
    "Flatten": Flatten, "Transpose": Transpose, "Concat": Concat, "Slice": Slice, "Split": Split,
    "Gather": Gather, "Expand": Expand, "Where": Where,
    "Add": Add, "Sub": Sub, "Mul": Mul, "Div": Div, "Pow": Pow, "Max": Max, "Min": Min, "Sum": Sum,
    "Sqrt": Sqrt, "Reciprocal": Reciprocal, "Neg": Neg, "Exp": Exp, "Tanh": Tanh, "Erf": Erf,
    "Sigmoid": Sigmoid, "Relu": Relu, "Gelu": Gelu, "Softmax": Softmax, "MatMul": MatMul,
    "Gemm": Gemm, "ReduceMean": ReduceMean, "ReduceSum": ReduceSum, "ReduceMax": ReduceMax,
    "LayerNormalization": LayerNormalization,
    "ConstantOfShape": ConstantOfShape, "Range": Range, "Trilu": Trilu, "CumSum": CumSum,
    "ScatterND": ScatterND, "GatherND": GatherND, "Tile": Tile, "Mod": Mod, "Clip": Clip, "Equal": Equal, "Less": Less,
    "LessOrEqual": LessOrEqual, "Greater": Greater, "GreaterOrEqual": GreaterOrEqual, "Not": Not,
    "And": And, "Or": Or, "Xor": Xor, "Abs": Abs, "Floor": Floor, "Ceil": Ceil, "Sin": Sin,
    "Cos": Cos, "Log": Log, "Sign": Sign, "IsNaN": IsNaN, "IsInf": IsInf, "ReduceMin": ReduceMin,
    "ReduceProd": ReduceProd,
}
SUPPORTED_OPS = tuple(sorted(HANDLERS))
