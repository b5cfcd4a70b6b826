"""The Vitis kernel top in amaranth.sim: a host drives s_axi_control as XRT would (arguments,
ap_start, poll ap_done), the loader fetches the program and token ids from device memory through
m_axi_hbm0, the accelerator runs with its channel rebased on the `hbm0` argument, and memory and
buffers end as the functional simulator's, bit for bit; then the `status` register reports an
illegal instruction and cut token ids, and SLVERR responses, in two more runs."""
import time
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from conftest import tiny_compiled
from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.buffers import buffer_ids
from llmfab.backend_hw.kernel.args import CTRL, kernel_args, register_writes, status_names
from llmfab.backend_hw.protocol.axi import AxiMemory
from llmfab.backend_hw.sim.kernel_system import KernelHarness
from llmfab.ir.isa import INST_BYTES, BufferId, IsaError, Opcode, Program, Queue, SysFunc, decode, encode, make
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine
from test_hw_kernel_regs import read, write

pytestmark = pytest.mark.sim

BASE = 0x10000       # channel 0's image; the program at PROG, the token ids at TOKENS, below it
PROG, TOKENS, BAD = 0x1000, 0x3000, 0x8000     # BAD: a program with an illegal instruction


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def test_kernel_runs_a_program_from_device_memory():
    t = load_target("sim-small")
    c = tiny_compiled()
    m = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    tokens = np.array([7], "<i4").tobytes()
    m.write(BufferId.ACT, 0, tokens)
    start_hbm = [bytes(h) for h in m.hbm]
    full = _program(c, "decode", 6)
    head = list(full.instructions[:2])
    assert [i.op for i in head] == [Opcode.LD, Opcode.MISC]
    # then a store of the embedded row (after EMBED: a token from the SFU queue): the write path
    head[1] = head[1].evolve(release=head[1].release | Queue.STORE)
    store = next(i for i in full.instructions if i.op is Opcode.ST).evolve(
        wait=Queue.SFU, release=0, buf=BufferId.ACT, buf_addr=head[1]["dst_addr"])
    prog = replace(full, instructions=(*head, store, make(Opcode.SYS, func=SysFunc.END)))
    m.run(prog, 6)
    assert bytes(m.hbm[0]) != start_hbm[0]                              # the ST wrote
    code = b"".join(encode(i) for i in prog.instructions)

    assert t.memory.channels == 1
    mem = bytearray(BASE) + bytearray(start_hbm[0])
    mem[PROG:PROG + len(code)] = code
    mem[TOKENS:TOKENS + len(tokens)] = tokens
    mem[TOKENS + len(tokens):TOKENS + 64] = bytes(range(1, 65 - len(tokens)))   # not to be copied
    illegal = bytes([7]) + bytes(INST_BYTES - 1)                       # opcode 7
    with pytest.raises(IsaError):
        decode(illegal)
    bad = illegal + encode(make(Opcode.SYS, func=SysFunc.END))
    mem[BAD:BAD + len(bad)] = bad
    act_bytes = buffer_ids(t)[BufferId.ACT][0]
    dut = KernelHarness(t, formats_of([full]))
    args = {a.name: a for a in kernel_args(t)}
    values = {"length": 6, "program": PROG, "program_bytes": len(code), "tokens": TOKENS,
              "tokens_bytes": len(tokens), "hbm0": BASE}
    out = {}

    async def host(ctx):
        for name, v in values.items():
            for k in range(args[name].size // 4):
                await write(ctx, dut, args[name].offset + 4 * k, v >> 32 * k & 0xFFFFFFFF)
        assert await read(ctx, dut, CTRL) & 0b0100                     # idle
        await write(ctx, dut, CTRL, 1)
        polls = 0
        while not (status := await read(ctx, dut, CTRL)) & 0b0010:
            polls += 1
            assert polls < 2000, "ap_done never rose"
        assert status & 0b1100 == 0b1100                                # idle and ready with done
        assert await read(ctx, dut, CTRL) == 0b0100                    # cleared on read
        acc = dut.core.accelerator
        assert not ctx.get(acc.error)
        for bid in acc.bank.memories:
            out[bid] = acc.bank.peek(ctx, bid)
        assert await read(ctx, dut, args["status"].offset) == 0
        out["cycles"] = await read(ctx, dut, args["cycles"].offset) | await read(ctx, dut, args["cycles"].offset + 4) << 32
        # a second run: an illegal instruction, and more token bytes than ACT holds: both reported
        for off, word in register_writes(t, {"program": BAD, "program_bytes": len(bad), "tokens_bytes": act_bytes + 4}):
            await write(ctx, dut, off, word)
        await write(ctx, dut, CTRL, 1)
        polls = 0
        while not await read(ctx, dut, CTRL) & 0b0010:      # the loader copies all of ACT: ~2,600 polls
            polls += 1
            assert polls < 20000, "ap_done never rose"
        out["status"] = await read(ctx, dut, args["status"].offset)
        out["mem"] = bytes(mem[BASE:])
        # a third: the memory answers SLVERR to every read and write (AxiMemory sets the response
        # fields once, at the start); both reported; `cycles` counts while the run goes
        ctx.set(dut.axi[0].r.payload.resp, 2)
        ctx.set(dut.axi[0].b.payload.resp, 2)
        for off, word in register_writes(t, {"program": PROG, "program_bytes": len(code),
                                             "tokens_bytes": len(tokens)}):
            await write(ctx, dut, off, word)
        await write(ctx, dut, CTRL, 1)
        running = [await read(ctx, dut, args["cycles"].offset) for _ in range(2)]
        polls = 0
        while not await read(ctx, dut, CTRL) & 0b0010:
            polls += 1
            assert polls < 2000, "ap_done never rose"
        out["running"] = running + [await read(ctx, dut, args["cycles"].offset)]
        out["status3"] = await read(ctx, dut, args["status"].offset)

    sim = Simulator(dut)
    sim.add_clock(1 / (t.clock_mhz * 1e6))
    sim.add_testbench(AxiMemory(mem, t.memory.port_width_bits).testbench(dut.axi[0]), background=True)
    sim.add_testbench(host)
    t0 = time.perf_counter()
    sim.run()
    print(f"kernel: {time.perf_counter() - t0:.1f} s; the run took {out['cycles']} cycles")
    assert out["status"] == 0b10001 and status_names(out["status"]) == ["illegal_instruction", "tokens_cut"]
    assert 50 < out["cycles"] < 2000 * 20
    assert out["status3"] == 0b110 and status_names(out["status3"]) == ["read_error", "write_error"]
    assert 0 < out["running"][0] < out["running"][1] < out["running"][2]      # counting, then the total
    assert out["mem"] == bytes(m.hbm[0])
    assert out[BufferId.INST][:len(code)] == code
    for b in (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT):
        assert out[b] == bytes(m.buffers[b]), b.name


def test_vitis_top_runs_on_ap_clk_and_resets_on_ap_rst_n_low():
    """The emitted top: registers clock on `ap_clk`; `ap_rst_n` low (synchronous) clears them."""
    from llmfab.backend_hw.kernel.vitis import VitisKernel
    t = load_target("sim-small")
    dut = VitisKernel(t)
    length = kernel_args(t)[0]
    got = {}

    async def clock(ctx):
        while True:
            ctx.set(dut.ap_clk, 0)
            await ctx.delay(5e-9)
            ctx.set(dut.ap_clk, 1)
            await ctx.delay(5e-9)

    async def host(ctx):
        ctx.set(dut.ap_rst_n, 1)
        await ctx.tick()
        await write(ctx, dut, length.offset, 0x1234)
        got["written"] = await read(ctx, dut, length.offset)
        got["ctrl"] = await read(ctx, dut, CTRL)
        ctx.set(dut.ap_rst_n, 0)
        await ctx.tick()
        ctx.set(dut.ap_rst_n, 1)
        got["after reset"] = await read(ctx, dut, length.offset)

    sim = Simulator(dut)
    sim.add_process(clock)
    sim.add_testbench(host)
    sim.run_until(2e-6)
    assert got == {"written": 0x1234, "ctrl": 0b0100, "after reset": 0}
