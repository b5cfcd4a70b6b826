"""Timing model of a program on a Target: four in-order queues, dependency tokens, an HBM model.

Compute and memory stay separate (as in SCALE-Sim): each instruction says what it demands — bytes
over which channels (LD/ST), multiply-accumulates on the matrix engine (MM/MV), elements through
the special-function unit (MISC) — and the units serve the demands. The controller dispatches in
program order into the queues; an instruction issues when its queue is free and a token is
waiting from every queue in its `wait` mask, and releases its tokens when it completes. SYNC,
SET_LEN and END wait for every queue to drain.

Units (all numbers from the Target):
- memory: each pseudo-channel serves one transfer at a time at min(channel, port) x efficiency
  GB/s; a transfer striped over C channels starts when all are free; each AXI burst costs a set-up
  (`memory.burst_setup_ns`) besides its bytes, and a burst covers at most 4 KiB of contiguous bytes (AXI4: no
  burst crosses a 4 KiB boundary), so rows that lie back to back in a channel (stride = row bytes,
  as the KV cache and weight tiles do) share bursts while strided rows pay one each; the LD and ST queues issue in order but keep transfers on
  different channels in flight (outstanding AXI transactions), completing (and releasing their
  tokens) when their bytes have moved;
- matrix engine (MV): `n_chains` rows at a time, each chain consuming `chain_len` kept weights
  per cycle (N:M sparsity: only the kept weights take cycles); MM: the same per token row, with
  `operand_packing` rows sharing a multiplier; plus the chain's pipeline depth; ATTN: ATTN_QK as MV
  passes with the keys as weight rows (each chain reduces one key over the head dimension), ATTN_PV
  with the head dimension as rows (each chain reduces one output element over the keys), once per
  query row;
- special-function unit: `lanes` elements per cycle plus its latency.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

from llmfab.ir.isa import QUEUE_OF as ISA_QUEUE_OF
from llmfab.ir.isa import MiscFunc, Opcode, Program, Queue, SysFunc, op_name, resolve_length
from llmfab.ir.quant import kept
from llmfab.ir.target import Target

LOAD, MATRIX, SFU, STORE = (int(q) for q in (Queue.LOAD, Queue.MATRIX, Queue.SFU, Queue.STORE))  # mask bits
QUEUE_OF = {op: int(q) for op, q in ISA_QUEUE_OF.items() if q is not None}
AXI_BURST_BYTES = 4096                           # AXI4 bursts never cross a 4 KiB boundary


@dataclass
class Timing:
    seconds: float = 0.0
    busy: dict[int, float] = field(default_factory=lambda: {LOAD: 0.0, MATRIX: 0.0, SFU: 0.0, STORE: 0.0})
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


class TimingModel:
    def __init__(self, target: Target):
        self.t = target
        self.cycle = 1.0 / (target.clock_mhz * 1e6)
        self.channel_bps = target.memory.effective_channel_gbps * 1e9

    # -- what each instruction demands --------------------------------------------------------
    def duration(self, i, channel_free: list[float], start: float, stats: Timing) -> tuple[float, float]:
        """(begin, end) of instruction `i` that may issue at `start`."""
        e, t = self.t.engine, self.t
        if i.op in (Opcode.LD, Opcode.ST):
            chans = range(i["channel"], i["channel"] + i["channels"])
            begin = max([start] + [channel_free[c] for c in chans])
            per_channel = i["rows"] * i["row_bytes"]
            if i["hbm_stride"] == i["row_bytes"] and not i["indirect"]:      # one contiguous run per channel
                bursts = -(-per_channel // AXI_BURST_BYTES)
            else:
                bursts = i["rows"] * -(-i["row_bytes"] // AXI_BURST_BYTES)
            end = begin + per_channel / self.channel_bps + bursts * self.t.memory.burst_setup_ns * 1e-9
            for c in chans:
                channel_free[c] = end
            stats.hbm_bytes += per_channel * i["channels"]
            return begin, end
        if i.op in (Opcode.MV, Opcode.MM):
            pat = i["sparsity"].pattern
            n_kept = kept(i["k"], pat)
            rows = i["m"] if i.op is Opcode.MM else 1
            passes = -(-i["n"] // e.n_chains) * -(-n_kept // e.chain_len)
            tokens = -(-rows // (e.operand_packing if i.op is Opcode.MM else 1))
            stats.macs += macs(i)
            return start, start + (passes * tokens + e.pipeline_depth) * self.cycle
        f = i["func"]
        if i.op is Opcode.ATTN:
            n, k = (i["cols"], i["depth"]) if f is MiscFunc.ATTN_QK else (i["depth"], i["cols"])
            passes = -(-n // e.n_chains) * -(-k // e.chain_len) * i["rows"]
            stats.macs += macs(i)
            return start, start + (passes + e.pipeline_depth) * self.cycle
        elems = i["rows"] * max(i["cols"], 1)
        if f is MiscFunc.COPY:
            elems = i["rows"] * -(-i["cols"] // 4)
        return start, start + (-(-elems // t.sfu.lanes) + t.sfu.latency_cycles) * self.cycle

    def run(self, program: Program, length: int) -> Timing:
        """Time one execution of `program` with LEN = `length`."""
        stats = Timing()
        queue_free = {q: 0.0 for q in (LOAD, MATRIX, SFU, STORE)}
        channel_free = [0.0] * self.t.memory.channels
        tokens: dict[tuple[int, int], list[float]] = {}   # (src, dst) -> release times, FIFO
        done = 0.0                                         # when everything issued so far has finished
        dma_end = {LOAD: 0.0, STORE: 0.0}
        barrier = 0.0
        for index, inst in enumerate(program.instructions):
            i = resolve_length(inst, length)
            stats.instructions += 1
            if i.op is Opcode.SYS:
                barrier = done
                if i["func"] is SysFunc.END:
                    break
                if i["func"] is SysFunc.SET_LEN:
                    length = i["imm"]
                continue
            q = QUEUE_OF[i.op]
            start = max(queue_free[q], barrier)
            for src in (LOAD, MATRIX, SFU, STORE):
                if i.wait & src:
                    fifo = tokens.get((src, q))
                    if not fifo:
                        raise RuntimeError(f"program {program.name!r}: a wait on {src} from {q} has no earlier release")
                    start = max(start, heapq.heappop(fifo))
            begin, end = self.duration(i, channel_free, start, stats)
            if q in (LOAD, STORE):
                # The DMA issues in order but keeps transfers on different channels in flight
                # (AXI outstanding transactions): the next one may start once this one's
                # descriptor is issued; the channels themselves serialise what shares them.
                queue_free[q] = begin + self.t.memory.dma_issue_cycles * self.cycle
                stats.busy[q] += max(0.0, end - max(begin, dma_end[q]))   # time any transfer is active
                dma_end[q] = max(dma_end[q], end)
            else:
                queue_free[q] = end
                stats.busy[q] += end - begin
            key = op_name(i)
            stats.per_op[key] = stats.per_op.get(key, 0.0) + end - begin
            stats.spans.append((index, q, key, begin, end))
            done = max(done, end)
            for dst in (LOAD, MATRIX, SFU, STORE):
                if i.release & dst:
                    heapq.heappush(tokens.setdefault((q, dst), []), end)
        stats.seconds = done
        return stats
