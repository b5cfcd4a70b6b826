"""Quantized weights: integer codes, per-group fixed-point scales, optional N:M sparsity.

A `QuantizedWeight` is the `TensorData` of a Linear/LMHead/Embedding weight after the quantize
pass. Its float view (`numpy()`) is the exactly dequantized weight, so the float interpreter runs
the quantized model (weight effects only); the integer interpreter reads `codes`, `mant`, `shift`.

Scales are fixed point from the start: the scale of group g of output row n is
`mant[n, g] * 2^-shift[n]` with `mant` in [0, 2^15) and one shift per row (docs/integer.md).
Stored, that is 16 bits per group plus 8 bits per row; indices cost log2(M) bits per kept weight.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .dtypes import DType
from .tensor_data import TensorData


class NM(NamedTuple):
    """An N:M sparsity pattern: `n` weights kept in every `m` consecutive ones along K. A tuple,
    so `(2, 4)` and `NM(2, 4)` are equal; printed and parsed as "n:m"."""
    n: int
    m: int

    @classmethod
    def parse(cls, text: str) -> NM | None:
        """ "n:m" (spaces allowed) -> NM; anything else -> None (the caller names what it read)."""
        found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text) if isinstance(text, str) else None
        return cls(int(found[1]), int(found[2])) if found else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    def kept(self, k: int) -> int:
        """Weights kept of `k` along K: n per whole block, and of a last partial block of r < m
        weights min(n, r) (all of them when r <= n; docs/quantization.md)."""
        return k // self.m * self.n + min(self.n, k % self.m)

    @property
    def index_bits(self) -> int:
        """Bits of one kept weight's position in its block."""
        return int(math.ceil(math.log2(self.m)))


BITS = (2, 3, 4, 8)
GROUPS = (0, 32, 64, 128)             # 0: one group per output row (per-channel)
PATTERNS = (NM(2, 4), NM(1, 4), NM(4, 8), NM(2, 8))
MANT_BITS = 15                        # scale mantissas are unsigned 15-bit: [0, 2^15)
SCALE_BITS_PER_GROUP = 16             # storage of one mantissa
SHIFT_BITS_PER_ROW = 8


class QuantError(ValueError):
    pass


def check_format(weight_bits, pattern) -> tuple[int, int] | None:
    """A hardware part's weight format, checked: `weight_bits` one of `BITS`, `pattern` None (dense)
    or one of `PATTERNS` (a tuple or list); returns the pattern as a tuple. ValueError otherwise."""
    if not isinstance(weight_bits, int) or isinstance(weight_bits, bool) or weight_bits not in BITS:
        raise ValueError(f"weight_bits must be one of {', '.join(map(str, BITS))}, not {weight_bits!r}")
    if pattern is None:
        return None
    pattern = tuple(pattern) if isinstance(pattern, (tuple, list)) else pattern
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be None (dense) or one of {', '.join(map(str, PATTERNS))}, not {pattern!r}")
    return pattern


def kept(k: int, pattern: tuple[int, int] | None) -> int:
    """Weights kept of `k` along K under an N:M pattern (all of them when dense)."""
    return k if pattern is None else NM(*pattern).kept(k)


