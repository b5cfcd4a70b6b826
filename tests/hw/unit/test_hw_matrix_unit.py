# amaranth: UnusedElaboratable=no
"""MatrixUnit on sim-small against simulator/functional.py: random MV, MM and ATTN instructions on
random buffers (real packed weights), and the matrix instructions of a compiled program, buffer
contents compared byte for byte with `_matrix` / `_misc` on a `Machine` with the same start."""
import copy
import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from conftest import tiny_compiled
from llmfab.backend_hw.matrix.cycles import matrix_cycles
from llmfab.backend_hw.matrix.unit import MatrixUnit
from llmfab.backend_hw.matrix.mm import OUT_SETS
from llmfab.ir.integer import quantize_activation
from llmfab.ir.isa import (CONTINUE, HOLD, BufferId, MiscFunc, Opcode, Program, SysFunc, encode, make, resolve_length,
                           weight_fields)
from llmfab.ir.packing import pack
from llmfab.ir.quant import kept
from llmfab.ir.target import load_target
from llmfab.passes.hbm_layout import row_bits
from llmfab.simulator.functional import EXEC, Machine
from test_hw_weight_unpack import random_weight


T = load_target("sim-small")
SIZES = {BufferId[b.name.name]: b.bytes for b in T.buffers}
MATRIX_OPS = (Opcode.MV, Opcode.MM, Opcode.ATTN)
WORDS = T.word_bytes


def run_unit(unit: MatrixUnit, buffers: dict, insts, max_cycles: int = 200_000, starts=None, after=None,
             grant: float = 1.0, seed: int = 0):
    """Feed `insts` one by one; the test plays the buffers (read data the cycle after a taken `re`;
    each port's request is taken with probability `grant` a cycle). Returns (cycles per
    instruction, error flag); `buffers` is updated in place. With `starts`, the buffers are loaded
    from starts[j] before instruction j, and after[j] gets a copy afterwards."""
    cycles, err = [], []
    ports = [*unit.wports, *unit.aports, unit.oport]
    sigs = [s for p in ports for s in (p.buf, p.addr, p.re, p.we, p.be, p.wdata, p.ready)]
    rng = random.Random(seed)

    async def memory(ctx):
        for p in ports:
            ctx.set(p.ready, rng.random() < grant)
        async for _, _, *v in ctx.tick().sample(*sigs):
            for j, p in enumerate(ports):
                buf, addr, re, we, be, wdata, ready = v[7 * j:7 * j + 7]
                ctx.set(p.ready, rng.random() < grant)
                if not ready:
                    continue
                wb = WORDS[BufferId(buf)]
                mem = buffers[BufferId(buf)]
                at = addr * wb % len(mem)
                if we:
                    for b in range(wb):
                        if be >> b & 1:
                            mem[at + b] = wdata >> 8 * b & 0xFF
                if re:
                    ctx.set(p.rdata, int.from_bytes(mem[at:at + wb], "little"))

    async def driver(ctx):
        for j, inst in enumerate(insts):
            if starts is not None:
                for b, mem in buffers.items():
                    mem[:] = starts[j][b]
            ctx.set(unit.inst.valid, 1)
            ctx.set(unit.inst.payload, int.from_bytes(encode(inst), "little"))
            await ctx.tick().until(unit.inst.ready)
            ctx.set(unit.inst.valid, 0)
            n = 1
            while not ctx.get(unit.done):
                await ctx.tick()
                n += 1
                assert n < max_cycles, f"{inst.op.name} did not complete"
            cycles.append(n)
            if after is not None:
                after.append({b: bytes(v) for b, v in buffers.items()})
            await ctx.tick()
        err.append(ctx.get(unit.error))

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(driver)
    sim.run()
    return cycles, bool(err[0])


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def reference(buffers: dict, insts) -> dict:
    m = Machine({}, copy.deepcopy(buffers), T.chain_layout)
    m.held = None
    for i in insts:
        EXEC[i.op](m, i)
    return m.buffers


def random_buffers(rng):
    return {b: bytearray(rng.integers(0, 256, n).astype(np.uint8).tobytes()) for b, n in SIZES.items()}


def put_qrows(rng, mem: bytearray, addr: int, rows: int, cols: int, pitch: int = 0):
    """Realistic quantized rows: quantize_activation of random Q.16 rows."""
    x = rng.integers(-(1 << 20), 1 << 20, (rows, cols))
    x[:, 0] = rng.integers(1 << 18, 1 << 22, rows)
    codes, mm, e = quantize_activation(x)
    pitch = pitch or 4 + cols
    for r in range(rows):
        rec = int(mm[r]).to_bytes(2, "little") + int(e[r]).to_bytes(1, "little", signed=True) + b"\0"
        mem[addr + r * pitch:addr + r * pitch + 4 + cols] = rec + codes[r].astype(np.int8).tobytes()


