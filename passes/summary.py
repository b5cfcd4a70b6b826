"""Model summary analysis: `summarize(graph) -> GraphSummary` (layers, parameters, op counts, bytes).

Reads only shapes and dtypes, never weight values, so it works on config-only graphs whose
weights are `AbsentData`. A weight used by several nodes (tied embedding / LM head) is one CONST
node and counts once; two CONST nodes that view the same stored tensor (a `TransposedData` of
another weight's data, or a `ScaledData`: a scale folded into a tied table) also count once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from llmfab.ir import Graph, OpKind, ScaledData, TensorData, TransposedData


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: its name, element type, shape and (for inputs) role."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str | None = None


@dataclass(frozen=True)
class GraphSummary:
    name: str
    family: str | None
    layers: int
    parameters: int
    ops: dict[str, int]                     # op kind value -> count, excluding input/const
    weight_bytes: int                       # as stored (sub-byte types packed)
    weight_bytes_by_dtype: dict[str, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    seq_len: int | None
    past_len: int | None
    batch: int | None

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict (lists for shapes and tensor lists)."""
        d = asdict(self)
        d["inputs"] = [dict(t, shape=list(t["shape"])) for t in d["inputs"]]
        d["outputs"] = [dict(t, shape=list(t["shape"])) for t in d["outputs"]]
        return d


def _storage(data: TensorData) -> TensorData:
    """The tensor a view is taken of, so two views of one weight count once."""
    while isinstance(data, (TransposedData, ScaledData)):
        data = data.base
    return data


def summarize(graph: Graph) -> GraphSummary:
    ops: dict[str, int] = {}
    seen: set[int] = set()
    params = 0
    by_dtype: dict[str, int] = {}
    for node in graph.nodes():
        if node.op is OpKind.CONST:
            if not node.attrs.weight:
                continue
            base = _storage(node.data)
            if id(base) in seen:
                continue
            seen.add(id(base))
            numel = math.prod(base.shape)
            params += numel
            by_dtype[base.dtype.short] = by_dtype.get(base.dtype.short, 0) + math.ceil(numel * base.dtype.bits / 8)
        elif node.op is not OpKind.INPUT:
            ops[node.op.value] = ops.get(node.op.value, 0) + 1
    meta = graph.meta
    layers = meta.get("num_layers")
    if not isinstance(layers, int):
        layers = ops.get(OpKind.ATTENTION.value, 0)
    inputs = tuple(TensorInfo(n.name, n.type.dtype.short, n.type.shape, n.attrs.role.value)
                   for n in graph.inputs())
    outputs = tuple(TensorInfo(out, graph.node(n).type.dtype.short, graph.node(n).type.shape)
                    for out, n in graph.outputs)
    return GraphSummary(
        name=graph.name, family=meta.get("family"), layers=layers, parameters=params,
        ops=dict(sorted(ops.items())), weight_bytes=sum(by_dtype.values()),
        weight_bytes_by_dtype=dict(sorted(by_dtype.items())), inputs=inputs, outputs=outputs,
        seq_len=meta.get("seq_len"), past_len=meta.get("past_len"), batch=meta.get("batch"))


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def format_summary(s: GraphSummary) -> str:
    """A short human-readable table of the summary (decimal units: 1 GB = 1e9 bytes)."""
    rows = [("model", s.name + (f" ({s.family})" if s.family else "")),
            ("layers", str(s.layers)),
            ("parameters", f"{_count(s.parameters)} ({s.parameters:,})"),
            ("weights", _bytes(s.weight_bytes))]
    rows += [(f"  {dt}", _bytes(b)) for dt, b in s.weight_bytes_by_dtype.items()]
    if s.seq_len is not None:
        rows.append(("shape", f"batch={s.batch} seq_len={s.seq_len} past_len={s.past_len}"))
    rows.append(("ops", str(sum(s.ops.values()))))
    rows += [(f"  {op}", str(n)) for op, n in s.ops.items()]
    for title, tensors in (("inputs", s.inputs), ("outputs", s.outputs)):
        shown = tensors if len(tensors) <= 4 else tensors[:3]
        rows.append((title, str(len(tensors))))
        rows += [(f"  {t.name}", f"{t.dtype}[{','.join(map(str, t.shape))}]") for t in shown]
        if len(shown) < len(tensors):
            rows.append(("  ...", f"{len(tensors) - len(shown)} more"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"


__all__ = ["GraphSummary", "TensorInfo", "summarize", "format_summary"]
