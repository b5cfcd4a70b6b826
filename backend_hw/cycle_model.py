"""The cycle model of the accelerator RTL as built: what `Accelerator` takes to run a program.

`simulator/design.py` prices the pipelined design the Target describes; `RtlUnits` prices the RTL
that `backend_hw` emits today, from the same program and through the same walk
(`simulator/schedule.py`, which `llmfab simulate --model rtl` wires to these units), so that the
two can be told apart and the RTL's cycle count is predicted without simulating it
(tests/hw/system/test_hw_system.py holds it within 2% of Verilator on whole programs). The walk's
latencies are the controller's (control/controller.py, control/fetch.py), one cycle per register (`step`):

- fetch: the first instruction is offered `FIRST_FETCH` cycles after `start`, each next one
  `fetch_cycles` after the previous was accepted into the dispatch register;
- dispatch: an instruction is accepted when the register is free (the same cycle the one before
  leaves it); a queued one leaves when its queue's FIFO (`queue_depth`) has room — the FIFO
  frees a slot the cycle after an issue — and can issue the cycle after it left;
- issue: in order per queue, once the unit is idle (the cycle after its previous `done`: every
  unit takes one instruction at a time) and a token is there from every queue in `wait` (usable
  the cycle after the releasing instruction's `done`);
- SYS: a barrier executes the cycle after the queues drained (the last `done`); the next
  instruction is accepted the cycle after; END halts the cycle after it executes;
- a unit's cycles for an instruction, accept to `done`: `dma_cycles`, `matrix_cycles`,
  `sfu_cycles`, each derived from its unit's FSMs, looked up by the instruction's `timing_shape`
  (a model's layers repeat theirs at other addresses: a LLaMA2-7B decode step's 11k instructions
  are some 90 shapes), long transfers timed from shorter copies (`dma_cycles_fast`, `periodic`).

Not modelled: token counters that saturate (the compiler keeps them within
`target.controller.token_counter_max`), AXI contention between the load and store DMAs on one
channel, and data-dependent scalar cycles
(the unit models assume non-zero rows).
"""
from __future__ import annotations

import math
from typing import Callable

from llmfab.ir.isa import BufferId, Opcode, Queue
from llmfab.ir.memory import AXI_PAGE_BYTES
from llmfab.ir.target import Target

from .accelerator import DEFAULT_FORMATS
from .control.fetch import fetch_cycles
from .dma.cycles import DmaIssue, dma_cycles
from .dma.unit import dma_lanes, merges_rows
from .matrix.attn import attn_lanes
from .matrix.cycles import matrix_cycles
from .sfu.cycles import sfu_cycles

FIRST_FETCH = 10      # start -> the first instruction offered: `running` rises, 8 reads, their data
LONG_ROW = 3 * AXI_PAGE_BYTES   # a single-row slice longer than this is timed on shorter copies
MANY_ROWS = 64        # an instruction with more rows than this is timed on shorter copies
WARM = 4              # slices played before their steady state is assumed (`periodic`)


def periodic(f: Callable[[int], int], n: int, period: int, warm: int = WARM) -> int:
    """f(n) from f at two smaller arguments one `period` apart: exact when, from `warm` on, every
    `period` further steps cost the same (a transfer's slices repeat their alignments)."""
    if n <= warm + 2 * period:
        return f(n)
    m = warm + (n - warm) % period + period
    a, b = f(m - period), f(m)
    return b + (n - m) // period * (b - a)


# The buffer addresses each unit's cycles depend on, and then only through their alignment to a
# buffer word (the matrix unit's readers and writes) or a DMA group; the weight streams start on words.
BUFFER_ADDRESSES = {Opcode.LD: ("buf_addr", "ids_addr"), Opcode.ST: ("buf_addr", "ids_addr"),
                    Opcode.MV: ("scale_addr", "bias_addr", "a_addr", "o_addr", "wbuf_addr", "idx_addr"),
                    Opcode.MM: ("scale_addr", "bias_addr", "a_addr", "o_addr", "wbuf_addr", "idx_addr"),
                    Opcode.ATTN: ("src_addr", "src2_addr", "dst_addr")}


def timing_shape(target: Target, i):
    """The instruction as its cycles see it, so that a model's layers, which repeat their
    instructions at other addresses, are timed once: buffer addresses (`BUFFER_ADDRESSES`) modulo
    the widest read group (`_align`); for LD/ST only an HBM address's position in the AXI page
    (dma/cycles.py; the channels are alike but for channel 0, whose port also reads an
    indirect instruction's row ids), and for a slice longer than `LONG_ROW` bytes only its
    beat alignment (a burst more or less at a page: a few cycles in thousands, the tests bound it)."""
    new = _shape_fields(target, i, _align(target))
    return i if all(i[k] == v for k, v in new.items()) else i.evolve(**new)


def _align(target: Target) -> int:
    """The widest read group, the DMA's or ATTN's K / V readers': addresses repeat their timing modulo it."""
    return max(target.word_bytes[b] * n for lanes in (dma_lanes(target), attn_lanes(target)) for b, n in lanes.items())


def _shape_fields(target: Target, i, align: int) -> dict:
    new = {name: i[name] % align for name in BUFFER_ADDRESSES.get(i.op, ())}
    if i.op in (Opcode.LD, Opcode.ST):
        mod = target.memory.beat_bytes if _slice_bytes(i) > LONG_ROW else AXI_PAGE_BYTES
        new["hbm_addr"] = i["hbm_addr"] % mod
        if not i["indirect"]:            # the row ids are read on channel 0's port: its data side waits
            new["channel"] = 0
    return new


