"""The cycles of one LD or ST on the DMA (`backend_hw/dma/unit.py`) against `AxiRam`, the RTL memory of
the whole-system simulation: from the cycle the DMA accepts the instruction to the cycle `done` pulses.

The DMA is a slice generator and, per channel, an address side and a data side, coupled by
handshakes, and its time is where they meet, so `dma_cycles` steps exactly those machines one cycle
at a time (state for state as dma/unit.py and sim/axi_ram.py write them; no table of measurements):

- the slice generator: accept (1 cycle), then per row ROW (1) [+ ID (1) when indirect: the row id is
  read from the buffer, and that read takes the buffer port from the data side for one cycle], then one
  EMIT cycle per channel slice, stalled while that channel's descriptor FIFOs (depth `FIFO_DEPTH`)
  are full (one slice of every row's bytes when `merges_rows`); the channels then move their
  slices side by side:
- a channel's address side: one cycle to take a slice, then one AR/AW per burst (<= `AXI_MAX_BEATS` beats, never
  across a `AXI_PAGE_BYTES` page), each waiting until that channel's AxiRam has no burst in flight
  (read: every beat of the previous burst fetched; write: its W beats and B done);
- a channel's data side, one slice at a time: one cycle to take it, then the byte gearbox of `gearbox_bytes`
  (dma/unit.py) bytes: LD takes an R beat when the beat fits (count after this cycle's pop + beat <= capacity) and
  writes a group of buffer words (`dma_lanes` words, one per bank) when the group's bytes are in; ST
  reads a group (data next cycle) when it will fit and sends a W beat when the beat's bytes are in
  and W is ready. The buffer ports are always granted here (the `ports` buffers; with block RAM the
  channels' ports may meet at a bank). One cycle after the slice's last word/beat it takes the next slice.

AxiRam: the first R beat `read_latency` (2) cycles after AR, then one beat per cycle while R is taken
(the next burst's AR is only accepted once the previous burst is fetched: a bubble between bursts
when the DMA takes every beat); W is ready for the whole burst once AW is in, B `write_latency` (1)
cycle after WLAST. `done` is the first FINISH cycle with every channel's sides idle, its FIFOs empty
and every write burst answered.

In closed form for the common case (one channel, aligned, AXI beat wider than the buffer word, LD):
one row costs 7 + groups cycles (accept, ROW, EMIT, FIFO, address side, AR -> first beat two cycles,
first group one cycle after its beat, `done` one cycle after the last group) and every further row
groups + 2 (the data side's take and its first beat); ST costs the same shape with the W/B end.

Indirect rows: the HBM address of row r is hbm_addr + ids[r] * hbm_stride; only its alignment and
page position matter. Pass the row ids as `ids` for the exact count; without them rows 0, 1, 2, ...
are assumed (the direct addresses).
"""
from __future__ import annotations

from collections.abc import Sequence

from llmfab.ir.isa import BufferId, Instruction, Opcode
from llmfab.ir.memory import AXI_MAX_BEATS, AXI_PAGE_BYTES
from llmfab.ir.target import Target

from ..sim.axi_ram import AxiRam
from .unit import FIFO_DEPTH, INFLIGHT, SINGLE_ISSUE, dma_lanes, gearbox_bytes, merges_rows

__all__ = ["AXI_RAM_READ_LATENCY", "AXI_RAM_WRITE_LATENCY", "FIFO_DEPTH", "DmaIssue", "dma_cycles"]

AXI_RAM_READ_LATENCY = AxiRam.READ_LATENCY      # the memories the RTL is checked against
AXI_RAM_WRITE_LATENCY = AxiRam.WRITE_LATENCY


