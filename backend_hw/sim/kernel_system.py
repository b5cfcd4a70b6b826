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

__all__ = ["KernelHarness"]


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
