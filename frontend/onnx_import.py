"""ONNX -> IR import: bind symbolic dims, translate each node with its handler, fold constants.

Everything that depends only on shapes or on inputs llmfab fixes at import (attention mask = all
ones, position ids = past_len .. past_len+seq-1) folds to constants here, so the shape and mask
subgraphs of real exporters vanish and only the model's dataflow reaches the fusion passes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from llmfab.ir import (ArrayData, ConstAttrs, DType, Graph, InputAttrs, InputRole, Node, OpKind,
                       TensorType, TransposedData)
from llmfab.ir.host import ResourceError, require
from llmfab.ir.interpret import evaluate
from llmfab.ir.ops import TypeInferenceError, attrs_type, infer_type

from .onnx_loader import ModelError, initializer_data, ir_dtype, load_onnx

DEFAULT_SEQ_LEN = 16
MIN_OPSET, MAX_OPSET = 14, 20

# Scalar inputs some exports keep from the model's signature, bound to the model's own default.
SCALAR_DEFAULTS = {"logits_to_keep": 0, "num_logits_to_keep": 0}  # 0 = logits for every position

_PAST_RE = re.compile(r"past[._a-z]*?\.?(\d+)\.?(key|value)$|past_(key|value)[._]?(\d+)$")


@dataclass(frozen=True)
class ImportOptions:
    seq_len: int | None = None  # None: the model's fixed length, else DEFAULT_SEQ_LEN
    past_len: int = 0           # tokens already in the KV cache (with-cache exports)
    batch: int = 1


def input_role(name: str) -> tuple[InputRole, int | None]:
    low = name.lower()
    if low in ("input_ids", "tokens", "input"):
        return InputRole.TOKENS, None
    if low == "attention_mask":
        return InputRole.ATTENTION_MASK, None
    if low in ("position_ids", "cache_position"):
        return InputRole.POSITIONS, None
    m = _PAST_RE.search(low)
    if m:
        layer = int(m.group(1) or m.group(4))
        kind = m.group(2) or m.group(3)
        return (InputRole.PAST_KEY if kind == "key" else InputRole.PAST_VALUE), layer
    return InputRole.OTHER, None


class ImportContext:
    """What a handler sees: typed access to its inputs and `emit`, which folds constants."""

    def __init__(self, graph: Graph, path: Path, opset: int):
        self.graph = graph
        self.path = path
        self.opset = opset
        self.onnx_node: onnx.NodeProto | None = None

    # -- errors and names -------------------------------------------------------------------
    def where(self) -> str:
        n = self.onnx_node
        return f"{self.path}: node {n.name or n.output[0]!r} ({n.op_type}, opset {self.opset})"

    def error(self, msg: str) -> ModelError:
        return ModelError(f"{self.where()}: {msg}")

    def _fresh(self, suffix: str) -> str:
        base = self.onnx_node.output[0] if self.onnx_node is not None and self.onnx_node.output else "v"
        return self.graph.unique_name(base if suffix == "" else f"{base}/{suffix}")

    # -- inputs -------------------------------------------------------------------------------
    def type(self, v: str) -> TensorType:
        return self.graph.node(v).type

    def value(self, v: str | None):
        """The numpy value of `v` if it is known at import, else None."""
        if v is None:
            return None
        return self.graph.const_value(v)

    def const(self, v: str | None, what: str) -> np.ndarray:
        """The value of an input that must be known at import (shapes, axes, masks)."""
        val = self.value(v)
        if val is None:
            raise self.error(f"input {what} ({v!r}) must be known at import, but it depends on the "
                             "model's activations; llmfab folds such values only when they come "
                             "from shapes, masks or positions")
        return val

    def is_weight(self, v: str) -> bool:
        n = self.graph.node(v)
        return n.op is OpKind.CONST and n.attrs.weight

    # -- outputs ------------------------------------------------------------------------------
    def constant(self, array, suffix: str = "const") -> str:
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        return self.graph.add_const(self._fresh(suffix), ArrayData(array)).name

    def emit(self, op: OpKind, inputs, attrs=None, suffix: str = "") -> str:
        """Add `op`; folds it to a constant when every input is known (weights stay lazy)."""
        inputs = [i for i in inputs]
        g = self.graph
        nodes = [g.node(i) for i in inputs]
        all_const = all(n.op is OpKind.CONST and n.data.has_values for n in nodes)
        any_weight = any(n.op is OpKind.CONST and n.attrs.weight for n in nodes)
        keep_lazy = op is OpKind.GATHER and any_weight  # becomes an Embedding, not a copy
        if all_const and not keep_lazy:
            if op is OpKind.TRANSPOSE and any_weight and len(nodes[0].type.shape) == 2:
                d = nodes[0].data
                data = d.base if isinstance(d, TransposedData) else TransposedData(d)
                return g.add(_const_node(self._fresh(suffix), data, True)).name
            attrs = attrs if attrs is not None else attrs_type(op)()
            try:  # the folded value's size is declared by its type: refuse before allocating it
                out = infer_type(op, attrs, [n.type for n in nodes])
            except TypeInferenceError as e:
                raise self.error(f"cannot type {op} on ({', '.join(str(n.type) for n in nodes)}): {e}") from None
            # numpy's broadcasting and int64 intermediates: up to 8 bytes an element, twice
            require(16 * out.numel, f"{self.where()}: folding {op} to a constant {out}")
            val = evaluate(op, attrs, [n.data.numpy() for n in nodes])
            name = self._fresh(suffix)
            # A re-laid-out parameter is still a parameter; anything computed from one is not.
            weight = any_weight and op in (OpKind.TRANSPOSE, OpKind.RESHAPE, OpKind.CAST) and len(nodes) == 1
            return g.add(_const_node(name, ArrayData(_canon(val)), weight)).name
        try:
            return g.add_op(self._fresh(suffix), op, inputs, attrs,
                            origin=self.onnx_node.name if self.onnx_node is not None else "").name
        except TypeInferenceError as e:
            types = ", ".join(f"{i}: {n.type}" for i, n in zip(inputs, nodes))
            raise self.error(f"cannot type {op} on ({types}): {e}") from None


def _canon(val: np.ndarray) -> np.ndarray:
    val = np.asarray(val)
    if val.dtype == np.float64:
        return val.astype(np.float32)
    if val.dtype == np.int32 or val.dtype == np.uint8:
        return val.astype(np.int64)
    return val if val.flags.c_contiguous else val.copy()  # (ascontiguousarray would turn 0-d into 1-d)


def _const_node(name, data, weight):
    return Node(name, OpKind.CONST, (), ConstAttrs(data, weight), TensorType(data.dtype, data.shape))


def _bind_inputs(ctx: ImportContext, proto: onnx.ModelProto, opts: ImportOptions,
                 initializer_names: set[str]) -> dict[str, str]:
    """Create IR inputs (tokens, KV cache) and constants (mask, positions); returns name map."""
    graph_inputs = [i for i in proto.graph.input if i.name not in initializer_names]
    # The model's own fixed sequence length, if input_ids has one.
    seq_len = opts.seq_len
    for vi in graph_inputs:
        if input_role(vi.name)[0] is InputRole.TOKENS:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                fixed = dims[1].dim_value
                if seq_len is not None and seq_len != fixed:
                    raise ModelError(f"{ctx.path}: input {vi.name!r} has a fixed sequence length "
                                     f"{fixed}; a sequence length of {seq_len} cannot be bound")
                seq_len = fixed
    seq_len = seq_len or DEFAULT_SEQ_LEN
    if seq_len < 1 or opts.past_len < 0 or opts.batch < 1:
        raise ModelError(f"{ctx.path}: sequence length, past length and batch must be positive "
                         f"(got seq {seq_len}, past {opts.past_len}, batch {opts.batch})")
    B, S, P = opts.batch, seq_len, opts.past_len
    # the mask and positions are bound as arrays; the exporters' mask subgraphs then fold to [S, P+S]
    require(16 * B * (P + S), f"{ctx.path}: binding batch {B}, sequence {S} and past {P}")
    names: dict[str, str] = {}
    roles = [input_role(vi.name) for vi in graph_inputs]
    has_cache = any(r in (InputRole.PAST_KEY, InputRole.PAST_VALUE) for r, _ in roles)
    if P and not has_cache:
        raise ModelError(f"{ctx.path}: past length {P} given, but the model has no past key/value inputs")
    for vi, (role, layer) in zip(graph_inputs, roles):
        tt = vi.type.tensor_type
        where = f"{ctx.path}: graph input {vi.name!r}"
        dtype = ir_dtype(tt.elem_type, where)
        dims = list(tt.shape.dim)
        want = {InputRole.TOKENS: [B, S], InputRole.ATTENTION_MASK: [B, P + S],
                InputRole.POSITIONS: [B, S] if len(dims) == 2 else [S]}.get(role)
        if role in (InputRole.PAST_KEY, InputRole.PAST_VALUE):
            if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:4:2]):
                raise ModelError(f"{where}: a past key/value input must be [batch, kv_heads, past, head_dim] "
                                 f"with static kv_heads and head_dim")
            want = [B, dims[1].dim_value, P, dims[3].dim_value]
        if want is None and vi.name in SCALAR_DEFAULTS and not dims:
            names[vi.name] = ctx.graph.add_const(vi.name, ArrayData(np.array(SCALAR_DEFAULTS[vi.name], dtype.numpy))).name
            continue
        if want is None:
            raise ModelError(f"{where}: unknown model input; llmfab binds input_ids, attention_mask, "
                             "position_ids, cache_position and past key/value inputs")
        if len(dims) != len(want):
            raise ModelError(f"{where}: rank {len(dims)}, expected {len(want)}")
        for d, w in zip(dims, want):
            if d.HasField("dim_value") and d.dim_value != w:
                raise ModelError(f"{where}: fixed dimension {d.dim_value} cannot be bound to {w} "
                                 f"(batch {B}, sequence {S}, past {P})")
        if role is InputRole.ATTENTION_MASK:
            names[vi.name] = ctx.graph.add_const(vi.name, ArrayData(np.ones(want, dtype.numpy))).name
        elif role is InputRole.POSITIONS:
            pos = np.broadcast_to(np.arange(P, P + S, dtype=dtype.numpy), want).copy()
            names[vi.name] = ctx.graph.add_const(vi.name, ArrayData(pos)).name
        else:
            if dtype.is_float:  # fp16 KV caches: float activations are fp32 in the IR
                dtype = DType.FP32
            names[vi.name] = ctx.graph.add_input(vi.name, TensorType(dtype, tuple(want)),
                                                 InputAttrs(role, layer)).name
    ctx.graph.meta.update(batch=B, seq_len=S, past_len=P)
    return names


def import_onnx(path, options: ImportOptions = ImportOptions()) -> Graph:
    """Read an ONNX decoder model into an IR graph of primitive and structural ops (unfused)."""
    from .onnx_args import attributes
    from .onnx_ops import HANDLERS, SUPPORTED_OPS

    loaded = load_onnx(path)
    proto, opset = loaded.proto, loaded.opset
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"{loaded.path}: opset {opset} is not supported (supported: "
                         f"{MIN_OPSET}..{MAX_OPSET}); re-export with opset_version in that range")
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    graph = Graph(Path(path).stem)
    graph.meta.update(source="onnx", path=str(path), opset=opset)
    ctx = ImportContext(graph, loaded.path, opset)
    init_names = {t.name for t in proto.graph.initializer}
    names = _bind_inputs(ctx, proto, options, init_names)
    for t in proto.graph.initializer:
        data = initializer_data(loaded.path, t)
        numel = math.prod(data.shape)
        # Float tensors are parameters (streamed from memory, counted, quantized later); small
        # integer tensors are shape constants and are read now so they can fold.
        weight = data.dtype.is_float and numel > 1
        small = numel <= 64 or not data.dtype.is_float
        node = _const_node(graph.unique_name(t.name), ArrayData(_canon(data.numpy())) if small else data, weight)
        names[t.name] = graph.add(node).name
    for n in proto.graph.node:
        ctx.onnx_node = n
        if n.domain not in ("", "ai.onnx"):
            raise ctx.error(f"operator domain {n.domain!r} is not supported; supported ops (default "
                            f"domain): {', '.join(SUPPORTED_OPS)}")
        handler = HANDLERS.get(n.op_type)
        if handler is None:
            raise ctx.error(f"operator {n.op_type} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}")
        ins = []
        for i in n.input:
            if i == "":
                ins.append(None)
            elif i not in names:
                raise ctx.error(f"input {i!r} is not produced by any earlier node, initializer or graph input")
            else:
                ins.append(names[i])
        try:
            outs = handler(ctx, *ins, **attributes(n))
        except (ModelError, ResourceError):
            raise
        except (TypeError, ValueError, IndexError) as e:  # wrong arity/attribute, bad shapes
            shapes = ", ".join("-" if i is None else str(ctx.type(i)) for i in ins)
            raise ctx.error(f"cannot import this {n.op_type} on inputs ({shapes}): {e}") from None
        outs = (outs,) if isinstance(outs, str) else tuple(outs)
        real_outs = [o for o in n.output]
        for k, o in enumerate(real_outs):
            if o == "":
                continue
            if k >= len(outs) or outs[k] is None:
                raise ctx.error(f"output {k} ({o!r}) is not supported")
            names[o] = outs[k]
    ctx.onnx_node = None
    for o in proto.graph.output:
        if o.name not in names:
            raise ModelError(f"{loaded.path}: graph output {o.name!r} is never produced")
        graph.add_output(o.name, names[o.name])
    graph.eliminate_dead_code()
    return graph
