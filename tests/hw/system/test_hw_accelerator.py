"""The whole accelerator (controller, fetch, DMA, matrix unit, SFU unit, buffers) runs a compiled
program of a fixture model in amaranth.sim and ends with the same HBM and buffer bytes as the
functional simulator (the executable ISA semantics), bit for bit."""
import time
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from conftest import tiny_compiled
from llmfab.backend_hw.accelerator import Accelerator, formats_of
from llmfab.backend_hw.protocol.axi import AxiMemory
from llmfab.ir.isa import INST_BYTES, BufferId, Opcode, Program, SysFunc, encode, make
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine
from llmfab.simulator import DesignUnits, schedule

pytestmark = pytest.mark.sim


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def run_rtl(target, program: Program, length: int, hbm: list[bytes], buffers: dict, formats, max_cycles=400_000):
    """Run `program` at LEN = `length` on the RTL from the given HBM and buffer contents; returns
    (hbm images, buffer bytes, cycles)."""
    init = dict(buffers)
    init[BufferId.INST] = b"".join(encode(i) for i in program.instructions)
    acc = Accelerator(target, formats, init=init)
    mems = [bytearray(img) for img in hbm]
    axis = [AxiMemory(mem, target.memory.port_width_bits) for mem in mems]
    out = {}

    async def bench(ctx):
        ctx.set(acc.length, length)
        ctx.set(acc.start, 1)
        await ctx.tick()
        ctx.set(acc.start, 0)
        cycles = 1
        while not ctx.get(acc.halted):
            await ctx.tick()
            cycles += 1
            assert cycles < max_cycles, "the program did not halt"
            assert not ctx.get(acc.error)
        out["cycles"] = cycles
        for bid in acc.bank.memories:
            out[bid] = acc.bank.peek(ctx, bid)

    sim = Simulator(acc)
    sim.add_clock(1 / (target.clock_mhz * 1e6))
    for k, am in enumerate(axis):
        sim.add_testbench(am.testbench(acc.axi[k]), background=True)
    sim.add_testbench(bench)
    sim.run()
    return [bytes(m) for m in mems], {b: out[b] for b in acc.bank.memories}, out["cycles"]


def test_first_decode_instructions_equal_the_functional_simulator():
    """The AxiMemory testbench path on the head of a decode step (the embedding gather: an indirect
    LD and EMBED); whole programs run in Verilator (tests/hw/system/test_hw_system.py): amaranth.sim runs this
    design at under 100 cycles/s."""
    t = load_target("sim-small")
    c = tiny_compiled()
    m = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
    start_hbm = [bytes(h) for h in m.hbm]
    start_bufs = {b: bytes(v) for b, v in m.buffers.items() if b is not BufferId.INST}
    full = _program(c, "decode", 6)
    head = [i for i in full.instructions[:2]]
    assert [i.op for i in head] == [Opcode.LD, Opcode.MISC]
    prog = replace(full, instructions=(*head, make(Opcode.SYS, func=SysFunc.END)))
    m.run(prog, 6)

    t0 = time.perf_counter()
    hbm, got, cycles = run_rtl(t, prog, 6, start_hbm, start_bufs, formats_of([full]), max_cycles=5_000)
    wall = time.perf_counter() - t0
    timed = schedule(prog, 6, DesignUnits(t)).seconds * t.clock_mhz * 1e6
    print(f"decode head: {len(prog.instructions)} instructions, {cycles} RTL cycles in {wall:.1f} s "
          f"(including elaboration); timing model {timed:.0f} cycles")
    assert bytes(m.buffers[BufferId.ACT]) != start_bufs[BufferId.ACT]     # EMBED wrote its rows
    assert hbm == [bytes(h) for h in m.hbm]
    for b in (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT):
        assert got[b] == bytes(m.buffers[b]), b.name
    assert len(got[BufferId.INST]) >= len(prog.instructions) * INST_BYTES