def dma_cycles(target: Target, inst: Instruction, *, read_latency: int = AXI_RAM_READ_LATENCY,
               write_latency: int = AXI_RAM_WRITE_LATENCY, ids: Sequence[int] | None = None) -> int:
    """Cycles from the DMA accepting `inst` (a length-resolved LD or ST) to its `done`, with one
    AxiRam per channel (first R beat `read_latency` cycles after AR, B `write_latency` cycles after
    WLAST, both >= 1). `ids`: the row ids an indirect instruction reads (default 0, 1, 2, ...)."""
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, not {target!r}")
    if inst.op not in (Opcode.LD, Opcode.ST):
        raise ValueError(f"inst must be an LD or ST, not {inst.op.name}")
    if inst.len_reg:
        raise ValueError("inst must be length-resolved (ir.isa.resolve_length)")
    for name, v in (("read_latency", read_latency), ("write_latency", write_latency)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    st = inst.op is Opcode.ST
    Wa = target.memory.beat_bytes
    word = target.word_bytes
    cap = gearbox_bytes(Wa, max(word.values()))
    rows, P, nch = inst["rows"], inst["row_bytes"], inst["channels"]
    if rows == 0 or P == 0 or nch == 0:
        return 1                                   # accept, then FINISH with nothing to wait for
    indirect = bool(inst["indirect"])
    if indirect and ids is not None and len(ids) < rows:
        raise ValueError(f"ids must give {rows} row ids, not {len(ids)}")
    bid = BufferId(int(inst["buf"]))
    wbuf = word[bid] * dma_lanes(target)[bid]     # the group of words the data side moves a cycle
    ch0, hbm, hstride = inst["channel"], inst["hbm_addr"], inst["hbm_stride"]
    bstride = inst["buf_stride"]

    # -- the slice generator: its EMIT cycles, in order ------------------------------------------
    # (the FIFOs only stall it when full; `gen_read`: the ROW cycles of an indirect instruction)
    def row_hbm(r):
        return hbm + (ids[r] if ids is not None else r) * hstride if indirect else hbm + r * hstride

    # state: the generator, then per channel its FIFOs, address side, data side and AxiRam
    g_state, g_r, g_k = "ROW", 0, 0
    merge = merges_rows(inst)          # every row in one slice
    chans = range(ch0, ch0 + nch)
    ch = {c: _Channel(st, Wa, wbuf, cap, read_latency, write_latency) for c in chans}

    cycle = 1                          # cycle 0 accepted the instruction
    while True:
        gen_read = indirect and g_state == "ROW"
        # ---- the generator (uses the FIFO levels at the start of the cycle)
        emit = None
        if g_state == "EMIT":
            c = ch0 + g_k
            if len(ch[c].fifo_a) < FIFO_DEPTH and len(ch[c].fifo_d) < FIFO_DEPTH:
                emit = (c, (cycle + 1, row_hbm(g_r), inst["buf_addr"] + g_r * bstride + g_k * P,
                            rows * P if merge else P))
        done = g_state == "FINISH" and all(x.idle() for x in ch.values())
        if done:
            return cycle
        for c, x in ch.items():
            # the row ids are read on channel 0's first buffer port
            x.step(cycle, gen_read and c == 0)
        # ---- generator registers
        if emit is not None:
            c, e = emit
            ch[c].fifo_a.append(e)
            ch[c].fifo_d.append(e)
            g_k += 1
            if g_k == nch:
                g_k, g_r = 0, g_r + 1
                g_state = "FINISH" if g_r == rows or merge else "ROW"
        elif g_state == "ROW":
            g_state = "ID" if indirect else "EMIT"
        elif g_state == "ID":
            g_state = "EMIT"
        cycle += 1


class DmaIssue:
    """When the DMA takes each instruction of its queue and when it pulses its `done`, given when
    each is offered and what it costs alone (`dma_cycles`), as dma/unit.py decides: an instruction
    is taken while others are in flight only if every one in flight is a single slice of its
    direction on channels it does not use, it is not indirect, and fewer than `inflight` are in
    flight (a slot frees the cycle after its `done`); a single slice leaves the generator free
    `SINGLE_ISSUE` cycles after it was taken. The `done` pulses come in order, a cycle apart at least.
    Each instruction in flight then runs as it would alone (its channels are its own)."""

    def __init__(self, inflight: int = INFLIGHT):
        self.inflight = inflight
        self.reset()

    def reset(self) -> None:
        self.slots: list[tuple[int, frozenset, bool, bool]] = []    # (done, channels, single, ST)
        self.gen_free, self.last_done = 0, -1

    def serve(self, inst: Instruction, ready: int, cycles: int) -> tuple[int, int]:
        """(accept, done) of length-resolved `inst`, offered from cycle `ready`, `cycles` long alone."""
        st, indirect = inst.op is Opcode.ST, bool(inst["indirect"])
        chans = frozenset(range(inst["channel"], inst["channel"] + inst["channels"]))
        empty = inst["rows"] == 0 or inst["row_bytes"] == 0 or inst["channels"] == 0
        single = empty or (not indirect and (merges_rows(inst) or (inst["rows"] == 1 and inst["channels"] == 1)))
        t = max(ready, self.gen_free)
        while True:
            flight = [s for s in self.slots if s[0] >= t]
            if (not flight or (len(flight) < self.inflight and not indirect
                               and all(sg and s_st == st and not (c & chans) for _, c, sg, s_st in flight))):
                break
            t = min(s[0] for s in flight) + 1
        done = max(t + cycles, self.last_done + 1)
        self.slots = [s for s in self.slots if s[0] >= t] + [(done, chans, single, st)]
        self.gen_free = t + (1 if empty else SINGLE_ISSUE if single else 1)
        self.last_done = done
        return t, done


class _Channel:
    """One channel's address side, data side and AxiRam (dma/unit.py `DMA._mover`), a cycle at a time."""

    def __init__(self, st, Wa, wbuf, cap, read_latency, write_latency):
        # the instruction's constants: ST or LD, beat, group, gearbox, AxiRam latencies
        self.st, self.Wa, self.wbuf, self.cap = st, Wa, wbuf, cap
        self.read_latency, self.write_latency = read_latency, write_latency
        self.fifo_a, self.fifo_d = [], []      # the slices queued for it: (visible from cycle, h, b, bytes)
        self.as_busy, self.as_a, self.as_end, self.aw_count, self.b_count = False, 0, 0, 0, 0
        self.ds_busy = False
        self.src_left = self.dst_left = self.sskip = self.dskip = 0
        self.w_a = self.w_beat = 0
        self.cnt = 0
        self.pend, self.pend_n = False, 0
        # AxiRam: read burst (beats left to fetch, cycle its first fetch may happen), R register
        self.rleft, self.r_from, self.rvalid = 0, 0, False
        self.wleft, self.b_at = 0, None      # cycle B becomes valid (write burst answered after)

    def idle(self) -> bool:
        return (not self.as_busy and not self.ds_busy and not self.fifo_a and not self.fifo_d
                and self.aw_count == self.b_count)

    def step(self, cycle, gen_read):
        x = self
        fifo_a, fifo_d, st, Wa, wbuf, cap = x.fifo_a, x.fifo_d, x.st, x.Wa, x.wbuf, x.cap
        read_latency, write_latency = x.read_latency, x.write_latency
        # ---- address side
        take_a = None
        if not x.as_busy and fifo_a and fifo_a[0][0] <= cycle:
            take_a = fifo_a.pop(0)
        a_hs = False
        if x.as_busy:
            to_page = (AXI_PAGE_BYTES - x.as_a % AXI_PAGE_BYTES) // Wa
            to_end = (x.as_end - x.as_a + Wa - 1) // Wa
            beats = min(to_page, AXI_MAX_BEATS, to_end)
            a_hs = (x.wleft == 0 and x.b_at is None) if st else x.rleft == 0
        # ---- data side
        take_d = None
        if not x.ds_busy and fifo_d and fifo_d[0][0] <= cycle:
            take_d = fifo_d.pop(0)
        sink = Wa if st else wbuf
        m_out = min(sink - x.dskip, x.dst_left)
        can_pop = x.ds_busy and x.dst_left != 0 and x.cnt >= m_out
        pop = can_pop and (x.wleft != 0 if st else not gen_read)
        cnt_after = x.cnt - m_out if pop else x.cnt
        # source into the gearbox
        push_n = 0
        issue = False
        if st:
            if x.pend:
                push_n = x.pend_n
            issue = x.ds_busy and x.src_left != 0 and not gen_read and x.cnt + (wbuf if x.pend else 0) + wbuf <= cap
            n_issue = min(wbuf - x.sskip, x.src_left)
        else:
            ready = x.ds_busy and x.src_left != 0 and cnt_after + Wa <= cap
            if ready and x.rvalid:
                push_n = min(Wa - x.sskip, x.src_left)
        # ---- AxiRam (the R register advances when empty or taken this cycle)
        taken = (not st) and x.ds_busy and x.src_left != 0 and cnt_after + Wa <= cap
        if not x.rvalid or taken:
            loads = x.rleft != 0 and x.r_from <= cycle
            x.rvalid = loads
            if loads:
                x.rleft -= 1
        if x.b_at is not None and x.b_at <= cycle:
            x.b_at = None
            x.b_count += 1
        if st and pop:
            x.wleft -= 1
            if x.wleft == 0:
                x.b_at = cycle + write_latency
        if a_hs:
            if st:
                x.wleft = beats
                x.aw_count += 1
            else:
                x.rleft = beats
                x.r_from = cycle + read_latency - 1
            x.as_a += beats * Wa
            if x.as_a >= x.as_end:
                x.as_busy = False
        if take_a is not None:
            _, h, _b, p = take_a
            x.as_a, x.as_end, x.as_busy = h & ~(Wa - 1), h + p, True
        # ---- data side registers
        if pop:
            if st:
                w_last = x.w_beat == AXI_MAX_BEATS - 1 or (x.w_a + Wa) % AXI_PAGE_BYTES == 0 or x.dst_left == m_out
                x.w_a += Wa
                x.w_beat = 0 if w_last else x.w_beat + 1
            if x.dst_left == m_out:
                x.ds_busy = False
            x.dst_left -= m_out
            x.dskip = 0
        x.cnt = cnt_after + push_n
        if st:
            if issue:
                x.src_left -= n_issue
                x.sskip = 0
                x.pend_n = n_issue
            x.pend = issue
        elif push_n:
            x.src_left -= push_n
            x.sskip = 0
        if take_d is not None:
            _, h, b, p = take_d
            x.ds_busy, x.src_left, x.dst_left = True, p, p
            if st:
                x.sskip, x.dskip, x.w_a, x.w_beat = b % wbuf, h % Wa, h & ~(Wa - 1), 0
            else:
                x.sskip, x.dskip = h % Wa, b % wbuf
