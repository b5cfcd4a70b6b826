"""`sfu_cycles` (backend_hw/sfu/cycles.py) against the SFU instruction unit in amaranth.sim.

The instructions are those of tests/hw/unit/test_hw_sfu_unit.py's generators (every function, random rows,
cols, strides, byte alignments, BROADCAST, CAUSAL with periods and key offsets, EMBED code widths
and groups, ROPE heads and positions), more rows and wider shapes than there (long rows, many rows,
64-bit words), and the MISC instructions of the compiled fixture programs. The unit runs them
through that module's `simulate`, which counts accept to `done` exactly as the accelerator's
`issued` / `completed` trace does; every instruction's formula must equal it exactly.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import tiny_compiled
from llmfab.backend_hw.sfu.cycles import _cycles, sfu_cycles
from llmfab.ir.isa import BROADCAST, CAUSAL, BufferId, MiscFunc, Opcode, Program, make, resolve_length

from test_hw_sfu_unit import (T, gen_copy, gen_elementwise, gen_embed, gen_norm, gen_quant, gen_rope,
                              gen_softmax, misc, q16_rows, random_buffers, region, simulate)


def zero_rows(inst, buffers) -> frozenset:
    """QUANT_ROWS rows of `inst` that are all zeros in `buffers` (the one data-dependent timing)."""
    if inst["func"] is not MiscFunc.QUANT_ROWS:
        return frozenset()
    buf, cols = buffers[BufferId(inst["src_buf"])], inst["cols"]
    pitch = inst["src_stride"] or 4 * cols
    return frozenset(r for r in range(inst["rows"])
                     if not any(buf[inst["src_addr"] + r * pitch:inst["src_addr"] + r * pitch + 4 * cols]))


def assert_exact(insts, bufs, target=T):
    """The formula equals the unit's cycles on every instruction (given the zero QUANT_ROWS rows
    of the buffers as each instruction finds them); returns the cycles and the zero rows."""
    snaps, measured = simulate(insts, bufs, target)
    before = [{b: bytes(v) for b, v in bufs.items()}] + snaps[:-1]
    zeros = [zero_rows(i, s) for i, s in zip(insts, before)]
    got = [_cycles(target, i, z) for i, z in zip(insts, zeros)]
    bad = [(n, i["func"].name, i["rows"], i["cols"], m, g)
           for n, (i, m, g) in enumerate(zip(insts, measured, got)) if m != g]
    assert not bad, f"(index, func, rows, cols, measured, formula): {bad}"
    return measured, zeros


GENERATORS = {
    "COPY": gen_copy,
    "ADD/MUL": gen_elementwise((MiscFunc.ADD, MiscFunc.MUL), BROADCAST),
    "activations": gen_elementwise((MiscFunc.RELU, MiscFunc.SILU, MiscFunc.GELU, MiscFunc.GELU_TANH)),
    "SOFTCAP": gen_elementwise((MiscFunc.SOFTCAP,), imm=lambda rng: int(rng.integers(1, 1 << 31))),
    "QUANT_ROWS": gen_quant,
    "norms": gen_norm,
    "SOFTMAX": gen_softmax,
    "ROPE": gen_rope,
    "EMBED": gen_embed,
}


@pytest.mark.sim
@pytest.mark.parametrize("name", list(GENERATORS))
def test_random_instructions(name):
    rng = np.random.default_rng(100 + list(GENERATORS).index(name))
    insts, bufs = GENERATORS[name](rng)
    assert_exact(insts, bufs)


def gen_long(rng, n=6):
    """Longer rows and more rows than the unit tests: several beats and rows of every kind of pass,
    odd byte alignments on every operand, CAUSAL rows with no visible key (a negative key offset)."""
    bufs, insts = random_buffers(rng), []
    funcs = (MiscFunc.ADD, MiscFunc.SILU, MiscFunc.QUANT_ROWS, MiscFunc.RMSNORM, MiscFunc.LAYERNORM, MiscFunc.SOFTMAX)
    for k in range(n):
        f = funcs[k % len(funcs)]
        rows, cols = int(rng.integers(2, 6)), int(rng.integers(13, 40))
        align = int(rng.choice([1, 2, 4]))
        sb, s2b, db = (BufferId(v) for v in rng.choice((BufferId.ACT, BufferId.SCRATCH), 3))
        ss = int(rng.choice([0, 4 * cols + int(rng.integers(1, 9))]))
        ds = int(rng.choice([0, 4 * cols + 5 + int(rng.integers(1, 9))]))
        src = q16_rows(rng, bufs, sb, rows, cols, 0, ss, align)
        src2 = q16_rows(rng, bufs, s2b, rows, 2 * cols, 1, 0, align, scale=1.0)
        fields = dict(func=f, rows=rows, cols=cols, src_buf=sb, src2_buf=s2b, dst_buf=db, src_addr=src,
                      src2_addr=src2, src_stride=ss, dst_stride=ds,
                      dst_addr=region(rng, db, rows * (ds or 4 * cols + 4) + 4, 2, align))
        if f is MiscFunc.SOFTMAX:
            fields.update(flags=CAUSAL, imm=-2, period=int(rng.integers(0, rows + 1)))
        if f is MiscFunc.ADD:
            fields.update(flags=BROADCAST * int(rng.integers(0, 2)))
        insts.append(misc(**fields))
    return insts, bufs


@pytest.mark.sim
def test_long_rows():
    assert_exact(*gen_long(np.random.default_rng(200)))


@pytest.mark.sim
@pytest.mark.parametrize("name", ["COPY", "QUANT_ROWS", "EMBED", "ADD/MUL", "ROPE"])
@pytest.mark.parametrize("bits", [64, 512])
def test_wide_words(name, bits):
    """64-bit (or u280's 512-bit) ACT and KV words next to 32-bit ones: words per piece on each
    buffer's own width."""
    wide = replace(T, buffers=tuple(replace(b, width_bits=bits) if b.name.value in ("act", "kv") else b
                                    for b in T.buffers))
    insts, bufs = GENERATORS[name](np.random.default_rng(300 + len(name)), n=3)
    assert_exact(insts, bufs, wide)


@pytest.mark.sim
def test_quant_zero_rows_are_faster():
    """The one data-dependent case: an all-zero QUANT_ROWS row skips RowScalars' two divisions, so
    `sfu_cycles` (which assumes non-zero rows) is high there; `_cycles` given the zero rows is exact."""
    insts, bufs = gen_quant(np.random.default_rng(4), n=1)       # the generator zeroes row 0 of the first
    (measured,), (zeros,) = assert_exact(insts, bufs)
    assert zeros == {0}
    assert measured < sfu_cycles(T, insts[0])


@pytest.mark.sim
def test_empty_and_foreign_instructions():
    """rows or cols 0, and the matrix engine's ATTN functions: done in SETUP, 1 cycle."""
    insts = [misc(func=MiscFunc.ADD, rows=0, cols=8), misc(func=MiscFunc.SOFTMAX, rows=3, cols=0),
             make(Opcode.ATTN, func=MiscFunc.ATTN_QK, rows=2, cols=4, depth=8),
             make(Opcode.ATTN, func=MiscFunc.ATTN_PV, rows=1, cols=4, depth=8)]
    assert_exact(insts, random_buffers(np.random.default_rng(0)))
    assert [sfu_cycles(T, i) for i in insts] == [1] * 4


def fixture_instructions():
    """The distinct MISC instructions (by shape, flags and word alignments) of the fixture's
    compiled prefill and decode programs, length-resolved."""
    c = tiny_compiled()
    picked = {}
    for name, data in c.programs:
        length = 5 if "prefill" in name else 7
        for inst in Program.from_bytes(data).instructions:
            if inst.op is Opcode.MISC:
                i = resolve_length(inst, length)
                key = tuple(i[f] for f in ("func", "flags", "imm", "rows", "cols", "depth", "period",
                                           "src_stride", "dst_stride")) + \
                    tuple(i[f] % 4 for f in ("src_addr", "src2_addr", "dst_addr"))
                picked.setdefault(key, i)
    return list(picked.values())


@pytest.mark.sim
def test_compiled_fixture_instructions():
    insts = fixture_instructions()
    assert {i["func"] for i in insts} >= {MiscFunc.COPY, MiscFunc.ADD, MiscFunc.MUL, MiscFunc.SILU, MiscFunc.RMSNORM,
                                          MiscFunc.ROPE, MiscFunc.SOFTMAX, MiscFunc.QUANT_ROWS, MiscFunc.EMBED}
    assert_exact(insts, random_buffers(np.random.default_rng(10)))
