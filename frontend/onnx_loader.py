"""Safe loading of an ONNX file: checker, size limits, external data confined to the model's folder.

Initializer values are never copied eagerly: raw data is viewed in place and external data is
memory-mapped, so importing a multi-GB model costs little memory until values are used.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from llmfab.ir import DType, LazyData, TensorData

MAX_MODEL_BYTES = 2 * 1024**3 - 1          # protobuf's own limit for the .onnx file itself
MAX_EXTERNAL_BYTES = 512 * 1024**3         # all external data together
MAX_NODES = 2_000_000


class ModelError(ValueError):
    """A model file llmfab cannot read; the message names the file and the offending part."""


ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: (np.float32, DType.FP32),
    onnx.TensorProto.FLOAT16: (np.float16, DType.FP16),
    onnx.TensorProto.DOUBLE: (np.float64, DType.FP32),
    onnx.TensorProto.INT64: (np.int64, DType.INT64),
    onnx.TensorProto.INT32: (np.int32, DType.INT32),
    onnx.TensorProto.INT8: (np.int8, DType.INT8),
    onnx.TensorProto.UINT8: (np.uint8, DType.INT32),
    onnx.TensorProto.BOOL: (np.bool_, DType.BOOL),
}


def ir_dtype(onnx_type: int, where: str) -> DType:
    try:
        return ONNX_DTYPES[onnx_type][1]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in onnx.TensorProto.DataType.values() else onnx_type
        raise ModelError(f"{where}: element type {name} is not supported "
                         f"(supported: float, float16, double, int64, int32, int8, uint8, bool)") from None


@dataclass
class LoadedModel:
    path: Path
    proto: onnx.ModelProto
    opset: int


def load_onnx(path: str | os.PathLike) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {size} bytes is over the 2 GB protobuf limit; "
                         "save the weights as external data next to the model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if len(proto.graph.node) > MAX_NODES:
        raise ModelError(f"{path}: {len(proto.graph.node)} nodes is over the limit of {MAX_NODES}")
    for node in proto.graph.node:  # tensors inside node attributes must be embedded
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(f"{path}: node {node.name or node.op_type!r} attribute {a.name!r} keeps its "
                                 "tensor in external data, which llmfab reads only for initializers")
    total = 0
    for t in proto.graph.initializer:  # confine external data before anything opens it
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += _external_info(path, t)[2]
    if total > MAX_EXTERNAL_BYTES:
        raise ModelError(f"{path}: external data totals {total} bytes, over the limit of {MAX_EXTERNAL_BYTES}")
    try:
        # With external data the checker needs the path to find the data files next to the model.
        onnx.checker.check_model(str(path) if total else proto)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as e:   # a name that is not UTF-8: the C++ checker's
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ModelError(f"{path}: the ONNX checker rejects the model: {first}") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{path}: model imports no default-domain opset")
    return LoadedModel(path, proto, opset)


def _external_info(model_path: Path, t: onnx.TensorProto) -> tuple[Path, int, int]:
    """(file, offset, length) of an external initializer, checked to stay in the model's folder."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    folder = model_path.resolve().parent
    target = (folder / loc).resolve()
    if not loc or os.path.isabs(loc) or not target.is_relative_to(folder):
        raise ModelError(f"{model_path}: initializer {t.name!r} points to external data {loc!r} "
                         f"outside the model's folder {folder}")
    if not target.is_file():
        raise ModelError(f"{model_path}: initializer {t.name!r}: external data file {loc!r} is missing")
    np_dtype = ONNX_DTYPES.get(t.data_type, (None,))[0]
    ir_dtype(t.data_type, f"{model_path}: initializer {t.name!r}")
    expected = numel(model_path, t) * np.dtype(np_dtype).itemsize
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", expected))
    except ValueError:
        raise ModelError(f"{model_path}: initializer {t.name!r}: external data offset/length must be "
                         f"integers, not {info.get('offset')!r}/{info.get('length')!r}") from None
    if length != expected or offset < 0 or offset + length > target.stat().st_size:
        raise ModelError(f"{model_path}: initializer {t.name!r}: external data range "
                         f"[{offset}, {offset + length}) does not fit {loc!r} or shape {list(t.dims)}")
    return target, offset, length


MAX_TENSOR_ELEMENTS = 1 << 40


def numel(model_path: Path, t: onnx.TensorProto) -> int:
    """Element count of an initializer, in Python ints (no int64 wrap-around), checked."""
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{model_path}: initializer {t.name!r} has a negative dimension {list(t.dims)}")
    n = math.prod(int(d) for d in t.dims)
    if n > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{model_path}: initializer {t.name!r} has {n} elements, over the limit of "
                         f"{MAX_TENSOR_ELEMENTS}")
    return n


def initializer_data(model_path: Path, t: onnx.TensorProto) -> TensorData:
    """A lazily read view of an initializer's values."""
    where = f"{model_path}: initializer {t.name!r}"
    dtype = ir_dtype(t.data_type, where)
    np_dtype = np.dtype(ONNX_DTYPES[t.data_type][0])
    shape = tuple(int(d) for d in t.dims)
    count = numel(model_path, t)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        file, offset, _ = _external_info(model_path, t)

        def load_external():
            if count == 0:
                return np.zeros(shape, np_dtype)
            return _fix(np.memmap(file, dtype=np_dtype, mode="r", offset=offset, shape=shape))
        return LazyData(shape, dtype, load_external)
    if t.raw_data:
        if len(t.raw_data) != count * np_dtype.itemsize:
            raise ModelError(f"{where}: raw data has {len(t.raw_data)} bytes, expected "
                             f"{count * np_dtype.itemsize} for shape {list(shape)}")
        return LazyData(shape, dtype, lambda: _fix(np.frombuffer(t.raw_data, np_dtype).reshape(shape)))
    return LazyData(shape, dtype, lambda: _fix(numpy_helper.to_array(t)))


def _fix(a: np.ndarray) -> np.ndarray:
    """Map storage types without an IR twin onto the computing type (double -> float32, uint8 -> int32)."""
    if a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.int32)
    return a
