"""The DMA: executes LD (HBM -> buffer) and ST (buffer -> HBM) exactly as `simulator.functional._dma`.

An instruction moves `rows` rows; row r's slice k (`row_bytes` bytes) lives in pseudo-channel
`channel + k` at `hbm_addr + row * hbm_stride` (row = r, or ids[r] read from the buffer when
`indirect`) and in the buffer at `buf_addr + r * buf_stride + k * row_bytes`. The parts run
concurrently on slice descriptors:

- the slice generator walks rows and channel slices (reading the row id first when indirect)
  and hands each slice to its channel's address side and data side through small FIFOs, or all
  the rows as one slice when they are back to back in one channel and in the buffer
  (`merges_rows`: a KV tile, so its channel streams page-long bursts); then every channel moves
  its own slices beside the others (`_mover`):
- the channel's address side splits a slice into AXI INCR bursts (at most 256 beats, never
  across a 4 KB page) on its AXI port;
- the channel's data side moves the slice's bytes through a byte gearbox between AXI beats and groups of
  buffer words (any byte alignment on either side), with byte enables / WSTRB on partial words.
  A group is `dma_lanes` consecutive words, one per bank, moved in one cycle through as many
  buffer ports: a beat of 16 B lands in a 32-bit buffer of four banks in one cycle, not four.

Completion (`done`) is when every byte is in the buffer (LD) or every write burst is answered on
B (ST), pulsed in the order the instructions came. An instruction's slices overlap (address sides
run ahead of the data). An instruction is taken while others are in flight only when every one
in flight is a single slice (one row in one channel, or rows merged: a KV tile) of its direction
on channels it does not use, and it is not indirect (dma/inflight.py): up to `INFLIGHT` then
stream from their channels at once, each as it would alone, a single slice leaving the generator
`SINGLE_ISSUE` cycles after it was taken (accept, ROW, EMIT); while any other instruction is in
flight nothing is taken beside it. Instructions in flight together must not write the same bytes
(compiled programs order such pairs with tokens). Two channels' slices may share a buffer word
(never a byte), and channels writing one buffer at once may meet at a bank: the bank serializes
them (the cycle model does not count that, as for every unit).
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import FIELDS, INST_BITS, BufferId, Opcode
from llmfab.ir.memory import AXI_MAX_BEATS, AXI_PAGE_BYTES
from llmfab.ir.target import Target

from ..protocol.axi import AxiSignature, Burst
from ..protocol.buffer_port import BUF_ADDR_BITS, BufferPortSignature, checked_word_bytes, word_log
from ..protocol.isa_fields import field, header
from .inflight import InFlight

FIFO_DEPTH = 4     # slice descriptors queued between the generator and the address / data sides
SLICE_BITS = 24    # a slice's byte count: a `row_bytes` slice, or the rows merged into one (< 16 MiB)
INFLIGHT = 8       # instructions in flight at once (single-slice ones on distinct channels: KV tiles)
SINGLE_ISSUE = 3   # a single-slice instruction's cycles in the generator: accept, ROW, EMIT


def merges_rows(inst) -> bool:
    """Whether the generator hands out all of a (length-resolved) LD/ST's rows as one slice: one
    channel, not indirect, rows back to back in HBM and in the buffer (a KV tile), fewer than
    2**SLICE_BITS bytes. Its channel then streams bursts of up to a page instead of a row each."""
    p = inst["row_bytes"]
    return (inst["channels"] == 1 and not inst["indirect"] and inst["hbm_stride"] == p
            and inst["buf_stride"] == p and inst["rows"] * p < 1 << SLICE_BITS)


def gearbox_bytes(beat: int, max_word: int) -> int:
    """The data side's byte gearbox: room for an AXI beat in, a buffer word out, and slack."""
    return 2 * (beat + max_word)


