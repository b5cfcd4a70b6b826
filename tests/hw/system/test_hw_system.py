# amaranth: UnusedElaboratable=no
"""The whole accelerator with AXI RAMs (`SimSystem`) runs compiled programs of a fixture model in
Verilator and ends with the same HBM and buffer bytes as the functional simulator, bit for bit, in
the number of cycles `RtlUnits` predicts (within 2%; its controller recurrence alone, given the
units' measured cycles, to the cycle), with either buffer organisation (block RAM: bit-exact, the
arbitration's cycles bounded); `AxiRam` serves random bursts like a plain bytearray in amaranth.sim."""
import random
import shutil
import time

import numpy as np
import pytest
from amaranth.sim import Simulator

from conftest import FIXTURES, tiny_compiled
from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.sim.axi_ram import AxiRam
from llmfab.backend_hw.cycle_model import RtlUnits
from llmfab.backend_hw.sim.system import SimSystem, VerilatorSystem
from llmfab.ir.isa import BufferId, Program
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine
from llmfab.simulator import DesignUnits, schedule

pytestmark = pytest.mark.sim

PROMPT = [3, 77, 12, 5, 90]   # one prefill chunk: the host sets LEN to the chunk's end, the step


def _chunk(c) -> int:
    assert len(PROMPT) <= c.manifest["prefill_step"]
    return c.manifest["prefill_step"]


RAM_BYTES = 64 * 1024   # every channel's RAM in these builds: one size, so that the families' decode
                         # steps run on the tiny LLaMA's build (a Verilator build is minutes of CI)


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


@pytest.fixture(scope="module")
def model():
    return _system(tiny_compiled())


@pytest.fixture(scope="module")
def medium():
    """The mid-size target: 4 channels, 8 chains of 8, 8-byte buffer words (w4-2of4)."""
    return _system(tiny_compiled("w4-2of4", "sim-medium"), "sim-medium")


def _system(c, target: str = "sim-small"):
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    t = load_target(target)
    progs = [_program(c, "prefill", _chunk(c)), _program(c, "decode", len(PROMPT) + 1)]
    t0 = time.perf_counter()
    assert max(c.layout.used) <= RAM_BYTES
    vs = VerilatorSystem(t, formats_of(progs), [RAM_BYTES] * t.memory.channels)
    print(f"\nVerilog {vs.verilog_seconds:.0f} s, Verilator build {vs.build_seconds:.0f} s "
          f"(total {time.perf_counter() - t0:.0f} s; both cached)")
    return t, c, vs, formats_of(progs)


def _machine(t, c):
    assert max(c.layout.used) <= RAM_BYTES
    return Machine.for_target(t, [d for _, d in c.images], RAM_BYTES)


def _state(m):
    return [bytes(h) for h in m.hbm], {b: bytes(v) for b, v in m.buffers.items() if b is not BufferId.INST}


def _check(t, vs, formats, m, prog, length, what):
    """Run `prog` on the RTL from `m`'s state and functionally on `m`; compare every byte, and the
    cycles with the RTL's cycle model."""
    hz = t.clock_mhz * 1e6
    hbm, bufs = _state(m)
    model_run = schedule(prog, length, DesignUnits(t))
    timed = model_run.seconds * hz
    rtl_model = schedule(prog, length, RtlUnits(t, formats))
    predicted = rtl_model.seconds * hz
    run = vs.run(prog, length, hbm, bufs, max_cycles=int(1.1 * predicted) + 1000)
    m.run(prog, length)
    _compare_trace(t, prog, length, run, rtl_model, model_run, what)
    print(f"{what}: {len(prog.instructions)} instructions, {run.cycles} RTL cycles, RtlUnits {predicted:.0f} "
          f"({predicted / run.cycles - 1:+.3%}), the pipelined design's timing model {timed:.0f} (RTL / design "
          f"{run.cycles / timed:.2f}); {run.sim.cycles} cycles simulated in {run.sim.seconds:.2f} s = "
          f"{run.sim.cycles_per_second:,.0f} cycles/s")
    assert abs(predicted - run.cycles) <= 0.02 * run.cycles
    assert hbm != [bytes(h) for h in m.hbm]                          # the program wrote something
    assert run.hbm == [bytes(h) for h in m.hbm]                      # logits and the new K/V rows
    for b in (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT):
        assert run.buffers[b] == bytes(m.buffers[b]), b.name
    return run


