"""The cycle model of the accelerator RTL as built: what `Accelerator` takes to run a program.

`simulator/timing.py` times the pipelined design the Target describes; this model times the RTL
that `backend_hw` emits today, from the same program, so that the two can be told apart and the
RTL's cycle count is predicted without simulating it (tests/test_hw_system.py holds it within 2%
of Verilator on whole compiled programs). It is event-driven per instruction, in program order,
with the controller's rules as recurrences (controller.py, fetch.py):

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
  `sfu_cycles`, each derived from its unit's FSMs (long DMA transfers extrapolated from shorter
  copies: `dma_cycles_fast`).

Not modelled: token counters that saturate (the compiler keeps them at most `target.controller.token_counter_max`),
AXI contention between the load and store DMAs on one channel, and data-dependent scalar cycles
(the unit models assume non-zero rows).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from llmfab.ir.isa import QUEUE_OF, Opcode, Program, Queue, SysFunc, op_name, resolve_length
from llmfab.ir.target import Target
from llmfab.simulator.timing import Timing, macs

from .accelerator import DEFAULT_FORMATS
from .dma_cycles import dma_cycles
from .fetch import fetch_cycles
from .matrix_cycles import matrix_cycles
from .sfu_cycles import sfu_cycles

FIRST_FETCH = 10      # start -> the first instruction offered: `running` rises, 8 reads, their data


PAGE = 4096           # AXI bursts never cross a 4 KiB page: long rows are periodic in it
LONG_ROW = 3 * PAGE   # a single-row slice longer than this is timed on shorter copies
MANY_ROWS = 64        # an instruction with more rows than this is timed on shorter copies


def dma_cycles_fast(target: Target, i) -> int:
    """`dma_cycles`, which steps the DMA cycle by cycle, with long transfers extrapolated from
    shorter copies of the instruction: a single row longer than `LONG_ROW` bytes from copies
    whole pages shorter (every further page costs what the last one did: the page positions and
    the buffer alignment repeat), more than `MANY_ROWS` rows from copies of 32 and 64 rows (every
    further row costs the average of rows 33..64; exact but for the rare page crossing of a
    short row, a few cycles). Short transfers (every compiled sim-small program) stay exact."""
    rows, rb = i["rows"], i["row_bytes"]
    if rows == 1 and rb > LONG_ROW:
        pages = (rb - 2 * PAGE) // PAGE
        a = dma_cycles(target, i.evolve(row_bytes=rb - pages * PAGE))
        b = dma_cycles(target, i.evolve(row_bytes=rb - (pages - 1) * PAGE))
        return a + pages * (b - a)
    if rows > MANY_ROWS and not i["indirect"]:
        a = dma_cycles(target, i.evolve(rows=32))
        b = dma_cycles(target, i.evolve(rows=64))
        return a + round((rows - 32) * (b - a) / 32)
    return dma_cycles(target, i)


def unit_cycles(target: Target, formats=DEFAULT_FORMATS) -> Callable:
    """The cycles of the unit that runs each (length-resolved) instruction, accept to `done`, in
    an accelerator built for the weight `formats` (the activation window is the widest one's)."""
    act_bytes = max(4, *(target.engine.chain_len * (p[1] // p[0] if p else 1) for _, p, _ in formats))

    def cycles(i) -> int:
        if i.op in (Opcode.LD, Opcode.ST):
            return dma_cycles_fast(target, i)
        if i.op in (Opcode.MV, Opcode.MM, Opcode.ATTN):
            return matrix_cycles(target, i, act_bytes=act_bytes)
        return sfu_cycles(target, i)
    return cycles


class RtlCycleModel:
    """`run(program, length)` -> `Timing` (seconds at the Target's clock, spans, busy time per unit)
    of the accelerator RTL built for the weight `formats` (`accelerator.formats_of(programs)`).
    `cycles`: the per-instruction unit cost (default `unit_cycles`)."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, cycles: Callable | None = None):
        self.target = target
        self.depth = target.controller.queue_depth
        self.fetch = fetch_cycles(target)
        self.cycles = cycles or unit_cycles(target, formats)

    def run(self, program: Program, length: int) -> Timing:
        stats = Timing()
        hz = self.target.clock_mhz * 1e6
        idle = {q: 0 for q in Queue}                   # first cycle each unit can take an instruction
        issued = {q: deque() for q in Queue}           # issue cycles of the last `depth` per queue
        tokens: dict[tuple[Queue, Queue], deque] = {}  # (src, dst) -> cycles the tokens become usable
        offered = FIRST_FETCH                          # the fetch unit offers the next instruction
        free = 0                                       # the dispatch register is free from this cycle
        last_done = 0
        halt = None
        for index, inst in enumerate(program.instructions):
            i = resolve_length(inst, length)
            stats.instructions += 1
            accept = max(offered, free)
            offered = accept + self.fetch
            if i.op is Opcode.SYS:
                if i["func"] is SysFunc.NOP:
                    free = accept + 1
                    continue
                barrier = max(accept + 1, last_done + 1)
                free = barrier + 1
                if i["func"] is SysFunc.END:
                    halt = barrier + 1
                    break
                if i["func"] is SysFunc.SET_LEN:
                    length = i["imm"]
                continue
            q = QUEUE_OF[i.op]
            past = issued[q]
            leave = accept + 1 if len(past) < self.depth else max(accept + 1, past[0] + 1)
            free = leave                               # the next is accepted as this one leaves
            start = max(leave + 1, idle[q])
            for s in Queue:
                if i.wait & s:
                    fifo = tokens.get((s, q))
                    if not fifo:
                        raise RuntimeError(f"program {program.name!r}: instruction {index} waits on {s.name} "
                                           f"with no earlier release")
                    start = max(start, fifo.popleft())
            end = start + self.cycles(i)
            past.append(start)
            if len(past) > self.depth:
                past.popleft()
            idle[q] = end + 1
            last_done = max(last_done, end)
            for d in Queue:
                if i.release & d:
                    tokens.setdefault((q, d), deque()).append(end + 1)
            key = op_name(i)
            stats.busy[int(q)] += (end - start) / hz
            stats.per_op[key] = stats.per_op.get(key, 0.0) + (end - start) / hz
            stats.spans.append((index, int(q), key, start / hz, end / hz))
            stats.macs += macs(i)
            if i.op in (Opcode.LD, Opcode.ST):
                stats.hbm_bytes += i["rows"] * i["row_bytes"] * i["channels"]
        if halt is None:
            halt = last_done + 2
        stats.seconds = halt / hz
        return stats