def block_counts(mask: np.ndarray, m: int) -> np.ndarray:
    """Kept weights [N, ceil(K / m)] of every m-block along K (a last partial block included)."""
    n, k = mask.shape
    padded = np.zeros((n, -(-k // m) * m), dtype=np.int64)
    padded[:, :k] = mask
    return padded.reshape(n, -1, m).sum(axis=-1)


def block_quota(k: int, n: int, m: int) -> np.ndarray:
    """What an n:m mask keeps of each m-block of a row of K: n, and min(n, r) of a last block of r."""
    quota = np.full(-(-k // m), n, dtype=np.int64)
    if k % m:
        quota[-1] = min(n, k % m)
    return quota


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 8
    group: int = 128                  # along K; 0 or a group larger than K means per output row
    sparsity: tuple[int, int] | None = None  # (n, m): n nonzeros in every m consecutive weights along K

    def __post_init__(self):
        if self.bits not in BITS:
            raise QuantError(f"bits must be one of {BITS}, not {self.bits!r}")
        if self.group not in GROUPS:
            raise QuantError(f"group must be one of {GROUPS} (0 = per output channel), not {self.group!r}")
        if self.sparsity is not None and tuple(self.sparsity) not in PATTERNS:
            raise QuantError(f"sparsity must be one of {[str(p) for p in PATTERNS]}, not {self.sparsity!r}")

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def group_size(self, k: int) -> int:
        """The group along K for a weight with K inputs: `group`, or K when per row (0 or larger
        than K). A group that does not divide K leaves a partial last group of K mod g columns,
        whose scale comes from those columns only (docs/integer.md)."""
        return k if self.group == 0 or self.group >= k else self.group

    def groups(self, k: int) -> int:
        """Scale groups per row of a weight with K inputs, a partial last group included."""
        return -(-k // self.group_size(k))

    def kept_fraction(self) -> float:
        return 1.0 if self.sparsity is None else self.sparsity[0] / self.sparsity[1]

    def index_bits(self) -> int:
        return 0 if self.sparsity is None else NM(*self.sparsity).index_bits

    def storage_bits(self, n: int, k: int) -> int:
        """Exact bits of an [n, k] weight: codes, indices, scale mantissas and row shifts."""
        return (n * kept(k, self.sparsity) * (self.bits + self.index_bits()) + n * self.groups(k) * SCALE_BITS_PER_GROUP
                + n * SHIFT_BITS_PER_ROW)

    @property
    def dtype(self) -> DType:
        return {2: DType.INT2, 3: DType.INT3, 4: DType.INT4, 8: DType.INT8}[self.bits]

    def __str__(self) -> str:
        g = "ch" if self.group == 0 else f"g{self.group}"
        s = f"-{NM(*self.sparsity)}" if self.sparsity else ""
        return f"int{self.bits}-{g}{s}"


def scale_multipliers(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive float scales [N, G] -> (mant int64 [N, G] in [0, 2^15), shift int64 [N]).

    shift[n] = 14 - floor(log2(max_g scales[n])), mant = round(scales * 2^shift) (float64, half away
    from zero), so the largest scale of each row keeps 15 significant bits.
    """
    s = np.asarray(scales, dtype=np.float64)
    smax = np.max(s, axis=1)
    smax = np.where(smax > 0, smax, 1.0)
    shift = (MANT_BITS - 1 - np.floor(np.log2(smax))).astype(np.int64)
    mant = np.floor(s * np.exp2(shift)[:, None] + 0.5).astype(np.int64)
    over = mant >= (1 << MANT_BITS)  # rounding up past 2^15: use one bit less for that row
    if over.any():
        rows = over.any(axis=1)
        shift[rows] -= 1
        mant[rows] = np.floor(s[rows] * np.exp2(shift[rows])[:, None] + 0.5).astype(np.int64)
    mant = np.where(s > 0, np.maximum(mant, 1), mant)  # a positive scale never becomes 0
    return mant, shift


class QuantizedWeight(TensorData):
    """An [N, K] weight as integer codes with per-group fixed-point scales (and an N:M mask)."""

    def __init__(self, scheme: QuantScheme, shape, codes=None, mant=None, shift=None, mask=None,
                 name: str = ""):
        self.scheme = scheme
        self.shape = tuple(int(d) for d in shape)
        if len(self.shape) != 2:
            raise QuantError(f"quantized weights are [N, K], not {list(self.shape)}")
        self.dtype = scheme.dtype
        self.group = scheme.group_size(self.shape[1])
        self.name = name
        self.codes, self.mant, self.shift, self.mask = codes, mant, shift, mask
        if codes is not None:
            n, k = self.shape
            if codes.shape != (n, k) or mant.shape != (n, scheme.groups(k)) or shift.shape != (n,):
                raise QuantError(f"{name}: codes {codes.shape}, mant {mant.shape}, shift {shift.shape} "
                                 f"do not fit [{n}, {k}] with group {self.group}")
            if np.abs(codes).max(initial=0) > scheme.qmax:
                raise QuantError(f"{name}: codes exceed the {scheme.bits}-bit range")
            if mant.size and (mant.min() < 0 or mant.max() >= 1 << MANT_BITS):
                raise QuantError(f"{name}: scale mantissas must be in [0, 2^{MANT_BITS})")
            if shift.size and (shift.min() < -128 or shift.max() > 127):
                raise QuantError(f"{name}: row shifts must fit int8, not [{shift.min()}, {shift.max()}]")
            if scheme.sparsity is not None:
                nn, m = scheme.sparsity
                if mask.shape != (n, k) or mask.dtype != np.bool_:
                    raise QuantError(f"{name}: mask must be bool [{n}, {k}], not {mask.dtype} {list(mask.shape)}")
                if (block_counts(mask, m) != block_quota(k, nn, m)).any():
                    raise QuantError(f"{name}: mask does not keep exactly {nn} of every {m} weights "
                                     f"(min({nn}, r) of a last block of r < {m})")
                if (codes[~mask] != 0).any():
                    raise QuantError(f"{name}: pruned weights must have code 0")

    @property
    def has_values(self) -> bool:
        return self.codes is not None

    def scales(self) -> np.ndarray:
        """The exact real scales [N, G] = mant * 2^-shift (float64)."""
        return self.mant.astype(np.float64) * np.exp2(-self.shift.astype(np.float64))[:, None]

    def numpy(self) -> np.ndarray:
        if self.codes is None:
            from .tensor_data import WeightDataMissing
            raise WeightDataMissing(f"quantized tensor {self.name or '<unnamed>'} has no values (config-only model)")
        s = np.repeat(self.scales(), self.group, axis=1)[:, :self.shape[1]]   # a partial last group
        return (self.codes.astype(np.float64) * s).astype(np.float32)

    def storage_bits(self) -> int:
        return self.scheme.storage_bits(*self.shape)
