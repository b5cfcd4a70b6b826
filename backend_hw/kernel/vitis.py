r"""The accelerator as a Vitis RTL kernel.

    s_axi_control --ControlRegs-- ap_start --> loader --host port--> INST, ACT
                                                 |  \--start, length--> Accelerator --axi[k]--+
                    m_axi_hbm0 <---- AR/R while loading, else -------------------------------+-- base hbm<k> added
                    m_axi_hbm<k> <-------------------------------------------------------------+

On `ap_start` the loader reads `program_bytes` bytes at `program` into INST and `tokens_bytes`
bytes at `tokens` into ACT (from byte 0) through m_axi_hbm0's read channel, in INCR bursts of at
most 256 beats that do not cross 4 KiB, writing each beat's buffer words through the accelerator's
host port (bytes past the size are not written); then it pulses the accelerator's `start` with
LEN = `length`, waits for `halted` and raises `ap_done` (= `ap_ready`). Each memory channel k is
the bundle m_axi_hbm<k>: the accelerator's addresses on it are offsets into the channel's image,
so the 64-bit argument `hbm<k>` is added to them. `status` and `cycles` (status.py) report the
run: the error bits of args.STATUS_BITS, and its length in cycles.

`KernelCore` runs on the `sync` domain (amaranth.sim); `VitisKernel` is the same with the clock
and reset ports Vitis expects, `ap_clk` and the synchronous active-low `ap_rst_n`.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from llmfab.ir.isa import BufferId
from llmfab.ir.memory import AXI_MAX_BEATS, AXI_PAGE_BYTES
from llmfab.ir.target import Target

from ..accelerator import DEFAULT_FORMATS, Accelerator
from ..buffers import buffer_ids
from ..protocol.axi import Burst
from .args import M_AXI_ADDR_BITS, STATUS_BITS, bundle
from .control import ControlRegs, lite_members
from .status import KernelStatus

__all__ = ["KERNEL_NAME", "KernelCore", "VitisKernel", "build_kernel", "m_axi_members"]

KERNEL_NAME = "llmfab"

# (name, direction from the manager's side, width: "addr" / "data" / "strb" / an int)
M_AXI_SIGNALS = (
    ("AWADDR", Out, "addr"), ("AWLEN", Out, 8), ("AWSIZE", Out, 3), ("AWBURST", Out, 2),
    ("AWVALID", Out, 1), ("AWREADY", In, 1),
    ("WDATA", Out, "data"), ("WSTRB", Out, "strb"), ("WLAST", Out, 1), ("WVALID", Out, 1), ("WREADY", In, 1),
    ("BRESP", In, 2), ("BVALID", In, 1), ("BREADY", Out, 1),
    ("ARADDR", Out, "addr"), ("ARLEN", Out, 8), ("ARSIZE", Out, 3), ("ARBURST", Out, 2),
    ("ARVALID", Out, 1), ("ARREADY", In, 1),
    ("RDATA", In, "data"), ("RRESP", In, 2), ("RLAST", In, 1), ("RVALID", In, 1), ("RREADY", Out, 1),
)


def m_axi_members(k: int, data_width: int) -> dict:
    """Channel k's AXI4 manager ports, flat: `m_axi_hbm<k>_ARADDR`, ... (64-bit addresses)."""
    w = {"addr": M_AXI_ADDR_BITS, "data": data_width, "strb": data_width // 8}
    return {f"{bundle(k)}_{name}": d(w.get(width, width)) for name, d, width in M_AXI_SIGNALS}


def _members(target: Target) -> dict:
    out = {}
    for k in range(target.memory.channels):
        out.update(m_axi_members(k, target.memory.port_width_bits))
    out.update(lite_members())
    out["interrupt"] = Out(1)
    return out


class KernelCore(wiring.Component):
    """The kernel on the `sync` domain: `m_axi_hbm<k>_*`, `s_axi_control_*`, `interrupt`."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, *, buffers: str = "block_ram"):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        ids = buffer_ids(target)
        beat_bits = target.memory.port_width_bits
        for b in (BufferId.INST, BufferId.ACT):
            if b not in ids:
                raise ValueError(f"target {target.name} has no {b.name} buffer for the loader")
            if ids[b][1] > beat_bits:
                raise ValueError(f"the {b.name} buffer's {ids[b][1]}-bit words must be at most the memory's "
                                 f"{beat_bits}-bit beat for the loader")
        self.target = target
        self.accelerator = Accelerator(target, formats, buffers=buffers)
        self.regs = ControlRegs(target)
        self.status = KernelStatus()
        super().__init__(_members(target))

    def _p(self, k: int, name: str):
        return getattr(self, f"{bundle(k)}_{name}")

    def elaborate(self, platform) -> Module:
        m = Module()
        t = self.target
        m.submodules.accelerator = acc = self.accelerator
        m.submodules.regs = regs = self.regs
        m.submodules.status = status = self.status
        # the control port
        for name in lite_members():
            mine, theirs = getattr(self, name), getattr(regs, name)
            m.d.comb += theirs.eq(mine) if regs.signature.members[name].flow is In else mine.eq(theirs)
        m.d.comb += self.interrupt.eq(regs.interrupt)

        beat = t.memory.beat_bytes
        lb = exact_log2(beat)
        loading = Signal()
        # ---- the accelerator's channels, rebased on hbm<k>
        for k, ax in enumerate(acc.axi):
            p = lambda name, k=k: self._p(k, name)    # noqa: E731
            base = getattr(regs, f"arg_hbm{k}")
            m.d.comb += [p("AWADDR").eq(base + ax.aw.payload.addr), p("AWLEN").eq(ax.aw.payload.len),
                         p("AWSIZE").eq(ax.aw.payload.size), p("AWBURST").eq(ax.aw.payload.burst),
                         p("AWVALID").eq(ax.aw.valid), ax.aw.ready.eq(p("AWREADY")),
                         p("WDATA").eq(ax.w.payload.data), p("WSTRB").eq(ax.w.payload.strb),
                         p("WLAST").eq(ax.w.payload.last), p("WVALID").eq(ax.w.valid), ax.w.ready.eq(p("WREADY")),
                         ax.b.payload.resp.eq(p("BRESP")), ax.b.valid.eq(p("BVALID")), p("BREADY").eq(ax.b.ready),
                         ax.r.payload.data.eq(p("RDATA")), ax.r.payload.resp.eq(p("RRESP")),
                         ax.r.payload.last.eq(p("RLAST"))]
            if k:
                m.d.comb += [p("ARADDR").eq(base + ax.ar.payload.addr), p("ARLEN").eq(ax.ar.payload.len),
                             p("ARSIZE").eq(ax.ar.payload.size), p("ARBURST").eq(ax.ar.payload.burst),
                             p("ARVALID").eq(ax.ar.valid), ax.ar.ready.eq(p("ARREADY")),
                             ax.r.valid.eq(p("RVALID")), p("RREADY").eq(ax.r.ready)]

        # ---- the loader: (buffer, pointer, size) phases through channel 0's read port
        ids = buffer_ids(t)
        phases = [(BufferId.INST, regs.arg_program, regs.arg_program_bytes),
                  (BufferId.ACT, regs.arg_tokens, regs.arg_tokens_bytes)]
        ar_valid, ar_addr, ar_len = Signal(), Signal(M_AXI_ADDR_BITS), Signal(8)
        r_ready = Signal()
        ax0 = acc.axi[0]
        with m.If(loading):
            m.d.comb += [self._p(0, "ARADDR").eq(ar_addr), self._p(0, "ARLEN").eq(ar_len),
                         self._p(0, "ARSIZE").eq(lb), self._p(0, "ARBURST").eq(Burst.INCR),
                         self._p(0, "ARVALID").eq(ar_valid), self._p(0, "RREADY").eq(r_ready)]
        with m.Else():
            m.d.comb += [self._p(0, "ARADDR").eq(regs.arg_hbm0 + ax0.ar.payload.addr),
                         self._p(0, "ARLEN").eq(ax0.ar.payload.len), self._p(0, "ARSIZE").eq(ax0.ar.payload.size),
                         self._p(0, "ARBURST").eq(ax0.ar.payload.burst), self._p(0, "ARVALID").eq(ax0.ar.valid),
                         ax0.ar.ready.eq(self._p(0, "ARREADY")), ax0.r.valid.eq(self._p(0, "RVALID")),
                         self._p(0, "RREADY").eq(ax0.r.ready)]

        size_bits = max(n for n, _ in ids.values()).bit_length() + 1
        total = Signal(size_bits)          # the phase's bytes (cut to the buffer)
        off = Signal(size_bits)            # bytes of the phase done (beat aligned at each AR)
        left = Signal(9)                   # beats of the current burst still to come
        data = Signal(t.memory.port_width_bits)
        ptr = Signal(M_AXI_ADDR_BITS)
        host = acc.host
        remaining = Signal(size_bits)
        m.d.comb += [remaining.eq(Mux(off < total, total - off, 0)), ar_addr.eq(ptr + off)]
        beats = Signal(size_bits)
        page = Signal(range(AXI_PAGE_BYTES // beat + 1))
        m.d.comb += [beats.eq((remaining + beat - 1) >> lb), page.eq((AXI_PAGE_BYTES - ar_addr[:12]) >> lb)]
        n = Signal(range(AXI_MAX_BEATS + 1))
        m.d.comb += n.eq(Mux(beats < page, Mux(beats < AXI_MAX_BEATS, beats, AXI_MAX_BEATS),
                             Mux(page < AXI_MAX_BEATS, page, AXI_MAX_BEATS)))
        m.d.comb += ar_len.eq(n - 1)
        done = Signal()
        m.d.comb += [regs.ap_done.eq(done), acc.length.eq(regs.arg_length)]

        # ---- status (args.STATUS_BITS) and the cycle count
        bits = {name: i for i, name, _ in STATUS_BITS}
        events = Signal(len(STATUS_BITS))
        resp_bad = {"R": [], "B": []}
        for k in range(t.memory.channels):
            for ch, ready in (("R", "RREADY"), ("B", "BREADY")):
                resp_bad[ch].append(self._p(k, ch + "VALID") & self._p(k, ready) & self._p(k, ch + "RESP").any())
        starting, in_run = Signal(), Signal()
        # the accelerator's error is sticky until its own start, after the loads: count it in RUN only
        m.d.comb += [events[bits["illegal_instruction"]].eq(acc.error & in_run),
                     events[bits["read_error"]].eq(Cat(*resp_bad["R"]).any()),
                     events[bits["write_error"]].eq(Cat(*resp_bad["B"]).any()),
                     events[bits["program_cut"]].eq(starting & (regs.arg_program_bytes > ids[BufferId.INST][0])),
                     events[bits["tokens_cut"]].eq(starting & (regs.arg_tokens_bytes > ids[BufferId.ACT][0])),
                     status.start.eq(starting), status.done.eq(done), status.events.eq(events),
                     regs.arg_status.eq(status.status), regs.arg_cycles.eq(status.cycles)]

        def phase_total(i):
            buf, p, nbytes = phases[i]
            cap = ids[buf][0]
            return [ptr.eq(p), off.eq(0), total.eq(Mux(nbytes[:32] > cap, cap, nbytes[:32]))]

        with m.FSM(name="loader"):
            with m.State("IDLE"):
                m.d.comb += regs.ap_idle.eq(1)
                with m.If(regs.ap_start):
                    m.d.comb += starting.eq(1)
                    m.d.sync += phase_total(0)
                    m.next = "AR0"
            for i, (buf, _, _) in enumerate(phases):
                nb, wbits = ids[buf]
                wb = wbits // 8
                lw = exact_log2(wb)
                last_phase = i == len(phases) - 1
                with m.State(f"AR{i}"):
                    m.d.comb += loading.eq(1)
                    with m.If(remaining == 0):
                        if last_phase:
                            m.next = "START"
                        else:
                            m.d.sync += phase_total(i + 1)
                            m.next = f"AR{i + 1}"
                    with m.Else():
                        m.d.comb += ar_valid.eq(1)
                        with m.If(self._p(0, "ARREADY")):
                            m.d.sync += left.eq(n)
                            m.next = f"R{i}"
                with m.State(f"R{i}"):
                    m.d.comb += [loading.eq(1), r_ready.eq(1)]
                    with m.If(self._p(0, "RVALID")):
                        m.d.sync += [data.eq(self._p(0, "RDATA")), left.eq(left - 1)]
                        m.next = f"W{i}"
                with m.State(f"W{i}"):
                    # one buffer word of the beat a cycle, at byte `off`
                    m.d.comb += [loading.eq(1), host.buf.eq(buf), host.addr.eq(off >> lw), host.we.eq(1),
                                 host.wdata.eq(data.word_select(off[lw:lb], wbits) if lb > lw else data),
                                 host.be.eq(Cat(*((off + j) < total for j in range(wb))))]
                    with m.If(host.ready):
                        m.d.sync += off.eq(off + wb)
                        with m.If(off[lw:lb] == (1 << (lb - lw)) - 1 if lb > lw else C(1)):
                            m.next = f"R{i}"
                            with m.If(left == 0):
                                m.next = f"AR{i}"
            with m.State("START"):
                m.d.comb += acc.start.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += in_run.eq(1)
                with m.If(acc.halted):
                    m.d.comb += done.eq(1)
                    m.next = "IDLE"
        return m


class VitisKernel(wiring.Component):
    """`KernelCore` with the clock and reset ports of a Vitis RTL kernel: `ap_clk`, `ap_rst_n`
    (synchronous, active low); every other port by the same name."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, *, buffers: str = "block_ram"):
        self.core = KernelCore(target, formats, buffers=buffers)
        super().__init__({"ap_clk": In(1), "ap_rst_n": In(1), **_members(target)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]
        m.submodules.core = core = self.core
        for name, member in core.signature.members.items():
            mine, theirs = getattr(self, name), getattr(core, name)
            m.d.comb += theirs.eq(mine) if member.flow is In else mine.eq(theirs)
        return m


def build_kernel(target: Target, formats=DEFAULT_FORMATS, buffers: str = "block_ram") -> dict[str, wiring.Component]:
    """What `llmfab rtl --kernel vitis` writes: the kernel top, named after the kernel."""
    return {KERNEL_NAME: VitisKernel(target, formats, buffers=buffers)}
