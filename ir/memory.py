"""Off-chip memory as the program sees it: regions of striped rows and the AXI rules they obey.

The layout pass places every weight, cache and activation region (passes/hbm_layout.py); the DMA
RTL, its cycle model, the design's timing and the functional simulator read the same regions
and the same AXI limits from here.
"""
from __future__ import annotations

from dataclasses import dataclass

AXI_PAGE_BYTES = 4096     # an AXI4 burst never crosses a 4 KiB address boundary
AXI_MAX_BEATS = 256       # AXI4 INCR burst length limit


@dataclass(frozen=True)
class Region:
    """`rows` rows of `row_bytes` (all channels together) over channels [channel, channel + channels),
    row r at per-channel address `addr + r * pitch` (pitch = row_bytes / channels)."""
    addr: int
    channel: int
    channels: int
    row_bytes: int
    rows: int

    @property
    def pitch(self) -> int:
        return self.row_bytes // self.channels
