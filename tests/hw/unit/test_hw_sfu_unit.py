"""The SFU instruction unit (backend_hw/sfu/unit.py) in amaranth.sim against `simulator.functional._misc`.

Each test builds random MISC instructions of one function (random addresses, alignments, strides,
flags) over random buffer contents, runs them through `_misc` on a `Machine` and through the unit
on a byte-exact model of the buffers (read-before-write words, byte enables), and compares every
buffer byte after every instruction. The last test replays the MISC instructions of a compiled
fixture program on its own shapes. Cycles per instruction are kept in `CYCLES` (printed with -s).
"""
from __future__ import annotations

import gc
import random
from dataclasses import replace

import numpy as np
import pytest

from conftest import tiny_compiled
from llmfab.backend_hw.sfu.unit import SfuUnit
from llmfab.ir.integer import MAX_NORM_D, softcap_fixed
from llmfab.ir.isa import BROADCAST, CAUSAL, BufferId, MiscFunc, Opcode, Program, encode, make, resolve_length
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine, _misc

ONE = 1 << 16
LIM = (1 << 31) - 1
T = load_target("sim-small")
SIZES = {BufferId[b.name.name]: b.bytes for b in T.buffers}
WORD = T.word_bytes
DATA = (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT)
CYCLES: dict[str, list[tuple]] = {}


