"""backend_hw.dma: random LD/ST instructions against `simulator.functional._dma` on the same images.

The DMA runs in amaranth.sim against `AxiMemory` slaves (one per channel, with latency, several
bursts outstanding and random stalls) and a byte-array model of the on-chip buffers; afterwards
every HBM channel and every buffer must equal a `Machine` that ran `_dma` on the same instructions,
byte for byte. AxiMemory itself checks each burst (INCR, aligned, <= 256 beats, inside one 4 KB
page, WLAST). Cycle counts are compared with the bandwidth bound of the port and buffer widths.
"""
import random
import zlib
from dataclasses import replace

import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.protocol.axi import AxiMemory, AxiSignature
from llmfab.backend_hw.dma.unit import DMA, dma_lanes
from llmfab.ir.isa import BufferId, Opcode, encode, make
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine, _dma

HBM_BYTES = 12 * 1024       # per channel: a few 4 KB pages, so bursts meet page boundaries
BUFS = (BufferId.WEIGHT, BufferId.ACT, BufferId.KV, BufferId.SCRATCH)


def target(channels=1, port_bits=128, buf_bits=None, banks=None):
    t = load_target("sim-small")
    t = replace(t, memory=replace(t.memory, channels=channels, port_width_bits=port_bits))
    if buf_bits:
        t = replace(t, buffers=tuple(replace(b, width_bits=w) for b, w in zip(t.buffers, buf_bits)))
    if banks:
        t = replace(t, buffers=tuple(replace(b, banks=n) for b, n in zip(t.buffers, banks)))
    return t


def seed_of(*key) -> int:
    """A seed from test parameters that is the same in every process (`hash` of a str is salted)."""
    return zlib.crc32(repr(key).encode())


def random_inst(rng, t, machine, op, taken: list):
    """A random LD/ST that stays inside HBM and the buffers when run in order after the earlier ones.

    A gather's row ids are written into `machine` now, so no earlier LD may land on them and no two
    id tables may share bytes: `taken` collects (buffer, start, end) of every LD destination and id
    table drawn so far, and a draw that would overlap one is drawn again.
    """
    while True:
        inst, regions, ids = _draw(rng, t, machine, op)
        if not any(b == tb and lo < thi and tlo < hi for b, lo, hi in regions for tb, tlo, thi in taken):
            break
    taken.extend(regions)
    if ids:
        b, a, rows = ids
        for r, row in enumerate(rows):
            machine.buffers[b][a + 4 * r:a + 4 * r + 4] = row.to_bytes(4, "little")
    return inst


