# amaranth: UnusedElaboratable=no
"""MatrixEngine on sim-small (2 chains x 4) against the integer contract: `int_linear` of
ir/integer.py (what the simulator's `_matrix` computes), with bias and the fused residual add.
The test plays the sequencer: it streams each pass's weight words from a weight-buffer image laid
out as lowering lays it out (tests/hw/unit/test_hw_weight_unpack.py), MV (one token row) and MM (every
token row over the same weight rows)."""
import re

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_hw_weight_unpack import buffer_image, random_weight, row_jobs, words_of

from llmfab.backend_hw.engine.matrix_engine import MatrixEngine
from llmfab.ir.fixed_point import sat
from llmfab.ir.integer import int_linear, quantize_activation
from llmfab.ir.packing import pack
from llmfab.ir.quant import kept
from llmfab.ir.target import TargetError, load_target

LIM32 = (1 << 31) - 1


def run_engine(eng: MatrixEngine, qw, x_fx, bias, prev, accumulate: bool, seed: int, stall: float = 0.2):
    """Drive every pass (token rows outer, weight-row passes inner); return y [R, N] from `o`."""
    rng = np.random.default_rng(seed)
    n, k = qw.shape
    nc, cl = eng.n_chains, eng.chain_len
    word_bits = eng.target.buffer("weight").width_bits
    p = pack(qw)
    img, *addrs = buffer_image(p, rng, word_bits // 8)
    jobs = row_jobs(qw, p, words_of(img, word_bits), addrs, word_bits, cl)
    xq, mx, ex = quantize_activation(x_fx)
    rows = xq.shape[0]
    passes = [(r, q) for r in range(rows) for q in range(n // nc)]        # MM: weights reused per token row
    n_act = eng.chains[0].n_act
    beats = kept(k, qw.scheme.sparsity) // cl
    out = []

    async def put(ctx, port, payload):
        while rng.random() < stall:
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, payload)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)

    def weight_feeder(c, name):
        async def bench(ctx):
            for _, q in passes:
                job = jobs[q * nc + c]
                if name == "start":
                    await put(ctx, eng.weights[c].start, {f: v for f, v in job.items() if not isinstance(v, list)})
                else:
                    for w in job[name]:
                        await put(ctx, getattr(eng.weights[c], name), w)
        return bench

    async def act_feeder(ctx):
        for r, _ in passes:
            for b in range(beats):
                await put(ctx, eng.act, xq[r, b * n_act:(b + 1) * n_act].tolist())

    async def rows_feeder(ctx):
        for r, q in passes:
            recs = []
            for c in range(nc):
                o = q * nc + c
                recs.append({"shift": int(qw.shift[o]), "ex": int(ex[r]), "mx": int(mx[r]),
                             "bias": int(bias[o]) if bias is not None else 0, "has_bias": int(bias is not None),
                             "prev": int(prev[r, o]), "accumulate": int(accumulate)})
            await put(ctx, eng.rows, recs)

    async def monitor(ctx):
        while len(out) < len(passes):
            await ctx.tick()
            if ctx.get(eng.o.valid):
                out.append([int(v) for v in ctx.get(eng.o.payload)])

    sim = Simulator(eng)
    sim.add_clock(1e-8)
    streams = ["start", "codes", "mant"] + (["idx"] if qw.scheme.sparsity else [])
    for c in range(nc):
        for name in streams:
            sim.add_testbench(weight_feeder(c, name), background=True)
    sim.add_testbench(act_feeder, background=True)
    sim.add_testbench(rows_feeder, background=True)
    sim.add_testbench(monitor)
    sim.run()
    y = np.zeros((rows, n), np.int64)
    for (r, q), vals in zip(passes, out):
        y[r, q * nc:(q + 1) * nc] = vals
    return y


def expected(qw, x_fx, bias, prev, accumulate):
    y = int_linear(x_fx, qw, bias)
    return sat(y + prev, 32) if accumulate else y


CASES = [  # (name, token rows, bits, pattern, k, group, bias, accumulate)
    ("mv-int8-dense-g=k", 1, 8, None, 64, 0, False, False),
    ("mv-int8-dense-g=k/2", 1, 8, None, 64, 32, True, False),
    ("mv-int4-dense-g=k", 1, 4, None, 64, 0, True, True),
    ("mv-int4-dense-g=k/2", 1, 4, None, 64, 32, False, True),
    ("mv-int4-2:4-g=k", 1, 4, (2, 4), 64, 0, True, False),
    ("mv-int4-2:4-g=k/2", 1, 4, (2, 4), 64, 32, False, False),
    ("mm-int4-2:4-3rows", 3, 4, (2, 4), 64, 32, True, True),
]


@pytest.mark.sim
@pytest.mark.parametrize("name,rows,bits,pattern,k,group,bias,accumulate", CASES, ids=[c[0] for c in CASES])
def test_engine_matches_int_linear(name, rows, bits, pattern, k, group, bias, accumulate):
    rng = np.random.default_rng(CASES.index(next(c for c in CASES if c[0] == name)))
    n = 4                                                          # 2 passes of 2 chains
    qw = random_weight(rng, n, k, bits, group, pattern)
    qw.shift[:] = rng.integers(8, 16, n)                           # outputs of ordinary size, not all saturated
    x_fx = rng.integers(-(1 << 20), 1 << 20, (rows, k))
    x_fx[0, 0] = -(1 << 24)                                        # a large entry sets the row scale
    b = rng.integers(-(1 << 24), 1 << 24, n) if bias else None
    prev = rng.integers(-(1 << 24), 1 << 24, (rows, n))
    prev[0, 0] = LIM32                                             # the residual add saturates
    eng = MatrixEngine(load_target("sim-small"), weight_bits=bits, pattern=pattern, group=qw.group)
    got = run_engine(eng, qw, x_fx, b, prev, accumulate, seed=3)
    want = expected(qw, x_fx, b, prev, accumulate)
    assert np.abs(want).max() > 1000                               # the case is not trivially zero
    np.testing.assert_array_equal(got, want)


def test_engine_checks_arguments():
    t = load_target("sim-small")
    with pytest.raises(TypeError, match=r"^target must be a Target, not 'sim-small'$"):
        MatrixEngine("sim-small")
    with pytest.raises(ValueError, match=r"^group must hold a multiple of chain_len \(4\) kept weights, "
                                         r"not 2 \(group 8\)$"):
        MatrixEngine(t, weight_bits=4, pattern=(1, 4), group=8)
    with pytest.raises(ValueError, match=r"^group must be a positive multiple of the N:M block, not 6$"):
        MatrixEngine(t, weight_bits=4, pattern=(2, 4), group=6)
    e85 = load_target("ecp5-85k")
    if 3 not in e85.engine.weight_bits:
        with pytest.raises(TargetError, match=re.escape("the engine does not run int3 weights")):
            MatrixEngine(e85, weight_bits=3)
