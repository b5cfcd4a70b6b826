"""The SFU (backend_hw/sfu/datapath.py) in amaranth.sim against the ir/integer.py kernels, bit for bit.

One simulation per lane count runs every implemented MISC function on a few short random rows
(fixed seed, with saturation limits, table edges, zero rows and huge magnitudes mixed in); each
test compares one function's outputs and the output latency of every result beat.
"""
import gc
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import pytest

from llmfab.backend_hw.sfu.arith import SeqDivider, SeqSqrt
from llmfab.backend_hw.sfu.datapath import FUNCS, SFU, SWEEPS
from llmfab.backend_hw.sfu.scalars import Q_INV, Q_M, Q_MEAN, Q_MS, Q_R, Q_RECIP
from llmfab.ir.integer import (int_add, int_exp, int_gelu, int_layer_norm, int_mul, int_relu, int_rms_norm, int_rope,
                               int_silu, int_softcap, int_softmax_rows, isqrt, quantize_activation, softcap_fixed)
from llmfab.ir.isa import MiscFunc
from llmfab.ir.ops import GeluApprox
from llmfab.ir.target import load_target

ONE = 1 << 16
LIM = (1 << 31) - 1
# table edges (knots at -8 + j/16, the interpolation range [-8, 8)) and saturation limits
EDGES = [0, 1, -1, LIM, -LIM, -(1 << 31), 8 * ONE, 8 * ONE - 1, -8 * ONE, -8 * ONE - 1, -8 * ONE + 4095,
         7 * ONE + 4095, 4096, -4096, 16 * ONE, -16 * ONE, -16 * ONE - 1]


def q16(rng, shape, scale=3.0):
    """Q.16 values: mostly normal(0, scale), some full-range int32, small ints and EDGES."""
    v = np.round(rng.normal(0, scale, shape) * ONE).astype(np.int64)
    pick = rng.random(shape)
    v = np.where(pick < 0.15, rng.integers(-LIM, LIM, shape, endpoint=True), v)
    v = np.where((pick >= 0.15) & (pick < 0.3), rng.integers(-5000, 5000, shape), v)
    v = np.where(pick >= 0.85, rng.choice(EDGES, shape), v)
    return np.clip(v, -(1 << 31), LIM)


