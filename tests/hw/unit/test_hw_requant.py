# amaranth: UnusedElaboratable=no
"""The requantizer against the integer contract (`_shr_sat`, `sat` of ir/integer.py)."""
import re

import numpy as np
import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.engine.requant import Requantizer
from llmfab.ir.fixed_point import sat
from llmfab.ir.integer import _shr_sat
from llmfab.ir.quant import MANT_BITS

LIM32 = (1 << 31) - 1


def expected(row) -> int:
    """docs/integer.md "Linear / LM head" steps 3-4, bias and accumulate, with the ir functions."""
    acc = int(np.sum(np.array(row["p"], np.int64) * np.array(row["mant"], np.int64)))
    y = _shr_sat(acc * row["mx"], row["shift"] + row["ex"], 32)
    if row["has_bias"]:
        y = sat(y + row["bias"], 32)
    if row["accumulate"]:
        y = sat(y + row["prev"], 32)
    return int(y)


def _row(rng, kind: str) -> dict:
    g = int(rng.choice([1, 2, 3, 8]))
    mant = rng.integers(0, 1 << MANT_BITS, g)
    mx = int(rng.integers(8257, 16513))          # m in [2^20/127, 2^21/127] for a nonzero row
    if kind == "contract":                       # |p| <= 127 * 127 * 128 (group of 128)
        p = rng.integers(-127 * 127 * 128, 127 * 127 * 128 + 1, g)
    elif kind == "extreme":                      # full int32 sums and mantissas: |acc| ~ 2^46
        g = int(rng.choice([1, 2]))
        p = rng.choice([LIM32, -LIM32, LIM32 - 1, -1, 1], g)
        mant = rng.choice([(1 << MANT_BITS) - 1, 1], g)
        mx = int(rng.choice([(1 << 15) - 1, 1]))
    else:                                        # a zero activation row: m = e = 0, or zero sums
        p = np.zeros(g, np.int64) if rng.random() < 0.5 else rng.integers(-1000, 1000, g)
        mx = 0 if rng.random() < 0.5 else mx
    acc = int(np.sum(p.astype(np.int64) * mant))
    while abs(acc * mx) >= 1 << 61:              # the contract's bound for the rescale product
        mx //= 2
    # shifts near the interesting range (outputs around 2^29), plus the extremes of both fields
    near = max(abs(acc * mx), 1).bit_length() - 29 + int(rng.integers(-4, 4))
    s = int(rng.choice([near, near, near, int(rng.integers(-256, 255)), -256, 254, 0, 1, 62, 63]))
    ex = int(rng.integers(-10, 21)) if rng.random() < 0.7 else int(rng.integers(-128, 128))
    shift = int(np.clip(s - ex, -128, 127))
    ex = int(np.clip(s - shift, -128, 127))
    edge = [LIM32, -LIM32, 0, 1, -1]
    return dict(p=p.tolist(), mant=mant.tolist(), mx=mx, shift=shift, ex=ex,
                bias=int(rng.choice(edge) if rng.random() < 0.3 else rng.integers(-LIM32, LIM32 + 1)),
                has_bias=int(rng.random() < 0.5),
                prev=int(rng.choice(edge) if rng.random() < 0.3 else rng.integers(-LIM32, LIM32 + 1)),
                accumulate=int(rng.random() < 0.5))


def run_requantizer(rows, gap_prob: float, seed: int, acc_bits: int = 48):
    """Feed the rows' groups (with random idle cycles); return [(output, cycles after last beat)]."""
    dut = Requantizer(acc_bits=acc_bits)
    rng = np.random.default_rng(seed)
    out = []

    async def bench(ctx):
        cycle, last_at = 0, []

        async def step():
            nonlocal cycle
            await ctx.tick()
            cycle += 1
            if ctx.get(dut.o.valid):
                out.append((ctx.get(dut.o.payload), cycle - last_at[len(out)]))

        for row in rows:
            for j, (p, mt) in enumerate(zip(row["p"], row["mant"])):
                while rng.random() < gap_prob:
                    ctx.set(dut.i.valid, 0)
                    await step()
                last = j == len(row["p"]) - 1
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"p": p, "mant": mt, "last": last, "row": {
                    k: row[k] for k in ("shift", "ex", "mx", "bias", "has_bias", "prev", "accumulate")}})
                if last:
                    last_at.append(cycle)
                await step()
        ctx.set(dut.i.valid, 0)
        for _ in range(dut.latency + 2):
            await step()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.sim
@pytest.mark.parametrize("gap_prob", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["contract", "extreme", "zero"])
def test_requantizer_matches_contract(kind, gap_prob):
    rng = np.random.default_rng(["contract", "extreme", "zero"].index(kind) + int(gap_prob * 10))
    rows = [_row(rng, kind) for _ in range(60)]
    out = run_requantizer(rows, gap_prob, seed=7)
    assert [y for y, _ in out] == [expected(r) for r in rows]
    assert {lat for _, lat in out} == {Requantizer.LATENCY}


@pytest.mark.sim
def test_requantizer_saturates_and_rounds_half_up():
    """Hand-picked rows: ties round up (also for negatives), both saturation ends, shifts past 62."""
    base = dict(mant=[1], shift=0, ex=0, bias=0, has_bias=0, prev=0, accumulate=0)
    rows = [dict(base, p=[3], mx=1, shift=1),                 # 1.5 -> 2
            dict(base, p=[-3], mx=1, shift=1),                # -1.5 -> -1
            dict(base, p=[-5], mx=1, shift=2),                # -1.25 -> -1
            dict(base, p=[LIM32], mx=2, shift=0),             # 2^32 - 2 saturates
            dict(base, p=[-LIM32], mx=(1 << 15) - 1, shift=-100),
            dict(base, p=[1], mx=1, shift=-30, ex=-1),        # 2^31 saturates
            dict(base, p=[1], mx=1, shift=-30),               # 2^30 exact
            dict(base, p=[LIM32], mant=[(1 << 15) - 1], mx=(1 << 13), shift=127, ex=127),
            dict(base, p=[LIM32], mx=1, has_bias=1, bias=LIM32),
            dict(base, p=[-LIM32], mx=1, accumulate=1, prev=-LIM32),
            dict(base, p=[100], mx=1, has_bias=1, bias=LIM32, accumulate=1, prev=-5)]  # sat, then add
    want = [expected(r) for r in rows]
    assert want == [2, -1, -1, LIM32, -LIM32, LIM32, 1 << 30, 0, LIM32, -LIM32, LIM32 - 5]
    assert [y for y, _ in run_requantizer(rows, 0.0, seed=0)] == want


@pytest.mark.parametrize("bad", [46, 65, 48.0, True, "48"])
def test_requantizer_checks_acc_bits(bad):
    with pytest.raises(ValueError, match=rf"^acc_bits must be an integer in 47\.\.64 \(the contract needs 47\), "
                                         rf"not {re.escape(repr(bad))}$"):
        Requantizer(acc_bits=bad)