def matrix_case(rng, op, n, k, bits, pattern, group, has_bias, accumulate, rows=1, o_align=4):
    """Buffers holding a packed random tile and activation rows, and the MV/MM instruction."""
    bufs = random_buffers(rng)
    qw = random_weight(rng, n, k, bits, group, pattern)
    qw.shift[:] = rng.integers(8, 16, n)
    p = pack(qw)
    w = bufs[BufferId.WEIGHT]
    lay, wb = T.chain_layout, T.chain_layout.word_bytes
    codes_bits, idx_bits, mant_bits = row_bits(qw)
    at, addrs = wb * int(rng.integers(0, 3)), {}
    for name, stream, rb in (("wbuf_addr", p.values, codes_bits), ("idx_addr", p.indices, idx_bits)):
        if rb:                                           # the per-row streams: interleaved, on words
            addrs[name] = at
            data = lay.interleave(stream, n, rb)
            w[at:at + len(data)] = data
            at += len(data) + wb * int(rng.integers(0, 3))
    addrs["scale_addr"] = at = at + int(rng.integers(0, wb))   # the shifts at any byte, then the
    w[at:at + n] = p.shift                                        # mantissas from the next word
    at = lay.align(at + n)
    data = lay.interleave(p.mant, n, mant_bits)
    w[at:at + len(data)] = data
    at += len(data) + int(rng.integers(0, 5))
    if has_bias:
        addrs["bias_addr"] = at
        w[at:at + 4 * n] = rng.integers(-(1 << 24), 1 << 24, n).astype("<i4").tobytes()
    a_addr = int(rng.integers(0, 64))
    put_qrows(rng, bufs[BufferId.ACT], a_addr, rows, k)
    o_stride = 4 * n + 4 * int(rng.integers(0, 3)) if op is Opcode.MM else 0
    o_addr = int(rng.integers(0, 256)) * o_align + (0 if o_align == 4 else 1)
    extra = {"m": rows, "o_stride": o_stride} if op is Opcode.MM else {}
    inst = make(op, n=n, k=k, **weight_fields(qw.scheme, k), has_bias=int(has_bias), accumulate=int(accumulate),
                abuf=BufferId.ACT, obuf=BufferId.SCRATCH, a_addr=a_addr, o_addr=o_addr, **addrs, **extra)
    return bufs, inst, (bits, pattern, qw.group)


MATRIX_CASES = [  # (id, op, n, k, bits, pattern, group, bias, accumulate, rows, o_align)
    ("mv-int8", Opcode.MV, 4, 32, 8, None, 0, False, False, 1, 4),
    ("mv-int8-bias-acc-odd-n", Opcode.MV, 5, 64, 8, None, 32, True, True, 1, 4),
    ("mm-int8-3rows", Opcode.MM, 4, 32, 8, None, 0, True, False, 3, 4),
    ("mm-int4-unaligned-out", Opcode.MM, 2, 64, 4, None, 32, False, True, 2, 1),
    ("mv-int4-2:4", Opcode.MV, 4, 64, 4, (2, 4), 32, True, False, 1, 4),
    ("mv-int3-dense", Opcode.MV, 3, 32, 3, None, 0, False, True, 1, 4),
    ("mv-int2-2:8", Opcode.MV, 2, 64, 2, (2, 8), 0, True, True, 1, 4),
]


@pytest.mark.sim
@pytest.mark.parametrize("case", MATRIX_CASES, ids=[c[0] for c in MATRIX_CASES])
def test_matrix_instruction_matches_functional(case):
    _, op, n, k, bits, pattern, group, bias, acc, rows, o_align = case
    rng = np.random.default_rng(MATRIX_CASES.index(case))
    bufs, inst, fmt = matrix_case(rng, op, n, k, bits, pattern, group, bias, acc, rows, o_align)
    want = reference(bufs, [inst])
    unit = MatrixUnit(T, [fmt])
    cycles, err = run_unit(unit, bufs, [inst])
    assert not err
    for b in BufferId:
        assert bytes(bufs[b]) == bytes(want[b]), b.name
    print(f"{case[0]}: {cycles[0]} cycles")


