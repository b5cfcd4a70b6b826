# amaranth: UnusedElaboratable=no
"""The Vitis kernel core with AXI RAMs in Verilator runs the tiny LLaMA's prefill chunk the way XRT
would: program, token ids and the channel image in device memory, the arguments and ap_start
written over AXI4-Lite, the interrupt awaited; memory ends as the functional simulator's, bit for
bit (the KV cache rows and the logits)."""
import shutil

import numpy as np
import pytest

from conftest import tiny_compiled
from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.kernel.args import CTRL, GIE, IER, kernel_args
from llmfab.backend_hw.sim.kernel_system import KernelRamSystem
from llmfab.backend_hw.toolflow.verilator import VerilatorSim
from llmfab.ir.isa import BufferId, Program, encode
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine

pytestmark = pytest.mark.sim

PROMPT = [3, 77, 12, 5, 90]
BASE, PROG, TOKENS = 0x10000, 0x0, 0xF000   # channel image at BASE; program and token ids below it


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def test_kernel_runs_a_prefill_chunk_in_verilator():
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    from amaranth.back import verilog
    t = load_target("sim-small")
    c = tiny_compiled()
    chunk = c.manifest["prefill_step"]
    prog = _program(c, "prefill", chunk)
    m = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    tokens = np.array(PROMPT, "<i4").tobytes()
    m.write(BufferId.ACT, 0, tokens)
    start = bytes(m.hbm[0])
    m.run(prog, chunk)
    assert bytes(m.hbm[0]) != start
    code = b"".join(encode(i) for i in prog.instructions)
    assert len(code) <= TOKENS - PROG and t.memory.channels == 1

    beat = t.memory.beat_bytes
    size = BASE + len(start)
    size += -size % 4096
    mem = bytearray(size)
    mem[PROG:PROG + len(code)] = code
    mem[TOKENS:TOKENS + len(tokens)] = tokens
    mem[BASE:BASE + len(start)] = start
    dut = KernelRamSystem(t, formats_of([prog]), [size])
    vs = VerilatorSim(verilog.convert(dut, name="kernel_sys", emit_src=False), "kernel_sys")

    words = size // beat
    args = {a.name: a for a in kernel_args(t)}
    values = {"length": chunk, "program": PROG, "program_bytes": len(code), "tokens": TOKENS,
              "tokens_bytes": len(tokens), "hbm0": BASE}
    writes = [(args[n].offset + 4 * k, v >> 32 * k & 0xFFFFFFFF) for n, v in values.items()
              for k in range(args[n].size // 4)]
    writes += [(GIE, 1), (IER, 1), (CTRL, 1)]
    max_cycles = 400_000
    at_w = words
    at_run = at_w + 4 * len(writes)
    total = at_run + max_cycles + words + 1
    v = {n: np.zeros(total, dtype=np.int64) for n in
         ("dbg_addr", "dbg_we", "s_axi_control_AWADDR", "s_axi_control_AWVALID", "s_axi_control_WDATA",
          "s_axi_control_WSTRB", "s_axi_control_WVALID", "s_axi_control_BREADY")}
    wdata = [0] * total
    v["dbg_addr"][:words], v["dbg_we"][:words] = np.arange(words), 1
    wdata[:words] = [int.from_bytes(mem[i:i + beat], "little") for i in range(0, size, beat)]
    # one AXI4-Lite write every 4 cycles: AW and W taken at once, B the cycle after, taken (BREADY)
    for j, (addr, data) in enumerate(writes):
        at = at_w + 4 * j
        v["s_axi_control_AWADDR"][at], v["s_axi_control_WDATA"][at] = addr, data
        v["s_axi_control_AWVALID"][at] = v["s_axi_control_WVALID"][at] = 1
        v["s_axi_control_WSTRB"][at] = 0xF
    v["s_axi_control_BREADY"][:] = 1
    rd = at_run + max_cycles
    v["dbg_addr"][rd:rd + words] = np.arange(words)
    run = vs.run({**v, "dbg_wdata": wdata}, total,
                 outputs=("irq", "axi_error", "dbg_data", "s_axi_control_AWREADY", "s_axi_control_WREADY"))
    out = run.outputs
    took = [out["s_axi_control_AWREADY"][at_w + 4 * j] and out["s_axi_control_WREADY"][at_w + 4 * j]
            for j in range(len(writes))]
    assert all(took)
    assert not np.any(out["axi_error"][:rd])
    done = np.nonzero(out["irq"][at_run:rd])[0]
    assert len(done), f"no interrupt within {max_cycles} cycles"
    print(f"prefill chunk through the kernel: {int(done[0])} cycles from ap_start, "
          f"{run.cycles_per_second:,.0f} cycles/s")
    got = b"".join(int(x).to_bytes(beat, "little") for x in out["dbg_data"][rd + 1:rd + 1 + words])
    assert got[BASE:BASE + len(start)] == bytes(m.hbm[0])
    assert got[TOKENS:TOKENS + len(tokens)] == tokens and got[PROG:PROG + len(code)] == code
