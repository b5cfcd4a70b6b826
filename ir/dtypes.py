"""Element types of the IR.

Integer widths below 8 (int2/int3/int4) exist for quantized weights; their numpy storage type is
int8 (values are kept in range, packing into bytes is the quantization pass's job).
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class DType(Enum):
    INT2 = ("int2", 2, True)
    INT3 = ("int3", 3, True)
    INT4 = ("int4", 4, True)
    INT8 = ("int8", 8, True)
    INT32 = ("int32", 32, True)
    INT64 = ("int64", 64, True)
    BOOL = ("bool", 8, True)
    FP16 = ("fp16", 16, False)
    BF16 = ("bf16", 16, False)
    FP32 = ("fp32", 32, False)

    def __init__(self, short: str, bits: int, is_int: bool):
        self.short = short
        self.bits = bits
        self.is_int = is_int

    @property
    def is_float(self) -> bool:
        return not self.is_int

    @property
    def storage_bytes(self) -> float:
        """Bytes per element as stored in a weight image (sub-byte types pack densely)."""
        return self.bits / 8

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype the reference interpreter computes this type in."""
        return np.dtype(_NUMPY[self])

    @classmethod
    def from_short(cls, short: str) -> "DType":
        for d in cls:
            if d.short == short:
                return d
        raise ValueError(f"unknown dtype {short!r}; expected one of {[d.short for d in cls]}")

    @classmethod
    def from_numpy(cls, dt) -> "DType":
        dt = np.dtype(dt)
        for d, n in _NUMPY.items():
            if d in (DType.INT2, DType.INT3, DType.INT4, DType.BF16):
                continue
            if np.dtype(n) == dt:
                return d
        raise ValueError(f"numpy dtype {dt} has no IR dtype")

    def __str__(self) -> str:
        return self.short


_NUMPY = {
    DType.INT2: "int8", DType.INT3: "int8", DType.INT4: "int8", DType.INT8: "int8",
    DType.INT32: "int32", DType.INT64: "int64", DType.BOOL: "bool",
    # bf16 has no numpy type: the interpreter computes it in fp32.
    DType.FP16: "float16", DType.BF16: "float32", DType.FP32: "float32",
}
