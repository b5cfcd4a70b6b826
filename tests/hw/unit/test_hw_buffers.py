"""The buffer bank, both organisations: every client reads and writes every buffer, byte enables,
one-cycle reads; block RAM: one read and one write a cycle per bank, the first client asking wins."""
import dataclasses
import random

import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.buffers import ORGANISATIONS, BufferBank, buffer_ids
from llmfab.backend_hw.toolflow import synth
from llmfab.ir.isa import BufferId
from llmfab.ir.target import BufferKind, load_target

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("organisation", ORGANISATIONS)
@pytest.mark.parametrize("target", ["sim-small", "ecp5-85k"])
def test_clients_read_and_write_every_buffer(target, organisation):
    """Random reads and writes from 3 clients; only taken requests (`ready`) happen. With
    `"ports"` every request is taken; with block RAM some are refused, never all."""
    t = load_target(target)
    ids = buffer_ids(t)
    init = {BufferId.ACT: bytes(range(256)) * 4}
    dut = BufferBank(t, 3, init=init, organisation=organisation)
    model = {b: bytearray(init.get(b, b"")) + bytearray(n - len(init.get(b, b""))) for b, (n, _) in ids.items()}
    rng = random.Random(1)
    checked, refused = [], []

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
            taken = [ctx.get(c.ready) for c in dut.clients]
            refused.append(len(taken) - sum(taken))
            issued = [op for op, ok in zip(issued, taken) if ok]
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
    if organisation == "ports":
        assert not any(refused)
    else:
        assert 0 < sum(refused) < len(refused) * len(dut.clients) // 2


def test_block_ram_arbitration():
    """sim-small with two weight banks: words 0 and 1 are in different banks, 0 and 2 in the same;
    the first client asking a port wins it; a read and a write share a bank in the same cycle."""
    t = load_target("sim-small")
    dut = BufferBank(t, 3, init={BufferId.WEIGHT: bytes(range(64))})
    assert [len(v) for v in dut.memories.values()] == [b.banks for b in t.buffers]
    got = []

    async def bench(ctx):
        def ask(i, addr, we=0):
            c = dut.clients[i]
            ctx.set(c.buf, BufferId.WEIGHT), ctx.set(c.addr, addr), ctx.set(c.re, 1 - we), ctx.set(c.we, we)
            ctx.set(c.be, 0xF), ctx.set(c.wdata, 0xAABBCCDD)
        for case in ([(0, 0), (1, 2), (2, 1)],             # 0 and 1 share bank 0: client 1 waits
                     [(1, 2), (2, 4)],                     # client 1 first now
                     [(0, 2), (1, 2, 1)]):                 # a read and a write of bank 0
            for c in dut.clients:
                ctx.set(c.re, 0), ctx.set(c.we, 0)
            for a in case:
                ask(*a)
            got.append([ctx.get(c.ready) for c in dut.clients])
            await ctx.tick()
            got.append([ctx.get(dut.clients[a[0]].rdata) for a in case if len(a) == 2])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    word = [int.from_bytes(bytes(range(4 * a, 4 * a + 4)), "little") for a in range(16)]
    assert got[0] == [1, 0, 1] and got[1][0] == word[0] and got[1][2] == word[1]
    assert got[2] == [1, 1, 0] and got[3][0] == word[2]
    assert got[4] == [1, 1, 1] and got[5] == [word[2]]     # the read sees the word before the write


def test_bad_arguments():
    t = load_target("sim-small")
    with pytest.raises(ValueError, match=r"^clients must be a positive integer, not 0$"):
        BufferBank(t, 0)
    with pytest.raises(ValueError, match=r"^init of SCRATCH holds 16385 bytes, more than the buffer's 16384$"):
        BufferBank(t, 1, init={BufferId.SCRATCH: bytes(16385)})
    with pytest.raises(ValueError, match=r"^organisation must be one of block_ram, ports, not 'flops'$"):
        BufferBank(t, 1, organisation="flops")


@pytest.mark.synth
def test_buffer_kinds_map_to_their_rams():
    """Yosys synth_xilinx (xcup) honours each buffer's `kind`: a `uram` buffer becomes URAM288
    (2 banks of 4096 x 64 bits: one each), `bram` RAMB18/36, `lutram` LUT RAM, none flip-flops."""
    t = load_target("sim-small")
    shape = {"weight": (BufferKind.BRAM, 2048), "act": (BufferKind.URAM, 65536), "kv": (BufferKind.BRAM, 2048),
             "scratch": (BufferKind.LUTRAM, 256), "inst": (BufferKind.BRAM, 2048)}
    t = dataclasses.replace(t, buffers=tuple(
        dataclasses.replace(b, kind=shape[b.name.value][0], bytes=shape[b.name.value][1],
                            width_bits=64 if b.name.value == "act" else b.width_bits) for b in t.buffers))
    r = synth.xilinx(BufferBank(t, 2), "bank")
    assert r.uram == r.cells.get("URAM288") == 2
    assert r.bram > 0 and any(c.startswith("RAM64M") or c.startswith("RAM32M") for c in r.cells)
    # 64 KiB of act in flip-flops would be 2^19 of them: the arbiters' registers are a few dozen
    assert r.ff < 400, r.ff