def _needs_correction(row) -> bool:
    """The SFU's p = floor(N R / 2^35), R = floor(2^35 / 2Z), N = e 2^17 + Z is one short somewhere."""
    e = np.array([int(v) for v in _exp_row(row)], dtype=object)
    z = int(e.sum())
    n = e * (1 << 17) + z
    return any(v * ((1 << 35) // (2 * z)) >> 35 != v // (2 * z) for v in n)


def _exp_row(row):
    return int_exp(np.minimum(row - row.max(), 0))


@dataclass
class Case:
    func: MiscFunc
    x: np.ndarray                  # rows x cols, operand a
    ops: dict                      # operands b, c, d: rows x cols
    expect: np.ndarray             # rows x cols, the kernel's output
    eps32: int = 0
    depth: int = 0
    limits: tuple = ()             # softmax: key k visible in row r iff k <= limits[r]
    m: np.ndarray | None = None    # QUANT_ROWS row scales
    e: np.ndarray | None = None


def make_cases(lanes: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cols = 3 * lanes + lanes // 2                   # a partial last beat
    r = 3
    cases = []
    x, y = q16(rng, (r, cols)), q16(rng, (r, cols))
    x[0, :4], y[0, :4] = [LIM, -LIM, LIM, 1 << 30], [LIM, -LIM, -LIM, 1 << 30]   # add/mul saturate
    cases += [Case(MiscFunc.ADD, x, {"b": y}, int_add(x, y)), Case(MiscFunc.MUL, x, {"b": y}, int_mul(x, y)),
              Case(MiscFunc.RELU, x, {}, int_relu(x))]
    xa = q16(rng, (r, cols), scale=6.0)
    xa[0] = rng.choice(EDGES, cols)
    xa[1, :8] = -8 * ONE + 4096 * np.arange(8) * 37      # across knots
    cases += [Case(MiscFunc.SILU, xa, {}, int_silu(xa)), Case(MiscFunc.GELU, xa, {}, int_gelu(xa)),
              Case(MiscFunc.GELU_TANH, xa, {}, int_gelu(xa, GeluApprox.TANH))]
    # SOFTCAP: cap tanh(x), the cap in `eps` (Gemma2's 50 and 30, a small one, the largest)
    for cap in (softcap_fixed(50.0), softcap_fixed(30.0), softcap_fixed(0.5), LIM):
        cases.append(Case(MiscFunc.SOFTCAP, xa, {}, int_softcap(xa, cap), eps32=cap))
    # RoPE: 2 heads of depth 4 lanes; the partner of element j is j +- depth/2 in its head
    depth = 4 * lanes
    xr = q16(rng, (r, 2 * depth))
    ang = rng.uniform(-4, 4, (r, depth))
    cos, sin = np.round(np.cos(ang) * ONE).astype(np.int64), np.round(np.sin(ang) * ONE).astype(np.int64)
    cos[0, :2], sin[0, :2] = [ONE, -ONE], [-ONE, ONE]
    heads = xr.reshape(r, 2, depth)
    partner = np.concatenate([heads[..., depth // 2:], heads[..., :depth // 2]], -1).reshape(r, -1)
    ref = int_rope(heads, cos[:, None], sin[:, None]).reshape(r, -1)
    cases.append(Case(MiscFunc.ROPE, xr, {"b": partner, "c": np.tile(cos, 2), "d": np.tile(sin, 2)}, ref,
                      depth=depth))
    # QUANT_ROWS: a zero row, a row of one tiny value, a full-range row
    xq = q16(rng, (r + 1, cols))
    xq[0] = 0
    xq[1] = 0
    xq[1, 3] = -1
    codes, mq, eq = quantize_activation(xq)
    cases.append(Case(MiscFunc.QUANT_ROWS, xq, {}, codes, m=mq, e=eq))
    # norms: rows of very different magnitudes (a zero row, one far off zero), eps from 0 to ~1/8
    scales = np.array([1e-4, 1e-4, 3e-3, 0.05, 3.0, 2000.0])[:, None]
    xn = np.clip(np.round(rng.normal(0, 1, (6, cols)) * scales * ONE), -LIM, LIM).astype(np.int64)
    xn[0] = 0
    xn[1] += 100 * ONE
    xn[5, 0] = LIM
    w, bias = q16(rng, (1, cols), 1.0)[0], q16(rng, (1, cols), 1.0)[0]
    wn, bn = np.tile(w, (6, 1)), np.tile(bias, (6, 1))
    for eps32 in (0, 42950, (1 << 29) - 1):
        eps = eps32 / 2 ** 32
        cases.append(Case(MiscFunc.RMSNORM, xn, {"b": wn}, int_rms_norm(xn, w, eps), eps32=eps32))
        cases.append(Case(MiscFunc.LAYERNORM, xn, {"b": wn, "c": bn}, int_layer_norm(xn, w, bias, eps),
                          eps32=eps32))
    # softmax: scores of a few units, one huge row, causal limits (none visible, some, all), and a
    # row where the reciprocal's estimate of div_round(e 2^16, Z) is one short (the correction step)
    xs = q16(rng, (5, cols), scale=4.0)
    xs[1] = rng.choice([LIM, -LIM, 0, -16 * ONE], cols)
    while not _needs_correction(xs[4]):
        xs[4] = q16(rng, cols, scale=2.0)
    limits = (cols - 1, 2, -1, cols // 2, cols - 1)
    vis = np.arange(cols)[None, :] <= np.array(limits)[:, None]
    cases.append(Case(MiscFunc.SOFTMAX, xs, {}, int_softmax_rows(xs, vis), limits=limits))
    return cases


def simulate(lanes: int, cases: list[Case]) -> list[tuple]:
    """Run every case's rows through one SFU; per case (y rows, m per row, e per row, latencies)."""
    from amaranth.sim import Simulator
    t = load_target("sim-small")
    dut = SFU(replace(t, sfu=replace(t.sfu, lanes=lanes)))
    results, taken, seen, starts = [], [], [], []

    async def drive(ctx):
        cyc = 0
        for case in cases:
            rows, cols = case.x.shape
            nb = -(-cols // lanes)
            ctx.set(dut.func, case.func)
            ctx.set(dut.cols, cols)
            ctx.set(dut.eps, case.eps32)
            ctx.set(dut.depth, case.depth)
            ctx.set(dut.causal, bool(case.limits))
            for r in range(rows):
                ctx.set(dut.key_limit, case.limits[r] if case.limits else 0)
                starts.append(cyc)
                for kind in SWEEPS[case.func]:
                    for bt in range(nb):
                        for name in "abcd":
                            src = case.x if name == "a" else case.ops.get(name)
                            for n in range(lanes):
                                k = bt * lanes + n
                                v = int(src[r, k]) if src is not None and k < cols else 0
                                ctx.set(getattr(dut.i.payload, name)[n], v)
                        ctx.set(dut.i.valid, 1)
                        while True:
                            ready = ctx.get(dut.i.ready)
                            await ctx.tick()
                            cyc += 1
                            if ready:
                                break
                        if kind == 0:
                            taken.append(cyc - 1)
                    ctx.set(dut.i.valid, 0)
            while ctx.get(dut.busy):                # a new function only once the unit is idle
                await ctx.tick()
                cyc += 1
            starts.append(None)

    async def collect(ctx):
        cyc = 0
        while True:
            await ctx.tick()
            cyc += 1
            if ctx.get(dut.o.valid):
                ys = [ctx.get(dut.o.payload.y[n]) for n in range(lanes)]
                seen.append((cyc, ys, ctx.get(dut.o.payload.m), ctx.get(dut.o.payload.e)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()
    assert len(seen) == len(taken)
    pos = 0
    row_times = iter([b - a for a, b in pairwise(starts) if a is not None and b is not None])
    for case in cases:
        rows, cols = case.x.shape
        nb = -(-cols // lanes)
        beats = seen[pos:pos + rows * nb]
        lat = [c - t for (c, *_), t in zip(beats, taken[pos:pos + rows * nb])]
        pos += rows * nb
        y = np.array([v for _, ys, _, _ in beats for v in ys], np.int64).reshape(rows, nb * lanes)[:, :cols]
        times = [next(row_times) for _ in range(rows - 1)]
        results.append((y, np.array([b[2] for b in beats[::nb]]), np.array([b[3] for b in beats[::nb]]), lat,
                        times, dut.row_cycles(case.func, cols)))
    return results


_RUNS: dict[int, tuple] = {}


def run(lanes: int):
    if lanes not in _RUNS:
        cases = make_cases(lanes, seed=6 + lanes)
        _RUNS[lanes] = cases, simulate(lanes, cases)
    return _RUNS[lanes]


@pytest.mark.sim
@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("func", FUNCS, ids=lambda f: f.name)
def test_sfu_matches_integer_kernels(lanes, func):
    cases, results = run(lanes)
    checked = 0
    for case, (y, m, e, lat, times, row_cycles) in zip(cases, results):
        if case.func is not func:
            continue
        np.testing.assert_array_equal(y, case.expect, err_msg=f"{func.name} eps32={case.eps32}")
        if case.m is not None:
            np.testing.assert_array_equal(m, case.m)
            np.testing.assert_array_equal(e, case.e)
        assert set(lat) == {SFU.LATENCY}
        # back-to-back rows: never slower than row_cycles, exactly it for a row of non-zero data
        assert max(times) == row_cycles and min(times) >= len(SWEEPS[func]) * -(-case.x.shape[1] // lanes)
        checked += 1
    assert checked


@pytest.mark.sim
def test_one_pass_functions_stream_a_beat_per_cycle():
    """Rows of ADD, SILU, ... leave at one beat a cycle: the output beats are back to back."""
    from amaranth.sim import Simulator
    t = load_target("sim-small")
    dut = SFU(t)
    rng = np.random.default_rng(1)
    x = q16(rng, 8 * 4)
    valid = []

    async def drive(ctx):
        ctx.set(dut.func, MiscFunc.SILU)
        ctx.set(dut.cols, 8)
        for bt in range(8):
            for n in range(4):
                ctx.set(dut.i.payload.a[n], int(x[4 * bt + n]))
            ctx.set(dut.i.valid, 1)
            assert ctx.get(dut.i.ready)
            await ctx.tick()
            valid.append(ctx.get(dut.o.valid))
        ctx.set(dut.i.valid, 0)
        for _ in range(SFU.LATENCY + 1):
            await ctx.tick()
            valid.append(ctx.get(dut.o.valid))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    # sampled after each tick: the first beat's result is there after LATENCY ticks
    assert valid == [0] * (SFU.LATENCY - 1) + [1] * 8 + [0, 0]


@pytest.mark.sim
@pytest.mark.parametrize("radix_bits", [1, 2])
def test_sequential_divider_and_sqrt(radix_bits):
    from amaranth.sim import Simulator
    rng = np.random.default_rng(3)
    nums = [0, 1, -1, 7, -7, (1 << 62) + 5, -(1 << 62) - 5] + [int(v) for v in rng.integers(-(1 << 62), 1 << 62, 6)]
    dens = [1, 2, 3, (1 << 33) - 1] + [int(v) for v in rng.integers(1, 1 << 33, 9)]
    roots = [0, 1, 2, 3, 4, (1 << 62) - 1, (1 << 61)] + [int(v) for v in rng.integers(0, 1 << 62, 6)]
    div, sq = SeqDivider(64, 34, radix_bits), SeqSqrt(62, radix_bits)
    got_q, got_r, sq_busy = [], [], []

    async def tb(ctx):
        for n, d, x in zip(nums, dens, roots):
            ctx.set(div.n, n)
            ctx.set(div.d, d)
            ctx.set(div.start, 1)
            await ctx.tick()
            ctx.set(div.start, 0)
            while ctx.get(div.busy):
                await ctx.tick()
            got_q.append(ctx.get(div.q))
            ctx.set(sq.x, x)
            ctx.set(sq.start, 1)
            await ctx.tick()
            ctx.set(sq.start, 0)
            k = 0
            while ctx.get(sq.busy):
                await ctx.tick()
                k += 1
            sq_busy.append(k)
            got_r.append(ctx.get(sq.r))

    from amaranth import Module
    top = Module()
    top.submodules.div, top.submodules.sq = div, sq
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got_q == [n // d for n, d in zip(nums, dens)]
    assert got_r == [int(v) for v in isqrt(np.array(roots, np.int64))]
    assert set(sq_busy) == {sq.cycles()} == {-(-62 // (2 * radix_bits))}


def _bound_cases(rng):
    """(n, d, q_bits) at the bounds RowScalars promises for each of its divisions (sfu/scalars.py),
    and random ones within them."""
    cases = []
    D = 65535
    for q_bits, worst in ((Q_MEAN, [(-(1 << 40) * D + D, 2 * D), ((LIM << 9) * D + D, 2 * D), (-(1 << 40) + 1, 2)]),
                          (Q_INV, [((254 << 32) + 1, 2), ((254 << 32) + (1 << 31), 1 << 32)]),
                          (Q_M, [(2 * (1 << 21) + 127, 254), (127, 254)]),
                          (Q_MS, [(2 * (1 << 46) * D + D, 2 * D), (1, 2)]),
                          (Q_R, [((1 << 47) + 1, 2), ((1 << 47) + LIM, 2 * LIM)]),
                          (Q_RECIP, [(1 << 35, 2), (1 << 35, 2 * (D << 16))])):
        cases += [(n, d, q_bits) for n, d in worst]
        for _ in range(3):
            d = int(rng.integers(1, 1 << min(33, 62 - q_bits)))       # n fits the 64-bit input
            q = int(rng.integers(-(1 << (q_bits - 1)), 1 << (q_bits - 1)))
            cases.append((q * d + int(rng.integers(0, d)), d, q_bits))
    return cases


@pytest.mark.sim
@pytest.mark.parametrize("radix_bits", [1, 2, 3])
def test_divider_computes_only_the_quotient_bits_asked(radix_bits):
    """`SeqDivider` with `q_bits`: exact floor quotients at the bounds of every RowScalars division
    (and at the full width), busy for exactly 1 + ceil(q_bits / radix_bits) cycles (the alignment,
    then the steps)."""
    from amaranth.sim import Simulator
    rng = np.random.default_rng(4 + radix_bits)
    cases = _bound_cases(rng) + [(-(1 << 63), 3, 64), ((1 << 63) - 1, (1 << 34) - 1, 64), (-5, 7, 64)]
    div = SeqDivider(64, 34, radix_bits)
    got, busy = [], []

    async def tb(ctx):
        for n, d, q_bits in cases:
            ctx.set(div.n, n)
            ctx.set(div.d, d)
            ctx.set(div.q_bits, q_bits)
            ctx.set(div.start, 1)
            await ctx.tick()
            ctx.set(div.start, 0)
            k = 0
            while ctx.get(div.busy):
                await ctx.tick()
                k += 1
            busy.append(k)
            got.append(ctx.get(div.q))

    sim = Simulator(div)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == [n // d for n, d, _ in cases]
    assert busy == [div.cycles(q) for _, _, q in cases] == [1 + -(-q // radix_bits) for _, _, q in cases]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("lanes", [0, 3, 12])
def test_sfu_rejects_lanes_that_are_not_powers_of_two(lanes):
    t = load_target("sim-small")
    with pytest.raises(ValueError, match=rf"^sfu lanes must be a positive power of two, not {lanes}$") as err:
        SFU(replace(t, sfu=replace(t.sfu, lanes=lanes)))
    del err
    gc.collect()                  # the half-built SFU warns as unused here, under the filter
