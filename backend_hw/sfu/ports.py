"""Byte-level access to the on-chip buffers for the SFU instruction unit (backend_hw/sfu/unit.py).

Buffers are byte-addressed in the ISA but read and written a word (`Buffer.width_bits`) at a time,
and operands need not be word-aligned (a quantized row is 4 + cols bytes). Two gearboxes:

- `PieceFetcher` gathers up to `slots` byte runs ("pieces") into operand registers through one
  `BufferPortSignature` port: one word read a cycle, each returned word shifted to the piece's
  place in the register and merged under a byte mask.
- `ByteWriter` writes one byte run per accepted entry: shifted to the word lanes of its address,
  one word a cycle with byte enables on the partial words at either end.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BufferId

from ..protocol.buffer_port import BUF_ADDR_BITS, BufferPortSignature, word_log

__all__ = ["ByteWriter", "PieceFetcher", "slot_layout", "write_layout"]


def _byte_mask(n_lanes: int, lo, hi) -> Value:
    """One bit per byte lane j, set for lo <= j < hi."""
    return Cat(*((j >= lo) & (j < hi) for j in range(n_lanes)))


def _bit_mask(byte_mask: Value) -> Value:
    return Cat(*(b.replicate(8) for b in byte_mask))


def slot_layout(reg_bytes: int) -> data.StructLayout:
    """One piece: `n` bytes from byte address `addr` of buffer `buf` into bytes [off, off + n) of
    operand register `tgt`; with `skip`, only every other word of them (the first, third, ...),
    so that two fetchers can share a run's words even and odd, on different banks."""
    w = reg_bytes.bit_length()
    return data.StructLayout({"buf": 3, "addr": BUF_ADDR_BITS, "off": w, "n": w, "tgt": 2, "skip": 1})


def write_layout(max_bytes: int) -> data.StructLayout:
    """One write: bytes [0, n) of `data` to byte address `addr`."""
    return data.StructLayout({"addr": BUF_ADDR_BITS, "n": max_bytes.bit_length(), "data": 8 * max_bytes})


