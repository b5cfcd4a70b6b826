"""On-chip buffer allocation for lowering: first fit, coalescing, and the overwrites a reuse implies.

A block handed out again may hold bytes an earlier value still has readers of; `reused` records
which earlier keys a new block overwrites, so lowering orders the write after their readers.
"""
from __future__ import annotations

from .hbm_layout import LayoutError


class Allocator:
    """First-fit allocation in one on-chip buffer; freed blocks coalesce."""

    def __init__(self, name: str, base: int, size: int, align: int = 64):
        self.name, self.base, self.size, self.align = name, base, size, align
        self.free_list = [(base, size)]
        self.live: dict[object, tuple[int, int]] = {}
        self.peak = base
        self.history: list[tuple[int, int, object]] = []   # blocks ever handed out, latest owner
        self.reused: dict[object, list] = {}               # new key -> earlier keys it overwrites

    def alloc(self, key, nbytes: int, what: str) -> int:
        n = -(-max(nbytes, 1) // self.align) * self.align
        for i, (a, sz) in enumerate(self.free_list):
            if sz >= n:
                self.free_list[i] = (a + n, sz - n)
                self.live[key] = (a, n)
                self.peak = max(self.peak, a + n)
                # reusing bytes that an earlier value held: writing them must wait for its readers
                old = [h for h in self.history if h[0] < a + n and a < h[0] + h[1]]
                self.reused[key] = [k for _, _, k in old]
                keep = [h for h in self.history if h not in old]
                for a2, n2, k2 in old:  # the parts of an old block outside the new one keep their owner
                    if a2 < a:
                        keep.append((a2, a - a2, k2))
                    if a2 + n2 > a + n:
                        keep.append((a + n, a2 + n2 - a - n, k2))
                self.history = keep + [(a, n, key)]
                return a
        used = sum(s for _, s in self.live.values())
        largest = max((sz for _, sz in self.free_list), default=0)
        raise LayoutError(f"{self.name} buffer ({self.base + self.size} bytes) is too small: {what} needs {n} "
                          f"bytes, {used} are in use and the largest free block is {largest} ({n - largest} short)")

    def fits(self, nbytes: int) -> bool:
        """Whether `alloc` of `nbytes` would succeed now."""
        n = -(-max(nbytes, 1) // self.align) * self.align
        return any(sz >= n for _, sz in self.free_list)

    def free(self, key) -> None:
        a, n = self.live.pop(key)
        blocks = sorted(self.free_list + [(a, n)])
        merged = [blocks[0]]
        for a, n in blocks[1:]:
            if merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((a, n))
        self.free_list = merged
