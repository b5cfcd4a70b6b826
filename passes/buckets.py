"""Length buckets: which program serves which length (the length register LEN).

A prompt runs in chunks of `prefill_step` tokens, one prefill program per chunk: the chunk that
ends at LEN (a multiple of the step; the last chunk of a prompt is padded) attends over the LEN
keys before its end. A decode program runs one token at context LEN (position + 1). Both attend in
KV tiles of `decode_step` keys, unrolled (the ISA has no branches), so one program serves every
LEN with the same number of KV tiles: that is a bucket, and the length register (`len_reg`
fields) sets the positions and the last tile's extent at run time. No program grows with the
prompt: a prefill program is one chunk, whatever the max length.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from llmfab.ir.isa import prompt_chunks


class Stage(Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class Bucket:
    stage: Stage
    lo: int          # smallest LEN served (a prefill chunk's end, or a decode context)
    hi: int          # largest
    rows: int = 1    # rows the program runs: the chunk (prefill) or 1 (decode)
    kv_step: int = 1  # keys per KV tile

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def name(self) -> str:
        return f"{self.stage.value}_{self.lo:05d}_{self.hi:05d}"

    @property
    def kv_tiles(self) -> int:
        """KV tiles every LEN of the bucket reads (the last one's extent from LEN)."""
        return -(-self.hi // self.kv_step)


def chunk_ends(length: int, prefill_step: int) -> list[int]:
    """LEN of each prefill chunk of a prompt of `length` tokens (`isa.prompt_chunks`)."""
    return [end for _, end in prompt_chunks(length, prefill_step)]


def buckets(max_len: int, prefill_step: int = 128, decode_step: int = 128) -> list[Bucket]:
    """Prefill buckets: the chunk ends LEN of each KV tile count (lo and hi are multiples of
    `prefill_step`; hi may pass max_len by the last chunk's padding); decode buckets: the contexts
    of each KV tile count."""
    if max_len < 1 or prefill_step < 1 or decode_step < 1:
        raise ValueError(f"max_len and bucket steps must be positive, not {max_len}, {prefill_step}, {decode_step}")
    groups: dict[int, list[int]] = {}
    for end in chunk_ends(max_len, prefill_step):
        groups.setdefault(-(-end // decode_step), []).append(end)
    out = [Bucket(Stage.PREFILL, ends[0], ends[-1], prefill_step, decode_step) for _, ends in sorted(groups.items())]
    for lo in range(1, max_len + 1, decode_step):
        out.append(Bucket(Stage.DECODE, lo, min(lo + decode_step - 1, max_len), 1, decode_step))
    return out
