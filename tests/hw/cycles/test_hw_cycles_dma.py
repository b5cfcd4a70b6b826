"""backend_hw.dma_cycles: the DMA's cycles per LD/ST, against the DMA in amaranth.sim on AxiRam.

The DMA runs against one `AxiRam` per channel (the whole-system memory) and the real `BufferBank`;
each instruction's cycles (accept -> `done`) must equal `dma_cycles` exactly: on random LD/ST of
tests/hw/unit/test_hw_dma.py's generator (rows, strides, channel striping, indirect rows, any alignment) on
its target variants (32/64/128-bit buffers, 128/64/32-bit AXI ports), on bursts split at 256 beats
and at 4 KiB pages, and on every LD/ST shape of the compiled tiny LLaMA's programs.
"""
import random

import pytest
from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from conftest import tiny_compiled
from llmfab.backend_hw.sim.axi_ram import AxiRam
from llmfab.backend_hw.buffers import BufferBank
from llmfab.backend_hw.dma.unit import DMA
from llmfab.backend_hw.dma.cycles import AXI_RAM_READ_LATENCY, AXI_RAM_WRITE_LATENCY, DmaIssue, dma_cycles
from llmfab.ir.isa import BufferId, Opcode, Program, encode, make, resolve_length
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine, _dma

from test_hw_dma import BUFS, CASES, HBM_BYTES, random_inst, seed_of, target


class _Bench(Elaboratable):
    """The DMA wired to the buffers and one AxiRam per channel, as in SimSystem."""

    def __init__(self, t, hbm, buffers, organisation="ports"):     # ports: no arbitration, what the model times
        self.dma = DMA(t)
        self.bank = BufferBank(t, len(self.dma.buffers), init=buffers, organisation=organisation)
        self.rams = [AxiRam(len(h), t.memory.port_width_bits, self.dma.addr_width, init=bytes(h)) for h in hbm]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dma, m.submodules.bank = self.dma, self.bank
        for port, client in zip(self.dma.buffers, self.bank.clients):
            wiring.connect(m, port, client)
        for k, ram in enumerate(self.rams):
            m.submodules[f"ram{k}"] = ram
            wiring.connect(m, self.dma.axi[k], ram.axi)
        return m


def measure(t, insts, hbm, buffers) -> list[int]:
    """Run `insts` one after another; per instruction, the cycles from accept to `done`."""
    bench = _Bench(t, hbm, buffers)
    dut = bench.dma
    cycles = []

    async def feeder(ctx):
        for inst in insts:
            ctx.set(dut.inst.payload, int.from_bytes(encode(inst), "little"))
            ctx.set(dut.inst.valid, 1)
            while not ctx.get(dut.inst.ready):
                await ctx.tick()
            await ctx.tick()                       # the accept cycle
            ctx.set(dut.inst.valid, 0)
            n = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                n += 1
                assert n < 20000, "the DMA did not finish"
            cycles.append(n)
            assert not any(ctx.get(ram.error) for ram in bench.rams), "a burst AxiRam does not serve"
            await ctx.tick()

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder)
    sim.run()
    return cycles


def ids_of(inst, buffers) -> list[int] | None:
    if not inst["indirect"]:
        return None
    raw = buffers[BufferId(int(inst["ids_buf"]))]
    a = inst["ids_addr"]
    return [int.from_bytes(raw[a + 4 * r:a + 4 * r + 4], "little") for r in range(inst["rows"])]


