# amaranth: UnusedElaboratable=no
"""backend_hw/matrix/cycles.py against MatrixUnit in amaranth.sim on sim-small: the cycles from
accepting an instruction to its `done` pulse (run_unit's count: n = done_cycle - accept_cycle), equal
exactly, on random MV / MM over every weight format and on random ATTN_QK / ATTN_PV, and on the
matrix instructions of compiled fixture programs (int8, int4-g128, w4-2of4)."""
import numpy as np
import pytest
from conftest import tiny_compiled
from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.matrix.cycles import matrix_cycles
from llmfab.backend_hw.matrix.unit import MatrixUnit
from llmfab.ir.isa import CONTINUE, HOLD, BufferId, MiscFunc, Opcode, Program, encode, resolve_length
from llmfab.ir.quant import kept
from test_hw_matrix_unit import T, attn, matrix_case, random_buffers, run_unit

PATTERNS = [None, (2, 4), (1, 4), (4, 8), (2, 8)]
BITS = [8, 4, 3, 2]


def _act_bytes(unit: MatrixUnit) -> int:
    """The unit's activation reader window: the widest window of its formats."""
    return max(e.chains[0].n_act for e in unit.engines)


def _random_matrix(rng, bits, pattern, group):
    """A random MV or MM of format (bits, pattern, group) on sim-small, n not always a multiple of
    n_chains, bias / accumulate / o alignment / rows random."""
    cl = T.engine.chain_len
    m_ = pattern[1] if pattern else 1
    n_ = pattern[0] if pattern else 1
    step = max(group or 1, cl * m_ // n_, 8)
    while True:
        k = step * int(rng.integers(1, 4))
        g_eff = k if group == 0 or group >= k else group
        if kept(g_eff, pattern) % cl == 0 and k % (group or 1) == 0:
            break
    op = Opcode.MM if rng.integers(0, 3) == 0 else Opcode.MV
    rows = int(rng.integers(1, 4)) if op is Opcode.MM else 1
    n = int(rng.integers(1, 8))
    return matrix_case(rng, op, n, k, bits, pattern, group, bool(rng.integers(0, 2)), bool(rng.integers(0, 2)),
                       rows, int(rng.choice([1, 4])))


def _check(unit, cases, act_bytes=None):
    """Run `cases` ((buffers, instruction)) one after another; formula == measured for each."""
    starts = [b for b, _ in cases]
    insts = [i for _, i in cases]
    bufs = {b: bytearray(v) for b, v in starts[0].items()}
    cycles, err = run_unit(unit, bufs, insts, starts=starts)
    assert not err
    want = [matrix_cycles(T, i, act_bytes=act_bytes) for i in insts]
    assert cycles == want, [(str(i)[:120], c, w) for i, c, w in zip(insts, cycles, want) if c != w]
    return cycles


FORMATS = [(b, p, [0, 32, 64, 128][j % 4]) for j, (b, p) in enumerate((b, p) for b in BITS for p in PATTERNS)]


@pytest.mark.sim
@pytest.mark.parametrize("bits,pattern,group", FORMATS, ids=[f"int{b}-{p and '%d:%d' % p or 'dense'}-g{g}"
                                                               for b, p, g in FORMATS])
def test_random_mv_mm_every_format(bits, pattern, group):
    rng = np.random.default_rng(bits * 100 + PATTERNS.index(pattern) * 10 + group)
    cases, fmt = [], None
    for _ in range(2):
        bufs, inst, fmt = _random_matrix(rng, bits, pattern, group)
        cases.append((bufs, inst))
    # the format's effective group depends on k: one engine per distinct effective group
    fmts = sorted({(bits, pattern, min(i["group"].size or i["k"], i["k"])) for _, i in cases}, key=str)
    unit = MatrixUnit(T, fmts)
    _check(unit, cases, _act_bytes(unit))


@pytest.mark.sim
def test_shared_activation_window():
    """int4 2:4 in a unit that also runs 2:8: the activation reader is as wide as 2:8's window
    (16 bytes, not 8), which changes int4 2:4's start-up; every group size."""
    rng = np.random.default_rng(1)
    cases = [matrix_case(rng, Opcode.MV, 3, 128, 4, (2, 4), g, True, False, 1, 4)[:2] for g in (0, 32, 64, 128)]
    fmts = {(4, (2, 4), min(i["group"].size or 128, 128)) for _, i in cases} | {(2, (2, 8), 32)}
    unit = MatrixUnit(T, sorted(fmts, key=str))
    assert _act_bytes(unit) == 16
    _check(unit, cases, 16)
    assert all(matrix_cycles(T, i) != matrix_cycles(T, i, act_bytes=16) for _, i in cases)


@pytest.mark.sim
def test_mm_rows_and_o_stride():
    rng = np.random.default_rng(3)
    cases = [matrix_case(rng, Opcode.MM, n, 32, 8, None, 32, b, a, rows, al)[:2]
             for n, b, a, rows, al in ((3, True, True, 3, 1), (4, False, False, 2, 4), (5, False, True, 1, 4))]
    _check(MatrixUnit(T, [(8, None, 32)]), cases)


@pytest.mark.sim
@pytest.mark.parametrize("bits", [128, 512])
def test_wide_words_write_a_word_a_cycle(monkeypatch, bits):
    """8 chains and 128-bit act / kv / scratch words: a pass's outputs leave four int32 a write
    (`WA`, any lane offset, the carry across words), unaligned ones an int32 at a time; buffers
    equal the functional simulator's and cycles the model's, on MV and MM."""
    import test_hw_matrix_unit as u
    from dataclasses import replace
    wide = replace(T, engine=replace(T.engine, n_chains=8), buffers=tuple(
        replace(b, banks=8) if b.name.value == "weight" else
        replace(b, width_bits=bits) if b.name.value in ("act", "kv", "scratch") else b for b in T.buffers))
    for name, v in (("T", wide), ("WORDS", wide.word_bytes)):
        monkeypatch.setattr(u, name, v)
    rng = np.random.default_rng(5)
    cases = [matrix_case(rng, op, n, 64, 4, (2, 4), 32, bias, acc, rows, al)[:2]
             for op, n, bias, acc, rows, al in ((Opcode.MV, 20, False, False, 1, 4), (Opcode.MV, 13, True, True, 1, 4),
                                                (Opcode.MM, 11, False, True, 3, 4), (Opcode.MV, 9, False, False, 1, 1))]
    unit = MatrixUnit(wide, [(4, (2, 4), 32)])
    starts = [b for b, _ in cases]
    bufs = {b: bytearray(v) for b, v in starts[0].items()}
    after = []
    cycles, err = run_unit(unit, bufs, [i for _, i in cases], starts=starts, after=after)
    assert not err
    for (start, inst), got in zip(cases, after):
        want = u.reference(start, [inst])
        assert all(got[b] == bytes(want[b]) for b in BufferId), str(inst)[:100]
    assert cycles == [matrix_cycles(wide, i) for _, i in cases]
    assert {i["o_addr"] % (bits // 8) // 4 for _, i in cases[:3]} != {0}     # a first word not at lane 0


def _attn_case(rng, func):
    rows, cols, depth = (int(rng.integers(0 if j == 1 else 1, hi)) for j, hi in enumerate((4, 6, 20)))
    kw = dict(src_stride=int(rng.choice([0, 4 * cols + depth + 7])), src2_pad=int(rng.integers(0, 4)),
              dst_stride=int(rng.choice([0, 4 * max(cols, depth) + 3])), src_addr=int(rng.integers(0, 64)),
              src2_addr=int(rng.integers(0, 64)), dst_addr=int(rng.integers(0, 64)))
    if func is MiscFunc.ATTN_PV:
        kw["flags"] = int(rng.choice([0, HOLD, CONTINUE, CONTINUE | HOLD]))
        src, dst = BufferId.SCRATCH, BufferId.ACT
    else:
        kw["imm"] = int(rng.integers(1, 1 << 16))
        src, dst = BufferId.ACT, BufferId.SCRATCH
    return random_buffers(rng), attn(func, rows, cols, depth, src_buf=src, src2_buf=BufferId.KV, dst_buf=dst, **kw)


def _real_attn_case(rng, func, flags=0):
    """A random ATTN_QK / ATTN_PV on realistic records (quantized q / K / V rows, p in [0, 2^16])
    at random addresses, pads and strides."""
    import test_hw_matrix_unit as u
    rows, cols, depth = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 20))
    pad, src_addr, src2_addr = int(rng.integers(0, 4)), int(rng.integers(0, 64)), int(rng.integers(0, 64))
    bufs = random_buffers(rng)
    u.put_qrows(rng, bufs[BufferId.KV], src2_addr, cols, depth, 4 + depth + pad)
    kw = dict(src_addr=src_addr, src2_addr=src2_addr, src2_pad=pad, dst_addr=int(rng.integers(0, 64)),
              dst_stride=int(rng.choice([0, 4 * max(cols, depth) + 3])), flags=flags)
    if func is MiscFunc.ATTN_QK:
        kw |= dict(src_stride=int(rng.choice([0, depth + 7])), imm=round(2 ** 16 / depth ** 0.5))
        u.put_qrows(rng, bufs[BufferId.ACT], src_addr, rows, depth, kw["src_stride"])
        src, dst = BufferId.ACT, BufferId.SCRATCH
    else:
        p = rng.integers(0, 1 << 16, (rows, cols)).astype("<i4")
        bufs[BufferId.SCRATCH][src_addr:src_addr + p.nbytes] = p.tobytes()
        src, dst = BufferId.SCRATCH, BufferId.ACT
    return bufs, attn(func, rows, cols, depth, src_buf=src, src2_buf=BufferId.KV, dst_buf=dst, **kw)


@pytest.mark.sim
@pytest.mark.parametrize("attn_bytes,kv_banks,act_bits", [(8, 1, 32), (8, 2, 32), (16, 4, 32), (16, 4, 512)])
def test_attn_reads_word_groups(monkeypatch, attn_bytes, kv_banks, act_bits):
    """`engine.attn_bytes` wider than a kv word: the K / V readers take a group of words a cycle
    (1, 2 or 4 lanes, one per bank) and ATTN chunks of 8 / 16 bytes (q, p and the results in 32-bit
    or u280's 512-bit ACT / SCRATCH words). Random ATTN_QK / ATTN_PV stay
    bit-exact with the functional simulator (also when the bank refuses lanes at random, so a group
    is read again), and their cycles are the model's when every request is granted."""
    import test_hw_matrix_unit as u
    from dataclasses import replace
    from llmfab.backend_hw.matrix.attn import attn_lanes
    t = replace(T, engine=replace(T.engine, attn_bytes=attn_bytes), buffers=tuple(
        replace(b, banks=kv_banks) if b.name.value == "kv" else
        replace(b, width_bits=act_bits) if b.name.value in ("act", "scratch") else b for b in T.buffers))
    assert attn_lanes(t)[BufferId.KV] == min(attn_bytes // 4, kv_banks)
    for name, v in (("T", t), ("WORDS", t.word_bytes)):
        monkeypatch.setattr(u, name, v)
    rng = np.random.default_rng(attn_bytes + kv_banks)
    cases = [_real_attn_case(rng, f) for f in (MiscFunc.ATTN_QK, MiscFunc.ATTN_PV) * 4]
    # key tiles on one buffer state: HOLD, CONTINUE | HOLD, CONTINUE (the sums carried across)
    tiles, rows, depth, p_at, v_at = random_buffers(rng), 2, 11, 100, 5
    seq = []
    for cols, flags in ((3, HOLD), (2, CONTINUE | HOLD), (4, CONTINUE)):
        p = rng.integers(0, 1 << 16, (rows, cols)).astype("<i4")
        tiles[BufferId.SCRATCH][p_at:p_at + p.nbytes] = p.tobytes()
        u.put_qrows(rng, tiles[BufferId.KV], v_at, cols, depth, 4 + depth + 1)
        seq.append(attn(MiscFunc.ATTN_PV, rows, cols, depth, flags=flags, src_buf=BufferId.SCRATCH, src_addr=p_at,
                        src2_buf=BufferId.KV, src2_addr=v_at, src2_pad=1, dst_buf=BufferId.ACT, dst_addr=41))
        p_at, v_at = p_at + p.nbytes + 4, v_at + cols * (5 + depth)
    unit = MatrixUnit(t, [(8, None, 32)])
    for grant in (1.0, 0.7):
        starts = [b for b, _ in cases]
        after = []
        cycles, err = run_unit(unit, {b: bytearray(v) for b, v in starts[0].items()}, [i for _, i in cases],
                               starts=starts, after=after, grant=grant, seed=3)
        assert not err
        for (start, inst), got in zip(cases, after):
            want = u.reference(start, [inst])
            assert all(got[b] == bytes(want[b]) for b in BufferId), (grant, str(inst)[:100])
        if grant == 1.0:
            assert cycles == [matrix_cycles(t, i) for _, i in cases]
        bufs = {b: bytearray(v) for b, v in tiles.items()}
        want = u.reference(bufs, seq)
        _, err = run_unit(unit, bufs, seq, grant=grant, seed=4)
        assert not err and all(bytes(bufs[b]) == bytes(want[b]) for b in BufferId)
    # the decode step's shape (2 query rows, 6 keys of 8 = 12-byte records): with 2 or 4 lanes,
    # fewer cycles than sim-small's word a cycle (64 / 73 in test_random_attn); one lane reads as slowly
    if kv_banks == 1:
        return
    shape = [attn(f, 2, 6, 8, src_buf=BufferId.ACT, src2_buf=BufferId.KV, dst_buf=BufferId.SCRATCH)
             for f in (MiscFunc.ATTN_QK, MiscFunc.ATTN_PV)]
    got = [matrix_cycles(t, i) for i in shape]
    assert got[0] < 64 and got[1] < 73, got


@pytest.mark.sim
@pytest.mark.parametrize("func", [MiscFunc.ATTN_QK, MiscFunc.ATTN_PV])
def test_random_attn(func):
    rng = np.random.default_rng(int(func))
    cases = [_attn_case(rng, func) for _ in range(6)]
    cases.append((random_buffers(rng), attn(func, 2, 6, 8, src_buf=BufferId.ACT, src2_buf=BufferId.KV,
                                            dst_buf=BufferId.SCRATCH)))
    cycles = _check(MatrixUnit(T, [(8, None, 32)]), cases)
    # the decode step's shape (2 query rows, 6 keys of 8): 181 / 294 cycles with one record at a
    # time; streamed (records back to back in one reader command, a chunk a cycle, q a row ahead) 64 / 73
    assert cycles[-1] == {MiscFunc.ATTN_QK: 64, MiscFunc.ATTN_PV: 73}[func]


def test_whole_system_observations():
    """Cycles the accelerator's trace measured in Verilator (int8 dense per-channel MV); n=12 was
    93 until the loader took four row shifts a cycle (92 in amaranth.sim since)."""
    from llmfab.ir.isa import WeightBits, make
    for n, k, want in ((32, 32, 205), (16, 32, 117), (64, 32, 385), (32, 64, 319), (116, 32, 674),
                       (12, 32, 92)):
        i = make(Opcode.MV, n=n, k=k, bits=WeightBits.INT8, abuf=BufferId.ACT, obuf=BufferId.SCRATCH)
        assert matrix_cycles(T, i) == want


BUDGET = 5000   # predicted cycles of the fixture instructions run per policy (wall time)


@pytest.mark.sim
@pytest.mark.parametrize("policy", ["int8", "int4-g128", "w4-2of4"])
def test_compiled_fixture_instructions(policy):
    """The MV / MM / ATTN instructions of the tiny LLaMA's prefill and decode programs (lengths
    resolved at each bucket's end): the cheapest of every kind (op, function, format, flags), on
    random buffers (the unit's cycles do not depend on data)."""
    c = tiny_compiled(policy)
    progs = []
    for e in c.manifest["programs"]:
        progs.append((Program.from_bytes(dict(c.programs)[e["file"]]), e["bucket"][1]))
    unit = MatrixUnit(T, formats_of([p for p, _ in progs]))
    ab = _act_bytes(unit)
    kinds = {}
    for p, length in progs:
        for inst in p.instructions:
            i = resolve_length(inst, length)
            if i.op not in (Opcode.MV, Opcode.MM, Opcode.ATTN):
                continue
            if i.op is Opcode.ATTN:
                key = (i.op, i["func"], i["flags"], i["rows"] > 1)
            else:
                key = (i.op, i["bits"], i["sparsity"], i["group"], i["has_bias"], i["accumulate"])
            cost = matrix_cycles(T, i, act_bytes=ab)
            if key not in kinds or cost < kinds[key][0]:
                kinds[key] = (cost, encode(i), i)
    picked, spent = [], 0
    for cost, _, i in sorted(kinds.values(), key=lambda v: v[0]):
        if spent + cost <= BUDGET or not picked:
            picked.append(i)
            spent += cost
    assert {i.op for i in picked} >= {Opcode.MV, Opcode.ATTN}
    rng = np.random.default_rng(len(policy))
    _check(unit, [(random_buffers(rng), i) for i in picked], ab)


@pytest.mark.sim
def test_attn_chunks_of_eight():
    """chain_len 8 (chunks of 8 bytes: the scale record and 4 codes in chunk 0; with depth <= 4 a
    record is one chunk, so a q row's chunk is read the cycle after it is written): QK / PV
    bit-exact with the functional simulator and matrix_cycles exact."""
    from dataclasses import replace

    from test_hw_matrix_unit import put_qrows, reference
    t8 = replace(T, engine=replace(T.engine, chain_len=8))
    unit = MatrixUnit(t8, [(8, None, 32)])
    rng = np.random.default_rng(8)
    for func, rows, cols, depth in ((MiscFunc.ATTN_QK, 3, 4, 3), (MiscFunc.ATTN_QK, 2, 3, 13),
                                    (MiscFunc.ATTN_PV, 2, 5, 3), (MiscFunc.ATTN_PV, 3, 3, 12)):
        bufs = random_buffers(rng)
        pad = int(rng.integers(0, 3))
        put_qrows(rng, bufs[BufferId.KV], 3, cols, depth, 4 + depth + pad)
        kw = dict(src2_buf=BufferId.KV, src2_addr=3, src2_pad=pad, dst_addr=int(rng.integers(0, 64)))
        if func is MiscFunc.ATTN_QK:
            put_qrows(rng, bufs[BufferId.ACT], 5, rows, depth)
            inst = attn(func, rows, cols, depth, imm=1 << 15, src_buf=BufferId.ACT, src_addr=5,
                        dst_buf=BufferId.SCRATCH, **kw)
        else:
            inst = attn(func, rows, cols, depth, src_buf=BufferId.SCRATCH, src_addr=8, dst_buf=BufferId.ACT, **kw)
        want = reference(bufs, [inst])
        (n,), err = run_unit(unit, bufs, [inst])
        assert not err and n == matrix_cycles(t8, inst), (func.name, n, matrix_cycles(t8, inst))
        for b in BufferId:
            assert bytes(bufs[b]) == bytes(want[b]), (func.name, b.name)