def simulate(insts, buffers: dict[BufferId, bytearray], target=T, *, grant: float = 1.0,
             seed: int = 0) -> tuple[list[dict], list[int]]:
    """Run `insts` through one SfuUnit on copies of `buffers`: the buffers after each instruction
    and the cycles from each instruction's hand-over to its `done`. Each port's request is taken
    with probability `grant` a cycle."""
    from amaranth.sim import Simulator
    dut = SfuUnit(target)
    WORD = target.word_bytes
    mem = {b: bytearray(v) for b, v in buffers.items()}
    snaps, cycles = [], []
    ports = (dut.src, dut.src2, dut.dst)

    rng = random.Random(seed)

    async def memory(ctx):
        while True:
            for p in ports:
                ctx.set(p.ready, rng.random() < grant)
            req = [(ctx.get(p.re) & ctx.get(p.ready), ctx.get(p.we) & ctx.get(p.ready), ctx.get(p.buf),
                    ctx.get(p.addr), ctx.get(p.be), ctx.get(p.wdata)) for p in ports]
            await ctx.tick()
            for p, (re, _, buf, addr, _, _) in zip(ports, req):
                if re:
                    w = WORD[BufferId(buf)]
                    assert (addr + 1) * w <= len(mem[BufferId(buf)]), f"read of word {addr} outside {BufferId(buf).name}"
                    ctx.set(p.rdata, int.from_bytes(mem[BufferId(buf)][addr * w:(addr + 1) * w], "little"))
            for re, we, buf, addr, be, wdata in req:
                if we:
                    w = WORD[BufferId(buf)]
                    assert (addr + 1) * w <= len(mem[BufferId(buf)]), f"write of word {addr} outside {BufferId(buf).name}"
                    for j in range(w):
                        if be >> j & 1:
                            mem[BufferId(buf)][addr * w + j] = wdata >> (8 * j) & 0xFF

    async def drive(ctx):
        for inst in insts:
            ctx.set(dut.inst.payload, int.from_bytes(encode(inst), "little"))
            ctx.set(dut.inst.valid, 1)
            while True:
                ready = ctx.get(dut.inst.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(dut.inst.valid, 0)
            n = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                n += 1
                assert n < 20_000, "the unit never finished"
            await ctx.tick()            # the last write lands with the done pulse's edge
            cycles.append(n)
            snaps.append({b: bytes(v) for b, v in mem.items()})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(drive)
    sim.run()
    return snaps, cycles


def reference(insts, buffers) -> list[dict]:
    m = Machine.create([], 0, SIZES)
    for b, v in buffers.items():
        m.buffers[b][:] = v
    out = []
    for inst in insts:
        _misc(m, inst)
        out.append({b: bytes(v) for b, v in m.buffers.items()})
    return out


def check(name, insts, buffers, target=T, grant=1.0):
    want = reference(insts, buffers)
    got, cycles = simulate(insts, buffers, target, grant=grant)
    for n, (inst, w, g) in enumerate(zip(insts, want, got)):
        for b in w:
            if w[b] != g[b]:
                diff = [j for j in range(len(w[b])) if w[b][j] != g[b][j]]
                pytest.fail(f"{name} instruction {n} ({inst['func'].name} rows={inst['rows']} cols={inst['cols']}): "
                            f"{b.name} differs at {len(diff)} bytes from {diff[0]}: want "
                            f"{w[b][diff[0]:diff[0] + 8].hex()} got {g[b][diff[0]:diff[0] + 8].hex()}")
    CYCLES.setdefault(name, []).extend(
        (i["func"].name, i["rows"], i["cols"], c, timing_estimate(i)) for i, c in zip(insts, cycles))
    return cycles


def timing_estimate(i) -> int:
    """simulator/design.py's SFU cycles: elements / lanes + latency (COPY: words of 4 bytes)."""
    elems = i["rows"] * (-(-i["cols"] // 4) if i["func"] is MiscFunc.COPY else max(i["cols"], 1))
    return -(-elems // T.sfu.lanes) + T.sfu.latency_cycles


def random_buffers(rng) -> dict[BufferId, bytearray]:
    return {b: bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for b, n in SIZES.items()}


def put_q16(bufs, buf, addr, values):
    bufs[buf][addr:addr + 4 * len(values)] = np.asarray(values, "<i4").tobytes()


def q16(rng, n, scale=3.0):
    """Q.16 values: mostly normal(0, scale), some full-range int32 and saturation edges."""
    v = np.round(rng.normal(0, scale, n) * ONE).astype(np.int64)
    pick = rng.random(n)
    v = np.where(pick < 0.15, rng.integers(-LIM, LIM, n, endpoint=True), v)
    v = np.where(pick > 0.92, rng.choice([LIM, -LIM, 0, 8 * ONE, -8 * ONE], n), v)
    return v


def region(rng, buf, span, part, align=1):
    """A random start address for `span` bytes in third `part` of buffer `buf` (src, src2 and dst
    never overlap: `_misc` reads whole operands before it writes)."""
    third = SIZES[buf] // 3
    return part * third + int(rng.integers(0, (third - span) // align)) * align


def misc(**fields):
    return make(Opcode.MISC, **fields)


# ---------------------------------------------------------------------------------------------
# instruction generators: (instructions, buffers)


def gen_copy(rng, n=6):
    bufs, insts = random_buffers(rng), []
    for _ in range(n):
        rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 40))
        ss = int(rng.choice([0, cols + int(rng.integers(0, 9))]))
        ds = int(rng.choice([0, cols + int(rng.integers(0, 9))]))
        first = int(rng.integers(0, 3))
        sb, db = rng.choice(DATA, 2)
        insts.append(misc(func=MiscFunc.COPY, imm=first, rows=rows, cols=cols, src_buf=sb, dst_buf=db,
                          src_addr=region(rng, sb, (rows + first) * (ss or cols), 0),
                          dst_addr=region(rng, db, rows * (ds or cols), 2), src_stride=ss, dst_stride=ds))
    return insts, bufs


def q16_rows(rng, bufs, buf, rows, cols, part, stride=0, align=4, scale=3.0):
    pitch = stride or 4 * cols
    addr = region(rng, buf, rows * pitch + 4 * cols, part, align)
    for r in range(rows):
        put_q16(bufs, buf, addr + r * pitch, q16(rng, cols, scale))
    return addr


def gen_elementwise(funcs, flags=0, imm=lambda rng: 0):
    def gen(rng, n=5):
        bufs, insts = random_buffers(rng), []
        for _ in range(n):
            f = MiscFunc(rng.choice(funcs))
            rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 14))
            ss = int(rng.choice([0, 4 * cols + 4 * int(rng.integers(1, 3))]))
            ds = int(rng.choice([0, 4 * cols + int(rng.integers(1, 9))]))
            align = int(rng.choice([1, 4]))
            sb, s2b, db = (BufferId(v) for v in rng.choice(DATA, 3))
            fl = int(rng.integers(0, 2)) * flags
            src = q16_rows(rng, bufs, sb, rows, cols, 0, ss, align)
            src2 = q16_rows(rng, bufs, s2b, rows, cols, 1, 0, align)
            insts.append(misc(func=f, flags=fl, imm=imm(rng), rows=rows, cols=cols, src_buf=sb, src2_buf=s2b, dst_buf=db,
                              src_addr=src, src2_addr=src2, src_stride=ss, dst_stride=ds,
                              dst_addr=region(rng, db, rows * (ds or 4 * cols) + 4, 2, align)))
        return insts, bufs
    return gen


@pytest.mark.sim
def test_copy():
    check("COPY", *gen_copy(np.random.default_rng(1)))


@pytest.mark.sim
def test_add_mul():
    check("ADD/MUL", *gen_elementwise((MiscFunc.ADD, MiscFunc.MUL), BROADCAST)(np.random.default_rng(2)))


@pytest.mark.sim
def test_activations():
    check("RELU/SILU/GELU", *gen_elementwise((MiscFunc.RELU, MiscFunc.SILU, MiscFunc.GELU, MiscFunc.GELU_TANH))(
        np.random.default_rng(3), n=6))


@pytest.mark.sim
def test_softcap():
    """Gemma2's soft-cap: the Q.16 cap in `imm` (50, 30 as in gemma-2, small ones, the largest)."""
    caps = [softcap_fixed(c) for c in (50.0, 30.0, 1.0, 0.25)] + [(1 << 31) - 1]
    check("SOFTCAP", *gen_elementwise((MiscFunc.SOFTCAP,), imm=lambda rng: int(rng.choice(caps)))(
        np.random.default_rng(4), n=6))


def gen_quant(rng, n=5):
    bufs, insts = random_buffers(rng), []
    for k in range(n):
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 14))
        ss = int(rng.choice([0, 4 * cols + 4]))
        ds = int(rng.choice([0, 4 + cols + int(rng.integers(1, 7))]))
        sb, db = (BufferId(v) for v in rng.choice(DATA, 2))
        src = q16_rows(rng, bufs, sb, rows, cols, 0, ss, scale=float(rng.choice([0.01, 3.0, 500.0])))
        if k == 0:                                    # a zero row: scale record 0, codes 0
            put_q16(bufs, sb, src, np.zeros(cols, np.int64))
        insts.append(misc(func=MiscFunc.QUANT_ROWS, rows=rows, cols=cols, src_buf=sb, dst_buf=db, src_addr=src,
                          src_stride=ss, dst_stride=ds,
                          dst_addr=region(rng, db, rows * (ds or 4 + cols), 2, int(rng.choice([1, 4])))))
    return insts, bufs