def check(t, insts, hbm, buffers):
    got = measure(t, insts, hbm, buffers)
    want = [dma_cycles(t, i, ids=ids_of(i, buffers)) for i in insts]
    bad = [(str(i)[:160], g, w) for i, g, w in zip(insts, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(insts)} differ (instruction, RTL, formula): {bad}"


def random_setup(t, seed):
    rng = random.Random(seed)
    sizes = {b: t.buffer(b.name.lower()).bytes for b in BUFS}
    machine = Machine.create([bytes(HBM_BYTES)] * t.memory.channels, HBM_BYTES, sizes)
    return rng, machine


@pytest.mark.sim
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("op", [Opcode.LD, Opcode.ST])
def test_random_instructions(case, op):
    t = target(**CASES[case])
    rng, machine = random_setup(t, seed_of(case, int(op)))
    taken = []
    insts = [random_inst(rng, t, machine, op, taken) for _ in range(2)]
    insts.append(random_inst(rng, t, machine, op, taken))
    while not insts[-1]["indirect"]:                     # at least one gather / scatter each
        insts[-1] = random_inst(rng, t, machine, op, taken)
    check(t, insts, [bytes(HBM_BYTES)] * t.memory.channels, {b: bytes(v) for b, v in machine.buffers.items()})


@pytest.mark.sim
@pytest.mark.parametrize("case", ["sim-small", "narrow-port"])
@pytest.mark.parametrize("op", [Opcode.LD, Opcode.ST])
def test_bursts_split_at_pages_and_256_beats(case, op):
    """Rows across a 4 KiB page (unaligned on both sides), and on the 32-bit port a row of more than
    256 beats; also an empty instruction."""
    t = target(**CASES[case])
    beat = t.memory.beat_bytes
    p = 300 if beat >= 16 else 1030
    insts = [make(op, channels=1, buf=BufferId.ACT, hbm_addr=4096 - 37, hbm_stride=p, buf_addr=3, buf_stride=p,
                  rows=1, row_bytes=p),
             make(op, channels=1, buf=BufferId.SCRATCH, hbm_addr=2 * 4096 - 3 * beat, hbm_stride=40, buf_addr=6,
                  buf_stride=45, rows=3, row_bytes=33),
             make(op, channels=1, buf=BufferId.ACT, rows=0, row_bytes=16),
             # rows back to back on both sides: one slice over two pages (a KV tile)
             make(op, channels=1, buf=BufferId.KV, hbm_addr=4096 - 70, hbm_stride=33, buf_addr=5, buf_stride=33,
                  rows=150, row_bytes=33)]
    check(t, insts, [bytes(HBM_BYTES)] * t.memory.channels, {})


@pytest.mark.sim
def test_striped_short_slices():
    """Many short slices over 4 channels: the generator and the descriptor FIFOs set the pace."""
    t = target(**CASES["4ch-wide-buffers"])
    insts = [make(op, channel=0, channels=4, buf=BufferId.WEIGHT, hbm_addr=a, hbm_stride=20, buf_addr=b,
                  buf_stride=4 * 5 + 4, rows=3, row_bytes=5) for op, a, b in ((Opcode.LD, 13, 7), (Opcode.ST, 0, 0))]
    check(t, insts, [bytes(HBM_BYTES)] * 4, {})


@pytest.mark.sim
def test_compiled_fixture_instructions():
    """The LD/ST instructions of the tiny LLaMA's prefill and decode programs on sim-small, one per
    shape (one or more rows, buffer, gather, alignment mod a beat / word, page crossing; the one
    with the fewest bytes), the gathers with random ids."""
    t = load_target("sim-small")
    c = tiny_compiled()
    hbm_bytes = max(c.layout.used)
    hbm_bytes += -hbm_bytes % 16
    picked = {}
    for name, data in c.programs:
        length = 5 if "prefill" in name else 7
        for inst in Program.from_bytes(data).instructions:
            if inst.op in (Opcode.LD, Opcode.ST):
                i = resolve_length(inst, length)
                key = (i.op, i["rows"] > 1, i["buf"], i["indirect"], i["hbm_addr"] % 16, i["buf_addr"] % 4,
                       i["hbm_addr"] % 4096 + i["row_bytes"] > 4096)
                if key not in picked or i["rows"] * i["row_bytes"] < picked[key]["rows"] * picked[key]["row_bytes"]:
                    picked[key] = i                      # the fewest bytes of each shape (wall time)
    insts = list(picked.values())
    assert any(i["rows"] > 1 for i in insts)
    assert {i.op for i in insts} == {Opcode.LD, Opcode.ST} and any(i["indirect"] for i in insts)
    rng = random.Random(3)
    buffers = {}
    for i in insts:
        if i["indirect"]:
            raw = bytearray(buffers.get(BufferId(int(i["ids_buf"])), bytes(t.buffer(BufferId(int(i["ids_buf"])).name.lower()).bytes)))
            for r in range(i["rows"]):
                a = i["ids_addr"] + 4 * r
                raw[a:a + 4] = rng.randrange(16).to_bytes(4, "little")
            buffers[BufferId(int(i["ids_buf"]))] = bytes(raw)
    check(t, insts, [bytes(hbm_bytes)], buffers)


def stream(t, insts, hbm, buffers, organisation="ports"):
    """Offer `insts` back to back (the next from the cycle after the last was taken, as the
    controller's queue does); returns (offered, accepted, done) cycles and the buffers' and the
    channels' bytes after."""
    bench = _Bench(t, hbm, buffers, organisation)
    dut = bench.dma
    offered, accepted, done, after = [], [], [], {}

    async def bench_tb(ctx):
        now, k = 0, 0
        while len(done) < len(insts):
            if k < len(insts):
                ctx.set(dut.inst.payload, int.from_bytes(encode(insts[k]), "little"))
                ctx.set(dut.inst.valid, 1)
                if len(offered) == k:
                    offered.append(now)
                if ctx.get(dut.inst.ready):
                    accepted.append(now)
                    k += 1
            else:
                ctx.set(dut.inst.valid, 0)
            if ctx.get(dut.done):
                done.append(now)
            assert not any(ctx.get(ram.error) for ram in bench.rams), "a burst AxiRam does not serve"
            await ctx.tick()
            now += 1
            assert now < 50000, "the DMA did not finish"
        after.update({b: bench.bank.peek(ctx, b) for b in BUFS})
        wb = t.memory.beat_bytes
        after["hbm"] = [b"".join(ctx.get(ram.memory.data[a]).to_bytes(wb, "little") for a in range(ram.depth))
                        for ram in bench.rams]

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(bench_tb)
    sim.run()
    return offered, accepted, done, after


@pytest.mark.sim
@pytest.mark.parametrize("op", [Opcode.LD, Opcode.ST])
def test_single_slices_on_distinct_channels_overlap(op):
    """KV-tile-like transfers (rows back to back in one channel: one slice) on distinct channels
    run side by side, up to `INFLIGHT` at once, `done` in order; a striped transfer, a gather and
    one on a busy channel wait for what is in flight. Accept and `done` cycles equal `DmaIssue`'s
    exactly (each instruction costing its `dma_cycles`); the bytes equal the functional simulator's."""
    t = target(**CASES["4ch-wide-buffers"])
    rng = random.Random(int(op))
    sizes = {b: t.buffer(b.name.lower()).bytes for b in BUFS}
    images = [bytes(rng.randrange(256) for _ in range(HBM_BYTES)) for _ in range(4)]
    ref = Machine.create(images, HBM_BYTES, sizes)
    for b in BUFS:
        ref.buffers[b][:] = bytes(rng.randrange(256) for _ in range(sizes[b]))
    start = {b: bytes(v) for b, v in ref.buffers.items()}

    def tile(ch, buf, at, rows, p):     # one slice: rows back to back on both sides
        return make(op, channel=ch, channels=1, buf=buf, hbm_addr=rng.randrange(0, HBM_BYTES - rows * p),
                    hbm_stride=p, buf_addr=at, buf_stride=p, rows=rows, row_bytes=p)
    insts = [tile(0, BufferId.KV, 3, 20, 13), tile(1, BufferId.KV, 300, 9, 33), tile(2, BufferId.ACT, 5, 40, 9),
             tile(3, BufferId.KV, 700, 4, 20), tile(1, BufferId.SCRATCH, 11, 7, 16),   # channel 1 again: waits
             make(op, channel=0, channels=1, buf=BufferId.ACT, hbm_addr=64, hbm_stride=16, buf_addr=900,
                  buf_stride=16, rows=1, row_bytes=45),                                # one row: a single slice
             make(op, channel=1, channels=3, buf=BufferId.WEIGHT, hbm_addr=100, hbm_stride=40, buf_addr=40,
                  buf_stride=3 * 9 + 2, rows=3, row_bytes=9),                          # striped: waits, and holds
             tile(0, BufferId.SCRATCH, 600, 5, 12),
             make(op, channel=2, channels=1, buf=BufferId.ACT, rows=0, row_bytes=8),    # empty
             tile(2, BufferId.KV, 1500, 6, 25)]
    offered, accepted, done, after = stream(t, insts, [bytes(h) for h in images], start)
    model = DmaIssue()
    want = [model.serve(i, ready, dma_cycles(t, i)) for i, ready in zip(insts, offered)]
    assert list(zip(accepted, done)) == want
    assert sum(a < d for a, d in zip(accepted[1:], done)) >= 3        # taken before the previous was done
    assert all(b > a for a, b in zip(done, done[1:]))                  # in order
    for i in insts:
        _dma(ref, i)
    for b in BUFS:
        assert after[b] == bytes(ref.buffers[b]), b.name
    assert [h[:HBM_BYTES] for h in after["hbm"]] == [bytes(h) for h in ref.hbm]


@pytest.mark.sim
def test_kv_tiles_side_by_side_at_u280_banks():
    """Four KV tiles loading at once into a kv buffer of eight 256-bit banks (u280's; two lanes a
    channel) behind the block-RAM arbiters: the channels meet at a bank now and then, which the
    cycle model does not count: every `done` within 4 cycles of `DmaIssue`'s (none here; 12-row tiles
    2 KiB apart measured +1 and +4 on 32-cycle tiles), the bytes exact. (Into a buffer of two banks,
    two channels' two lanes each would take turns: the model is optimistic there.)"""
    t = target(**{**CASES["u280-words"], "channels": 4})
    rng = random.Random(9)
    images = [bytes(rng.randrange(256) for _ in range(HBM_BYTES)) for _ in range(4)]
    insts = [make(Opcode.LD, channel=k % 4, channels=1, buf=BufferId.KV, hbm_addr=800 * (k // 4), hbm_stride=132,
                  buf_addr=1024 * k, buf_stride=132, rows=6, row_bytes=132) for k in range(8)]
    offered, accepted, done, after = stream(t, insts, images, {}, "block_ram")
    model = DmaIssue()
    want = [model.serve(i, ready, dma_cycles(t, i)) for i, ready in zip(insts, offered)]
    assert accepted[:4] == [a for a, _ in want[:4]]                       # four in flight at once
    print("block RAM over the model:", [d - w for d, (_, w) in zip(done, want)], "of", [w - a for a, w in want])
    assert all(0 <= d - w <= 4 for d, (_, w) in zip(done, want)), (done, want)
    ref = Machine.create(images, HBM_BYTES, {b: t.buffer(b.name.lower()).bytes for b in BUFS})
    for i in insts:
        _dma(ref, i)
    assert after[BufferId.KV] == bytes(ref.buffers[BufferId.KV])


def test_latencies_are_axi_ram_defaults_and_change_the_count():
    t = load_target("sim-small")
    ld = make(Opcode.LD, channels=1, buf=BufferId.ACT, hbm_stride=64, buf_stride=64, rows=1, row_bytes=64)
    st = make(Opcode.ST, channels=1, buf=BufferId.ACT, hbm_stride=64, buf_stride=64, rows=1, row_bytes=64)
    assert (AXI_RAM_READ_LATENCY, AXI_RAM_WRITE_LATENCY) == (2, 1)
    assert dma_cycles(t, ld, read_latency=5) == dma_cycles(t, ld) + 3
    assert dma_cycles(t, st, write_latency=4) == dma_cycles(t, st) + 3
    with pytest.raises(ValueError, match=r"^inst must be an LD or ST, not MV$"):
        dma_cycles(t, make(Opcode.MV))
    with pytest.raises(ValueError, match=r"^read_latency must be a positive integer, not 0$"):
        dma_cycles(t, ld, read_latency=0)
