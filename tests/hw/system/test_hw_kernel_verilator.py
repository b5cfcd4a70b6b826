# amaranth: UnusedElaboratable=no
"""The Vitis kernel core with an AXI RAM in Verilator runs the tiny LLaMA the way `llmfab run`
would, from the host plan (backend_hw/kernel/host.py): the plan's buffers (channel image,
programs, token ids) at device addresses in the RAM, each run's token ids written there and its
arguments and ap_start written over AXI4-Lite, the interrupt awaited and cleared; the prompt's
prefill chunk, then a decode step whose KV cache is the one the prefill left in device memory.
Memory after each run equals the functional simulator's, bit for bit (KV cache rows, logits), and
the `status` and `cycles` registers are read back after each run. One Verilator build."""
import shutil

import numpy as np
import pytest

from conftest import tiny_compiled
from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.kernel.args import CTRL, GIE, IER, ISR, kernel_args, register_writes
from llmfab.backend_hw.kernel.host import host_plan
from llmfab.backend_hw.sim.kernel_system import KernelRamSystem
from llmfab.backend_hw.toolflow.verilator import VerilatorSim
from llmfab.ir.isa import BufferId, Program
from llmfab.ir.target import load_target
from llmfab.simulator.functional import Machine

pytestmark = pytest.mark.sim

PROMPT, NEXT = [3, 77, 12, 5, 90], 7
WINDOW = {"prefill": 150_000, "decode": 80_000}     # cycles allowed per run (the prefill takes ~73,000)


