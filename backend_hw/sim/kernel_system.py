"""`KernelHarness`: the Vitis kernel core with its flat `m_axi_hbm<k>_*` ports gathered back into
`AxiSignature` ports (`axi[k]`, 64-bit addresses), so the simulation memories (`AxiMemory` in
amaranth.sim, `AxiRam`) serve them; `s_axi_control_*` and `interrupt` pass through. Simulation
only, never emitted."""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from ..accelerator import DEFAULT_FORMATS
from ..kernel.args import M_AXI_ADDR_BITS, bundle
from ..kernel.control import lite_members
from ..kernel.vitis import KernelCore
from ..protocol.axi import AxiSignature
from .system import connect_rams

__all__ = ["KernelHarness", "KernelRamSystem"]


class KernelHarness(wiring.Component):
    def __init__(self, target, formats=DEFAULT_FORMATS, *, buffers: str = "ports"):
        self.core = KernelCore(target, formats, buffers=buffers)
        self.channels = target.memory.channels
        members = {k: v for k, v in self.core.signature.members.items() if not k.startswith("m_axi_")}
        members["axi"] = Out(AxiSignature(M_AXI_ADDR_BITS, target.memory.port_width_bits)).array(self.channels)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = self.core
        for name in [*lite_members(), "interrupt"]:
            mine, theirs = getattr(self, name), getattr(core, name)
            m.d.comb += (theirs.eq(mine) if core.signature.members[name].flow == wiring.In else mine.eq(theirs))
        for k, ax in enumerate(self.axi):
            def p(name, k=k):
                return getattr(core, f"{bundle(k)}_{name}")
            for ch, fields in (("ar", ("ADDR", "LEN", "SIZE", "BURST")), ("aw", ("ADDR", "LEN", "SIZE", "BURST"))):
                s = getattr(ax, ch)
                pre = ch.upper()
                m.d.comb += [getattr(s.payload, f.lower()).eq(p(pre + f)) for f in fields]
                m.d.comb += [s.valid.eq(p(pre + "VALID")), p(pre + "READY").eq(s.ready)]
            m.d.comb += [ax.w.payload.data.eq(p("WDATA")), ax.w.payload.strb.eq(p("WSTRB")),
                         ax.w.payload.last.eq(p("WLAST")), ax.w.valid.eq(p("WVALID")), p("WREADY").eq(ax.w.ready),
                         p("RDATA").eq(ax.r.payload.data), p("RRESP").eq(ax.r.payload.resp),
                         p("RLAST").eq(ax.r.payload.last), p("RVALID").eq(ax.r.valid), ax.r.ready.eq(p("RREADY")),
                         p("BRESP").eq(ax.b.payload.resp), p("BVALID").eq(ax.b.valid), ax.b.ready.eq(p("BREADY"))]
        return m


class KernelRamSystem(wiring.Component):
    """The kernel core with an `AxiRam` of `channel_bytes[k]` bytes on each bundle (addresses
    modulo the RAM), for Verilator: `s_axi_control_*`, `irq` (the kernel's `interrupt`: a C++ word
    Verilator renames), `axi_error` (a RAM saw a burst
    it does not serve) and the RAMs' debug port (`dbg_chan`, `dbg_addr` word address, `dbg_we`,
    `dbg_wdata`, `dbg_data` one cycle after), which loads and reads the images around a run."""

    def __init__(self, target, formats=DEFAULT_FORMATS, channel_bytes=(), *, buffers: str = "ports"):
        self.harness = KernelHarness(target, formats, buffers=buffers)
        if len(channel_bytes) != target.memory.channels:
            raise ValueError(f"channel_bytes must give one size per memory channel ({target.memory.channels}), "
                             f"not {channel_bytes!r}")
        from .axi_ram import AxiRam
        width = target.memory.port_width_bits
        self.rams = [AxiRam(n, width, M_AXI_ADDR_BITS) for n in channel_bytes]
        dbg_aw = max(r.dbg_addr.shape().width for r in self.rams)
        members = {k: v for k, v in self.harness.signature.members.items() if k not in ("axi", "interrupt")}
        members.update({"irq": Out(1), "axi_error": Out(1), "dbg_chan": wiring.In(max(1, (len(self.rams) - 1).bit_length())),
                        "dbg_addr": wiring.In(dbg_aw), "dbg_we": wiring.In(1), "dbg_wdata": wiring.In(width),
                        "dbg_data": Out(width)})
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.harness = h = self.harness
        for name, member in h.signature.members.items():
            if name not in ("axi", "interrupt"):
                mine, theirs = getattr(self, name), getattr(h, name)
                m.d.comb += theirs.eq(mine) if member.flow == wiring.In else mine.eq(theirs)
        connect_rams(m, self, h.axi)
        m.d.comb += self.irq.eq(h.interrupt)
        return m
