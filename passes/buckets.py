"""Length buckets: which program serves which prompt length or decode context.

A prefill program runs a prompt of L tokens in row tiles of `prefill_step` tokens; a decode
program attends over a context of c keys (c = position + 1) in KV tiles of `decode_step` keys.
The instruction stream is unrolled over tiles (the ISA has no branches), so one program serves
every length with the same number of tiles: that is a bucket. Inside it the length register
(`SYS SET_LEN`, `len_reg` fields) sets the last tile's extent at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stage(Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class Bucket:
    stage: Stage
    lo: int          # smallest length served (prompt tokens, or decode context keys)
    hi: int          # largest

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def tiles(self) -> int:
        return -(-self.hi // self.step)

    @property
    def name(self) -> str:
        return f"{self.stage.value}_{self.lo:05d}_{self.hi:05d}"

    step: int = 1    # tile size in tokens (prefill) or keys (decode)


def buckets(max_len: int, prefill_step: int = 128, decode_step: int = 128) -> list[Bucket]:
    if max_len < 1 or prefill_step < 1 or decode_step < 1:
        raise ValueError(f"max_len and bucket steps must be positive, not {max_len}, {prefill_step}, {decode_step}")
    out = []
    for stage, step in ((Stage.PREFILL, prefill_step), (Stage.DECODE, decode_step)):
        for lo in range(1, max_len + 1, step):
            out.append(Bucket(stage, lo, min(lo + step - 1, max_len), step))
    return out