def _compare_trace(t, prog, length, run, rtl_model, model_run, what):
    """The RTL's per-instruction trace is complete and ordered; given the units' measured cycles,
    the cycle model's controller issues every instruction on the RTL's cycle; print unit cycles per
    function: RTL, cycle model, the design's timing model."""
    end = next(k for k, i in enumerate(prog.instructions) if i.op.name == "SYS" and i["func"].name == "END")
    queued = [k for k, i in enumerate(prog.instructions[:end]) if i.op.name != "SYS"]
    assert [k for k, *_ in run.trace] == queued                       # every instruction, once
    assert all(0 <= took <= done <= run.cycles for *_, took, done in run.trace)
    hz = t.clock_mhz * 1e6
    measured = {k: done - took for k, _, _, took, done in run.trace}
    order = iter(sorted(measured))
    replay = schedule(prog, length, RtlUnits(t, cycles=lambda i: measured[next(order)]))
    assert {k: round(b * hz) for k, _, _, b, _ in replay.spans} == {k: took for k, _, _, took, _ in run.trace}
    assert round(replay.seconds * hz) == run.cycles
    per = [{}, {}, {}]
    for k, _, key, took, done in run.trace:
        per[0][key] = per[0].get(key, 0) + done - took
    for d, spans in ((per[1], rtl_model.spans), (per[2], model_run.spans)):
        for _, _, key, b, e in spans:
            d[key] = d.get(key, 0) + (e - b) * hz
    print(f"{what}, unit cycles per function (RTL / RtlUnits / design): " +
          ", ".join(f"{k} {per[0][k]:,}/{per[1].get(k, 0):,.0f}/{per[2].get(k, 0):,.0f}"
                    for k in sorted(per[0], key=lambda k: -per[0][k])))


def test_decode_step_equals_the_functional_simulator(model):
    t, c, vs, formats = model
    m = _machine(t, c)
    m.write(BufferId.ACT, 0, np.array(PROMPT, "<i4").tobytes())
    m.run(_program(c, "prefill", _chunk(c)), _chunk(c))              # the prompt's KV cache, functionally
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())          # the next token
    _check(t, vs, formats, m, _program(c, "decode", len(PROMPT) + 1), len(PROMPT) + 1, "decode")


def test_prefill_equals_the_functional_simulator(model):
    t, c, vs, formats = model
    m = _machine(t, c)
    m.write(BufferId.ACT, 0, np.array(PROMPT, "<i4").tobytes())
    _check(t, vs, formats, m, _program(c, "prefill", _chunk(c)), _chunk(c), "prefill")


def test_mid_size_target_runs_prefill_then_decode(medium):
    """sim-medium: the prompt's prefill, then a decode step on the KV cache it left in HBM, each
    bit-exact with the functional simulator and within 2% of RtlUnits (issue 13: scale effects in CI)."""
    t, c, vs, formats = medium
    assert t.memory.channels > 1 and max(t.word_bytes.values()) > 4 and t.engine.n_chains > 2
    m = _machine(t, c)
    m.write(BufferId.ACT, 0, np.array(PROMPT, "<i4").tobytes())
    _check(t, vs, formats, m, _program(c, "prefill", _chunk(c)), _chunk(c), "sim-medium prefill")
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
    _check(t, vs, formats, m, _program(c, "decode", len(PROMPT) + 1), len(PROMPT) + 1, "sim-medium decode")


