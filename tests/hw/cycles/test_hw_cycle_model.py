"""backend_hw.cycle_model: long DMA transfers extrapolated from shorter copies agree with the
cycle-by-cycle unit models (`dma_cycles`; the whole model is
checked against Verilator in tests/hw/system/test_hw_system.py), an instruction's timing shape
keeps its cycles, and the controller recurrences on hand-made programs."""
import pytest
from conftest import tiny_compiled

from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.cycle_model import LONG_ROW, MANY_ROWS, RtlUnits, dma_cycles_fast, timing_shape, unit_cycles
from llmfab.backend_hw.dma.cycles import dma_cycles
from llmfab.backend_hw.matrix.cycles import matrix_cycles
from llmfab.ir.isa import Program, encode, resolve_length
from test_hw_matrix_unit import T
from llmfab.backend_hw.control.fetch import fetch_cycles
from llmfab.ir.isa import BufferId, MiscFunc, Opcode, ProgramBuilder, Queue, make
from llmfab.ir.target import load_target
from llmfab.simulator import schedule

SHAPES = [dict(rows=1, row_bytes=30013, hbm_addr=100, buf_addr=4, channels=1),
          dict(rows=1, row_bytes=20000, hbm_addr=4000, buf_addr=0, channels=3),
          dict(rows=300, row_bytes=5, hbm_addr=77, hbm_stride=5, buf_stride=160, channels=4),
          dict(rows=200, row_bytes=40, hbm_addr=0, hbm_stride=40, buf_addr=3, channels=1)]


@pytest.mark.parametrize("target", ["sim-small", "u280"])
@pytest.mark.parametrize("op", [Opcode.LD, Opcode.ST])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_long_transfers_extrapolate_within_half_a_percent(target, op, shape):
    t = load_target(target)
    kw = {"hbm_stride": 0, "buf_addr": 0, **SHAPES[shape]}
    kw.setdefault("buf_stride", kw["row_bytes"])
    i = make(op, channel=0, buf=BufferId.KV, **kw)
    assert kw["row_bytes"] > LONG_ROW or kw["rows"] > MANY_ROWS       # the fast path is taken
    full, fast = dma_cycles(t, i), dma_cycles_fast(t, i)
    # (many rows: every further row at the average of rows 33..64, "a few cycles" off by design)
    assert abs(fast - full) <= max(0.005 * full, 3), (fast, full)


def test_many_channel_slices_extrapolate():
    """32-channel slices (u280), moved side by side: short ones exact (copies a whole alignment
    period apart), long ones (their pages extrapolated too) within half a percent."""
    t = load_target("u280")
    short = make(Opcode.LD, channel=3, channels=24, buf=BufferId.WEIGHT, hbm_addr=1000, hbm_stride=100, buf_addr=5,
                 buf_stride=2404, rows=2, row_bytes=100)
    assert dma_cycles_fast(t, short) == dma_cycles(t, short)
    for op in (Opcode.LD, Opcode.ST):
        long = make(op, channel=0, channels=12, buf=BufferId.WEIGHT, hbm_addr=77, buf_addr=3, rows=1,
                    row_bytes=13001, buf_stride=13001 * 12)
        full, fast = dma_cycles(t, long), dma_cycles_fast(t, long)
        assert abs(fast - full) <= 0.005 * full, (fast, full)


@pytest.mark.parametrize("policy", ["w4-2of4"])
def test_timing_shape_keeps_the_cycles(policy):
    """Every instruction of the tiny LLaMA's programs costs the same as its timing shape, which
    the unit costs of a model's repeated layers are looked up by."""
    c = tiny_compiled(policy)
    progs = [(Program.from_bytes(dict(c.programs)[e["file"]]), e["bucket"][1]) for e in c.manifest["programs"]]
    t = load_target("sim-small")
    cost = unit_cycles(t, formats_of([p for p, _ in progs]))
    seen, done = 0, set()
    for p, length in progs:
        for inst in p.instructions:
            i = resolve_length(inst, length)
            shape = timing_shape(t, i)
            if shape is not i and encode(i) not in done:
                done.add(encode(i))
                seen += 1
                if i.op in (Opcode.LD, Opcode.ST):
                    assert dma_cycles(t, shape) == dma_cycles(t, i), str(i)
                elif i.op in (Opcode.MV, Opcode.MM, Opcode.ATTN):
                    ab = 2 * T.engine.chain_len if policy == "w4-2of4" else None
                    assert matrix_cycles(t, shape, act_bytes=ab) == matrix_cycles(t, i, act_bytes=ab), str(i)
            if i.op is not Opcode.SYS:
                assert cost(i) == cost(shape)
    assert seen > 50


def test_short_transfers_are_not_extrapolated():
    t = load_target("sim-small")
    i = make(Opcode.LD, channel=0, channels=1, buf=BufferId.KV, hbm_addr=3, hbm_stride=12, buf_addr=0,
             buf_stride=12, rows=MANY_ROWS, row_bytes=12)
    assert dma_cycles_fast(t, i) == dma_cycles(t, i)


def test_fetch_bound_and_token_chains():
    """Back-to-back instructions on free queues are paced by the fetch unit; a token delays its
    consumer to the cycle after the producer's done; END halts the cycle after the last done."""
    t = load_target("sim-small")
    b = ProgramBuilder("p")
    for _ in range(3):
        b.emit(Opcode.MISC, func=MiscFunc.ADD, rows=1, cols=4, src_buf=BufferId.ACT, src2_buf=BufferId.ACT,
                    dst_buf=BufferId.ACT)
    b.end()
    p = b.build()
    r = schedule(p, 1, RtlUnits(t, cycles=lambda i: 1))
    hz = t.clock_mhz * 1e6
    starts = [round(s * hz) for _, _, _, s, _ in r.spans]
    f = fetch_cycles(t)
    assert starts == [starts[0], starts[0] + f, starts[0] + 2 * f]
    b = ProgramBuilder("q")
    b.emit(Opcode.MISC, func=MiscFunc.ADD, rows=1, cols=4, src_buf=BufferId.ACT, src2_buf=BufferId.ACT,
                dst_buf=BufferId.ACT, release=Queue.STORE)
    b.emit(Opcode.ST, wait=Queue.SFU, channel=0, channels=1, buf=BufferId.ACT, rows=1, row_bytes=4)
    b.end()
    r = schedule(b.build(), 1, RtlUnits(t, cycles=lambda i: 500))
    (_, _, _, s0, e0), (_, _, _, s1, e1) = r.spans
    assert round(s1 * hz) == round(e0 * hz) + 1
    assert round(r.seconds * hz) == round(e1 * hz) + 2


def test_rows_too_many_to_merge_are_timed_a_slice_a_row():
    """Back-to-back rows of one channel past the merge limit (rows x row_bytes >= 2**24): the
    generator hands out a slice a row, so the model may not time them from copies it would merge."""
    from llmfab.backend_hw.dma.unit import merges_rows
    t = load_target("sim-medium")
    i = make(Opcode.LD, channels=1, buf=BufferId.ACT, hbm_stride=300, buf_stride=300, rows=56000, row_bytes=300)
    assert not merges_rows(i) and merges_rows(i.evolve(rows=32))
    assert dma_cycles_fast(t, i) == dma_cycles(t, i)