def test_kernel_runs_prefill_then_decode_in_verilator():
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    from amaranth.back import verilog
    t = load_target("sim-small")
    c = tiny_compiled()
    assert t.memory.channels == 1
    plan = host_plan(t, c.manifest, dict(c.programs), [d for _, d in c.images])
    runs = [*plan.prefill(PROMPT), plan.decode(len(PROMPT) + 1, NEXT)]
    stage = {r.program: e["stage"] for r in runs for e in c.manifest["programs"] if e["file"] == r.program}

    # the functional simulator after each run
    m = Machine.for_target(t, [d for _, d in c.images], c.manifest["hbm"]["bytes_per_channel"])
    want = []
    for r in runs:
        m.write(BufferId.ACT, 0, r.tokens)
        m.run(Program.from_bytes(dict(c.programs)[r.program]), r.length)
        want.append(bytes(m.hbm[0]))
    assert want[-1] != want[-2]                               # the decode step wrote

    # the plan's buffers one after another in device memory (4 KiB aligned: XRT's buffers are)
    address, at = {}, 0x1000
    for b in plan.buffers:
        address[b.name] = at
        at += b.size
    size = at
    mem = bytearray(size)
    for b in plan.buffers:
        mem[address[b.name]:address[b.name] + len(b.contents)] = b.contents
    beat = t.memory.beat_bytes
    words = size // beat
    hbm0 = address["hbm0"]

    dut = KernelRamSystem(t, formats_of([Program.from_bytes(d) for _, d in c.programs]), [size])
    vs = VerilatorSim(verilog.convert(dut, name="kernel_sys", emit_src=False), "kernel_sys")

    # the waveform: load memory; per run: its token ids through the debug port, register writes,
    # ap_start, a window for the run, then reads of status and cycles; memory read back after each run
    lite = ("s_axi_control_AWADDR", "s_axi_control_AWVALID", "s_axi_control_WDATA", "s_axi_control_WSTRB",
            "s_axi_control_WVALID", "s_axi_control_ARADDR", "s_axi_control_ARVALID")
    ev = {n: {} for n in (*lite, "dbg_addr", "dbg_we")}
    wdata = {}
    regs = {a.name: a for a in kernel_args(t)}

    def dbg_write(cycle, addr, data):
        for k in range(0, len(data), beat):
            ev["dbg_addr"][cycle], ev["dbg_we"][cycle] = (addr + k) // beat, 1
            wdata[cycle] = int.from_bytes(data[k:k + beat].ljust(beat, b"\0"), "little")
            cycle += 1
        return cycle

    def lite_write(cycle, addr, data):   # AW and W taken at once, B the cycle after (BREADY held)
        ev["s_axi_control_AWADDR"][cycle], ev["s_axi_control_WDATA"][cycle] = addr, data
        ev["s_axi_control_AWVALID"][cycle] = ev["s_axi_control_WVALID"][cycle] = 1
        ev["s_axi_control_WSTRB"][cycle] = 0xF
        return cycle + 4

    def lite_read(cycle, addr):         # RDATA is valid the cycle after AR (RREADY held)
        ev["s_axi_control_ARADDR"][cycle], ev["s_axi_control_ARVALID"][cycle] = addr, 1
        return cycle + 4

    cyc = dbg_write(0, 0, bytes(mem))
    marks = []
    for i, r in enumerate(runs):
        cyc = dbg_write(cyc, address["tokens"], r.tokens)
        writes = register_writes(t, plan.register_values(r, address))
        writes += [(GIE, 1), (IER, 1)] if i == 0 else [(ISR, 1)]    # clear the last run's done status
        for addr, data in writes:
            cyc = lite_write(cyc, addr, data)
        start = cyc
        cyc = lite_write(cyc, CTRL, 1)
        end = start + WINDOW[stage[r.program]]
        reads = [end + 4 * j for j in range(3)]
        for j, off in enumerate((regs["status"].offset, regs["cycles"].offset, regs["cycles"].offset + 4)):
            lite_read(reads[j], off)
        dump = reads[-1] + 4
        for k in range(words):
            ev["dbg_addr"][dump + k] = k
        marks.append((start, end, reads, dump))
        cyc = dump + words + 2
    total = cyc
    inputs = {}
    for name, at_ in ev.items():
        v = np.zeros(total, dtype=np.int64)
        v[list(at_)] = list(at_.values())
        inputs[name] = v
    inputs["s_axi_control_BREADY"] = np.ones(total, dtype=np.int64)
    inputs["s_axi_control_RREADY"] = np.ones(total, dtype=np.int64)
    wd = [0] * total
    for k, v in wdata.items():
        wd[k] = v
    run = vs.run({**inputs, "dbg_wdata": wd}, total,
                 outputs=("irq", "axi_error", "dbg_data", "s_axi_control_RDATA", "s_axi_control_RVALID",
                          "s_axi_control_AWREADY", "s_axi_control_WREADY"))
    out = run.outputs
    for k in ev["s_axi_control_AWVALID"]:
        assert out["s_axi_control_AWREADY"][k] and out["s_axi_control_WREADY"][k], f"write at cycle {k} refused"
    assert not np.any(out["axi_error"])
    for i, (r, (start, end, reads, dump)) in enumerate(zip(runs, marks)):
        what = f"run {i} ({stage[r.program]}, LEN {r.length})"
        assert out["irq"][start] == 0, f"{what}: the interrupt was not cleared before ap_start"
        rise = np.nonzero(out["irq"][start:end])[0]
        assert len(rise), f"{what}: no interrupt within {end - start:,} cycles"
        status, lo, hi = (int(out["s_axi_control_RDATA"][k + 1]) for k in reads)
        assert all(out["s_axi_control_RVALID"][k + 1] for k in reads)
        cycles = lo | hi << 32
        print(f"{what} through the kernel: interrupt {int(rise[0])} cycles after the ap_start write, "
              f"cycles register {cycles:,}; {run.cycles_per_second:,.0f} cycles/s")
        assert status == 0, f"{what}: status {status:#x}"
        assert cycles == int(rise[0]) - 2     # counted from ap_start, set 2 cycles after its write; irq 1 after done
        got = b"".join(int(x).to_bytes(beat, "little") for x in out["dbg_data"][dump + 1:dump + 1 + words])
        assert got[hbm0:hbm0 + len(want[i])] == want[i], f"{what}: device memory differs from the functional simulator"
        assert got[address["programs"]:address["tokens"]] == mem[address["programs"]:address["tokens"]]
