"""The Vitis kernel's AXI4-Lite control registers (backend_hw/kernel/control.py) in amaranth.sim:
ap_ctrl_hs (start, done and ready cleared on read, idle), the interrupt registers (status toggled
by a written 1), the arguments read back, and the AXI4-Lite handshakes in either order."""
import random

import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.kernel.args import CTRL, GIE, IER, ISR, kernel_args
from llmfab.backend_hw.kernel.control import ControlRegs
from llmfab.ir.target import load_target


def _p(dut, name):
    return getattr(dut, f"s_axi_control_{name}")


async def write(ctx, dut, addr, data, strb=0xF, order="together"):
    """One AXI4-Lite write; `order`: AW and W together, AW first or W first. Returns the cycles
    until B."""
    aw = lambda v: [ctx.set(_p(dut, "AWADDR"), addr), ctx.set(_p(dut, "AWVALID"), v)]  # noqa: E731
    w = lambda v: [ctx.set(_p(dut, "WDATA"), data), ctx.set(_p(dut, "WSTRB"), strb),  # noqa: E731
                   ctx.set(_p(dut, "WVALID"), v)]
    first = {"together": (aw, w), "aw": (aw,), "w": (w,)}[order]
    for f in first:
        f(1)
    pending = {f for f in (aw, w)} - set(first)
    got = {"aw": False, "w": False}
    cycles = 0
    while not (got["aw"] and got["w"]):
        if ctx.get(_p(dut, "AWVALID")) and ctx.get(_p(dut, "AWREADY")):
            got["aw"] = True
        if ctx.get(_p(dut, "WVALID")) and ctx.get(_p(dut, "WREADY")):
            got["w"] = True
        await ctx.tick()
        cycles += 1
        if got["aw"]:
            ctx.set(_p(dut, "AWVALID"), 0)
        if got["w"]:
            ctx.set(_p(dut, "WVALID"), 0)
        for f in list(pending):     # the second channel a cycle after the first
            f(1)
            pending.discard(f)
        assert cycles < 20
    ctx.set(_p(dut, "BREADY"), 1)
    while not ctx.get(_p(dut, "BVALID")):
        await ctx.tick()
        cycles += 1
        assert cycles < 20
    assert ctx.get(_p(dut, "BRESP")) == 0
    await ctx.tick()
    ctx.set(_p(dut, "BREADY"), 0)
    return cycles