@pytest.mark.sim
def test_quant_rows():
    check("QUANT_ROWS", *gen_quant(np.random.default_rng(4)))


def gen_norm(rng, n=4):
    bufs, insts = random_buffers(rng), []
    for _ in range(n):
        f = MiscFunc(rng.choice([MiscFunc.RMSNORM, MiscFunc.LAYERNORM]))
        rows, cols = int(rng.integers(1, 3)), int(rng.integers(1, min(14, MAX_NORM_D)))
        ss = int(rng.choice([0, 4 * cols + 8]))
        ds = int(rng.choice([0, 4 * cols + int(rng.integers(1, 5))]))
        sb, s2b, db = (BufferId(v) for v in rng.choice(DATA, 3))
        src = q16_rows(rng, bufs, sb, rows, cols, 0, ss, scale=float(rng.choice([0.001, 3.0, 2000.0])))
        params = q16_rows(rng, bufs, s2b, 1, 2 * cols, 1, 0, int(rng.choice([1, 4])), scale=1.0)
        eps32 = int(rng.choice([0, 42950, (1 << 29) - 1]))
        insts.append(misc(func=f, imm=eps32, rows=rows, cols=cols, src_buf=sb, src2_buf=s2b, dst_buf=db,
                          src_addr=src, src2_addr=params, src_stride=ss, dst_stride=ds,
                          dst_addr=region(rng, db, rows * (ds or 4 * cols) + 4, 2, int(rng.choice([1, 4])))))
    return insts, bufs


