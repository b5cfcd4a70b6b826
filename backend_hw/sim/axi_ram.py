"""`AxiRam`: an AXI4 slave over an `amaranth.lib.memory.Memory`, the synthesizable stand-in for an
HBM/DDR channel in whole-system simulation (Verilator), where the Python `AxiMemory` cannot run.

One read and one write burst at a time, INCR bursts of full-width beats (what the DMA issues):

- read: AR is accepted when no read burst is being issued; beats then leave at one per cycle
  while R is ready (the memory's read port only advances when the R register is free or taken),
  the first beat two cycles after the AR handshake;
- write: AW is accepted when no write burst or B response is pending; W is ready for the whole
  burst, each beat is written with WSTRB as byte enables; B comes the cycle after WLAST.

Addresses are byte addresses into the RAM, taken modulo its size. `error` is sticky: set by a
burst that is not INCR, a beat size other than the port width, an unaligned address, a burst that
runs past the end of the RAM, or a WLAST on the wrong beat (the DMA never does any of these).

The debug port reads and writes whole words outside the AXI traffic: `dbg_addr` (word address),
`dbg_data` the word there one cycle later; `dbg_we` writes `dbg_wdata` at `dbg_addr` (to load an
image at run time instead of through `init`, so one build serves every image).
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..protocol.axi import AxiSignature, Burst

__all__ = ["AxiRam"]


class AxiRam(wiring.Component):
    """`size_bytes` bytes (a multiple of `data_width // 8`) behind an AXI4 port (`axi`, the
    subordinate side of `AxiSignature(addr_width, data_width)`), preloaded with `init`.

    Ports: `axi`; `dbg_addr` (word address), `dbg_data` (`data_width`, one cycle after),
    `dbg_we`, `dbg_wdata` (`data_width`); `error` (sticky protocol error)."""
    # AR handshake -> `rleft` registered -> the read port's registered data: the first R beat is
    # valid two cycles after AR; `bvalid` is registered on the WLAST beat: B one cycle after it.
    READ_LATENCY = 2
    WRITE_LATENCY = 1

    def __init__(self, size_bytes: int, data_width: int, addr_width: int, init: bytes = b""):
        sig = AxiSignature(addr_width, data_width)     # checks the widths
        if not isinstance(size_bytes, int) or size_bytes <= 0 or size_bytes % (data_width // 8):
            raise ValueError(f"size_bytes must be a positive multiple of {data_width // 8}, not {size_bytes!r}")
        if size_bytes > 1 << addr_width:
            raise ValueError(f"size_bytes must be at most 2**addr_width = {1 << addr_width}, not {size_bytes}")
        if not isinstance(init, (bytes, bytearray)) or len(init) > size_bytes:
            raise ValueError(f"init must be at most {size_bytes} bytes, not {len(init) if isinstance(init, (bytes, bytearray)) else init!r}")
        self.size_bytes, self.data_width, self.addr_width = size_bytes, data_width, addr_width
        self.beat = data_width // 8
        self.depth = size_bytes // self.beat
        raw = bytes(init) + bytes(-len(init) % self.beat)
        words = [int.from_bytes(raw[i:i + self.beat], "little") for i in range(0, len(raw), self.beat)]
        self.memory = memory.Memory(shape=unsigned(data_width), depth=self.depth, init=words)
        aw = max(1, (self.depth - 1).bit_length())
        super().__init__({"axi": In(sig), "dbg_addr": In(aw), "dbg_data": Out(data_width),
                          "dbg_we": In(1), "dbg_wdata": In(data_width), "error": Out(1)})

    def _bad(self, a) -> Value:
        """An address channel payload this RAM does not serve."""
        beats = a.len + 1
        off = a.addr[:self.addr_width]
        return ((a.burst != Burst.INCR) | (a.size != exact_log2(self.beat)) |
                (off[:exact_log2(self.beat)] != 0) | (off + beats * self.beat > self.size_bytes))

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.memory = mem = self.memory
        ax = self.axi
        shift = exact_log2(self.beat)
        wa = max(1, (self.depth - 1).bit_length())

        def word(addr):     # byte address -> word address modulo the RAM
            w = addr[shift:]
            return w % self.depth if self.depth & (self.depth - 1) else w[:wa]

        bad = Signal()
        m.d.comb += self.error.eq(bad)

        # read: one burst at a time; `rleft` beats still to fetch
        rp = mem.read_port()
        raddr = Signal(wa)
        rleft = Signal(9)
        rvalid, rlast = Signal(), Signal()
        m.d.comb += [ax.ar.ready.eq(rleft == 0),
                     ax.r.valid.eq(rvalid), ax.r.payload.data.eq(rp.data), ax.r.payload.last.eq(rlast),
                     ax.r.payload.resp.eq(0), ax.r.payload.id.eq(0)]
        advance = ~rvalid | ax.r.ready
        m.d.comb += [rp.en.eq(advance), rp.addr.eq(raddr)]
        with m.If(advance):
            m.d.sync += rvalid.eq(rleft != 0)
            with m.If(rleft != 0):
                m.d.sync += [raddr.eq(Mux(raddr == self.depth - 1, 0, raddr + 1)), rleft.eq(rleft - 1),
                             rlast.eq(rleft == 1)]
        with m.If(ax.ar.valid & ax.ar.ready):
            m.d.sync += [raddr.eq(word(ax.ar.payload.addr)), rleft.eq(ax.ar.payload.len + 1)]
            with m.If(self._bad(ax.ar.payload)):
                m.d.sync += bad.eq(1)

        # write: one burst at a time, then its B
        wp = mem.write_port(granularity=8)
        waddr = Signal(wa)
        wleft = Signal(9)
        bvalid = Signal()
        m.d.comb += [ax.aw.ready.eq((wleft == 0) & ~bvalid), ax.w.ready.eq(wleft != 0),
                     ax.b.valid.eq(bvalid), ax.b.payload.resp.eq(0), ax.b.payload.id.eq(0)]
        with m.If(ax.aw.valid & ax.aw.ready):
            m.d.sync += [waddr.eq(word(ax.aw.payload.addr)), wleft.eq(ax.aw.payload.len + 1)]
            with m.If(self._bad(ax.aw.payload)):
                m.d.sync += bad.eq(1)
        with m.If(ax.w.valid & ax.w.ready):
            m.d.comb += [wp.addr.eq(waddr), wp.data.eq(ax.w.payload.data), wp.en.eq(ax.w.payload.strb)]
            m.d.sync += [waddr.eq(Mux(waddr == self.depth - 1, 0, waddr + 1)), wleft.eq(wleft - 1)]
            with m.If(ax.w.payload.last != (wleft == 1)):
                m.d.sync += bad.eq(1)
            with m.If(wleft == 1):
                m.d.sync += bvalid.eq(1)
        with m.If(ax.b.valid & ax.b.ready):
            m.d.sync += bvalid.eq(0)

        # debug port
        dp = mem.read_port()
        dw = mem.write_port()
        m.d.comb += [dp.addr.eq(self.dbg_addr), self.dbg_data.eq(dp.data),
                     dw.addr.eq(self.dbg_addr), dw.data.eq(self.dbg_wdata), dw.en.eq(self.dbg_we)]
        return m