async def read(ctx, dut, addr):
    ctx.set(_p(dut, "ARADDR"), addr)
    ctx.set(_p(dut, "ARVALID"), 1)
    while not ctx.get(_p(dut, "ARREADY")):
        await ctx.tick()
    await ctx.tick()
    ctx.set(_p(dut, "ARVALID"), 0)
    ctx.set(_p(dut, "RREADY"), 1)
    while not ctx.get(_p(dut, "RVALID")):
        await ctx.tick()
    value = ctx.get(_p(dut, "RDATA"))
    assert ctx.get(_p(dut, "RRESP")) == 0
    await ctx.tick()
    ctx.set(_p(dut, "RREADY"), 0)
    return value


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("target", ["sim-small", "u280"])
def test_arguments_read_back(target):
    t = load_target(target)
    dut = ControlRegs(t)
    args = kernel_args(t)
    rng = random.Random(1)
    values = {a.name: rng.getrandbits(8 * a.size) for a in args}
    driven = {a.name: rng.getrandbits(8 * a.size) for a in args if a.readonly}

    async def bench(ctx):
        for name, v in driven.items():       # the kernel drives the read-only ones
            ctx.set(getattr(dut, f"arg_{name}"), v)
        for i, a in enumerate(args):
            for k in range(a.size // 4):
                await write(ctx, dut, a.offset + 4 * k, values[a.name] >> 32 * k & 0xFFFFFFFF,
                            order=("together", "aw", "w")[i % 3])
        for a in args:
            want = driven.get(a.name, values[a.name])     # host writes to status / cycles are ignored
            assert ctx.get(getattr(dut, f"arg_{a.name}")) == want, a.name
            got = 0
            for k in range(a.size // 4):
                got |= await read(ctx, dut, a.offset + 4 * k) << 32 * k
            assert got == want, a.name
        # byte strobes: only the second byte of the first argument changes
        a = args[0]
        await write(ctx, dut, a.offset, 0xA5A5A5A5, strb=0b0010)
        want = values[a.name] & ~0xFF00 | 0xA500
        assert await read(ctx, dut, a.offset) == want & 0xFFFFFFFF
        assert await read(ctx, dut, args[-1].offset + 8) == 0         # unmapped: 0
        assert await read(ctx, dut, 0xFFC) == 0
    _run(dut, bench)


def test_offsets_follow_the_register_map():
    t = load_target("u280")
    args = kernel_args(t)
    assert [(a.name, a.offset, a.size, a.readonly) for a in args[:8]] == [
        ("length", 0x10, 4, False), ("program", 0x18, 8, False), ("program_bytes", 0x20, 4, False),
        ("tokens", 0x28, 8, False), ("tokens_bytes", 0x30, 4, False), ("status", 0x38, 4, True),
        ("cycles", 0x40, 8, True), ("hbm0", 0x48, 8, False)]
    assert [a.name for a in args if a.pointer] == ["program", "tokens"] + [f"hbm{k}" for k in range(32)]
    assert [a.bundle for a in args if a.name.startswith("hbm")] == [f"m_axi_hbm{k}" for k in range(32)]
    assert args[-1].offset == 0x48 + 8 * 31


def test_ap_ctrl_hs_start_done_idle_ready():
    dut = ControlRegs(load_target("sim-small"))

    async def bench(ctx):
        ctx.set(dut.ap_idle, 1)
        assert await read(ctx, dut, CTRL) == 0b0100                    # idle
        await write(ctx, dut, CTRL, 0)                                  # a 0 does not start
        assert not ctx.get(dut.ap_start)
        await write(ctx, dut, CTRL, 1)
        assert ctx.get(dut.ap_start)
        ctx.set(dut.ap_idle, 0)
        assert await read(ctx, dut, CTRL) == 0b0001                    # started, busy
        assert await read(ctx, dut, CTRL) == 0b0001                    # start holds until ready
        ctx.set(dut.ap_done, 1)                                         # the kernel finishes
        await ctx.tick()
        ctx.set(dut.ap_done, 0)
        ctx.set(dut.ap_idle, 1)
        assert not ctx.get(dut.ap_start)                                # cleared by ap_ready
        assert await read(ctx, dut, CTRL) == 0b1110                    # done, idle, ready
        assert await read(ctx, dut, CTRL) == 0b0100                    # done and ready clear on read
        assert not ctx.get(dut.interrupt)                               # GIE off
    _run(dut, bench)


def test_interrupt_status_toggles_on_write():
    dut = ControlRegs(load_target("sim-small"))

    async def finish(ctx):
        ctx.set(dut.ap_done, 1)
        await ctx.tick()
        ctx.set(dut.ap_done, 0)

    async def bench(ctx):
        ctx.set(dut.ap_idle, 1)
        await finish(ctx)                                               # IER off: no status
        assert await read(ctx, dut, ISR) == 0
        await write(ctx, dut, GIE, 1)
        await write(ctx, dut, IER, 0b01)                                # done only
        assert (await read(ctx, dut, GIE), await read(ctx, dut, IER)) == (1, 0b01)
        await finish(ctx)
        assert await read(ctx, dut, ISR) == 0b01
        assert ctx.get(dut.interrupt)
        assert await read(ctx, dut, ISR) == 0b01                        # reading does not clear it
        await write(ctx, dut, ISR, 0b01)                                # a written 1 toggles it off
        assert await read(ctx, dut, ISR) == 0
        assert not ctx.get(dut.interrupt)
        await write(ctx, dut, IER, 0b11)
        await finish(ctx)
        assert await read(ctx, dut, ISR) == 0b11
        await write(ctx, dut, ISR, 0b10)                                # clear ready, keep done
        assert await read(ctx, dut, ISR) == 0b01
        assert ctx.get(dut.interrupt)
        await write(ctx, dut, GIE, 0)                                   # the global enable masks it
        assert not ctx.get(dut.interrupt)
        await write(ctx, dut, ISR, 0b01)
        assert await read(ctx, dut, ISR) == 0
    _run(dut, bench)


def test_status_and_cycles():
    """KernelStatus: the error bits of a run are sticky until the next start (the start cycle's
    own events kept), the cycle count runs from start to done, both included, then holds."""
    from llmfab.backend_hw.kernel.args import STATUS_BITS
    from llmfab.backend_hw.kernel.status import KernelStatus
    dut = KernelStatus()
    bit = {n: 1 << b for b, n, _ in STATUS_BITS}

    async def pulse(ctx, sig, value=1):
        ctx.set(sig, value)
        await ctx.tick()
        ctx.set(sig, 0)

    async def bench(ctx):
        ctx.set(dut.events, bit["program_cut"])           # seen on the start cycle
        await pulse(ctx, dut.start)
        ctx.set(dut.events, 0)
        assert ctx.get(dut.status) == bit["program_cut"] and ctx.get(dut.cycles) == 1
        await ctx.tick().repeat(9)
        assert ctx.get(dut.cycles) == 10                  # a running count
        await pulse(ctx, dut.events, bit["read_error"])
        await ctx.tick().repeat(4)
        assert ctx.get(dut.status) == bit["program_cut"] | bit["read_error"]   # sticky
        await pulse(ctx, dut.done)                        # cycle 16 is the done cycle
        await ctx.tick().repeat(5)
        assert ctx.get(dut.cycles) == 16                  # holds after done
        await pulse(ctx, dut.events, bit["illegal_instruction"])
        assert ctx.get(dut.status) == bit["program_cut"] | bit["read_error"] | bit["illegal_instruction"]
        await pulse(ctx, dut.start)                       # a new run clears both
        assert ctx.get(dut.status) == 0 and ctx.get(dut.cycles) == 1
        await ctx.tick().repeat(2)
        await pulse(ctx, dut.done)
        await ctx.tick()
        assert ctx.get(dut.cycles) == 4
    _run(dut, bench)