def test_block_ram_buffers_run_the_same_programs(model):
    """The synthesizable buffer organisation (banks of one-read one-write memories behind
    arbiters): the prefill and a decode step stay bit-exact; the refused requests cost cycles
    that `RtlUnits` does not count (measured +0.8% decode, +1.2% prefill on sim-small, with the
    chain-interleaved weight tiles and the SFU's even/odd word split): within the model's 2%."""
    t, c, _, formats = model
    vs = VerilatorSystem(t, formats, [RAM_BYTES] * t.memory.channels, organisation="block_ram")
    m = _machine(t, c)
    m.write(BufferId.ACT, 0, np.array(PROMPT, "<i4").tobytes())
    hz = t.clock_mhz * 1e6
    for stage, length, bound in (("prefill", _chunk(c), 1.02), ("decode", len(PROMPT) + 1, 1.02)):
        if stage == "decode":
            m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
        prog = _program(c, stage, length)
        hbm, bufs = _state(m)
        predicted = schedule(prog, length, RtlUnits(t, formats)).seconds * hz
        run = vs.run(prog, length, hbm, bufs, max_cycles=int(bound * predicted) + 1000)
        m.run(prog, length)
        print(f"{stage}, block RAM buffers: {run.cycles} RTL cycles, RtlUnits (no arbitration) {predicted:.0f} "
              f"({run.cycles / predicted - 1:+.1%})")
        assert run.hbm == [bytes(h) for h in m.hbm], stage
        for b in (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT):
            assert run.buffers[b] == bytes(m.buffers[b]), (stage, b.name)
        assert predicted <= run.cycles <= bound * predicted, stage


def _family_decode(model, fixture: str, what: str):
    """Compile a family's tiny fixture (int8, sim-small), run its prefill functionally and its decode
    step on the RTL and functionally, compare every byte (`_check`). It runs on the tiny LLaMA's
    Verilator build when that has its weight formats, else on one of its own. Returns the decode program."""
    from llmfab.compile import compile_model
    t, _, vs, llama_formats = model
    c = compile_model(str(FIXTURES / fixture), "sim-small", max_len=16, policy="int8")
    decode = _program(c, "decode", len(PROMPT) + 1)
    formats = formats_of([_program(c, "prefill", _chunk(c)), decode])
    if not set(formats) <= set(llama_formats):
        vs = VerilatorSystem(t, formats, [RAM_BYTES] * t.memory.channels)
    m = _machine(t, c)
    m.write(BufferId.ACT, 0, np.array(PROMPT, "<i4").tobytes())
    m.run(_program(c, "prefill", _chunk(c)), _chunk(c))
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
    _check(t, vs, formats, m, decode, len(PROMPT) + 1, what)
    return decode


def test_qwen3_decode_step_equals_the_functional_simulator(model):
    """A family beyond LLaMA on the RTL: the tiny Qwen3's decode step (an RMSNorm over each q and k
    head, run as the SFU's RMSNORM over head_dim rows) ends with the functional simulator's bytes."""
    decode = _family_decode(model, "qwen3_dynamo_op18.onnx", "qwen3 decode")
    assert any(i.op.name == "MISC" and i["func"].name == "RMSNORM" and i["cols"] == 8 for i in decode.instructions)


def test_gemma2_decode_step_equals_the_functional_simulator(model):
    """Gemma2's decode step on the RTL, byte for byte with the functional simulator: its soft-capped
    attention scores (cap 2.0) and logits (cap 1.0) through the SFU's MISC SOFTCAP."""
    decode = _family_decode(model, "gemma2_dynamo_op18.onnx", "gemma2 decode")
    caps = {i["imm"] for i in decode.instructions if i.op.name == "MISC" and i["func"].name == "SOFTCAP"}
    assert caps == {2 << 16, 1 << 16}


# -- AxiRam alone, in amaranth.sim ---------------------------------------------------------------

