"""Instruction fetch: the program's 256-bit words from the INST buffer, in order, to the controller.

The host writes the program (the instruction words after the file header, docs/isa.md "Binary
program format") at address 0 of the INST buffer and pulses `start`. The fetch unit reads the
buffer's words back to back (one read per cycle, the data the cycle after), packs
`256 / width_bits` of them into an instruction and offers it on `inst`; it stops at `stop` (the
controller has executed END) or after `limit` instructions.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import INST_BITS, BufferId
from llmfab.ir.target import BufferName, Target

from ..buffers import data_width
from ..protocol.buffer_port import BufferPortSignature


def fetch_cycles(target: Target) -> int:
    """Cycles from accepting one instruction to offering the next: the next instruction's reads
    start the cycle after the accept, one word a cycle, and its last word lands a cycle later."""
    return INST_BITS // target.buffer(BufferName.INST).width_bits + 2


class FetchUnit(wiring.Component):
    """Ports: `start` (in) restarts at instruction 0; `stop` (in) stops fetching; `inst` (out,
    stream of 256-bit words); `port` (out, a buffer client port on INST). Throughput: one
    instruction per `fetch_cycles(target)` = 256 / width_bits + 2 cycles."""

    def __init__(self, target: Target):
        inst = target.buffer(BufferName.INST)
        if INST_BITS % inst.width_bits:
            raise ValueError(f"the inst buffer's width must divide {INST_BITS} bits, not {inst.width_bits}")
        self.words = INST_BITS // inst.width_bits
        self.word_bits = inst.width_bits
        self.capacity = inst.bytes * 8 // INST_BITS            # instructions the buffer holds
        super().__init__({"start": In(1), "stop": In(1), "inst": Out(stream.Signature(INST_BITS)),
                          "port": Out(BufferPortSignature(data_width(target)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        n, w = self.words, self.word_bits
        pc = Signal(range(self.capacity + 1))       # the instruction being read
        k = Signal(range(n + 1))                     # words of it requested so far
        got = Signal(range(n + 1))                   # words of it received so far
        word = Signal(INST_BITS)
        running = Signal()
        pending = Signal()                           # a read was issued last cycle
        m.d.comb += [self.port.buf.eq(BufferId.INST), self.port.addr.eq(pc * n + k),
                     self.inst.payload.eq(word), self.inst.valid.eq(running & (got == n))]
        with m.If(running & (k < n)):
            m.d.comb += self.port.re.eq(1)
            with m.If(self.port.ready):
                m.d.sync += k.eq(k + 1)
        m.d.sync += pending.eq(self.port.re & self.port.ready)
        with m.If(pending):
            m.d.sync += [word.eq(Cat(word[w:], self.port.rdata[:w])), got.eq(got + 1)]
        with m.If(self.inst.valid & self.inst.ready):
            m.d.sync += [pc.eq(pc + 1), k.eq(0), got.eq(0)]
            with m.If(pc + 1 == self.capacity):
                m.d.sync += running.eq(0)
        with m.If(self.stop):
            m.d.sync += running.eq(0)
        with m.If(self.start):
            m.d.sync += [running.eq(1), pc.eq(0), k.eq(0), got.eq(0), pending.eq(0)]
        return m
