"""The DMA's instructions in flight: which may start beside the others, and their `done` in order.

A ring of `slots` entries, the oldest at `head`. An offered instruction may be taken when nothing is
in flight, or when every instruction in flight is a single slice (a KV tile: one row in one channel,
or rows merged) of the offered one's direction, on channels the offered one does not use, the
offered one is not indirect (its row-id reads would take channel 0's port) and a slot is free. Each
channel then holds one instruction's slices, so that instruction runs as it would alone. `done`
pulses for the oldest once the generator is through with it and its channels are idle and answered;
its slot frees the next cycle. The cycle model plays the same rule (dma/cycles.py `DmaIssue`).
"""
from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class InFlight(wiring.Component):
    """Ports (`channels` bits where a mask): the offered instruction's `mask` (channels it uses),
    `st`, `indirect`, `empty`; `accept` (out: it may be taken); `take` (in: it is taken this
    cycle); `finished` (in: the generator emitted the last slice of the one it took last, which
    was `single`); `free` (in: per channel, idle with every write answered); `done` (out)."""

    def __init__(self, channels: int, slots: int):
        self.channels, self.slots = channels, slots
        super().__init__({"mask": In(channels), "st": In(1), "indirect": In(1), "empty": In(1),
                          "accept": Out(1), "take": In(1), "finished": In(1), "single": In(1),
                          "free": In(channels), "done": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        W, C = self.slots, self.channels
        valid = [Signal(name=f"valid{s}") for s in range(W)]
        mask = [Signal(C, name=f"mask{s}") for s in range(W)]          # the channels it uses
        single = [Signal(name=f"single{s}") for s in range(W)]        # emitted, as one slice
        st = [Signal(name=f"st{s}") for s in range(W)]
        emitted = [Signal(name=f"emitted{s}") for s in range(W)]      # the generator is through with it
        head, tail, cur = Signal(range(W)), Signal(range(W)), Signal(range(W))   # oldest; next free; generating

        used = Const(0, C)                                           # channels in flight
        for v, k in zip(valid, mask):
            used = used | Mux(v, k, 0)
        alone = Cat(*(~v | (sg & (s == self.st)) for v, sg, s in zip(valid, single, st))).all()
        m.d.comb += self.accept.eq(~Cat(*valid).any() |
                                   (~Cat(*valid).all() & alone & ~self.indirect & ((self.mask & used) == 0)))

        complete = Signal()
        with m.Switch(head):
            for j in range(W):
                with m.Case(j):
                    m.d.comb += complete.eq(valid[j] & emitted[j] & ((mask[j] & ~self.free) == 0))
        m.d.comb += self.done.eq(complete)
        with m.If(complete):
            m.d.sync += head.eq(Mux(head == W - 1, 0, head + 1))
            for j in range(W):
                with m.If(head == j):
                    m.d.sync += valid[j].eq(0)
        with m.If(self.take):                    # (an empty instruction is through the generator at once)
            m.d.sync += [tail.eq(Mux(tail == W - 1, 0, tail + 1)), cur.eq(tail)]
            for j in range(W):
                with m.If(tail == j):
                    m.d.sync += [valid[j].eq(1), mask[j].eq(self.mask), st[j].eq(self.st),
                                 emitted[j].eq(self.empty), single[j].eq(self.empty)]
        with m.If(self.finished):
            for j in range(W):
                with m.If(cur == j):
                    m.d.sync += [emitted[j].eq(1), single[j].eq(self.single)]
        return m
