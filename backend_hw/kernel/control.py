"""`ControlRegs`: the AXI4-Lite subordinate `s_axi_control` with the ap_ctrl_hs registers and the
kernel arguments (args.py), as Vitis HLS writes it for its own kernels:

- 0x00 bit 0 `ap_start` (R/W: set by writing 1, cleared by the kernel when `ap_ready`);
  bit 1 `ap_done` (R, cleared on read); bit 2 `ap_idle` (R); bit 3 `ap_ready` (R, cleared on
  read); bit 7 `auto_restart` reads 0 (not supported).
- 0x04 global interrupt enable (bit 0); 0x08 IP interrupt enable (bit 0 done, bit 1 ready);
  0x0C IP interrupt status (bit 0 done, bit 1 ready; set by the event when enabled, toggled by
  writing 1). `interrupt` = GIE and any status bit.
- the arguments from 0x10, 32-bit words with byte strobes; the read-only ones (`status`,
  `cycles`) read what the kernel drives on their ports and ignore writes; unmapped addresses read 0.

One write and one read at a time: AW and W are taken independently, the write happens when both
are held, then B; AR is taken when no R is pending, RDATA is registered. RESP is always OKAY.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .args import CONTROL_ADDR_BITS, CTRL, GIE, IER, ISR, kernel_args

__all__ = ["ControlRegs", "lite_members"]

PREFIX = "s_axi_control"


def lite_members(prefix: str = PREFIX) -> dict:
    """The AXI4-Lite subordinate's ports, flat (`<prefix>_AWADDR`, ...), from the subordinate's side."""
    a = CONTROL_ADDR_BITS
    sig = {"AWADDR": In(a), "AWVALID": In(1), "AWREADY": Out(1),
           "WDATA": In(32), "WSTRB": In(4), "WVALID": In(1), "WREADY": Out(1),
           "BRESP": Out(2), "BVALID": Out(1), "BREADY": In(1),
           "ARADDR": In(a), "ARVALID": In(1), "ARREADY": Out(1),
           "RDATA": Out(32), "RRESP": Out(2), "RVALID": Out(1), "RREADY": In(1)}
    return {f"{prefix}_{k}": v for k, v in sig.items()}


class ControlRegs(wiring.Component):
    """Ports: the `s_axi_control_*` members; `interrupt`; to the kernel: `ap_start` (the register
    bit), `arg_<name>` (each argument the host sets, 32 or 64 bits); from the kernel: `ap_done` (a
    pulse: the run finished, which is also `ap_ready`), `ap_idle`, `arg_<name>` of each read-only
    argument (`status`, `cycles`)."""

    def __init__(self, target):
        self.args = kernel_args(target)
        members = lite_members()
        members.update({"interrupt": Out(1), "ap_start": Out(1), "ap_done": In(1), "ap_idle": In(1)})
        members.update({f"arg_{a.name}": (In if a.readonly else Out)(8 * a.size) for a in self.args})
        super().__init__(members)

    def port(self, name: str):
        return getattr(self, f"{PREFIX}_{name}")

    def elaborate(self, platform) -> Module:
        m = Module()
        p = self.port
        start, done, ready = Signal(), Signal(), Signal()
        gie, ier, isr = Signal(), Signal(2), Signal(2)

        # the argument words: (word offset, register slice, written by the host)
        words = []
        for a in self.args:
            reg = getattr(self, f"arg_{a.name}")
            for k in range(a.size // 4):
                words.append((a.offset + 4 * k, reg[32 * k:32 * k + 32], not a.readonly))

        # write: AW and W held until both are there
        awaddr, wdata, wstrb = Signal(CONTROL_ADDR_BITS), Signal(32), Signal(4)
        aw_full, w_full, bvalid = Signal(), Signal(), Signal()
        m.d.comb += [p("AWREADY").eq(~aw_full & ~bvalid), p("WREADY").eq(~w_full & ~bvalid),
                     p("BVALID").eq(bvalid), p("BRESP").eq(0)]
        with m.If(p("AWVALID") & p("AWREADY")):
            m.d.sync += [awaddr.eq(p("AWADDR")), aw_full.eq(1)]
        with m.If(p("WVALID") & p("WREADY")):
            m.d.sync += [wdata.eq(p("WDATA")), wstrb.eq(p("WSTRB")), w_full.eq(1)]
        write = Signal()
        m.d.comb += write.eq(aw_full & w_full)
        with m.If(write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bvalid.eq(1)]
        with m.If(bvalid & p("BREADY")):
            m.d.sync += bvalid.eq(0)
        waddr = Signal(CONTROL_ADDR_BITS)
        m.d.comb += waddr.eq(Cat(C(0, 2), awaddr[2:]))

        def wr(at: int) -> Value:
            return write & (waddr == at)

        for at, reg, writable in words:
            if not writable:
                continue
            with m.If(wr(at)):
                for b in range(4):
                    with m.If(wstrb[b]):
                        m.d.sync += reg[8 * b:8 * b + 8].eq(wdata[8 * b:8 * b + 8])
        with m.If(wr(GIE) & wstrb[0]):
            m.d.sync += gie.eq(wdata[0])
        with m.If(wr(IER) & wstrb[0]):
            m.d.sync += ier.eq(wdata[:2])

        # read: the value at ARADDR, registered; reading 0x00 clears ap_done and ap_ready
        rvalid, rdata = Signal(), Signal(32)
        m.d.comb += [p("ARREADY").eq(~rvalid), p("RVALID").eq(rvalid), p("RDATA").eq(rdata), p("RRESP").eq(0)]
        read = Signal()
        m.d.comb += read.eq(p("ARVALID") & p("ARREADY"))
        raddr = Signal(CONTROL_ADDR_BITS)
        m.d.comb += raddr.eq(Cat(C(0, 2), p("ARADDR")[2:]))
        with m.If(read):
            m.d.sync += rvalid.eq(1)
            with m.Switch(raddr):
                with m.Case(CTRL):
                    m.d.sync += rdata.eq(Cat(start, done, self.ap_idle, ready))
                with m.Case(GIE):
                    m.d.sync += rdata.eq(gie)
                with m.Case(IER):
                    m.d.sync += rdata.eq(ier)
                with m.Case(ISR):
                    m.d.sync += rdata.eq(isr)
                for at, reg, _ in words:
                    with m.Case(at):
                        m.d.sync += rdata.eq(reg)
                with m.Default():
                    m.d.sync += rdata.eq(0)
        with m.Elif(rvalid & p("RREADY")):
            m.d.sync += rvalid.eq(0)
        read_ctrl = read & (raddr == CTRL)

        # ap_ctrl_hs: the kernel's done is also its ready (it takes new arguments when it is idle)
        with m.If(self.ap_done):
            m.d.sync += [done.eq(1), ready.eq(1), start.eq(0)]
        with m.Else():
            with m.If(read_ctrl):
                m.d.sync += [done.eq(0), ready.eq(0)]
            with m.If(wr(CTRL) & wstrb[0] & wdata[0]):
                m.d.sync += start.eq(1)
        for bit in range(2):   # done, ready: the event sets an enabled status bit, a written 1 toggles it
            with m.If(self.ap_done & ier[bit]):
                m.d.sync += isr[bit].eq(1)
            with m.Elif(wr(ISR) & wstrb[0] & wdata[bit]):
                m.d.sync += isr[bit].eq(~isr[bit])
        m.d.comb += [self.ap_start.eq(start), self.interrupt.eq(gie & isr.any())]
        return m
