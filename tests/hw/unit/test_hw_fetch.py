"""Instruction fetch: the program's words from the INST buffer, in order, under back-pressure."""
import random

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from llmfab.backend_hw.buffers import BufferBank
from llmfab.backend_hw.control.fetch import FetchUnit
from conftest import tiny_compiled
from llmfab.ir.isa import BufferId, Program, encode
from llmfab.ir.target import load_target

pytestmark = pytest.mark.sim


def test_fetches_a_compiled_program_in_order():
    t = load_target("sim-small")
    c = tiny_compiled()
    prog = Program.from_bytes(dict(c.programs)[c.manifest["programs"][-1]["file"]])   # the decode program
    words = [encode(i) for i in prog.instructions]
    m = Module()
    m.submodules.bank = bank = BufferBank(t, 1, init={BufferId.INST: b"".join(words)})
    m.submodules.fetch = fetch = FetchUnit(t)
    wiring.connect(m, fetch.port, bank.clients[0])
    rng = random.Random(5)
    got = []

    async def bench(ctx):
        ctx.set(fetch.start, 1)
        await ctx.tick()
        ctx.set(fetch.start, 0)
        while len(got) < len(words):
            ctx.set(fetch.inst.ready, rng.random() < 0.6)
            if ctx.get(fetch.inst.valid) and ctx.get(fetch.inst.ready):
                got.append(ctx.get(fetch.inst.payload).to_bytes(32, "little"))
            await ctx.tick()
        ctx.set(fetch.stop, 1)
        await ctx.tick()
        ctx.set(fetch.stop, 0)
        for _ in range(20):
            await ctx.tick()
            assert not ctx.get(fetch.inst.valid)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == words