@pytest.mark.sim
def test_requests_not_taken_are_asked_again():
    """Each port's request taken with probability 1/2 a cycle (a busy shared bank): every MV/MM
    format case and an ATTN QK then PV stay bit-exact, only slower."""
    unit = MatrixUnit(T, sorted({c[2] for c in [matrix_case(np.random.default_rng(i), *case[1:])
                                                for i, case in enumerate(MATRIX_CASES)]},
                                key=lambda f: (f[0], f[1] or (0, 0), f[2])))
    for i, case in enumerate(MATRIX_CASES):
        bufs, inst, _ = matrix_case(np.random.default_rng(i), *case[1:])
        want = reference(bufs, [inst])
        free, _ = run_unit(unit, {b: bytearray(v) for b, v in bufs.items()}, [inst])
        (slow,), err = run_unit(unit, bufs, [inst], grant=0.5, seed=i)
        assert not err and slow > free[0], case[0]
        for b in BufferId:
            assert bytes(bufs[b]) == bytes(want[b]), (case[0], b.name)
    rng = np.random.default_rng(11)
    bufs = random_buffers(rng)
    put_qrows(rng, bufs[BufferId.ACT], 5, 2, 16)
    put_qrows(rng, bufs[BufferId.KV], 3, 3, 16)
    insts = [attn(MiscFunc.ATTN_QK, 2, 3, 16, imm=1 << 14, src_buf=BufferId.ACT, src_addr=5, src2_buf=BufferId.KV,
                  src2_addr=3, dst_buf=BufferId.SCRATCH, dst_addr=66),
             attn(MiscFunc.ATTN_PV, 2, 3, 16, src_buf=BufferId.SCRATCH, src_addr=66, src2_buf=BufferId.KV,
                  src2_addr=3, dst_buf=BufferId.ACT, dst_addr=301)]
    want = reference(bufs, insts)
    _, err = run_unit(MatrixUnit(T, [(8, None, 32)]), bufs, insts, grant=0.5, seed=3)
    assert not err
    for b in BufferId:
        assert bytes(bufs[b]) == bytes(want[b]), b.name


@pytest.mark.sim
@pytest.mark.parametrize("out_sets", [1, 2, OUT_SETS])
def test_overlapped_passes_with_few_output_sets(out_sets):
    """Many short passes (int2 1:4, k = 32: two beats a pass), the last one half live, MM with bias
    and the residual add, then an MV: with 1 or 2 output sets the loader waits for the writes (the
    engine's latency is several passes), with the default it never does; bit-exact either way, and
    the cycles are matrix_cycles' exactly."""
    rng = np.random.default_rng(out_sets)
    cases = [matrix_case(rng, Opcode.MM, 7, 32, 2, (1, 4), 0, True, True, 3, 4),
             matrix_case(rng, Opcode.MV, 12, 32, 2, (1, 4), 0, False, False, 1, 4)]
    unit = MatrixUnit(T, [cases[0][2]], out_sets=out_sets)
    bufs = {b: bytearray(v) for b, v in cases[0][0].items()}
    after = []
    cycles, err = run_unit(unit, bufs, [c[1] for c in cases], starts=[c[0] for c in cases], after=after)
    assert not err
    for (start, inst, _), got in zip(cases, after):
        want = reference({b: bytearray(v) for b, v in start.items()}, [inst])
        for b in BufferId:
            assert got[b] == bytes(want[b]), b.name
    assert cycles == [matrix_cycles(T, c[1], out_sets=out_sets) for c in cases]
    if out_sets == 1:
        assert all(c > matrix_cycles(T, i[1]) for c, i in zip(cycles, cases))


@pytest.mark.sim
def test_unknown_format_sets_error_and_completes():
    rng = np.random.default_rng(7)
    bufs, inst, _ = matrix_case(rng, Opcode.MV, 4, 32, 8, None, 0, False, False)
    before = copy.deepcopy(bufs)
    unit = MatrixUnit(T, [(4, None, 32)])
    cycles, err = run_unit(unit, bufs, [inst])
    assert err and len(cycles) == 1
    assert bufs == before


def attn(func, rows, cols, depth, **kw):
    return make(Opcode.ATTN, func=func, rows=rows, cols=cols, depth=depth, **kw)


