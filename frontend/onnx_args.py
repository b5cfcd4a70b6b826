"""Reading an ONNX node's attributes and axis arguments, for the op handlers."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.TENSOR:
            if v.data_location == onnx.TensorProto.EXTERNAL:  # (also refused by the loader)
                raise ValueError(f"attribute {a.name!r} keeps its tensor in external data")
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def norm_axis(ax: int, rank: int) -> int:
    """A possibly negative ONNX axis as an index in [0, rank)."""
    return ax + rank if ax < 0 else ax


def axes_arg(ctx, axes_input, axes_attr):
    """The axes of an op that takes them as an input (newer opsets) or an attribute (older)."""
    if axes_input is not None:
        return [int(a) for a in np.ravel(ctx.const(axes_input, "axes"))]
    return list(axes_attr) if axes_attr is not None else None
