"""The cycles of one LD or ST on the DMA (`backend_hw/dma/unit.py`) against `AxiRam`, the RTL memory of
the whole-system simulation: from the cycle the DMA accepts the instruction to the cycle `done` pulses.

The DMA is three machines coupled by handshakes, and its time is where they meet, so
`dma_cycles` steps exactly those machines one cycle at a time (state for state as dma/unit.py and
sim/axi_ram.py write them; no table of measurements):

- the slice generator: accept (1 cycle), then per row ROW (1) [+ ID (1) when indirect: the row id is
  read from the buffer, and that read takes the buffer port from the data side for one cycle], then one
  EMIT cycle per channel slice, stalled while the descriptor FIFOs (depth `FIFO_DEPTH`) are full;
- the address side: one cycle to take a slice, then one AR/AW per burst (<= `AXI_MAX_BEATS` beats, never
  across a `AXI_PAGE_BYTES` page), each waiting until that channel's AxiRam has no burst in flight
  (read: every beat of the previous burst fetched; write: its W beats and B done);
- the data side, one slice at a time: one cycle to take it, then the byte gearbox of `gearbox_bytes`
  (dma/unit.py) bytes: LD takes an R beat when the beat fits (count after this cycle's pop + beat <= capacity) and
  writes a group of buffer words (`dma_lanes` words, one per bank) when the group's bytes are in; ST
  reads a group (data next cycle) when it will fit and sends a W beat when the beat's bytes are in
  and W is ready. The buffer ports are always granted here (one DMA alone on the buffers). One cycle after the slice's
  last word/beat it takes the next slice.

AxiRam: the first R beat `read_latency` (2) cycles after AR, then one beat per cycle while R is taken
(the next burst's AR is only accepted once the previous burst is fetched: a bubble between bursts
when the DMA takes every beat); W is ready for the whole burst once AW is in, B `write_latency` (1)
cycle after WLAST. `done` is the first FINISH cycle with both sides idle, both FIFOs empty and every
write burst answered.

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
from .unit import FIFO_DEPTH, dma_lanes, gearbox_bytes

__all__ = ["AXI_RAM_READ_LATENCY", "AXI_RAM_WRITE_LATENCY", "FIFO_DEPTH", "dma_cycles"]

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

    # state
    g_state, g_r, g_k = "ROW", 0, 0
    fifo_a, fifo_d = [], []            # (visible from cycle, ch, h, b)
    as_busy, as_a, as_end, as_ch, aw_count, b_count = False, 0, 0, 0, 0, 0
    ds_busy, ds_ch = False, 0
    src_left = dst_left = sskip = dskip = 0
    w_a = w_beat = 0
    cnt = 0
    pend, pend_n = False, 0
    # AxiRam per channel: read burst (beats left to fetch, cycle its first fetch may happen), R register
    rleft = [0] * (ch0 + nch)
    r_from = [0] * (ch0 + nch)
    rvalid = [False] * (ch0 + nch)
    wleft = [0] * (ch0 + nch)
    b_at = [None] * (ch0 + nch)        # cycle B becomes valid (write burst answered after)

    cycle = 1                          # cycle 0 accepted the instruction
    while True:
        gen_read = indirect and g_state == "ROW"
        # ---- the generator (uses the FIFO levels at the start of the cycle)
        emit = None
        if g_state == "EMIT" and len(fifo_a) < FIFO_DEPTH and len(fifo_d) < FIFO_DEPTH:
            emit = (cycle + 1, ch0 + g_k, row_hbm(g_r), inst["buf_addr"] + g_r * bstride + g_k * P)
        done = (g_state == "FINISH" and not as_busy and not ds_busy and not fifo_a and not fifo_d
                and aw_count == b_count)
        if done:
            return cycle
        # ---- address side
        take_a = None
        if not as_busy and fifo_a and fifo_a[0][0] <= cycle:
            take_a = fifo_a.pop(0)
        a_hs = False
        if as_busy:
            to_page = (AXI_PAGE_BYTES - as_a % AXI_PAGE_BYTES) // Wa
            to_end = (as_end - as_a + Wa - 1) // Wa
            beats = min(to_page, AXI_MAX_BEATS, to_end)
            if st:
                a_hs = wleft[as_ch] == 0 and b_at[as_ch] is None
            else:
                a_hs = rleft[as_ch] == 0
        # ---- data side
        take_d = None
        if not ds_busy and fifo_d and fifo_d[0][0] <= cycle:
            take_d = fifo_d.pop(0)
        sink = Wa if st else wbuf
        m_out = min(sink - dskip, dst_left)
        can_pop = ds_busy and dst_left != 0 and cnt >= m_out
        if st:
            pop = can_pop and wleft[ds_ch] != 0
        else:
            pop = can_pop and not gen_read
        cnt_after = cnt - m_out if pop else cnt
        # source into the gearbox
        push_n = 0
        issue = False
        if st:
            if pend:
                push_n = pend_n
            issue = ds_busy and src_left != 0 and not gen_read and cnt + (wbuf if pend else 0) + wbuf <= cap
            n_issue = min(wbuf - sskip, src_left)
        else:
            ready = ds_busy and src_left != 0 and cnt_after + Wa <= cap
            if ready and rvalid[ds_ch]:
                push_n = min(Wa - sskip, src_left)
        # ---- AxiRam, per channel (R register advances when empty or taken this cycle)
        for c in range(ch0, ch0 + nch):
            taken = (not st) and c == ds_ch and ds_busy and src_left != 0 and cnt_after + Wa <= cap
            if not rvalid[c] or taken:
                loads = rleft[c] != 0 and r_from[c] <= cycle
                rvalid[c] = loads
                if loads:
                    rleft[c] -= 1
            if b_at[c] is not None and b_at[c] <= cycle:
                b_at[c] = None
                b_count += 1
        if st and pop:
            wleft[ds_ch] -= 1
            if wleft[ds_ch] == 0:
                b_at[ds_ch] = cycle + write_latency
        if a_hs:
            if st:
                wleft[as_ch] = beats
                aw_count += 1
            else:
                rleft[as_ch] = beats
                r_from[as_ch] = cycle + read_latency - 1
            as_a += beats * Wa
            if as_a >= as_end:
                as_busy = False
        if take_a is not None:
            _, as_ch, h, _b = take_a
            as_a, as_end, as_busy = h & ~(Wa - 1), h + P, True
        # ---- data side registers
        if pop:
            if st:
                w_last = w_beat == AXI_MAX_BEATS - 1 or (w_a + Wa) % AXI_PAGE_BYTES == 0 or dst_left == m_out
                w_a += Wa
                w_beat = 0 if w_last else w_beat + 1
            if dst_left == m_out:
                ds_busy = False
            dst_left -= m_out
            dskip = 0
        cnt = cnt_after + push_n
        if st:
            if issue:
                src_left -= n_issue
                sskip = 0
                pend_n = n_issue
            pend = issue
        elif push_n:
            src_left -= push_n
            sskip = 0
        if take_d is not None:
            _, ds_ch, h, b = take_d
            ds_busy, src_left, dst_left = True, P, P
            if st:
                sskip, dskip, w_a, w_beat = b % wbuf, h % Wa, h & ~(Wa - 1), 0
            else:
                sskip, dskip = h % Wa, b % wbuf
        # ---- generator registers
        if emit is not None:
            fifo_a.append(emit)
            fifo_d.append(emit)
            g_k += 1
            if g_k == nch:
                g_k, g_r = 0, g_r + 1
                g_state = "FINISH" if g_r == rows else "ROW"
        elif g_state == "ROW":
            g_state = "ID" if indirect else "EMIT"
        elif g_state == "ID":
            g_state = "EMIT"
        cycle += 1