@pytest.mark.sim
@pytest.mark.parametrize("rows,cols,depth,src_stride,pad,dst_stride", [(2, 3, 16, 0, 0, 0), (3, 2, 10, 24, 3, 20)])
def test_attn_qk_matches_functional(rows, cols, depth, src_stride, pad, dst_stride):
    rng = np.random.default_rng(depth)
    bufs = random_buffers(rng)
    put_qrows(rng, bufs[BufferId.ACT], 5, rows, depth, src_stride)
    put_qrows(rng, bufs[BufferId.KV], 3, cols, depth, 4 + depth + pad)
    inst = attn(MiscFunc.ATTN_QK, rows, cols, depth, imm=round(2 ** 16 / depth ** 0.5), src_buf=BufferId.ACT,
                src_addr=5, src_stride=src_stride, src2_buf=BufferId.KV, src2_addr=3, src2_pad=pad,
                dst_buf=BufferId.SCRATCH, dst_addr=64, dst_stride=dst_stride)
    want = reference(bufs, [inst])
    assert np.abs(np.frombuffer(bytes(want[BufferId.SCRATCH][64:64 + 4 * cols]), "<i4")).max() > 1000
    cycles, err = run_unit(MatrixUnit(T, [(8, None, 32)]), bufs, [inst])
    assert not err
    for b in BufferId:
        assert bytes(bufs[b]) == bytes(want[b]), b.name
    print(f"ATTN_QK {rows}x{cols}x{depth}: {cycles[0]} cycles")


@pytest.mark.sim
def test_attn_pv_key_tiles_hold_and_continue():
    """Three key tiles: HOLD, CONTINUE|HOLD (nothing written), CONTINUE (the whole sum written);
    then a plain PV that must not see the held sums."""
    rng = np.random.default_rng(11)
    bufs = random_buffers(rng)
    rows, depth, tiles = 2, 6, [3, 2, 4]
    insts, p_at, v_at = [], 100, 7
    for j, cols in enumerate(tiles):
        p = rng.integers(0, 1 << 16, (rows, cols)).astype("<i4")
        p[0, 0] = 1 << 16
        for r in range(rows):
            bufs[BufferId.SCRATCH][p_at + 4 * cols * r:p_at + 4 * cols * (r + 1)] = p[r].tobytes()
        put_qrows(rng, bufs[BufferId.KV], v_at, cols, depth, 4 + depth + 1)
        flags = [HOLD, CONTINUE | HOLD, CONTINUE][j]
        insts.append(attn(MiscFunc.ATTN_PV, rows, cols, depth, flags=flags, src_buf=BufferId.SCRATCH, src_addr=p_at,
                          src2_buf=BufferId.KV, src2_addr=v_at, src2_pad=1, dst_buf=BufferId.ACT, dst_addr=40,
                          dst_stride=4 * depth + 8))
        p_at += 4 * rows * cols + 4
        v_at += cols * (5 + depth)
    insts.append(insts[0].evolve(flags=0, dst_addr=200))
    want = reference(bufs, insts)
    cycles, err = run_unit(MatrixUnit(T, [(8, None, 32)]), bufs, insts)
    assert not err and len(cycles) == len(insts)
    for b in BufferId:
        assert bytes(bufs[b]) == bytes(want[b]), b.name
    print(f"ATTN_PV tiles {tiles} x {rows} rows x {depth}: {cycles} cycles")


@pytest.mark.sim
def test_attn_pv_beyond_hold_sets_error():
    rng = np.random.default_rng(5)
    bufs = random_buffers(rng)
    before = copy.deepcopy(bufs)
    inst = attn(MiscFunc.ATTN_PV, 3, 2, 8, src_buf=BufferId.SCRATCH, src2_buf=BufferId.KV, dst_buf=BufferId.ACT)
    cycles, err = run_unit(MatrixUnit(T, [(8, None, 32)], hold=16), bufs, [inst])
    assert err and len(cycles) == 1 and bufs == before


@pytest.mark.sim
def test_attn_pv_that_fills_hold_runs():
    """rows * depth == hold (chunks of 4: the scale record's chunk takes no sums entry): bit-exact."""
    rng = np.random.default_rng(6)
    bufs = random_buffers(rng)
    put_qrows(rng, bufs[BufferId.KV], 0, 3, 8)
    inst = attn(MiscFunc.ATTN_PV, 2, 3, 8, src_buf=BufferId.SCRATCH, src2_buf=BufferId.KV, dst_buf=BufferId.ACT)
    want = reference(bufs, [inst])
    _, err = run_unit(MatrixUnit(T, [(8, None, 32)], hold=16), bufs, [inst])
    assert not err
    for b in BufferId:
        assert bytes(bufs[b]) == bytes(want[b]), b.name