@pytest.mark.sim
def test_norms():
    check("RMSNORM/LAYERNORM", *gen_norm(np.random.default_rng(5)))


def gen_softmax(rng, n=5):
    bufs, insts = random_buffers(rng), []
    for _ in range(n):
        rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 11))
        ss = int(rng.choice([0, 4 * cols + 12]))
        ds = int(rng.choice([0, 4 * cols + 4]))
        causal = int(rng.integers(0, 2))
        sb, db = (BufferId(v) for v in rng.choice(DATA, 2))
        src = q16_rows(rng, bufs, sb, rows, cols, 0, ss, scale=float(rng.choice([1.0, 8.0])))
        insts.append(misc(func=MiscFunc.SOFTMAX, flags=CAUSAL * causal, imm=int(rng.integers(-1, 4)) * causal,
                          period=int(rng.integers(0, rows + 1)) * causal, rows=rows, cols=cols, src_buf=sb,
                          dst_buf=db, src_addr=src, src_stride=ss, dst_stride=ds,
                          dst_addr=region(rng, db, rows * (ds or 4 * cols), 2, 4)))
    return insts, bufs


@pytest.mark.sim
def test_softmax():
    check("SOFTMAX", *gen_softmax(np.random.default_rng(6)))


def gen_rope(rng, n=5, heads=1):
    bufs, insts = random_buffers(rng), []
    for _ in range(n):
        depth = int(rng.choice([2, 4, 6, 8])) if heads == 1 else int(rng.choice([4, 8]))
        rows, cols = int(rng.integers(1, 4)), heads * depth
        period, first = int(rng.integers(0, rows + 1)), int(rng.integers(0, 3))
        ss = int(rng.choice([0, 4 * cols + 4]))
        sb, s2b, db = (BufferId(v) for v in rng.choice(DATA, 3))
        src = q16_rows(rng, bufs, sb, rows, cols, 0, ss)
        n_pos = first + (period or rows)
        ang = rng.uniform(-4, 4, (n_pos, depth))
        table = np.concatenate([np.cos(ang), np.sin(ang)], 1)
        tab = region(rng, s2b, 4 * table.size, 1, int(rng.choice([1, 4])))
        put_q16(bufs, s2b, tab, np.round(table * ONE).astype(np.int64).reshape(-1))
        insts.append(misc(func=MiscFunc.ROPE, imm=first, rows=rows, cols=cols, depth=depth, period=period,
                          src_buf=sb, src2_buf=s2b, dst_buf=db, src_addr=src, src2_addr=tab, src_stride=ss,
                          dst_addr=region(rng, db, 4 * rows * cols, 2, 4)))
    return insts, bufs


@pytest.mark.sim
def test_rope():
    check("ROPE", *gen_rope(np.random.default_rng(7)))


@pytest.mark.sim
def test_rope_several_heads():
    check("ROPE heads", *gen_rope(np.random.default_rng(9), n=3, heads=2))


