"""llmfab.ir: dtypes, tensor types, the op set, Graph, verifier, printer and reference interpreter."""
from .dtypes import DType
from .graph import Graph, Node
from .interpret import InterpreterError, run
from .ops import (LLM_OPS, STRUCTURAL_OPS, AttentionAttrs, AxisAttrs, CastAttrs, ConstAttrs,
                  GeluApprox, GeluAttrs, InputAttrs, InputRole, LinearAttrs, LinearRole, NoAttrs,
                  NormAttrs, OpKind, PermAttrs, ReduceAttrs, RopeAttrs, RopeStyle, ShapeAttrs,
                  SliceAttrs, SoftcapAttrs, infer_type)
from .printer import print_graph
from .tensor_data import (AbsentData, ArrayData, LazyData, ScaledData, TensorData, TransposedData,
                          WeightDataMissing)
from .types import TensorType
from .verify import IRVerifyError, verify

__all__ = [
    "AbsentData",
    "ArrayData",
    "AttentionAttrs",
    "AxisAttrs",
    "CastAttrs",
    "ConstAttrs",
    "DType",
    "GeluApprox",
    "GeluAttrs",
    "Graph",
    "IRVerifyError",
    "InputAttrs",
    "InputRole",
    "InterpreterError",
    "LLM_OPS",
    "LazyData",
    "LinearAttrs",
    "LinearRole",
    "NoAttrs",
    "Node",
    "NormAttrs",
    "OpKind",
    "PermAttrs",
    "ReduceAttrs",
    "RopeAttrs",
    "RopeStyle",
    "STRUCTURAL_OPS",
    "ShapeAttrs",
    "SliceAttrs",
    "SoftcapAttrs",
    "TensorData",
    "TensorType",
    "ScaledData",
    "TransposedData",
    "WeightDataMissing",
    "infer_type",
    "print_graph",
    "run",
    "verify",
]
