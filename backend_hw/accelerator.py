"""The accelerator: controller, fetch, DMA, matrix unit and SFU unit around the on-chip buffers.

    INST buffer -> FetchUnit -> Controller -+-> load queue   -> DMA (LD) --AXI AR/R--+
                                            +-> store queue  -> DMA (ST) --AXI AW/W/B+-> HBM channels
                                            +-> matrix queue -> MatrixUnit (MV, MM, ATTN)
                                            +-> SFU queue    -> SfuUnit (MISC)
    every unit <-> BufferBank (WEIGHT, ACT, KV, SCRATCH, INST) <-> host port

The host writes the program into INST and the step's token ids into ACT through `host`, sets
`length` (LEN) and pulses `start`; `halted` rises when END has executed. Each HBM pseudo-channel
is one AXI4 port: the load DMA drives its read channels, the store DMA its write channels.
Every number comes from the Target; the weight formats the matrix unit runs are fixed at
elaboration (`formats`, from the compiled program: `formats_of`).
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BufferId, Opcode, Program, Queue
from llmfab.ir.target import Target

from . import PARTS
from .buffers import BufferBank, data_width
from .control.controller import Controller
from .control.fetch import FetchUnit
from .dma.unit import DMA, INFLIGHT
from .engine.matrix_engine import MatrixEngine
from .matrix.unit import MatrixUnit
from .protocol.axi import AxiSignature
from .protocol.buffer_port import BufferPortSignature
from .serial_shell import SerialShell
from .sfu.unit import SfuUnit

DEFAULT_FORMATS = ((8, None, 128),)


def formats_of(programs: list[Program]) -> tuple[tuple[int, tuple[int, int] | None, int], ...]:
    """The (weight bits, N:M pattern, effective group) of every MV/MM instruction of `programs`."""
    out = set()
    for p in programs:
        for i in p.instructions:
            if i.op in (Opcode.MV, Opcode.MM):
                g = i["group"].size or i["k"]
                out.add((i["bits"].bits, i["sparsity"].pattern, min(g, i["k"])))
    return tuple(sorted(out, key=lambda f: (f[0], f[1] or (0, 0), f[2])))


class Accelerator(wiring.Component):
    """Ports: `start`, `length` (32), `running`, `halted`, `error` (an illegal instruction or a weight
    format the matrix unit was not built for); `host` (a buffer client port driven by the host);
    `axi[c]` (one AXI4 manager port per memory channel); `issued` / `completed` (4 bits, one per
    `Queue` bit: a unit took / finished an instruction this cycle), for per-instruction traces."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, *, init: dict[BufferId, bytes] | None = None,
                 buffers: str = "block_ram"):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        self.target = target
        # (the controller keeps a release mask per instruction a unit holds: as many as the DMA takes)
        self.controller = Controller(target, in_flight=INFLIGHT)
        self.fetch = FetchUnit(target)
        self.dma_load = DMA(target)
        self.dma_store = DMA(target)
        self.matrix = MatrixUnit(target, formats)
        self.sfu = SfuUnit(target)
        # the bank's clients in priority order (the host first: it is never refused); the matrix
        # unit's activation and scalar loads before its weight fetches, which run ahead into FIFOs
        self.clients = [self.fetch.port, *self.dma_load.buffers, *self.dma_store.buffers,
                        *self.matrix.aports, self.matrix.oport, *self.matrix.wports,
                        self.sfu.src, self.sfu.src2, self.sfu.dst]
        self.bank = BufferBank(target, len(self.clients) + 1, init=init, organisation=buffers)
        axi = AxiSignature(self.dma_load.addr_width, target.memory.port_width_bits)
        super().__init__({"start": In(1), "length": In(32), "running": Out(1), "halted": Out(1), "error": Out(1),
                          "issued": Out(len(Queue)), "completed": Out(len(Queue)),
                          "host": In(BufferPortSignature(data_width(target))),
                          "axi": Out(axi).array(self.dma_load.ports)})

    def elaborate(self, platform) -> Module:
        m = Module()
        c = m.submodules.controller = self.controller
        m.submodules.fetch = self.fetch
        m.submodules.dma_load = ld = self.dma_load
        m.submodules.dma_store = st = self.dma_store
        m.submodules.matrix = mx = self.matrix
        m.submodules.sfu = sfu = self.sfu
        m.submodules.bank = bank = self.bank

        wiring.connect(m, wiring.flipped(self.host), bank.clients[0])
        for i, port in enumerate(self.clients):
            wiring.connect(m, port, bank.clients[1 + i])

        wiring.connect(m, self.fetch.inst, c.inst)
        wiring.connect(m, c.load, ld.inst)
        wiring.connect(m, c.store, st.inst)
        wiring.connect(m, c.matrix, mx.inst)
        wiring.connect(m, c.sfu, sfu.inst)
        done = {Queue.LOAD: ld.done, Queue.MATRIX: mx.done, Queue.SFU: sfu.done, Queue.STORE: st.done}
        m.d.comb += c.done.eq(Cat(*(done[q] for q in sorted(Queue, key=int))))
        took = {Queue.LOAD: c.load, Queue.MATRIX: c.matrix, Queue.SFU: c.sfu, Queue.STORE: c.store}
        m.d.comb += [self.completed.eq(c.done),
                     self.issued.eq(Cat(*(took[q].valid & took[q].ready for q in sorted(Queue, key=int))))]

        # one AXI port per channel: reads from the load DMA, writes from the store DMA
        for k, port in enumerate(self.axi):
            rd, wr = ld.axi[k], st.axi[k]
            m.d.comb += [port.ar.payload.eq(rd.ar.payload), port.ar.valid.eq(rd.ar.valid), rd.ar.ready.eq(port.ar.ready),
                         rd.r.payload.eq(port.r.payload), rd.r.valid.eq(port.r.valid), port.r.ready.eq(rd.r.ready),
                         port.aw.payload.eq(wr.aw.payload), port.aw.valid.eq(wr.aw.valid), wr.aw.ready.eq(port.aw.ready),
                         port.w.payload.eq(wr.w.payload), port.w.valid.eq(wr.w.valid), wr.w.ready.eq(port.w.ready),
                         wr.b.payload.eq(port.b.payload), wr.b.valid.eq(port.b.valid), port.b.ready.eq(wr.b.ready)]

        m.d.comb += [c.start.eq(self.start), c.length.eq(self.length), self.fetch.start.eq(self.start),
                     self.fetch.stop.eq(c.halted), self.running.eq(c.running), self.halted.eq(c.halted),
                     self.error.eq(c.error | mx.error)]
        return m




def build_top(target: Target, formats=DEFAULT_FORMATS, part: str = "accelerator",
              buffers: str = "block_ram") -> dict[str, wiring.Component]:
    """The design `llmfab rtl` writes for `target`: the whole accelerator with its buffers in the
    `buffers` organisation (buffers.py: "block_ram" synthesizes and runs within 1% of the cycle
    model; "ports" is what the cycle model times exactly, for simulation), or (`part="engine"`)
    the matrix engine of the first format behind a `SerialShell`, which fits a small package's
    pins and block RAM-free fabric: what `make bitstream` places on the ECP5."""
    if part == "accelerator":
        return {"accelerator": Accelerator(target, formats, buffers=buffers)}
    if part == "engine":
        bits, pattern, group = formats[0]
        return {"engine": SerialShell(MatrixEngine(target, weight_bits=bits, pattern=pattern, group=group))}
    raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")


__all__ = ["Accelerator", "DEFAULT_FORMATS", "build_top", "formats_of"]