def dma_lanes(target: Target) -> dict[BufferId, int]:
    """Words the DMA moves into (or out of) each buffer per cycle: as many as an AXI beat holds
    and the buffer has banks, a power of two. Consecutive words live in distinct banks (word `a`
    in bank `a % banks`), so the DMA's `lanes` ports never meet each other at a bank."""
    beat = target.memory.beat_bytes
    return {b.id: 1 << (max(1, min(beat // b.word_bytes, b.banks)).bit_length() - 1) for b in target.buffers}


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _bytes_mask(n: Value, lanes: int, lo: Value | int = 0) -> Value:
    """Byte lanes [lo, lo + n) set, as one bit per lane."""
    return Cat(*((j >= lo) & (j < lo + n) for j in range(lanes)))


def _min(a, b) -> Value:
    a, b = Value.cast(a), Value.cast(b)
    return Mux(a < b, a, b)


def _bits_mask(m: Module, byte_mask: Value, name: str) -> Value:
    """Each bit of `byte_mask` eight times, from a named signal: slicing the expression itself
    would copy it into every bit (U280's 192-byte gearbox: minutes of elaboration a channel)."""
    s = Signal(len(byte_mask), name=name)
    m.d.comb += s.eq(byte_mask)
    return Cat(*(b.replicate(8) for b in s))


class DMA(wiring.Component):
    """LD/ST engine with one AXI4 port per memory channel (`Target.memory.channels`).

    Ports:
    - `inst` (in, stream of 256-bit words): LD or ST instructions, length-resolved (the
      controller's `load` or `store` queue); the next is taken after `done`, or earlier when both
      are single slices on distinct channels (module docstring).
    - `done` (out): one-cycle pulse when the instruction has completed.
    - `buffers` (out, array of channels x `lanes` `BufferPortSignature` ports, channel-major): the
      on-chip buffers, data width = the widest buffer; channel c's port p moves word p of each of
      its groups (the row id of an indirect instruction is read on port 0).
    - `axi` (out, array of `Target.memory.channels` `AxiSignature` ports): data width
      `Target.memory.port_width_bits`, addresses of one channel's bytes.

    Throughput per channel: min(AXI beat, group) bytes per cycle once the first beat is in; a
    slice costs about two cycles of set-up plus the memory latency when it cannot be hidden, and
    the generator hands out one slice a cycle.
    """

    def __init__(self, target: Target, *, inflight: int = INFLIGHT):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        if not isinstance(inflight, int) or isinstance(inflight, bool) or inflight < 1:
            raise ValueError(f"inflight must be a positive integer, not {inflight!r}")
        mem = target.memory
        self.target = target
        self.ports = mem.channels
        self.beat_bytes = mem.beat_bytes
        if mem.port_width_bits < 32 or mem.port_width_bits & (mem.port_width_bits - 1):
            raise ValueError(f"memory.port_width_bits must be a power of two of at least 32, not {mem.port_width_bits}")
        self.word_bytes = checked_word_bytes(target)
        self.max_word = max(self.word_bytes.values())
        self.group_lanes = dma_lanes(target)
        self.lanes = max(self.group_lanes.values())
        channel_bytes = int(mem.capacity_gb * 1e9) // mem.channels
        self.addr_width = max(12, (channel_bytes - 1).bit_length())
        if [(f.name, f.offset) for f in FIELDS[Opcode.LD]] != [(f.name, f.offset) for f in FIELDS[Opcode.ST]]:
            raise ValueError("LD and ST must share one field table")
        self.inflight = inflight
        super().__init__({
            "inst": In(stream.Signature(INST_BITS)),
            "done": Out(1),
            "buffers": Out(BufferPortSignature(8 * self.max_word)).array(self.ports * self.lanes),
            "axi": Out(AxiSignature(self.addr_width, mem.port_width_bits)).array(self.ports),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        aw, Wa, WB = self.addr_width, self.beat_bytes, self.max_word
        CAP = gearbox_bytes(Wa, WB)
        wide = max(Wa, WB)
        ir = Signal(INST_BITS)
        f = {name: field(ir, Opcode.LD, name) for name in
             ("channel", "channels", "buf", "hbm_addr", "hbm_stride", "buf_addr", "buf_stride", "rows",
              "row_bytes", "indirect", "ids_buf", "ids_addr")}

        # the slices of each channel, queued for its address side and its data side
        desc = data.StructLayout({"h": aw, "b": BUF_ADDR_BITS, "p": SLICE_BITS})
        fifo_a, fifo_d = [], []
        for c in range(self.ports):
            fifo_a.append(SyncFIFO(width=desc.size, depth=FIFO_DEPTH))
            fifo_d.append(SyncFIFO(width=desc.size, depth=FIFO_DEPTH))
            m.submodules[f"fifo_a{c}"], m.submodules[f"fifo_d{c}"] = fifo_a[c], fifo_d[c]
        port = self.buffers[0]
        L = self.lanes

        # -- slice generator ----------------------------------------------------------------------
        r = Signal(17)
        k = Signal(7)
        h_row, h_cur = Signal(aw), Signal(aw)
        b_row, b_k = Signal(BUF_ADDR_BITS), Signal(BUF_ADDR_BITS)
        id_lane = Signal(range(max(WB // 4, 2)))
        gen_read = Signal()                      # the generator owns buffer port 0 this cycle
        merge = Signal()                         # every row in one slice of `merged` bytes (`merges_rows`)
        merged = Signal(len(f["rows"]) + len(f["row_bytes"]))
        start = Signal()                         # an instruction is accepted

        # -- the instructions in flight (inflight.py): which may start beside the others ------------
        C = self.ports
        fl = m.submodules.inflight = InFlight(C, self.inflight)
        p = self.inst.payload
        # the offered instruction's buffer, direction, word and group sizes (log2: `wlog`, `llog`,
        # `blog`), group bytes and the gearbox's sink width, once for every channel's copy
        nx = {"buf": field(p, Opcode.LD, "buf"), "st": Signal(name="new_st"),
              "wlog": word_log(m, field(p, Opcode.LD, "buf"), self.word_bytes),
              "llog": Signal(range(L.bit_length()), name="new_llog"),
              "blog": Signal(range(wide.bit_length()), name="new_blog"),
              "wbuf": Signal(range(wide + 1), name="new_wbuf"), "sink_bytes": Signal(range(wide + 1), name="new_sink")}
        with m.Switch(nx["buf"]):
            for b, n in self.group_lanes.items():
                with m.Case(b):
                    m.d.comb += nx["llog"].eq(n.bit_length() - 1)
        m.d.comb += [nx["st"].eq(header(p, "op") == Opcode.ST), nx["blog"].eq(nx["wlog"] + nx["llog"]),
                     nx["wbuf"].eq(Const(1, 1) << nx["blog"]), nx["sink_bytes"].eq(Mux(nx["st"], Wa, nx["wbuf"]))]
        ch0, nch = field(p, Opcode.LD, "channel"), field(p, Opcode.LD, "channels")
        empty = (field(p, Opcode.LD, "rows") == 0) | (field(p, Opcode.LD, "row_bytes") == 0) | (nch == 0)
        m.d.comb += [fl.mask.eq(Cat(*((ch0 <= c) & (c < ch0 + nch) for c in range(C)))), fl.st.eq(nx["st"]),
                     fl.indirect.eq(field(p, Opcode.LD, "indirect")), fl.empty.eq(empty), fl.take.eq(start)]
        load = [Signal(name=f"load{c}") for c in range(C)]      # the channel's registers take the new one's
        m.d.comb += [load[c].eq(start & fl.mask[c]) for c in range(C)]

        # every channel moves its own slices: its bursts and its gearbox run beside the others'
        x = dict(aw=aw, CAP=CAP, wide=wide, fifo_a=fifo_a, fifo_d=fifo_d, desc=desc, gen_read=gen_read,
                 load=load, new=nx)
        idle, answered = zip(*(self._mover(m, c, x) for c in range(self.ports)))
        m.d.comb += [fl.free.eq(Cat(*(i & a for i, a in zip(idle, answered)))), self.done.eq(fl.done)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.inst.ready.eq(fl.accept), start.eq(self.inst.valid & fl.accept)]
                with m.If(start):
                    m.d.sync += [ir.eq(p), r.eq(0), k.eq(0),
                                 h_row.eq(field(p, Opcode.LD, "hbm_addr")), b_row.eq(field(p, Opcode.LD, "buf_addr"))]
                    with m.If(~empty):
                        m.next = "ROW"
            with m.State("ROW"):
                with m.If(f["indirect"]):
                    at = Signal(BUF_ADDR_BITS)
                    lg = word_log(m, f["ids_buf"], self.word_bytes)
                    m.d.comb += [at.eq(f["ids_addr"] + (r << 2)), gen_read.eq(1),
                                 port.buf.eq(f["ids_buf"]), port.addr.eq(at >> lg), port.re.eq(1)]
                    m.d.sync += id_lane.eq((at & ((Const(1, 1) << lg) - 1)) >> 2)
                    with m.If(port.ready):
                        m.next = "ID"
                with m.Else():
                    m.d.sync += [h_cur.eq(h_row), b_k.eq(b_row)]
                    m.next = "EMIT"
                # (from the registered instruction: the product and compares stay off the accept path)
                m.d.sync += [merged.eq(f["rows"] * f["row_bytes"]),
                             merge.eq((f["channels"] == 1) & ~f["indirect"] & (f["hbm_stride"] == f["row_bytes"]) &
                                      (f["buf_stride"] == f["row_bytes"]) &
                                      ((f["rows"] * f["row_bytes"]) >> SLICE_BITS == 0))]
            with m.State("ID"):
                row_id = port.rdata.word_select(id_lane, 32)
                m.d.sync += [h_cur.eq(f["hbm_addr"] + (row_id[:aw] * f["hbm_stride"][:aw])[:aw]), b_k.eq(b_row)]
                m.next = "EMIT"
            with m.State("EMIT"):
                d, ch, room = Signal(desc), Signal(7), Signal()
                m.d.comb += [d.h.eq(h_cur), d.b.eq(b_k), d.p.eq(Mux(merge, merged, f["row_bytes"])),
                             ch.eq(f["channel"] + k)]
                for c in range(self.ports):
                    m.d.comb += [fifo_a[c].w_data.eq(d), fifo_d[c].w_data.eq(d)]
                    with m.If(ch == c):
                        m.d.comb += [room.eq(fifo_a[c].w_rdy & fifo_d[c].w_rdy),
                                     fifo_a[c].w_en.eq(room), fifo_d[c].w_en.eq(room)]
                with m.If(room):
                    m.d.sync += [k.eq(k + 1), b_k.eq(b_k + f["row_bytes"])]
                    with m.If(k + 1 == f["channels"]):
                        m.d.sync += [k.eq(0), r.eq(r + 1), h_row.eq(h_row + f["hbm_stride"]),
                                     b_row.eq(b_row + f["buf_stride"])]
                        with m.If((r + 1 == f["rows"]) | merge):
                            m.d.comb += [fl.finished.eq(1), fl.single.eq(
                                ~f["indirect"] & (merge | ((f["rows"] == 1) & (f["channels"] == 1))))]
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "ROW"

        return m

    def _mover(self, m: Module, c: int, x: dict) -> tuple[Value, Value]:
        """Channel c's address side (bursts on `axi[c]`) and data side (its byte gearbox and
        its `lanes` buffer ports), on the slices the generator queued for the channel. Returns
        (idle, every write burst answered) for the in-flight tracker's `done`."""
        aw, Wa, WB, CAP, wide, L = x["aw"], self.beat_bytes, self.max_word, x["CAP"], x["wide"], self.lanes
        fifo_a, fifo_d, desc = x["fifo_a"][c], x["fifo_d"][c], x["desc"]
        gen_read = x["gen_read"] if c == 0 else Const(0, 1)     # the row ids are read on channel 0's port 0
        axi, ports = self.axi[c], self.buffers[c * L:(c + 1) * L]
        sizes = sorted(set(self.word_bytes.values()))

        def sig(shape, name):
            return Signal(shape, name=f"{name}{c}")

        # the instruction's buffer, direction, word and group sizes (log2) and the gearbox's sink
        # width, the channel's own copy: loaded when an instruction using the channel is accepted
        # (other instructions may still be in flight on other channels), off the per-beat paths
        buf, is_st = Signal(3, name=f"buf{c}", reset_less=True), Signal(name=f"is_st{c}", reset_less=True)
        wlog = Signal(range(WB.bit_length()), name=f"wlog{c}", reset_less=True)
        llog = Signal(range(L.bit_length()), name=f"llog{c}", reset_less=True)      # log2 of the group's words
        blog = Signal(range(wide.bit_length()), name=f"blog{c}", reset_less=True)   # log2 of the group's bytes
        wbuf = Signal(range(wide + 1), name=f"wbuf{c}", reset_less=True)
        sink_bytes = Signal(range(wide + 1), name=f"sink_bytes{c}", reset_less=True)
        nx = x["new"]
        with m.If(x["load"][c]):
            m.d.sync += [buf.eq(nx["buf"]), is_st.eq(nx["st"]), wlog.eq(nx["wlog"]), llog.eq(nx["llog"]),
                         blog.eq(nx["blog"]), wbuf.eq(nx["wbuf"]), sink_bytes.eq(nx["sink_bytes"])]

        # -- address side: bursts ---------------------------------------------------------------
        as_busy, ds_busy = sig(1, "as_busy"), sig(1, "ds_busy")
        aw_count, b_count = sig(32, "aw_count"), sig(32, "b_count")
        with m.If(x["load"][c]):
            m.d.sync += [aw_count.eq(0), b_count.eq(0)]
        as_a = sig(aw + 1, "as_a")
        as_end = sig(aw + SLICE_BITS + 1, "as_end")
        with m.If(~as_busy & fifo_a.r_rdy):
            d = sig(desc, "as_take")
            m.d.comb += [d.eq(fifo_a.r_data), fifo_a.r_en.eq(1)]
            m.d.sync += [as_a.eq(d.h & ~(Wa - 1)), as_end.eq(d.h + d.p), as_busy.eq(1)]
        beats = sig(range(AXI_MAX_BEATS + 1), "beats")
        to_page = sig(range(AXI_PAGE_BYTES // Wa + 1), "to_page")
        to_end = sig(aw + SLICE_BITS + 1, "to_end")
        m.d.comb += [to_page.eq((AXI_PAGE_BYTES - as_a[:_log2(AXI_PAGE_BYTES)]) >> _log2(Wa)),
                     to_end.eq((as_end - as_a + Wa - 1) >> _log2(Wa)),
                     beats.eq(_min(_min(to_page, AXI_MAX_BEATS), to_end))]
        for ch in (axi.ar, axi.aw):
            m.d.comb += [ch.payload.addr.eq(as_a[:aw]), ch.payload.len.eq(beats - 1),
                         ch.payload.size.eq(_log2(Wa)), ch.payload.burst.eq(Burst.INCR)]
        m.d.comb += [axi.ar.valid.eq(as_busy & ~is_st), axi.aw.valid.eq(as_busy & is_st)]
        with m.If(as_busy & Mux(is_st, axi.aw.ready, axi.ar.ready)):
            m.d.sync += as_a.eq(as_a + (beats << _log2(Wa)))
            with m.If(as_a + (beats << _log2(Wa)) >= as_end):
                m.d.sync += as_busy.eq(0)
            with m.If(is_st):
                m.d.sync += aw_count.eq(aw_count + 1)
        m.d.comb += axi.b.ready.eq(1)
        with m.If(axi.b.valid):
            m.d.sync += b_count.eq(b_count + 1)

        # -- data side: the byte gearbox ------------------------------------------------------------
        src_left, dst_left = sig(SLICE_BITS, "src_left"), sig(SLICE_BITS, "dst_left")
        sskip = sig(range(wide), "sskip")
        dskip = sig(range(wide), "dskip")
        src_addr, dst_addr = sig(BUF_ADDR_BITS, "src_addr"), sig(BUF_ADDR_BITS, "dst_addr")
        w_a = sig(aw, "w_a")                    # ST: address of the current W beat
        w_beat = sig(8, "w_beat")               # ST: beats already sent in the current burst
        acc = sig(8 * CAP, "acc")
        cnt = sig(range(CAP + 1), "cnt")
        pend, pend_n, pend_skip = sig(1, "pend"), sig(range(wide + 1), "pend_n"), sig(range(wide), "pend_skip")

        with m.If(~ds_busy & fifo_d.r_rdy):
            d = sig(desc, "ds_take")
            m.d.comb += [d.eq(fifo_d.r_data), fifo_d.r_en.eq(1)]
            m.d.sync += [ds_busy.eq(1), src_left.eq(d.p), dst_left.eq(d.p)]
            buf_lane = d.b & ((Const(1, 1) << blog) - 1)
            with m.If(is_st):
                m.d.sync += [sskip.eq(buf_lane), src_addr.eq(d.b >> blog), dskip.eq(d.h[:_log2(Wa)]),
                             w_a.eq(d.h & ~(Wa - 1)), w_beat.eq(0)]
            with m.Else():
                m.d.sync += [sskip.eq(d.h[:_log2(Wa)]), dskip.eq(buf_lane), dst_addr.eq(d.b >> blog)]

        # sink: what can leave the gearbox this cycle
        m_out = sig(range(wide + 1), "m_out")
        m.d.comb += m_out.eq(_min(sink_bytes - dskip, dst_left))
        can_pop = ds_busy & (dst_left != 0) & (cnt >= m_out)
        pop = sig(1, "pop")
        # (named signals, not nested expressions: the simulator evaluates each signal once)
        lanes, head = sig(wide, "lanes"), sig(8 * CAP, "head")
        out_data = sig(8 * wide, "out_data")
        m.d.comb += [lanes.eq(_bytes_mask(m_out, wide, dskip)),
                     head.eq(acc & _bits_mask(m, _bytes_mask(m_out, CAP), f"head_mask{c}")),
                     out_data.eq((head << (dskip * 8))[:8 * wide])]
        with m.If(is_st):
            w_last = (w_beat == AXI_MAX_BEATS - 1) | (((w_a + Wa) & (AXI_PAGE_BYTES - 1)) == 0) | (dst_left == m_out)
            m.d.comb += [axi.w.valid.eq(can_pop), axi.w.payload.data.eq(out_data[:8 * Wa]),
                         axi.w.payload.strb.eq(lanes[:Wa]), axi.w.payload.last.eq(w_last),
                         pop.eq(can_pop & axi.w.ready)]
            with m.If(pop):
                m.d.sync += [w_a.eq(w_a + Wa), w_beat.eq(Mux(w_last, 0, w_beat + 1))]
        with m.Elif(~gen_read):
            # word p of the group on port p; the group pops once every port writing is granted
            # (a port granted in a cycle where another was not writes again: the same bytes)
            granted = []
            for q, bp in enumerate(ports):
                be, wd = Signal(WB, name=f"be{c}_{q}"), Signal(8 * WB, name=f"wdata{c}_{q}")
                with m.Switch(wlog):
                    for wb in sizes:
                        if (q + 1) * wb <= wide:
                            with m.Case(wb.bit_length() - 1):
                                m.d.comb += [be.eq(lanes[q * wb:(q + 1) * wb]), wd.eq(out_data[8 * q * wb:8 * (q + 1) * wb])]
                m.d.comb += [bp.buf.eq(buf), bp.addr.eq((dst_addr << llog) | q), bp.we.eq(can_pop & be.any()),
                             bp.be.eq(be), bp.wdata.eq(wd)]
                granted.append(bp.ready | ~bp.we)
            m.d.comb += pop.eq(can_pop & Cat(*granted).all())
            with m.If(pop):
                m.d.sync += dst_addr.eq(dst_addr + 1)
        with m.If(pop):
            m.d.sync += [dst_left.eq(dst_left - m_out), dskip.eq(0)]
            with m.If(dst_left == m_out):
                m.d.sync += ds_busy.eq(0)

        cnt_after = sig(range(CAP + 1), "cnt_after")
        acc_after = sig(8 * CAP, "acc_after")
        m.d.comb += [cnt_after.eq(Mux(pop, cnt - m_out, cnt)), acc_after.eq(Mux(pop, acc >> (m_out * 8), acc))]

        # source: what enters the gearbox this cycle
        push = sig(1, "push")
        n_in = sig(range(wide + 1), "n_in")
        new = sig(8 * wide, "new_bytes")
        with m.If(is_st):
            # buffer reads, issued only when the word will fit when it arrives next cycle
            # (a whole group: word p on port p, taken once every port is granted)
            n_issue = sig(range(wide + 1), "n_issue")
            m.d.comb += n_issue.eq(_min(wbuf - sskip, src_left))
            issue = ds_busy & (src_left != 0) & ~gen_read & (cnt + Mux(pend, wbuf, 0) + wbuf <= CAP)
            taken = sig(1, "taken")
            granted = []
            for q, bp in enumerate(ports):
                with m.If(issue & ((Const(1, L.bit_length() + 1) << llog) > q)):
                    m.d.comb += [bp.buf.eq(buf), bp.addr.eq((src_addr << llog) | q), bp.re.eq(1)]
                granted.append(bp.ready | ~bp.re)
            m.d.comb += taken.eq(issue & Cat(*granted).all())
            with m.If(taken):
                m.d.sync += [src_addr.eq(src_addr + 1), src_left.eq(src_left - n_issue), sskip.eq(0),
                             pend_n.eq(n_issue), pend_skip.eq(sskip)]
            m.d.sync += pend.eq(taken)
            group = sig(8 * wide, "group")
            with m.Switch(wlog):
                for wb in sizes:
                    with m.Case(wb.bit_length() - 1):
                        m.d.comb += group.eq(Cat(*(bp.rdata[:8 * wb] for bp in ports[:max(1, wide // wb)])))
            m.d.comb += [push.eq(pend), n_in.eq(pend_n), new.eq(group >> (pend_skip * 8))]
        with m.Else():
            m.d.comb += n_in.eq(_min(Wa - sskip, src_left))
            ready = ds_busy & (src_left != 0) & (cnt_after + Wa <= CAP)
            m.d.comb += [axi.r.ready.eq(ready), push.eq(ready & axi.r.valid),
                         new.eq(axi.r.payload.data >> (sskip * 8))]
            with m.If(push):
                m.d.sync += [src_left.eq(src_left - n_in), sskip.eq(0)]

        fresh, placed = sig(8 * wide, "fresh"), sig(8 * CAP, "placed")
        m.d.comb += [fresh.eq(new & _bits_mask(m, _bytes_mask(n_in, wide), f"fresh_mask{c}")),
                     placed.eq((fresh << (cnt_after * 8))[:8 * CAP])]
        with m.If(push):
            m.d.sync += [acc.eq(acc_after | placed), cnt.eq(cnt_after + n_in)]
        with m.Else():
            m.d.sync += [acc.eq(acc_after), cnt.eq(cnt_after)]
        idle = ~as_busy & ~ds_busy & ~fifo_a.r_rdy & ~fifo_d.r_rdy
        return idle, aw_count == b_count
