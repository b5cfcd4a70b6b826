"""`KernelStatus`: the kernel's read-only `status` and `cycles` registers (args.py).

`start` pulses when a run starts (the loader takes ap_start), `done` when it ends (ap_done).
`status` is the OR of the `events` bits (args.STATUS_BITS) seen since the last start, the start
cycle's included (the loader's size checks are made then); `cycles` counts ap_clk cycles from the
start cycle to the done cycle, both included, and holds until the next start, so a host reads the
last run's length after ap_done and a running count before it.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .args import STATUS_BITS

__all__ = ["KernelStatus"]


class KernelStatus(wiring.Component):
    def __init__(self):
        super().__init__({"start": In(1), "done": In(1), "events": In(len(STATUS_BITS)),
                          "status": Out(32), "cycles": Out(64)})

    def elaborate(self, platform) -> Module:
        m = Module()
        busy = Signal()
        with m.If(self.start):
            m.d.sync += [self.status.eq(self.events), self.cycles.eq(1), busy.eq(1)]
        with m.Else():
            m.d.sync += self.status.eq(self.status | self.events)
            with m.If(busy):
                m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(self.done):
            m.d.sync += busy.eq(0)
        return m
