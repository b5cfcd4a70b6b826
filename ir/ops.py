"""The op set: one `OpKind` per operation, a typed attribute dataclass per op, and type inference.

Two tiers live here. LLM-level ops (Embedding, Linear, RMSNorm, RoPE, Attention, ...) are what
the rest of llmfab maps onto hardware. Primitive ops (Pow, ReduceMean, Sigmoid, ...) exist only
between the ONNX import and the fusion passes; `LLM_OPS | STRUCTURAL_OPS` is what a fully fused
graph may contain.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .dtypes import DType
from .tensor_data import TensorData
from .types import TensorType


class OpKind(Enum):
    # graph leaves
    INPUT = "input"
    CONST = "const"
    # LLM level
    EMBEDDING = "embedding"
    LINEAR = "linear"
    LMHEAD = "lm_head"
    MATMUL = "matmul"
    RMSNORM = "rms_norm"
    LAYERNORM = "layer_norm"
    ROPE = "rope"
    ATTENTION = "attention"
    SOFTMAX = "softmax"
    SILU = "silu"
    GELU = "gelu"
    RELU = "relu"
    SOFTCAP = "softcap"  # cap * tanh(x): Gemma2's soft-cap cap * tanh(x / cap), its 1 / cap folded into x's producer
    ADD = "add"
    MUL = "mul"
    # structural
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    CONCAT = "concat"
    SLICE = "slice"
    GATHER = "gather"
    CAST = "cast"
    # primitives (only before fusion)
    SUB = "sub"
    DIV = "div"
    POW = "pow"
    SQRT = "sqrt"
    RECIPROCAL = "reciprocal"
    NEG = "neg"
    EXP = "exp"
    TANH = "tanh"
    ERF = "erf"
    SIGMOID = "sigmoid"
    REDUCE_MEAN = "reduce_mean"
    REDUCE_SUM = "reduce_sum"
    REDUCE_MAX = "reduce_max"
    WHERE = "where"
    EXPAND = "expand"
    MAX = "max"
    MIN = "min"

    def __str__(self) -> str:
        return self.value


LLM_OPS = frozenset({
    OpKind.EMBEDDING, OpKind.LINEAR, OpKind.LMHEAD, OpKind.MATMUL, OpKind.RMSNORM,
    OpKind.LAYERNORM, OpKind.ROPE, OpKind.ATTENTION, OpKind.SOFTMAX, OpKind.SILU, OpKind.GELU,
    OpKind.RELU, OpKind.SOFTCAP, OpKind.ADD, OpKind.MUL,
})
STRUCTURAL_OPS = frozenset({
    OpKind.INPUT, OpKind.CONST, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.CONCAT, OpKind.SLICE,
    OpKind.GATHER, OpKind.CAST,
})
ELEMENTWISE_UNARY = frozenset({
    OpKind.SQRT, OpKind.RECIPROCAL, OpKind.NEG, OpKind.EXP, OpKind.TANH, OpKind.ERF,
    OpKind.SIGMOID, OpKind.RELU, OpKind.SILU, OpKind.GELU, OpKind.SOFTCAP,
})
ELEMENTWISE_BINARY = frozenset({
    OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV, OpKind.POW, OpKind.MAX, OpKind.MIN,
})


class InputRole(Enum):
    TOKENS = "tokens"
    POSITIONS = "positions"
    ATTENTION_MASK = "attention_mask"
    PAST_KEY = "past_key"
    PAST_VALUE = "past_value"
    OTHER = "other"


class LinearRole(Enum):
    """What a Linear computes; mixed-precision policies select layers by role."""
    UNKNOWN = "linear"
    QKV = "qkv_proj"
    Q = "q_proj"
    K = "k_proj"
    V = "v_proj"
    O = "o_proj"
    GATE = "gate_proj"
    UP = "up_proj"
    GATE_UP = "gate_up_proj"   # gate and up in one Linear, split by two slices (Phi-3)
    DOWN = "down_proj"
    FC1 = "fc1"
    FC2 = "fc2"
    LM_HEAD = "lm_head"


class RopeStyle(Enum):
    HALF = "half"  # rotate_half: pairs (i, i + d/2), as in LLaMA/Qwen2/Mistral


class GeluApprox(Enum):
    NONE = "none"  # 0.5 x (1 + erf(x / sqrt 2))
    TANH = "tanh"  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))


# ---------------------------------------------------------------------------------------------
# attributes: one frozen dataclass per op that has any


@dataclass(frozen=True)
class NoAttrs:
    pass


@dataclass(frozen=True, eq=False)
class ConstAttrs:
    data: TensorData
    weight: bool = False  # a model parameter (streamed from memory), not a folded constant


@dataclass(frozen=True)
class InputAttrs:
    role: InputRole = InputRole.OTHER
    layer: int | None = None  # for KV-cache inputs


@dataclass(frozen=True)
class LinearAttrs:
    role: LinearRole = LinearRole.UNKNOWN
    layer: int | None = None
    # A static activation scale: max |X| in Q.16, calibrated, one per input tensor (a policy's
    # `activations: static-per-tensor`, a what-if of the integer model that no program runs).
    # None: each token row by its own max, as the hardware does (docs/integer.md).
    act_amax: int | None = None


@dataclass(frozen=True)
class NormAttrs:
    eps: float
    layer: int | None = None


@dataclass(frozen=True)
class RopeAttrs:
    style: RopeStyle = RopeStyle.HALF


@dataclass(frozen=True)
class AttentionAttrs:
    num_heads: int
    num_kv_heads: int
    scale: float
    causal: bool
    layer: int | None = None
    softcap: float | None = None  # scores softcap * tanh(scale q.k) (Gemma2; `scale` holds the 1 / softcap)


@dataclass(frozen=True)
class SoftcapAttrs:
    cap: float


@dataclass(frozen=True)
class AxisAttrs:
    axis: int


@dataclass(frozen=True)
class GeluAttrs:
    approx: GeluApprox = GeluApprox.NONE


@dataclass(frozen=True)
class ReduceAttrs:
    axes: tuple[int, ...]
    keepdims: bool = True


@dataclass(frozen=True)
class ShapeAttrs:
    shape: tuple[int, ...]  # RESHAPE target (fully resolved) / EXPAND target


@dataclass(frozen=True)
class PermAttrs:
    perm: tuple[int, ...]


@dataclass(frozen=True)
class SliceAttrs:
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    axes: tuple[int, ...]
    steps: tuple[int, ...]


@dataclass(frozen=True)
class CastAttrs:
    to: DType


ATTRS: dict[OpKind, type] = {
    OpKind.INPUT: InputAttrs, OpKind.CONST: ConstAttrs, OpKind.LINEAR: LinearAttrs,
    OpKind.LMHEAD: LinearAttrs, OpKind.RMSNORM: NormAttrs, OpKind.LAYERNORM: NormAttrs,
    OpKind.ROPE: RopeAttrs, OpKind.ATTENTION: AttentionAttrs, OpKind.SOFTMAX: AxisAttrs,
    OpKind.GELU: GeluAttrs, OpKind.SOFTCAP: SoftcapAttrs, OpKind.RESHAPE: ShapeAttrs, OpKind.EXPAND: ShapeAttrs,
    OpKind.TRANSPOSE: PermAttrs, OpKind.CONCAT: AxisAttrs, OpKind.SLICE: SliceAttrs,
    OpKind.GATHER: AxisAttrs, OpKind.CAST: CastAttrs, OpKind.REDUCE_MEAN: ReduceAttrs,
    OpKind.REDUCE_SUM: ReduceAttrs, OpKind.REDUCE_MAX: ReduceAttrs,
}

# number of inputs: (min, max)
ARITY: dict[OpKind, tuple[int, int]] = {
    OpKind.INPUT: (0, 0), OpKind.CONST: (0, 0), OpKind.EMBEDDING: (2, 2),
    OpKind.LINEAR: (2, 3), OpKind.LMHEAD: (2, 3), OpKind.MATMUL: (2, 2), OpKind.RMSNORM: (2, 2),
    OpKind.LAYERNORM: (3, 3), OpKind.ROPE: (3, 3), OpKind.ATTENTION: (3, 4),
    OpKind.CONCAT: (1, 64), OpKind.GATHER: (2, 2), OpKind.WHERE: (3, 3),
}
for _k in ELEMENTWISE_UNARY | {OpKind.SOFTMAX, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.SLICE,
                               OpKind.CAST, OpKind.REDUCE_MEAN, OpKind.REDUCE_SUM,
                               OpKind.REDUCE_MAX, OpKind.EXPAND}:
    ARITY.setdefault(_k, (1, 1))
for _k in ELEMENTWISE_BINARY:
    ARITY.setdefault(_k, (2, 2))


def attrs_type(op: OpKind) -> type:
    return ATTRS.get(op, NoAttrs)


# ---------------------------------------------------------------------------------------------
# type inference


class TypeInferenceError(ValueError):
    pass


def _broadcast(*shapes) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise TypeInferenceError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise TypeInferenceError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def _common(a: TensorType, b: TensorType) -> DType:
    """The result element type of a binary op: equal types, or fp32 for mixed float widths
    (float activations are fp32 in the IR; an fp16/bf16 operand is a stored weight)."""
    if a.dtype == b.dtype:
        return a.dtype
    if a.dtype.is_float and b.dtype.is_float:
        return DType.FP32
    raise TypeInferenceError(f"operand dtypes differ: {a} and {b}")


def _float(t: TensorType, what: str):
    if not t.dtype.is_float:
        raise TypeInferenceError(f"{what} must be a float tensor, not {t}")


def infer_type(op: OpKind, attrs, ins: list[TensorType]) -> TensorType:
    """The result type of `op` on inputs of types `ins`; raises TypeInferenceError if ill-typed."""
    lo, hi = ARITY.get(op, (0, 0))
    if not lo <= len(ins) <= hi:
        raise TypeInferenceError(f"takes {lo}..{hi} inputs, got {len(ins)}")
    if op in ELEMENTWISE_UNARY:
        _float(ins[0], "input")
        return ins[0]
    if op in ELEMENTWISE_BINARY:
        a, b = ins
        return TensorType(_common(a, b), _broadcast(a.shape, b.shape))
    match op:
        case OpKind.INPUT:
            raise TypeInferenceError("graph inputs carry their own type")
        case OpKind.CONST:
            return TensorType(attrs.data.dtype, attrs.data.shape)
        case OpKind.EMBEDDING:
            table, ids = ins
            if table.rank != 2 or ids.dtype not in (DType.INT64, DType.INT32):
                raise TypeInferenceError(f"needs a 2-D table and integer ids, got {table} and {ids}")
            # Float activations are fp32 whatever the stored weight type (fp16 tables widen,
            # quantized int tables dequantize).
            return TensorType(DType.FP32, ids.shape + (table.shape[1],))
        case OpKind.LINEAR | OpKind.LMHEAD:
            x, w = ins[0], ins[1]
            if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
                raise TypeInferenceError(f"x {x} does not match weight {w} (weights are [N, K])")
            if len(ins) == 3 and ins[2].shape != (w.shape[0],):
                raise TypeInferenceError(f"bias {ins[2]} must be [{w.shape[0]}]")
            return TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))
        case OpKind.MATMUL:
            a, b = ins
            if a.rank < 2 or b.rank < 2 or a.shape[-1] != b.shape[-2]:
                raise TypeInferenceError(f"cannot multiply {a} by {b}")
            return TensorType(a.dtype, _broadcast(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]))
        case OpKind.RMSNORM | OpKind.LAYERNORM:
            # parameters are [D], or per head ([H, 1, D] for x [B, H, S, D]: StableLM's q/k_layernorm)
            x = ins[0]
            _float(x, "input")
            for p in ins[1:]:
                if p.shape != (x.shape[-1],) and not (
                        2 <= p.rank < x.rank and p.shape[-1] == x.shape[-1] and p.shape[0] == x.shape[x.rank - p.rank]
                        and all(d == 1 for d in p.shape[1:-1])):
                    raise TypeInferenceError(f"parameter {p} must be [{x.shape[-1]}] (or one row per head, "
                                             f"[H, 1.., {x.shape[-1]}]) for input {x}")
            return x
        case OpKind.ROPE:
            x, cos, sin = ins
            if cos.shape != sin.shape or _broadcast(x.shape, cos.shape) != x.shape:
                raise TypeInferenceError(f"cos {cos} / sin {sin} do not broadcast to {x}")
            if x.shape[-1] % 2:
                raise TypeInferenceError(f"rotary dim of {x} must be even")
            return x
        case OpKind.ATTENTION:
            q, k, v = ins[:3]
            if q.rank != 4 or k.rank != 4 or v.rank != 4:
                raise TypeInferenceError(f"q/k/v must be [B,H,S,D], got {q}, {k}, {v}")
            b, h, s, d = q.shape
            if (h, k.shape[1], v.shape[1]) != (attrs.num_heads, attrs.num_kv_heads, attrs.num_kv_heads) \
                    or h % attrs.num_kv_heads or k.shape != v.shape[:3] + (d,) or k.shape[0] != b:
                raise TypeInferenceError(
                    f"q {q}, k {k}, v {v} do not fit num_heads={attrs.num_heads}, "
                    f"num_kv_heads={attrs.num_kv_heads}")
            if len(ins) == 4 and _broadcast(ins[3].shape, (b, h, s, k.shape[2])) != (b, h, s, k.shape[2]):
                raise TypeInferenceError(f"mask {ins[3]} must broadcast to [{b},{h},{s},{k.shape[2]}]")
            return TensorType(q.dtype, (b, h, s, v.shape[3]))
        case OpKind.SOFTMAX:
            _norm_axis(attrs.axis, ins[0].rank)
            return ins[0]
        case OpKind.RESHAPE:
            x = ins[0]
            if int(np.prod(attrs.shape)) != x.numel:
                raise TypeInferenceError(f"cannot reshape {x} to {list(attrs.shape)}")
            return x.with_shape(attrs.shape)
        case OpKind.EXPAND:
            return ins[0].with_shape(_broadcast(ins[0].shape, attrs.shape))
        case OpKind.TRANSPOSE:
            x = ins[0]
            if sorted(attrs.perm) != list(range(x.rank)):
                raise TypeInferenceError(f"perm {list(attrs.perm)} is not a permutation of rank {x.rank}")
            return x.with_shape([x.shape[p] for p in attrs.perm])
        case OpKind.CONCAT:
            ax = _norm_axis(attrs.axis, ins[0].rank)
            for t in ins[1:]:
                if t.rank != ins[0].rank or t.dtype != ins[0].dtype or any(
                        t.shape[i] != ins[0].shape[i] for i in range(t.rank) if i != ax):
                    raise TypeInferenceError(f"cannot concat {ins[0]} and {t} on axis {attrs.axis}")
            shape = list(ins[0].shape)
            shape[ax] = sum(t.shape[ax] for t in ins)
            return ins[0].with_shape(shape)
        case OpKind.SLICE:
            x = ins[0]
            shape = list(x.shape)
            for st, en, ax, sp in zip(attrs.starts, attrs.ends, attrs.axes, attrs.steps):
                ax = _norm_axis(ax, x.rank)
                shape[ax] = len(range(*slice(st, en, sp).indices(x.shape[ax])))
            return x.with_shape(shape)
        case OpKind.GATHER:
            x, idx = ins
            ax = _norm_axis(attrs.axis, x.rank)
            if not idx.dtype.is_int:
                raise TypeInferenceError(f"indices must be integer, not {idx}")
            out = DType.FP32 if x.dtype.is_float else x.dtype  # rows of an fp16 table widen, as in embedding
            return TensorType(out, x.shape[:ax] + idx.shape + x.shape[ax + 1:])
        case OpKind.CAST:
            return TensorType(attrs.to, ins[0].shape)
        case OpKind.REDUCE_MEAN | OpKind.REDUCE_SUM | OpKind.REDUCE_MAX:
            x = ins[0]
            axes = {_norm_axis(a, x.rank) for a in attrs.axes}
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if attrs.keepdims \
                else [d for i, d in enumerate(x.shape) if i not in axes]
            return x.with_shape(shape)
        case OpKind.WHERE:
            c, a, b = ins
            if c.dtype != DType.BOOL:
                raise TypeInferenceError(f"where needs a bool condition, got {c}")
            return TensorType(_common(a, b), _broadcast(c.shape, a.shape, b.shape))
    raise TypeInferenceError(f"no type rule for {op}")