def _slice_bytes(i) -> int:
    """The bytes of the DMA's longest slice of an LD/ST: a row's, or every row's when merged."""
    return i["rows"] * i["row_bytes"] if merges_rows(i) else i["row_bytes"]


def _one_slice(target: Target, i, n: int) -> int:
    """`dma_cycles` of `i` as one slice of `n` bytes (a single row, or rows merged), longer than
    `LONG_ROW` timed from copies whole pages shorter (every further page costs what the last one
    did: the page positions and the buffer alignment repeat)."""
    def one(b):
        return dma_cycles(target, i.evolve(rows=1, row_bytes=b, hbm_stride=b, buf_stride=b))
    if n <= LONG_ROW:
        return one(n)
    pages = (n - 2 * AXI_PAGE_BYTES) // AXI_PAGE_BYTES
    a, b = one(n - pages * AXI_PAGE_BYTES), one(n - (pages - 1) * AXI_PAGE_BYTES)
    return a + pages * (b - a)


def dma_cycles_fast(target: Target, i) -> int:
    """`dma_cycles`, which steps the DMA cycle by cycle, on `timing_shape(i)`, with long transfers
    extrapolated from shorter copies of the instruction:
    - many channel slices from copies with fewer channels, their number one period of the
      slices' buffer alignment apart (`periodic`: the channels move their slices side by side,
      each the same but for that alignment and the generator handing them out a cycle apart);
    - a single row, or rows the generator merges into one slice (`merges_rows`), as one slice
      (`_one_slice`: longer than `LONG_ROW` bytes from copies whole pages shorter);
    - more than `MANY_ROWS` rows from copies of 32 and 64 rows (every further row costs the
      average of rows 33..64; exact but for the rare page crossing of a short row, a few cycles).
    Short transfers (every compiled sim-small program) stay exact."""
    i = timing_shape(target, i)
    rows, rb, nch = i["rows"], i["row_bytes"], i["channels"]
    bid = BufferId(int(i["buf"]))
    group = target.word_bytes[bid] * dma_lanes(target)[bid]
    period = group // math.gcd(rb % group, group)   # slice k at b + k * rb
    if nch > WARM + 2 * period:
        return periodic(lambda c: dma_cycles_fast(target, i.evolve(channels=c)), nch, period)
    if (rows == 1 and rb > LONG_ROW) or (rows > 1 and merges_rows(i)):
        return _one_slice(target, i, rows * rb)
    if rows > MANY_ROWS and not i["indirect"] and not merges_rows(i.evolve(rows=32)):
        # (copies that the generator would merge while `i` is too long to merge: stepped exactly)
        a = dma_cycles(target, i.evolve(rows=32))
        b = dma_cycles(target, i.evolve(rows=64))
        return a + round((rows - 32) * (b - a) / 32)
    return dma_cycles(target, i)


def unit_cycles(target: Target, formats=DEFAULT_FORMATS) -> Callable:
    """The cycles of the unit that runs each (length-resolved) instruction, accept to `done`, in
    an accelerator built for the weight `formats` (the activation window is the widest one's)."""
    act_bytes = max(4, *(target.engine.chain_len * (p[1] // p[0] if p else 1) for _, p, _ in formats))
    known: dict[tuple, int] = {}
    align = _align(target)

    def cost(i) -> int:
        if i.op in (Opcode.LD, Opcode.ST):
            return dma_cycles_fast(target, i)
        if i.op in (Opcode.MV, Opcode.MM, Opcode.ATTN):
            return matrix_cycles(target, i, act_bytes=act_bytes)
        return sfu_cycles(target, i)

    def cycles(i) -> int:
        new = _shape_fields(target, i, align)          # each shape timed once
        key = (i.op, *(new.get(name, v) for name, v in i.fields.items()))
        if key not in known:
            known[key] = cost(timing_shape(target, i))
        return known[key]
    return cycles


class RtlUnits:
    """`Units` (simulator/schedule.py) of the accelerator RTL built for the weight `formats`
    (`accelerator.formats_of(programs)`), in kernel cycles. `cycles`: the per-instruction unit
    cost (default `unit_cycles`)."""
    name = "rtl"
    fetch_first = FIRST_FETCH
    step = 1              # a register between dispatch, FIFO, issue and the token counters

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, cycles: Callable | None = None):
        self.target = target
        self.clock_hz = target.clock_mhz * 1e6
        self.queue_depth = target.controller.queue_depth
        self.fetch_interval = fetch_cycles(target)
        self.cycles = cycles or unit_cycles(target, formats)
        self.reset()

    def reset(self) -> None:
        self.idle = dict.fromkeys(Queue, 0)     # first cycle each unit can take an instruction
        self.dma = {Queue.LOAD: DmaIssue(), Queue.STORE: DmaIssue()}
        self.busy_end: dict[int, int] = {}

    def serve(self, queue: int, i, ready: int) -> tuple[int, int]:
        if queue in self.dma:                   # the DMAs: single slices on distinct channels overlap
            return self.dma[queue].serve(i, ready, self.cycles(i))
        begin = max(ready, self.idle[queue])    # every other unit takes one instruction at a time
        end = begin + self.cycles(i)
        self.idle[queue] = end + 1
        return begin, end

    def busy(self, queue: int, begin: int, end: int) -> int:
        """The DMAs' instructions overlap: only the part of [begin, end) after the last counted end."""
        if queue not in self.dma:
            return end - begin
        counted = max(begin, self.busy_end.get(queue, begin))
        self.busy_end[queue] = max(end, self.busy_end.get(queue, end))
        return max(0, end - counted)