def matrix_steps(m: Machine, program, length: int):
    """Run `program` on `m` as Machine.run does; per MV/MM/ATTN instruction: (instruction as
    executed, buffers before, buffers after, the held PV sums before)."""
    steps = []
    m.held = None
    for inst in program.instructions:
        i = resolve_length(inst, length)
        if i.op is Opcode.SYS:
            if i["func"] is SysFunc.END:
                return steps
            if i["func"] is SysFunc.SET_LEN:
                length = i["imm"]
            continue
        before = {b: bytes(v) for b, v in m.buffers.items()} if i.op in MATRIX_OPS else None
        held = m.held
        EXEC[i.op](m, i)
        if before is not None:
            steps.append((i, before, {b: bytes(v) for b, v in m.buffers.items()}, held))
    return steps


@pytest.mark.sim
def test_compiled_program_matrix_instructions():
    """A prefill (5 tokens: one chunk, LEN = the prefill step) then a decode step of
    tests/fixtures/llama_ts_op14.onnx: a sample of its MM, MV, ATTN_QK and ATTN_PV instructions on
    the buffers the program gives them."""
    c = tiny_compiled()
    step = c.manifest["prefill_step"]
    m = Machine.for_target(T, [d for _, d in c.images], max(c.layout.used))
    m.write(BufferId.ACT, 0, np.array([3, 14, 15, 92, 65] + [0] * (step - 5), "<i4").tobytes())
    steps = matrix_steps(m, _program(c, "prefill", step), step)
    m.write(BufferId.ACT, 0, np.array([35], "<i4").tobytes())
    steps += matrix_steps(m, _program(c, "decode", 6), 6)
    # one of each kind, no PV that continues held sums, and the last (lm_head) MV
    picked, kinds = [], set()
    for s in steps:
        i = s[0]
        kind = (i.op, i["func"] if i.op is Opcode.ATTN else 0)
        if kind not in kinds and s[3] is None:
            kinds.add(kind)
            picked.append(s)
    picked.append(steps[-1])
    formats = {(i["bits"].bits, i["sparsity"].pattern, min(i["group"].size or i["k"], i["k"]))
               for i, *_ in steps if i.op is not Opcode.ATTN}
    unit = MatrixUnit(T, sorted(formats, key=str))
    bufs = {b: bytearray(v) for b, v in picked[0][1].items()}
    after = []
    cycles, err = run_unit(unit, bufs, [s[0] for s in picked], starts=[s[1] for s in picked], after=after)
    assert not err
    e = T.engine
    for (i, _, want, _), got, n in zip(picked, after, cycles):
        for b in BufferId:
            assert got[b] == want[b], f"{i}: {b.name}"
        print(f"{cycles_line(i, e)}: {n} cycles")


def cycles_line(i, e) -> str:
    """The instruction and simulator/design.py's estimate of its cycles."""
    if i.op is Opcode.ATTN:
        f = i["func"]
        n, k = (i["cols"], i["depth"]) if f is MiscFunc.ATTN_QK else (i["depth"], i["cols"])
        est = -(-n // e.n_chains) * -(-k // e.chain_len) * i["rows"] + e.pipeline_depth
        return f"ATTN {f.name} rows={i['rows']} cols={i['cols']} depth={i['depth']} (timing.py {est})"
    rows = i["m"] if i.op is Opcode.MM else 1
    passes = -(-i["n"] // e.n_chains) * -(-kept(i["k"], i["sparsity"].pattern) // e.chain_len)
    est = passes * -(-rows // (e.operand_packing if i.op is Opcode.MM else 1)) + e.pipeline_depth
    return f"{i.op.name} n={i['n']} k={i['k']} m={rows} (timing.py {est})"


def test_unit_checks_arguments():
    with pytest.raises(TypeError, match=r"^target must be a Target, not 'sim-small'$"):
        MatrixUnit("sim-small", [(8, None, 32)])
    with pytest.raises(ValueError, match=r"^formats must name at least one weight format, not \(\)$"):
        MatrixUnit(T, [])
    with pytest.raises(TypeError, match=r"^a format must be a tuple \(weight_bits, pattern or None, group\), not 8$"):
        MatrixUnit(T, [8])
    with pytest.raises(ValueError, match=r"^hold must be a positive integer, not 0$"):
        MatrixUnit(T, [(8, None, 32)], hold=0)
    with pytest.raises(ValueError, match=r"^out_sets must be a positive integer, not 0$"):
        MatrixUnit(T, [(8, None, 32)], out_sets=0)
