"""The one scheduler: a program's walk over fetch, queues, dependency tokens and barriers.

Both timing models share this walk and differ only in their `Units` (the SCALE-Sim split of
control from cost): `simulator/design.py` prices the pipelined design the Target describes, in
seconds; `backend_hw`'s `RtlUnits` prices the accelerator RTL as built, in kernel cycles. The walk
is the controller's rules (backend_hw/control), with the design's units taking none of its
latencies (`step = 0`, no fetch, unbounded queues):

- fetch: the first instruction is offered `fetch_first` after start, each next one
  `fetch_interval` after the previous was accepted into the dispatch register;
- dispatch: an instruction is accepted when the register is free; a queued one leaves it when its
  queue's FIFO (`queue_depth`, None: unbounded) has room, a slot freeing `step` after an issue;
- issue: in order per queue, `step` after it left dispatch, once a token is there from every queue
  in its `wait` (usable `step` after the releasing instruction ended) and the unit takes it
  (`Units.serve`: the unit knows when it is free);
- SYNC, SET_LEN and END are barriers: they execute `step` after every queue has drained; the
  next instruction is accepted `step` later; END halts `step` after it executes. NOP is not.

Times are in the units' own unit: seconds when `clock_hz` is None, else cycles at `clock_hz`
(converted to seconds per span, so each model's sums keep their own rounding).
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from llmfab.ir.isa import QUEUE_OF, Opcode, Program, Queue, SysFunc, is_barrier, op_name, resolve_length
from llmfab.ir.quant import kept
from llmfab.ir.target import Target

QUEUES = tuple(int(q) for q in Queue)      # mask bits: LOAD, MATRIX, SFU, STORE
UNIT_NAMES = {int(q): q.name.lower() for q in Queue}


@dataclass
class Timing:
    seconds: float = 0.0
    busy: dict[int, float] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0.0))
    hbm_bytes: int = 0
    macs: int = 0
    instructions: int = 0
    per_op: dict[str, float] = field(default_factory=dict)   # seconds of unit time per opcode/function
    # per executed instruction: (index in the program, queue bit, opcode or function, begin s, end s)
    spans: list[tuple[int, int, str, float, float]] = field(default_factory=list)

    def sections(self, starts: list[tuple[int, str]]) -> dict[str, float]:
        """Seconds each section (a layer, from the manifest's `sections`) adds to the run: from the
        moment everything before it has finished to the moment it has; summed per label."""
        firsts = [s for s, _ in starts]
        out: dict[str, float] = {}
        finish = [0.0] * len(starts)
        for idx, _, _, _, end in self.spans:
            k = bisect.bisect_right(firsts, idx) - 1
            if k >= 0:
                finish[k] = max(finish[k], end)
        done = 0.0
        for (_, label), f in zip(starts, finish):
            f = max(f, done)
            out[label] = out.get(label, 0.0) + f - done
            done = f
        return out

    def hbm_utilization(self, target: Target) -> float:
        peak = target.memory.peak_gbps * 1e9
        return self.hbm_bytes / (self.seconds * peak) if self.seconds else 0.0

    def dsp_utilization(self, target: Target) -> float:
        per_s = target.engine.n_chains * target.engine.chain_len * target.clock_mhz * 1e6
        return self.macs / (self.seconds * per_s) if self.seconds else 0.0


def macs(i) -> int:
    """Multiply-accumulates of a length-resolved MV, MM or ATTN (N:M: only the kept weights)."""
    if i.op in (Opcode.MV, Opcode.MM):
        return i["n"] * kept(i["k"], i["sparsity"].pattern) * (i["m"] if i.op is Opcode.MM else 1)
    if i.op is Opcode.ATTN:
        return i["rows"] * i["cols"] * i["depth"]
    return 0


def hbm_bytes(i) -> int:
    """Off-chip bytes a length-resolved LD or ST moves (every channel it stripes over)."""
    return i["rows"] * i["row_bytes"] * i["channels"] if i.op in (Opcode.LD, Opcode.ST) else 0


class Units(Protocol):
    """What a timing model provides: the cost of each instruction on its unit, and the
    controller's latencies (all in seconds if `clock_hz` is None, else in cycles)."""
    name: str
    clock_hz: float | None
    fetch_first: float          # start -> the first instruction offered
    fetch_interval: float       # accepted -> the next instruction offered
    queue_depth: int | None     # instructions a queue's FIFO holds; None: unbounded
    step: float                 # the controller's register latency (one cycle, or 0)

    def reset(self) -> None:
        """Forget every unit's state: a new program run starts."""

    def serve(self, queue: int, inst, ready: float) -> tuple[float, float]:
        """(begin, end) of length-resolved `inst` on `queue`'s unit, which may begin at `ready`."""

    def busy(self, queue: int, begin: float, end: float) -> float:
        """Of [begin, end), the time `queue`'s unit counts as busy."""


def schedule(program: Program, length: int, units: Units) -> Timing:
    """Time one execution of `program` with LEN = `length` on `units`."""
    stats = Timing()
    units.reset()
    step, depth, hz = units.step, units.queue_depth, units.clock_hz
    sec = float if hz is None else (lambda t: t / hz)
    issued = {q: deque() for q in QUEUES}          # issue times of the last `depth` per queue
    tokens: dict[tuple[int, int], list] = {}       # (src, dst) -> times the tokens become usable
    offered, free, last_done, halt = units.fetch_first, 0, 0, None
    for index, inst in enumerate(program.instructions):
        i = resolve_length(inst, length)
        stats.instructions += 1
        accept = max(offered, free)
        offered = accept + units.fetch_interval
        if i.op is Opcode.SYS:
            if not is_barrier(i):
                free = accept + step
                continue
            barrier = max(accept + step, last_done + step)
            free = barrier + step
            if i["func"] is SysFunc.END:
                halt = barrier + step
                break
            if i["func"] is SysFunc.SET_LEN:
                length = i["imm"]
            continue
        q = int(QUEUE_OF[i.op])
        past = issued[q]
        leave = accept + step if depth is None or len(past) < depth else max(accept + step, past[0] + step)
        free = leave                               # the next is accepted as this one leaves
        ready = leave + step
        for src in QUEUES:
            if i.wait & src:
                fifo = tokens.get((src, q))
                if not fifo:
                    raise RuntimeError(f"program {program.name!r}: instruction {index} waits on "
                                       f"{UNIT_NAMES[src]} with no earlier release")
                ready = max(ready, heapq.heappop(fifo))
        begin, end = units.serve(q, i, ready)
        if depth is not None:
            past.append(begin)
            if len(past) > depth:
                past.popleft()
        last_done = max(last_done, end)
        for dst in QUEUES:
            if i.release & dst:
                heapq.heappush(tokens.setdefault((q, dst), []), end + step)
        key = op_name(i)
        stats.busy[q] += sec(units.busy(q, begin, end))
        stats.per_op[key] = stats.per_op.get(key, 0.0) + sec(end - begin)
        stats.spans.append((index, q, key, sec(begin), sec(end)))
        stats.macs += macs(i)
        stats.hbm_bytes += hbm_bytes(i)
    stats.seconds = sec(last_done + 2 * step if halt is None else halt)
    return stats