class PieceFetcher(wiring.Component):
    """Reads the enabled pieces of `slot`, lowest slot first, one word a cycle.

    Pulse `start` with `slot` and `en` set (both are latched, so the caller may move on to the next
    beat's pieces at once) while `ready` is high: `ready` is high when no word is left to read, or
    in the cycle the last word of the pending pieces is read (its request taken), so the pieces of back-to-back starts
    are read without a gap. The pieces' bytes come back on `ret` (the cycle after each word's read):
    `ret_data` is the word moved to its place in the target register `ret_tgt`, `ret_mask` the
    register bytes it fills. A piece of `w` words costs `w` cycles.
    """

    def __init__(self, slots: int, reg_bytes: int, word_bytes: dict[BufferId, int]):
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive integer, not {slots!r}")
        self.slots, self.reg_bytes, self.word_bytes = slots, reg_bytes, dict(word_bytes)
        self.wb = max(self.word_bytes.values())
        super().__init__({
            "slot": In(data.ArrayLayout(slot_layout(reg_bytes), slots)), "en": In(slots),
            "start": In(1), "ready": Out(1),
            "port": Out(BufferPortSignature(8 * self.wb)),
            "ret": Out(1), "ret_tgt": Out(2), "ret_data": Out(8 * reg_bytes), "ret_mask": Out(reg_bytes),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        K, RB, WB = self.slots, self.reg_bytes, self.wb
        pend = Signal(K)
        slots = Signal(data.ArrayLayout(slot_layout(RB), K), reset_less=True)   # latched at start
        # Each piece's first word address, words after the first and word log are worked out at
        # `start`, and the current piece's are registers: the read address and `ready` come from
        # registers, so the issue of the next beat (which waits for `ready`) starts a short path.
        fw = [Signal(BUF_ADDR_BITS, name=f"fw{k}") for k in range(K)]
        fleft = [Signal(range(RB + 1), name=f"fleft{k}") for k in range(K)]
        flg = [Signal(range(WB.bit_length()), name=f"flg{k}") for k in range(K)]
        cur = Signal(range(max(K, 2)))               # the lowest pending slot
        waddr = Signal(BUF_ADDR_BITS)                # its word being read
        wleft = Signal(range(RB + 1))                # its words after this one
        wi = Signal(BUF_ADDR_BITS)                   # words of it read so far
        d = slots[cur]
        lg = Signal.like(flg[0])
        m.d.comb += lg.eq(Array(flg)[cur])
        at_last = wleft == 0
        others = pend & ~(Const(1, K) << cur)[:K]
        m.d.comb += self.ready.eq(~pend.any() | (at_last & ~others.any() & self.port.ready))

        def load(mask, first, left):
            """Make the lowest slot of `mask` current, with its first word and words after it."""
            for k in reversed(range(K)):
                with m.If(mask[k]):
                    m.d.sync += [cur.eq(k), waddr.eq(first[k]), wleft.eq(left[k])]
            m.d.sync += wi.eq(0)

        # the word in flight: where its bytes go
        rv, rtgt = Signal(), Signal(2)
        dw = (RB + WB).bit_length() + 1
        rdelta = Signal(signed(dw))                  # register byte of the word's lane 0 (may be < 0)
        rlo, rhi = Signal(range(RB + 1)), Signal(range(RB + 1))
        rwb = Signal(range(WB + 1))
        m.d.sync += rv.eq(0)
        with m.If(pend.any()):
            port = self.port
            m.d.comb += [port.buf.eq(d.buf), port.addr.eq(waddr), port.re.eq(1)]
        with m.If(pend.any() & self.port.ready):
            ph = d.addr & ((Const(1, 1) << lg) - 1)
            m.d.sync += [rv.eq(1), rtgt.eq(d.tgt), rdelta.eq(d.off - ph + ((wi << d.skip) << lg)), rlo.eq(d.off),
                         rhi.eq(d.off + d.n), rwb.eq(Const(1, 1) << lg)]
            with m.If(at_last):
                m.d.sync += pend.eq(others)
                load(others, fw, fleft)
            with m.Else():
                m.d.sync += [waddr.eq(waddr + 1 + d.skip), wleft.eq(wleft - 1), wi.eq(wi + 1)]
        with m.If(self.start):                       # only when `ready`: the last word is read now
            first, left = [], []
            for k in range(K):                       # pieces have n >= 1 bytes
                s = self.slot[k]
                lgk = word_log(m, s.buf, self.word_bytes)
                f0, span = Signal(BUF_ADDR_BITS, name=f"first{k}"), Signal(BUF_ADDR_BITS, name=f"span{k}")
                m.d.comb += [f0.eq(s.addr >> lgk), span.eq(((s.addr + s.n - 1) >> lgk) - f0)]
                first.append(f0)
                left.append(Mux(s.skip, span >> 1, span))
                m.d.sync += [fw[k].eq(f0), fleft[k].eq(left[-1]), flg[k].eq(lgk)]
            m.d.sync += [pend.eq(self.en), slots.eq(self.slot)]
            load(self.en, first, left)

        shifted = self.port.rdata << ((rdelta + WB).as_unsigned()[:dw] * 8)
        m.d.comb += [self.ret.eq(rv), self.ret_tgt.eq(rtgt),
                     self.ret_data.eq(shifted[8 * WB:8 * (WB + RB)]),
                     self.ret_mask.eq(_byte_mask(RB, rlo, rhi) & _byte_mask(RB, rdelta, rdelta + rwb))]
        return m


class ByteWriter(wiring.Component):
    """Writes entries of `write_layout(max_bytes)` to buffer `buf` through `port`, one word a cycle;
    takes the next entry in the cycle it writes the last word of the current one. `busy` is high
    while words are left to write."""

    def __init__(self, max_bytes: int, word_bytes: dict[BufferId, int]):
        self.max_bytes, self.word_bytes = max_bytes, dict(word_bytes)
        self.wb = max(self.word_bytes.values())
        super().__init__({"i": In(stream.Signature(write_layout(max_bytes))), "buf": In(3),
                          "port": Out(BufferPortSignature(8 * self.wb)), "busy": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        MB, WB = self.max_bytes, self.wb
        reg = Signal(8 * (MB + WB))
        msk = Signal(MB + WB)
        waddr = Signal(BUF_ADDR_BITS)
        left = Signal(range((MB + WB) // 1 + 2))
        lg = word_log(m, self.buf, self.word_bytes)
        wb = Signal(range(WB + 1))
        m.d.comb += [wb.eq(Const(1, 1) << lg), self.busy.eq(left != 0)]
        with m.If(left != 0):
            p = self.port
            m.d.comb += [p.buf.eq(self.buf), p.addr.eq(waddr), p.we.eq(1), p.wdata.eq(reg[:8 * WB]),
                         p.be.eq(msk[:WB] & _byte_mask(WB, 0, wb))]
            with m.If(p.ready):
                m.d.sync += [reg.eq(reg >> (wb * 8)), msk.eq(msk >> wb), waddr.eq(waddr + 1), left.eq(left - 1)]
        m.d.comb += self.i.ready.eq((left == 0) | ((left == 1) & self.port.ready))
        with m.If(self.i.valid & self.i.ready):
            e = self.i.payload
            ph = Signal(range(WB), name="ph")
            m.d.comb += ph.eq(e.addr & (wb - 1))
            m.d.sync += [reg.eq(e.data << (ph * 8)), msk.eq(_byte_mask(MB + WB, ph, ph + e.n)),
                         waddr.eq(e.addr >> lg), left.eq((ph + e.n + wb - 1) >> lg)]
        return m
