"""The buffer bank: every client reads and writes every buffer, byte enables, one-cycle reads."""
import random

import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.buffers import BufferBank, buffer_ids
from llmfab.ir.isa import BufferId
from llmfab.ir.target import load_target

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("target", ["sim-small", "ecp5-85k"])
def test_clients_read_and_write_every_buffer(target):
    t = load_target(target)
    ids = buffer_ids(t)
    init = {BufferId.ACT: bytes(range(256)) * 4}
    dut = BufferBank(t, 2, init=init)
    model = {b: bytearray(init.get(b, b"")) + bytearray(n - len(init.get(b, b""))) for b, (n, _) in ids.items()}
    rng = random.Random(1)
    checked = []

    async def bench(ctx):
        for _ in range(400):
            issued = []
            for ci, c in enumerate(dut.clients):
                bid = rng.choice(list(ids))
                nbytes, w = ids[bid]
                wb = w // 8
                addr = rng.randrange(min(nbytes // wb, 64))  # a small window: reads hit earlier writes
                ctx.set(c.buf, bid)
                ctx.set(c.addr, addr)
                if rng.random() < 0.5 and ci == 0 or rng.random() < 0.3:
                    be = rng.randrange(1 << wb)
                    data = rng.randrange(1 << w)
                    ctx.set(c.we, 1); ctx.set(c.re, 0); ctx.set(c.be, be); ctx.set(c.wdata, data)
                    issued.append(("w", bid, addr * wb, wb, be, data))
                else:
                    ctx.set(c.we, 0); ctx.set(c.re, 1)
                    issued.append(("r", ci, bid, addr * wb, wb))
            await ctx.tick()
            for op in issued:                              # reads see the memory before this cycle's writes
                if op[0] == "r":
                    _, ci, bid, at, wb = op
                    checked.append(ctx.get(dut.clients[ci].rdata) == int.from_bytes(model[bid][at:at + wb], "little"))
            for op in issued:
                if op[0] == "w":
                    _, bid, at, wb, be, data = op
                    for j in range(wb):
                        if be >> j & 1:
                            model[bid][at + j] = data >> 8 * j & 0xFF

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 200 and all(checked)


def test_bad_arguments():
    t = load_target("sim-small")
    with pytest.raises(ValueError, match=r"^clients must be a positive integer, not 0$"):
        BufferBank(t, 0)
    with pytest.raises(ValueError, match=r"^init of SCRATCH holds 16385 bytes, more than the buffer's 16384$"):
        BufferBank(t, 1, init={BufferId.SCRATCH: bytes(16385)})
