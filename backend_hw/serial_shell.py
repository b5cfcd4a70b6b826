"""A pin-limited shell: any component's ports behind an 8-bit shift interface.

A small FPGA package cannot bond out a wide accelerator interface (the ECP5-85F in CABGA381 has
~200 user I/Os; one 128-bit AXI port alone needs ~300). For place and route, timing and a
bitstream, the shell keeps every input port of the inner design in a register chain loaded 8 bits
per cycle (`shift_in`), and captures every output port into a register chain read 8 bits per
cycle (`capture`, then `shift_out`): all of the inner logic stays observable, so synthesis keeps
it, and the top has 21 pins. The clock domain is the inner design's `sync`.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

LANE = 8


def _leaves(obj, flow: wiring.Flow, prefix: str):
    """(name, signal) of every port leaf of `obj` whose flow is `flow` (In or Out), in signature order."""
    for path, member, value in obj.signature.flatten(obj):
        if member.flow == flow:
            yield "__".join(map(str, path)), Value.cast(value)    # data views -> their bits


class SerialShell(wiring.Component):
    """`inner` (a wiring.Component) with its ports behind `din`/`dout` shift chains.

    Ports: `din` (8 bits) and `shift_in` load the input chain one byte per cycle; `capture` copies
    every output of the inner design into the output chain, `shift_out` shifts it one byte per
    cycle onto `dout`. `in_bits`/`out_bits` give the chain lengths."""

    def __init__(self, inner: wiring.Component):
        if not isinstance(inner, wiring.Component):
            raise TypeError(f"inner must be a wiring.Component, not {inner!r}")
        self.inner = inner
        self.ins = list(_leaves(inner, wiring.In, ""))
        self.outs = list(_leaves(inner, wiring.Out, ""))
        self.in_bits = sum(len(v) for _, v in self.ins)
        self.out_bits = sum(len(v) for _, v in self.outs)
        super().__init__({"din": In(LANE), "shift_in": In(1), "capture": In(1), "shift_out": In(1),
                          "dout": Out(LANE)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.inner = self.inner
        n_in = -(-max(self.in_bits, 1) // LANE) * LANE
        n_out = -(-max(self.out_bits, 1) // LANE) * LANE
        chain_in = Signal(n_in)
        chain_out = Signal(n_out)
        with m.If(self.shift_in):
            m.d.sync += chain_in.eq(Cat(chain_in[LANE:], self.din))
        at = 0
        for _, v in self.ins:
            m.d.comb += v.eq(chain_in[at:at + len(v)])
            at += len(v)
        with m.If(self.capture):
            m.d.sync += chain_out.eq(Cat(*(v for _, v in self.outs)))
        with m.Elif(self.shift_out):
            m.d.sync += chain_out.eq(chain_out >> LANE)
        m.d.comb += self.dout.eq(chain_out[:LANE])
        return m
