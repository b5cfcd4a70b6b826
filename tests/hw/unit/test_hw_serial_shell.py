"""The pin-limited shell: inputs shifted in a byte at a time reach the inner design; its outputs
come back a byte at a time."""
import random

import pytest
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from llmfab.backend_hw.serial_shell import SerialShell

pytestmark = pytest.mark.sim


class MulAdd(wiring.Component):
    a: In(signed(13))
    b: In(signed(9))
    c: In(20)
    y: Out(signed(23))
    z: Out(3)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.y.eq(self.a * self.b + self.c), self.z.eq(self.c[:3])]
        return m


def test_round_trip_through_the_shell():
    inner = MulAdd()
    shell = SerialShell(inner)
    assert (shell.in_bits, shell.out_bits) == (42, 26)
    rng = random.Random(3)
    seen = []

    async def bench(ctx):
        for _ in range(20):
            a, b, c = rng.randrange(-4096, 4096), rng.randrange(-256, 256), rng.randrange(1 << 20)
            bits = (a & (1 << 13) - 1) | (b & (1 << 9) - 1) << 13 | c << 22
            for k in range(6):                        # 42 bits -> 6 bytes, last byte first out of the chain
                ctx.set(shell.din, bits >> 8 * k & 0xFF)
                ctx.set(shell.shift_in, 1)
                await ctx.tick()
            ctx.set(shell.shift_in, 0)
            await ctx.tick()                          # the inner register takes the inputs
            ctx.set(shell.capture, 1)
            await ctx.tick()
            ctx.set(shell.capture, 0)
            got = 0
            for k in range(4):
                got |= ctx.get(shell.dout) << 8 * k
                ctx.set(shell.shift_out, 1)
                await ctx.tick()
            ctx.set(shell.shift_out, 0)
            y = got & (1 << 23) - 1
            y = y - (1 << 23) if y >> 22 else y
            seen.append((y, got >> 23 & 7) == (a * b + c, c & 7))

    sim = Simulator(shell)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == 20 and all(seen)


def test_needs_a_component():
    with pytest.raises(TypeError, match=r"^inner must be a wiring.Component, not 3$"):
        SerialShell(3)
