# amaranth: UnusedElaboratable=no
"""The weight unpacker against ir/packing.py: random QuantizedWeights packed by `pack`, read back
row by row from a weight-buffer image as `_matrix` lays it out, beat by beat."""
import re

import numpy as np
import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.engine.weight_unpack import WeightUnpacker, row_words
from llmfab.ir.packing import MANT_FIELD_BITS, _fields, pack
from llmfab.ir.quant import MANT_BITS, QuantizedWeight, QuantScheme, kept


def random_weight(rng, n: int, k: int, bits: int, group: int, pattern) -> QuantizedWeight:
    """Random codes (the extremes included), an N:M mask, mantissas and shifts."""
    qmax = (1 << (bits - 1)) - 1
    codes = rng.integers(-qmax, qmax + 1, (n, k))
    codes[rng.random((n, k)) < 0.1] = qmax
    codes[rng.random((n, k)) < 0.1] = -qmax
    mask = None
    if pattern:
        nn, m = pattern
        keep = np.argsort(rng.random((n, k // m, m)), axis=-1)[..., :nn]
        mask = np.zeros((n, k // m, m), bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        mask = mask.reshape(n, k)
        codes[~mask] = 0
    scheme = QuantScheme(bits=bits, group=group, sparsity=pattern)
    g = scheme.group_size(k)
    mant = rng.integers(0, 1 << MANT_BITS, (n, k // g))
    mant[0, 0] = (1 << MANT_BITS) - 1
    return QuantizedWeight(scheme, (n, k), codes.astype(np.int8), mant, rng.integers(-128, 128, n), mask)


def buffer_image(p, rng, word_bytes: int) -> tuple[bytes, int, int, int]:
    """The weight buffer as lowering fills it: codes, indices, mantissas then shifts, at random
    (unaligned) byte offsets. Returns (image, wbuf_addr, idx_addr, scale_addr)."""
    img = bytearray(rng.integers(0, 256, 3).astype(np.uint8).tobytes())   # junk before the tile
    addrs = []
    for stream in (p.values, p.indices, p.mant + p.shift):
        addrs.append(len(img))
        img += stream + rng.integers(0, 256, int(rng.integers(0, 3))).astype(np.uint8).tobytes()
    img += bytes(-len(img) % word_bytes + word_bytes)
    return bytes(img), *addrs


def words_of(img: bytes, word_bits: int) -> list[int]:
    wb = word_bits // 8
    return [int.from_bytes(img[i:i + wb], "little") for i in range(0, len(img), wb)]


def row_jobs(qw, p, img_words, addrs, word_bits, chain_len):
    """Per row: the start payload and the word list of each stream (what a reader sends)."""
    n, k = qw.shape
    s = qw.scheme
    kr, groups = kept(k, s.sparsity), k // qw.group
    jobs = []
    for r in range(n):
        job = {"beats": kr // chain_len}
        for name, addr, nbits in (("codes", addrs[0], kr * s.bits), ("idx", addrs[1], kr * s.index_bits()),
                                  ("mant", addrs[2], groups * MANT_FIELD_BITS)):
            if nbits == 0:
                continue
            first, count, skip = row_words(8 * addr + r * nbits, nbits, word_bits)
            job[f"{name}_skip"], job[f"{name}_words"] = skip, count
            job[name] = img_words[first:first + count]
        jobs.append(job)
    return jobs


def expected_beats(qw, p, chain_len):
    """Per row, per beat: (codes, indices or None, mantissas on a group's last beat, first, last, row_last)."""
    codes, pos, mant, _ = _fields(p)
    n, kr = codes.shape
    gk = qw.group * kr // qw.shape[1]                  # kept codes per scale group
    out = []
    for r in range(n):
        for b in range(kr // chain_len):
            sl = slice(b * chain_len, (b + 1) * chain_len)
            idx = None if pos is None else (pos[r, sl] % qw.scheme.sparsity[1]).tolist()
            g0, g1 = b * chain_len // gk, -(-(b + 1) * chain_len // gk)
            last = (b + 1) * chain_len % gk == 0
            first = b * chain_len % gk == 0
            out.append((codes[r, sl].tolist(), idx, mant[r, g0:g1].tolist() if last else None, first, last,
                        b == kr // chain_len - 1))
    return out


def run_unpacker(dut: WeightUnpacker, jobs, seed: int, stall: float = 0.3):
    rng = np.random.default_rng(seed)
    got = []
    sparse = dut.pattern is not None

    async def put(ctx, port, payload):
        while rng.random() < stall:
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, payload)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)

    def feeder(name):
        async def bench(ctx):
            for job in jobs:
                for w in job[name]:
                    await put(ctx, getattr(dut, name), w)
        return bench

    rows_done = [0]

    async def control(ctx):
        for i, job in enumerate(jobs):
            await put(ctx, dut.start, {k: v for k, v in job.items() if not isinstance(v, list)})
            while rows_done[0] <= i:
                ctx.set(dut.o.ready, int(rng.random() >= stall))
                await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, ready, payload in ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload):
            if valid and ready:
                w = [int(x) for x in payload.w]
                idx = [int(x) for x in payload.idx] if sparse else None
                mant = [int(x) for x in payload.mant] if payload.last else None
                got.append((w, idx, mant, bool(payload.first), bool(payload.last), bool(payload.row_last)))
                rows_done[0] += bool(payload.row_last)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in ("codes", "mant") + (("idx",) if sparse else ()):
        sim.add_testbench(feeder(name), background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(control)
    sim.run()
    return got


CONFIGS = [(4, 32), (8, 64), (16, 32)]     # (chain_len, word_bits): sim-small, ecp5-85k, W < B


@pytest.mark.sim
@pytest.mark.parametrize("chain_len,word_bits", CONFIGS)
@pytest.mark.parametrize("pattern", [None, (2, 4), (1, 4), (4, 8)], ids=["dense", "2:4", "1:4", "4:8"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpacker_matches_packing(bits, pattern, chain_len, word_bits):
    rng = np.random.default_rng(bits * 100 + chain_len + (pattern[0] * 10 + pattern[1] if pattern else 0))
    n, k, group = 3, 128, int(rng.choice([32, 64]))
    qw = random_weight(rng, n, k, bits, group, pattern)
    p = pack(qw)
    img, *addrs = buffer_image(p, rng, word_bits // 8)
    gk = kept(qw.group, pattern)
    dut = WeightUnpacker(chain_len, word_bits=word_bits, weight_bits=bits, pattern=pattern, group_kept=gk)
    got = run_unpacker(dut, row_jobs(qw, p, words_of(img, word_bits), addrs, word_bits, chain_len), seed=bits)
    want = expected_beats(qw, p, chain_len)
    assert len(got) == len(want)
    assert got == want


@pytest.mark.parametrize("kwargs,msg", [
    (dict(chain_len=12, word_bits=32, group_kept=12), "chain_len must be a positive power of two, not 12"),
    (dict(chain_len=4, word_bits=12, group_kept=4), "word_bits must be a positive multiple of 8, not 12"),
    (dict(chain_len=4, word_bits=32, weight_bits=5, group_kept=4), "weight_bits must be one of 2, 3, 4, 8, not 5"),
    (dict(chain_len=4, word_bits=32, pattern=(3, 4), group_kept=4),
     "pattern must be None (dense) or one of 2:4, 1:4, 4:8, 2:8, not (3, 4)"),
    (dict(chain_len=2, word_bits=32, pattern=(4, 8), group_kept=4),
     "chain_len must be a multiple of N (4 for 4:8) so that a beat holds whole blocks, not 2"),
    (dict(chain_len=4, word_bits=32, group_kept=6),
     "group_kept must be a positive multiple or divisor of chain_len (4), not 6"),
])
def test_unpacker_checks_arguments(kwargs, msg):
    cl = kwargs.pop("chain_len")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        WeightUnpacker(cl, **kwargs)