def gen_embed(rng, n=5):
    bufs, insts = random_buffers(rng), []
    for _ in range(n):
        bits = int(rng.choice([2, 3, 4, 8]))
        group = int(rng.choice([2, 3, 5, 8]))
        cols = group * int(rng.integers(1, 4))
        depth = int(rng.choice([0, group])) if group == cols else group
        rows = int(rng.integers(1, 4))
        natural = -(-cols * bits // 8) + 2 * (cols // group) + 1
        ss = int(rng.choice([0, natural + int(rng.integers(1, 4))]))
        sb, db = (BufferId(v) for v in rng.choice(DATA, 2))
        src = region(rng, sb, rows * (ss or natural), 0)
        for r in range(rows):                         # shifts near 16 (and a few far), codes and mants random
            at = src + r * (ss or natural) + natural - 1
            bufs[sb][at] = int(rng.choice([10, 14, 16, 20, 24, 30, -30 & 0xFF, 127, 0x80])) & 0xFF
        insts.append(misc(func=MiscFunc.EMBED, imm=bits, rows=rows, cols=cols, depth=depth, src_buf=sb,
                          dst_buf=db, src_addr=src, src_stride=ss,
                          dst_addr=region(rng, db, 4 * rows * cols, 2, int(rng.choice([1, 4])))))
    return insts, bufs


@pytest.mark.sim
def test_embed():
    check("EMBED", *gen_embed(np.random.default_rng(8)))


@pytest.mark.sim
def test_compiled_fixture_instructions():
    """The first MISC instruction of each function in the fixture's prefill and decode programs,
    length-resolved, on random buffers (RoPE tables in [-1, 1], as the compiler writes them)."""
    c = tiny_compiled()
    picked = {}
    for name, data in c.programs:
        length = 5 if "prefill" in name else 7
        for inst in Program.from_bytes(data).instructions:
            if inst.op is Opcode.MISC:
                picked.setdefault((inst["func"], inst.len_reg), resolve_length(inst, length))
    insts = sorted(picked.values(), key=lambda i: i["func"] is not MiscFunc.ROPE)   # before its table is overwritten
    assert {i["func"] for i in insts} >= {MiscFunc.COPY, MiscFunc.ADD, MiscFunc.MUL, MiscFunc.SILU, MiscFunc.RMSNORM,
                                          MiscFunc.ROPE, MiscFunc.SOFTMAX, MiscFunc.QUANT_ROWS, MiscFunc.EMBED}
    rng = np.random.default_rng(10)
    bufs = random_buffers(rng)
    for i in insts:
        if i["func"] is MiscFunc.ROPE:
            n = (i["imm"] + (i["period"] or i["rows"])) * 2 * i["depth"]
            put_q16(bufs, i["src2_buf"], i["src2_addr"], rng.integers(-ONE, ONE, n, endpoint=True))
    check("fixture", insts, bufs)
    check("fixture, half the requests taken", insts, bufs, grant=0.5)


@pytest.mark.sim
def test_mixed_word_widths():
    """64-bit ACT and KV words next to 32-bit ones: the gearboxes on both word sizes, one port width."""
    wide = replace(T, buffers=tuple(replace(b, width_bits=64) if b.name.value in ("act", "kv") else b
                                    for b in T.buffers))
    rng = np.random.default_rng(11)
    for name, gen in (("COPY", gen_copy), ("QUANT_ROWS", gen_quant), ("EMBED", gen_embed),
                      ("ADD/MUL", gen_elementwise((MiscFunc.ADD, MiscFunc.MUL), BROADCAST))):
        insts, bufs = gen(rng, n=3)
        check(f"{name} (64-bit ACT, KV)", insts, bufs, wide)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_checks():
    narrow = replace(T, buffers=tuple(replace(b, width_bits=16) if b.name.value == "kv" else b for b in T.buffers))
    for arg, exc, msg in (("sim-small", TypeError, r"^target must be a Target, not 'sim-small'$"),
                          (replace(T, sfu=replace(T.sfu, lanes=6)), ValueError,
                           r"^sfu lanes must be a positive power of two, not 6$"),
                          (narrow, ValueError, r"^buffer kv width_bits must be a power of two of at least 32, not 16$")):
        with pytest.raises(exc, match=msg) as err:
            SfuUnit(arg)
        del err
        gc.collect()              # the half-built unit warns as unused here, under the filter


def teardown_module():
    for name, rows in CYCLES.items():
        print(f"\n{name}: (func, rows, cols, cycles, timing.py estimate)")
        for row in rows:
            print("   ", row)
