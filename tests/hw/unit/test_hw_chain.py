# amaranth: UnusedElaboratable=no
"""DSPChain in amaranth.sim against a plain numpy model: dense and N:M chains, reduction groups,
multi-cycle accumulations, both the behavioural stages and the DSP48E2 model; constructor errors."""
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from llmfab.backend_hw.engine.dsp48e2 import DSP48E2Model
from llmfab.backend_hw.engine.dsp_chain import DSPChain
from llmfab.ir.target import DSPPrimitive

VARIANTS = {"behavioural": {"primitive": "behavioural"},
            "dsp48e2_model": {"primitive": "DSP48E2", "sim_model": True}}


def stimulus(rng, chain: DSPChain, n_groups: int, max_cycles: int = 3) -> list[dict]:
    """Back-to-back accumulations of 1..max_cycles valid cycles, with a few invalid gap cycles;
    a few cycles hold the extreme operands (-128 times the most negative weight)."""
    L, wb, pat = chain.chain_len, chain.weight_bits, chain.pattern
    cycles = []
    for _ in range(n_groups):
        n = int(rng.integers(1, max_cycles + 1))
        for c in range(n):
            if rng.random() < 0.15:
                cycles.append({"valid": 0, "w": rng.integers(-8, 8, L), "a": rng.integers(-8, 8, chain.n_act),
                                   "idx": rng.integers(0, 2, L), "first": 1, "last": 1})  # ignored garbage
            if rng.random() < 0.1:
                w = np.full(L, -(1 << (wb - 1)))
                a = np.full(chain.n_act, -128)
            else:
                w = rng.integers(-(1 << (wb - 1)), 1 << (wb - 1), L)
                a = rng.integers(-128, 128, chain.n_act)
            if pat is None:
                idx = np.zeros(L, np.int64)
            else:  # N distinct positions of M per block, as a pruned row stores them
                idx = np.concatenate([np.sort(rng.permutation(pat[1])[:pat[0]]) for _ in range(L // pat[0])])
            cycles.append({"valid": 1, "w": w, "a": a, "idx": idx, "first": int(c == 0), "last": int(c == n - 1)})
    return cycles


def model(chain: DSPChain, cycles: list[dict]) -> list[tuple[int, list[int]]]:
    """(cycle, group sums) of every finished accumulation. Kept weight j of the window sits at dense
    position j // N * M + idx[j] (simulator/functional.py `_matrix`); group g is the dot product of
    its dense slice of the window, summed exactly over its cycles, then wrapped to int32."""
    L, _G, pat = chain.chain_len, chain.group_kept, chain.pattern
    out, acc = [], np.zeros(chain.n_groups, np.int64)
    for t, cy in enumerate(cycles):
        if not cy["valid"]:
            continue
        dense = np.zeros(chain.n_act, np.int64)
        j = np.arange(L)
        pos = j if pat is None else j // pat[0] * pat[1] + cy["idx"]
        dense[pos] = cy["w"]
        sums = (dense * cy["a"]).reshape(chain.n_groups, -1).sum(axis=1)
        acc = sums if cy["first"] else acc + sums
        if cy["last"]:
            wrapped = (acc + (1 << 31)) % (1 << 32) - (1 << 31)
            out.append((t + chain.latency, [int(x) for x in wrapped]))
    return out


def run(chain: DSPChain, cycles: list[dict]) -> list[tuple[int, list[int]]]:
    """Drive one cycle per list entry, then drain; (cycle, sums) whenever o.valid is seen."""
    seen = []

    async def bench(ctx):
        p = chain.i.payload
        for t in range(len(cycles) + chain.latency + 2):
            if t < len(cycles):
                cy = cycles[t]
                ctx.set(chain.i.valid, cy["valid"])
                ctx.set(p.w, [int(x) for x in cy["w"]])
                ctx.set(p.a, [int(x) for x in cy["a"]])
                if chain.pattern is not None:
                    ctx.set(p.idx, [int(x) for x in cy["idx"]])
                ctx.set(p.first, cy["first"])
                ctx.set(p.last, cy["last"])
            else:
                ctx.set(chain.i.valid, 0)
            await ctx.tick()
            if ctx.get(chain.o.valid):
                sums = ctx.get(chain.o.payload.sums)
                seen.append((t + 1, [int(sums[g]) for g in range(chain.n_groups)]))

    sim = Simulator(chain)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen


PATTERNS = [None, (2, 4), (1, 4), (4, 8), (2, 8)]
# (chain_len, weight_bits, pattern, chain_len // group_kept): every width, pattern and group size
# for 4 and 8 stages (4:8 needs groups of at least 4 stages), one 16-stage chain.
CASES = [(L, wb, pat, div) for L in (4, 8) for wb in (2, 3, 4, 8) for pat in PATTERNS for div in (1, 2)
         if pat is None or L // div % pat[0] == 0] + [(16, 8, (2, 4), 2), (16, 4, None, 1)]


@pytest.mark.sim
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("L, wb, pattern, div", CASES)
def test_chain_matches_model(L, wb, pattern, div, variant):
    chain = DSPChain(L, weight_bits=wb, pattern=pattern, group_kept=L // div, **VARIANTS[variant])
    rng = np.random.default_rng([L, wb, *(pattern or (0, 0)), div])  # fixed seed per case
    cycles = stimulus(rng, chain, n_groups=5)
    expected = model(chain, cycles)
    assert len(expected) == 5
    assert run(chain, cycles) == expected


@pytest.mark.sim
def test_extreme_operands_long_accumulation():
    """-128 x -128 on every stage for 64 cycles: 2^14 * 8 * 64 = 2^23, far from int32's edge but
    past every narrower width along the way."""
    for kw in VARIANTS.values():
        chain = DSPChain(8, **kw)
        cycles = [{"valid": 1, "w": np.full(8, -128), "a": np.full(8, -128), "idx": None,
                       "first": int(t == 0), "last": int(t == 63)} for t in range(64)]
        assert run(chain, cycles) == [(63 + chain.latency, [8 * 64 << 14])]


@pytest.mark.sim
@pytest.mark.parametrize("opmode", [0x005, 0x015])
def test_dsp48e2_model(opmode):
    """P = (PCIN or 0) + A[26:0] * B (signed), 48-bit wrap; A/B three cycles, PCIN one cycle."""
    dsp = DSP48E2Model(opmode)
    rng = np.random.default_rng(opmode)
    n = 24
    A = rng.integers(-(1 << 26), 1 << 26, n)
    B = rng.integers(-(1 << 17), 1 << 17, n)
    PCIN = rng.integers(-(1 << 47), 1 << 47, n)
    junk = rng.integers(0, 8, n)
    seen = []

    async def bench(ctx):
        for t in range(n + 3):
            if t < n:
                ctx.set(dsp.A, int(A[t]) & (2**27 - 1) | int(junk[t]) << 27)  # A[29:27] unused
                ctx.set(dsp.B, int(B[t]) & (2**18 - 1))
                ctx.set(dsp.PCIN, int(PCIN[t]) & (2**48 - 1))
            await ctx.tick()
            assert ctx.get(dsp.P) == ctx.get(dsp.PCOUT)
            seen.append(ctx.get(dsp.P))

    sim = Simulator(dsp)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for t in range(n - 2):
        z = int(PCIN[t + 2]) if opmode == 0x015 else 0
        assert seen[t + 2] == (z + int(A[t]) * int(B[t])) % 2**48


@pytest.mark.sim
def test_dsp48e2_model_chain_passes_verilator_lint(tmp_path):
    """The Verilog of the simulation-model chain (what Verilator runs) has no lint warning at
    Verilator's default level (-Wall adds Amaranth's unused-wire and width style notes)."""
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    chain = DSPChain(8, weight_bits=4, pattern=(2, 4), group_kept=4, primitive="DSP48E2", sim_model=True)
    (tmp_path / "chain.v").write_text(verilog.convert(chain, name="chain"))
    r = subprocess.run(["verilator", "--lint-only", "--top-module", "chain", "chain.v"], cwd=tmp_path,
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")


BAD = [
    ({"chain_len": 12}, ValueError, r"^chain_len must be a positive power of two, not 12$"),
    ({"chain_len": 0}, ValueError, r"^chain_len must be a positive power of two, not 0$"),
    ({"chain_len": 8.0}, ValueError, r"^chain_len must be a positive power of two, not 8\.0$"),
    ({"chain_len": 8, "weight_bits": 5}, ValueError, r"^weight_bits must be one of 2, 3, 4, 8, not 5$"),
    ({"chain_len": 8, "weight_bits": 8.0}, ValueError, r"^weight_bits must be one of 2, 3, 4, 8, not 8\.0$"),
    ({"chain_len": 8, "pattern": (3, 4)}, ValueError,
     r"^pattern must be None \(dense\) or one of 2:4, 1:4, 4:8, 2:8, not \(3, 4\)$"),
    ({"chain_len": 8, "group_kept": 3}, ValueError,
     r"^group_kept must be a positive divisor of chain_len \(8\), not 3$"),
    ({"chain_len": 8, "group_kept": 16}, ValueError,
     r"^group_kept must be a positive divisor of chain_len \(8\), not 16$"),
    ({"chain_len": 8, "pattern": (4, 8), "group_kept": 2}, ValueError,
     r"^group_kept must be a multiple of N \(4 for 4:8\) so that groups hold whole blocks, not 2$"),
    ({"chain_len": 8, "primitive": "DSP58"}, ValueError,
     r"^primitive must be 'behavioural' or 'DSP48E2', not 'DSP58'$"),
    ({"chain_len": 8, "sim_model": True}, ValueError, r"^sim_model applies only to primitive 'DSP48E2'$"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD)
def test_bad_arguments(kwargs, exc, message):
    # The objects whose constructor raised are never elaborated: line 1 silences that warning.
    with pytest.raises(exc, match=message):
        DSPChain(**kwargs)


def test_dsp48e2_bad_opmode():
    with pytest.raises(ValueError, match=r"^opmode must be one of 0x005, 0x015, not 49$"):
        DSP48E2Model(0x31)


def test_shapes_and_latency():
    c = DSPChain(8, weight_bits=4, pattern=(2, 4), group_kept=4, primitive=DSPPrimitive.DSP48E2)
    assert (c.n_act, c.index_bits, c.n_groups, c.latency) == (16, 2, 2, 4 + 3)
    assert (c.i.payload.w.shape().size, c.i.payload.idx.shape().size, c.i.payload.a.shape().size) == \
        (8 * 4, 8 * 2, 16 * 8)
    assert c.o.payload.sums.shape().size == 2 * 32
    d = DSPChain(16)
    assert d.latency == 16 + 3
    assert not hasattr(d.i.payload, "idx")
    for chain in (c, d):
        Fragment.get(chain, None)   # elaborates (and marks it used)