def _draw(rng, t, machine, op):
    nch = t.memory.channels
    channels = rng.randint(1, nch)
    channel = rng.randint(0, nch - channels)
    rows = rng.randint(1, 4)
    p = rng.choice([rng.randint(1, 40), rng.randint(1, 150), 16, 64])
    hbm_stride = rng.choice([p, rng.randint(p, 700), 2048])
    hbm_addr = rng.randrange(0, HBM_BYTES - rows * hbm_stride - p + 1)
    buf = rng.choice(BUFS)
    size = len(machine.buffers[buf])
    buf_stride = rng.randint(channels * p, channels * p + 50)
    if rng.random() < 0.25:     # rows back to back on both sides, one channel: the DMA merges them
        channels, rows = 1, rng.randint(2, 40)
        hbm_stride = buf_stride = p
        hbm_addr = rng.randrange(0, HBM_BYTES - rows * p + 1)
    buf_addr = rng.randrange(0, size - rows * buf_stride)
    kw = dict(channel=channel, channels=channels, buf=buf, hbm_addr=hbm_addr, hbm_stride=hbm_stride,
              buf_addr=buf_addr, buf_stride=buf_stride, rows=rows, row_bytes=p)
    regions = [(buf, buf_addr, buf_addr + (rows - 1) * buf_stride + channels * p)] if op is Opcode.LD else []
    ids = None
    if rng.random() < 0.3:
        # a gather (LD) or scatter (ST): row ids from another buffer
        ids_buf = rng.choice([b for b in BUFS if b is not buf])
        ids_addr = 4 * rng.randrange(0, (len(machine.buffers[ids_buf]) - 4 * rows) // 4)
        nrows = (HBM_BYTES - p) // hbm_stride
        hbm_addr = rng.randrange(0, HBM_BYTES - nrows * hbm_stride - p + 1) if nrows else 0
        ids = (ids_buf, ids_addr, [rng.randrange(nrows) if nrows else 0 for _ in range(rows)])
        regions.append((ids_buf, ids_addr, ids_addr + 4 * rows))
        kw.update(indirect=1, ids_buf=ids_buf, ids_addr=ids_addr, hbm_addr=hbm_addr)
    return make(op, **kw), regions, ids


def run_dma(t, insts, hbm, buffers, *, stall, seed, buffer_stall: float = 0.0):
    """Run `insts` through the RTL; `hbm` and `buffers` are updated in place. Returns cycles per
    instruction. `stall`: the AXI memories' stall probability; `buffer_stall`: the buffer port's
    (a request not taken that cycle)."""
    dut = DMA(t)
    wb = t.word_bytes
    mems = [AxiMemory(hbm[c], t.memory.port_width_bits, latency=3, stall=stall, seed=seed + c)
            for c in range(t.memory.channels)]
    cycles = []

    async def feeder(ctx):
        for inst in insts:
            ctx.set(dut.inst.payload, int.from_bytes(encode(inst), "little"))
            ctx.set(dut.inst.valid, 1)
            n = 0
            while not ctx.get(dut.inst.ready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(dut.inst.valid, 0)
            while not ctx.get(dut.done):
                await ctx.tick()
                n += 1
                assert n < 20000, "the DMA did not finish"
            await ctx.tick()
            cycles.append(n + 1)

    grants = random.Random(seed + 100)

    async def buffer_model(ctx):
        # every port granted on its own draw: a group's ports are refused independently
        ports = list(dut.buffers)
        pending, shown = [None] * len(ports), [None] * len(ports)
        while True:
            for q, port in enumerate(ports):
                ctx.set(port.ready, grants.random() >= buffer_stall)
                if pending[q] is not None:
                    b, a = pending[q]
                    w = wb[BufferId(b)]
                    v = int.from_bytes(buffers[BufferId(b)][a * w:(a + 1) * w], "little")
                    if v != shown[q]:      # each set settles the design: only set what changed
                        shown[q] = v
                        ctx.set(port.rdata, v)
                pending[q] = None
            writes = []
            for q, port in enumerate(ports):
                b, a = ctx.get(port.buf), ctx.get(port.addr)
                taken = ctx.get(port.ready)
                if ctx.get(port.re) and taken:
                    pending[q] = (b, a)
                if ctx.get(port.we) and taken:
                    writes.append((b, a, ctx.get(port.be), ctx.get(port.wdata)))
            # two channels' slices may share a word, never a byte
            for j, (b, a, be, _) in enumerate(writes):
                assert not any((b, a) == (b2, a2) and be & be2 for b2, a2, be2, _ in writes[:j]), "two ports wrote one byte"
            for b, a, be, data in writes:
                w = wb[BufferId(b)]
                assert be >> w == 0, "byte enables outside the buffer's width"
                for j in range(w):
                    if be >> j & 1:
                        buffers[BufferId(b)][a * w + j] = data >> 8 * j & 0xFF
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder)
    sim.add_testbench(buffer_model, background=True)
    for mem, port in zip(mems, dut.axi):
        sim.add_testbench(mem.testbench(port), background=True)
    sim.run()
    return cycles


CASES = {
    "sim-small": dict(),
    "2ch-64bit": dict(channels=2, port_bits=64),
    "4ch-wide-buffers": dict(channels=4, port_bits=128, buf_bits=(64, 128, 32, 64, 32)),
    "narrow-port": dict(channels=1, port_bits=32, buf_bits=(64, 64, 64, 64, 32)),
    # 4 words a cycle into ACT and SCRATCH, 2 into WEIGHT and KV (64-bit words), 1 into INST
    "4-lanes": dict(channels=2, port_bits=128, buf_bits=(32, 32, 64, 32, 32), banks=(2, 4, 8, 8, 1)),
    # u280's words: 512-bit beats, 512-bit ACT / SCRATCH words (one a beat), 256-bit KV words (two)
    "u280-words": dict(channels=2, port_bits=512, buf_bits=(128, 512, 256, 512, 32), banks=(8, 16, 8, 8, 1)),
}


@pytest.mark.sim
@pytest.mark.parametrize("case,stall,buffer_stall", [("sim-small", 0.0, 0.0), ("2ch-64bit", 0.3, 0.3),
                                                     ("4ch-wide-buffers", 0.0, 0.5), ("narrow-port", 0.3, 0.0),
                                                     ("4-lanes", 0.2, 0.4), ("u280-words", 0.2, 0.2)])
def test_random_transfers_match_the_functional_simulator(case, stall, buffer_stall):
    t = target(**CASES[case])
    rng = random.Random(seed_of(case, stall))
    sizes = {b: t.buffer(b.name.lower()).bytes for b in BUFS}
    images = [bytes(rng.randrange(256) for _ in range(HBM_BYTES)) for _ in range(t.memory.channels)]
    ref = Machine.create(images, HBM_BYTES, sizes)
    for b in BUFS:
        ref.buffers[b][:] = bytes(rng.randrange(256) for _ in range(sizes[b]))
    taken = []
    insts = [random_inst(rng, t, ref, rng.choice([Opcode.LD, Opcode.ST]), taken) for _ in range(6)]
    hbm = [bytearray(h) for h in ref.hbm]
    buffers = {b: bytearray(v) for b, v in ref.buffers.items()}
    run_dma(t, insts, hbm, buffers, stall=stall, seed=1, buffer_stall=buffer_stall)
    for i in insts:
        _dma(ref, i)
    for c in range(t.memory.channels):
        assert hbm[c] == ref.hbm[c], f"HBM channel {c}"
    for b in BUFS:
        assert buffers[b] == ref.buffers[b], f"buffer {b.name}"


@pytest.mark.sim
@pytest.mark.parametrize("op", [Opcode.LD, Opcode.ST])
def test_long_aligned_transfer_runs_at_the_narrower_width(op):
    """A 1 KiB aligned row crosses a 4 KB page; cycles stay within 10% + set-up of bytes / min(beat, word)."""
    t = target(port_bits=128, buf_bits=(128, 128, 128, 128, 32))
    p = 1024
    inst = make(op, channel=0, channels=1, buf=BufferId.ACT, hbm_addr=4096 - 512, hbm_stride=p, buf_addr=0,
                buf_stride=p, rows=1, row_bytes=p)
    rng = random.Random(5)
    images = [bytes(rng.randrange(256) for _ in range(HBM_BYTES))]
    ref = Machine.create(images, HBM_BYTES, {b: t.buffer(b.name.lower()).bytes for b in BUFS})
    ref.buffers[BufferId.ACT][:] = bytes(rng.randrange(256) for _ in range(len(ref.buffers[BufferId.ACT])))
    hbm, buffers = [bytearray(ref.hbm[0])], {b: bytearray(v) for b, v in ref.buffers.items()}
    (cycles,) = run_dma(t, [inst], hbm, buffers, stall=0.0, seed=0)
    _dma(ref, inst)
    assert hbm[0] == ref.hbm[0] and buffers == ref.buffers
    ideal = p // 16
    assert ideal <= cycles <= 1.1 * ideal + 20, cycles


def test_constructor_and_signature_checks():
    with pytest.raises(TypeError, match=r"^target must be a Target, not 'sim-small'$"):
        DMA("sim-small")
    with pytest.raises(ValueError, match=r"^data_width must be a power of two of at least 8, not 48$"):
        AxiSignature(32, 48)
    d = DMA(load_target("sim-small"))
    # a 16 B beat: two 32-bit words a cycle into the two-bank buffers, one into INST (one bank)
    assert d.lanes == len(d.buffers) == 2 and dma_lanes(load_target("sim-small"))[BufferId.INST] == 1
    assert dma_lanes(target(**CASES["4-lanes"])) == {BufferId.WEIGHT: 2, BufferId.ACT: 4, BufferId.KV: 2,
                                                      BufferId.SCRATCH: 4, BufferId.INST: 1}
    assert len(d.axi) == 1 and d.axi[0].signature.members["w"].signature.members["payload"].shape.size == 128 + 16 + 1
