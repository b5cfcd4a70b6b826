"""Constant tensor payloads, attached lazily.

A 7B model's weights are never all in memory at once: ONNX external data is memory-mapped,
embedded initializers are read on demand, and config-only models carry no data at all.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from .dtypes import DType


class WeightDataMissing(RuntimeError):
    """Raised when a computation needs the values of a tensor that has none (config-only models)."""


class TensorData:
    """A constant's shape/dtype, known without reading its values."""

    shape: tuple[int, ...]
    dtype: DType

    def numpy(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def has_values(self) -> bool:
        return True

    def digest(self) -> str:
        """Short content hash (reads the values)."""
        a = np.ascontiguousarray(self.numpy())
        return hashlib.sha256(a.tobytes()).hexdigest()[:12]


class ArrayData(TensorData):
    """Values held in memory (small constants, folded shape computations)."""

    def __init__(self, array: np.ndarray, dtype: DType | None = None):
        self._array = np.asarray(array)
        self.shape = tuple(self._array.shape)
        self.dtype = dtype or DType.from_numpy(self._array.dtype)

    def numpy(self) -> np.ndarray:
        return self._array


class LazyData(TensorData):
    """Values produced on demand by `loader` (e.g. a memory map); never cached here."""

    def __init__(self, shape, dtype: DType, loader: Callable[[], np.ndarray]):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._loader = loader

    def numpy(self) -> np.ndarray:
        a = self._loader()
        if tuple(a.shape) != self.shape:
            raise ValueError(f"lazy tensor loaded shape {a.shape}, expected {self.shape}")
        return a


class TransposedData(TensorData):
    """A lazy 2-D transpose view (ONNX stores MatMul weights as [K, N]; the IR keeps [N, K])."""

    def __init__(self, base: TensorData):
        if len(base.shape) != 2:
            raise ValueError(f"TransposedData needs a 2-D tensor, not shape {base.shape}")
        self.base = base
        self.shape = (base.shape[1], base.shape[0])
        self.dtype = base.dtype

    @property
    def has_values(self) -> bool:
        return self.base.has_values

    def numpy(self) -> np.ndarray:
        return self.base.numpy().T


class ScaledData(TensorData):
    """A lazy view of `base` times a scalar (a scale folded into a weight: Gemma's sqrt(hidden)
    embedding, Gemma2's 1 / soft-cap LM head); computed in the base's dtype."""

    def __init__(self, base: TensorData, factor: float):
        self.base, self.factor = base, float(factor)
        self.shape, self.dtype = base.shape, base.dtype

    @property
    def has_values(self) -> bool:
        return self.base.has_values

    def numpy(self) -> np.ndarray:
        a = self.base.numpy()
        return a * np.asarray(self.factor, a.dtype)


class AbsentData(TensorData):
    """Shape and dtype only: a weight of a config-only model."""

    def __init__(self, shape, dtype: DType, name: str = ""):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.name = name

    @property
    def has_values(self) -> bool:
        return False

    def numpy(self) -> np.ndarray:
        raise WeightDataMissing(
            f"tensor {self.name or '<unnamed>'} {self.dtype}{list(self.shape)} has no values "
            "(config-only model): load the ONNX model to compute with it")
