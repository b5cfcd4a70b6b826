"""The design's cost model: the pipelined accelerator the Target describes, in seconds.

Compute and memory stay separate (as in SCALE-Sim): each instruction says what it demands (bytes
over which channels for LD/ST, multiply-accumulates on the matrix engine for MM/MV/ATTN, elements
through the special-function unit for MISC) and the units serve the demands, all numbers from the
Target. The walk over queues, tokens and barriers is `schedule.py`'s, with none of the
controller's latencies: the design dispatches and issues for free.

- memory: each pseudo-channel serves one transfer at a time at min(channel, port) x efficiency
  GB/s; a transfer striped over C channels starts when all are free; each AXI burst costs
  `memory.burst_setup_ns` besides its bytes, and a burst covers at most one AXI page of contiguous
  bytes (ir/memory.py), so rows that lie back to back in a channel (stride = row bytes, as the KV
  cache and weight tiles do) share bursts while strided rows pay one each; the LD and ST queues
  issue in order but keep transfers on different channels in flight (outstanding AXI
  transactions): the next may begin `memory.dma_issue_cycles` after this one began;
- matrix engine (MV): `n_chains` rows at a time, each chain consuming `chain_len` kept weights
  per cycle (N:M sparsity: only the kept weights take cycles); MM: the same per token row, with
  `operand_packing` rows sharing a multiplier; plus the chain's pipeline depth; ATTN: ATTN_QK as MV
  passes with the keys as weight rows (each chain reduces one key over the head dimension), ATTN_PV
  with the head dimension as rows (each chain reduces one output element over the keys), once per
  query row;
- special-function unit: `lanes` elements per cycle plus its latency.
"""
from __future__ import annotations

from llmfab.ir.isa import MiscFunc, Opcode, Queue
from llmfab.ir.memory import AXI_PAGE_BYTES
from llmfab.ir.quant import kept
from llmfab.ir.target import Target

DMA_QUEUES = (int(Queue.LOAD), int(Queue.STORE))


class DesignUnits:
    """`Units` (schedule.py) of the pipelined design, in seconds."""
    name = "design"
    clock_hz = None
    fetch_first = fetch_interval = step = 0
    queue_depth = None

    def __init__(self, target: Target):
        self.t = target
        self.cycle = 1.0 / (target.clock_mhz * 1e6)
        self.channel_bps = target.memory.effective_channel_gbps * 1e9
        self.reset()

    def reset(self) -> None:
        self.queue_free = dict.fromkeys(Queue, 0.0)
        self.channel_free = [0.0] * self.t.memory.channels
        self.dma_end = dict.fromkeys(DMA_QUEUES, 0.0)   # the last transfer's end, per DMA queue

    def serve(self, queue: int, i, ready: float) -> tuple[float, float]:
        start = max(ready, self.queue_free[queue])
        if i.op in (Opcode.LD, Opcode.ST):
            chans = range(i["channel"], i["channel"] + i["channels"])
            begin = max([start] + [self.channel_free[c] for c in chans])
            per_channel = i["rows"] * i["row_bytes"]
            if i["hbm_stride"] == i["row_bytes"] and not i["indirect"]:      # one contiguous run per channel
                bursts = -(-per_channel // AXI_PAGE_BYTES)
            else:
                bursts = i["rows"] * -(-i["row_bytes"] // AXI_PAGE_BYTES)
            end = begin + per_channel / self.channel_bps + bursts * self.t.memory.burst_setup_ns * 1e-9
            for c in chans:
                self.channel_free[c] = end
            # The DMA issues in order but keeps transfers on different channels in flight; the
            # channels themselves serialise what shares them.
            self.queue_free[queue] = begin + self.t.memory.dma_issue_cycles * self.cycle
            return begin, end
        end = start + self.compute_cycles(i) * self.cycle
        self.queue_free[queue] = end
        return start, end

    def busy(self, queue: int, begin: float, end: float) -> float:
        if queue in self.dma_end:                       # time any transfer of the queue is active
            busy = max(0.0, end - max(begin, self.dma_end[queue]))
            self.dma_end[queue] = max(self.dma_end[queue], end)
            return busy
        return end - begin

    def compute_cycles(self, i) -> int:
        """Cycles of a length-resolved MV, MM, ATTN or MISC on the design's engine or SFU."""
        e, t = self.t.engine, self.t
        if i.op in (Opcode.MV, Opcode.MM):
            n_kept = kept(i["k"], i["sparsity"].pattern)
            rows = i["m"] if i.op is Opcode.MM else 1
            passes = -(-i["n"] // e.n_chains) * -(-n_kept // e.chain_len)
            tokens = -(-rows // (e.operand_packing if i.op is Opcode.MM else 1))
            return passes * tokens + e.pipeline_depth
        f = i["func"]
        if i.op is Opcode.ATTN:
            n, k = (i["cols"], i["depth"]) if f is MiscFunc.ATTN_QK else (i["depth"], i["cols"])
            return -(-n // e.n_chains) * -(-k // e.chain_len) * i["rows"] + e.pipeline_depth
        elems = i["rows"] * max(i["cols"], 1)
        if f is MiscFunc.COPY:
            elems = i["rows"] * -(-i["cols"] // 4)
        return -(-elems // t.sfu.lanes) + t.sfu.latency_cycles