@pytest.mark.parametrize("width", [32, 128])
def test_axi_ram_serves_bursts_like_a_bytearray(width):
    rng = random.Random(width)
    beat, size = width // 8, 1024
    init = bytes(rng.randrange(256) for _ in range(size // 2))
    dut = AxiRam(size, width, 16, init=init)
    model = bytearray(init.ljust(size, b"\0"))
    ax = dut.axi

    async def bench(ctx):
        for _ in range(12):
            beats = rng.randint(1, 8)
            addr = rng.randrange(size // beat - beats + 1) * beat
            if rng.random() < 0.5:                                  # a write burst, random strobes and stalls
                ctx.set(ax.aw.payload, {"addr": addr, "len": beats - 1, "size": (beat - 1).bit_length(), "burst": 1})
                ctx.set(ax.aw.valid, 1)
                await ctx.tick().until(ax.aw.ready)
                ctx.set(ax.aw.valid, 0)
                for k in range(beats):
                    while rng.random() < 0.3:
                        ctx.set(ax.w.valid, 0)
                        await ctx.tick()
                    data, strb = rng.getrandbits(width), rng.getrandbits(beat)
                    ctx.set(ax.w.payload, {"data": data, "strb": strb, "last": k == beats - 1})
                    ctx.set(ax.w.valid, 1)
                    await ctx.tick().until(ax.w.ready)
                    for j in range(beat):
                        if strb >> j & 1:
                            model[addr + k * beat + j] = data >> 8 * j & 0xFF
                ctx.set(ax.w.valid, 0)
                ctx.set(ax.b.ready, 1)
                await ctx.tick().until(ax.b.valid)
                ctx.set(ax.b.ready, 0)
            else:                                                   # a read burst, R stalled at random
                ctx.set(ax.ar.payload, {"addr": addr, "len": beats - 1, "size": (beat - 1).bit_length(), "burst": 1})
                ctx.set(ax.ar.valid, 1)
                await ctx.tick().until(ax.ar.ready)
                ctx.set(ax.ar.valid, 0)
                for k in range(beats):
                    while True:
                        ready = rng.random() < 0.7
                        ctx.set(ax.r.ready, ready)
                        *_, valid, data, last = await ctx.tick().sample(ax.r.valid, ax.r.payload.data, ax.r.payload.last)
                        if ready and valid:
                            break
                    assert data == int.from_bytes(model[addr + k * beat:addr + (k + 1) * beat], "little")
                    assert last == (k == beats - 1)
                ctx.set(ax.r.ready, 0)
        for i in range(size // beat):                               # the debug port sees the same bytes
            ctx.set(dut.dbg_addr, i)
            await ctx.tick()
            assert ctx.get(dut.dbg_data) == int.from_bytes(model[i * beat:(i + 1) * beat], "little")
        assert not ctx.get(dut.error)
        ctx.set(ax.ar.payload, {"addr": size - beat, "len": 1, "size": (beat - 1).bit_length(), "burst": 1})
        ctx.set(ax.ar.valid, 1)                                     # past the end: flagged
        await ctx.tick().until(ax.ar.ready)
        ctx.set(ax.ar.valid, 0)
        await ctx.tick()
        assert ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_constructor_errors():
    t = load_target("sim-small")
    with pytest.raises(ValueError, match="size_bytes must be a positive multiple of 16"):
        AxiRam(1000, 128, 16)
    with pytest.raises(ValueError, match="init must be at most 1024 bytes"):
        AxiRam(1024, 128, 16, init=bytes(2000))
    with pytest.raises(ValueError, match="one image or size per memory channel"):
        SimSystem(t, hbm_images=[])
    with pytest.raises(TypeError, match="target must be a Target"):
        SimSystem("sim-small", hbm_images=[16])


def test_axi_ram_lints_clean():
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    from amaranth.back import verilog
    from llmfab.backend_hw.toolflow.verilator import lint
    assert lint(verilog.convert(AxiRam(4096, 128, 28, init=b"abc"), name="axi_ram"), "axi_ram") == []
