"""`llmfab rtl` for sim-small and ecp5-85k: the accelerator's Verilog lints clean (documented
waivers only) and Verilator runs it with the same outputs as amaranth.sim, cycle for cycle."""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from amaranth import Value
from amaranth.lib import wiring

from conftest import FIXTURES, run_per_cycle, tiny_compiled
from llmfab.backend_hw.accelerator import DEFAULT_FORMATS, build_top, formats_of
from llmfab.backend_hw.toolflow.verilator import VerilatorSim, lint
from llmfab.ir.isa import BufferId, Program, encode
from llmfab.ir.target import load_target

pytestmark = pytest.mark.sim
CYCLES = 160


@pytest.fixture(autouse=True)
def _needs_verilator():
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")


def _leaves(dut):
    for path, member, value in dut.signature.flatten(dut):
        yield "__".join(map(str, path)), member.flow, Value.cast(value)


def _stimulus(t, dut) -> dict[str, list[int]]:
    """The host writes the first instructions of a compiled prefill program into INST, sets LEN and
    starts; the memory accepts every address but returns no data (the loads wait)."""
    c = tiny_compiled()
    prog = next(p for name, p in c.programs if "prefill" in name)
    words = b"".join(encode(i) for i in Program.from_bytes(prog).instructions[:6])
    inst = next(b for b in t.buffers if b.name.value == "inst")
    wb = inst.width_bits // 8
    n = len(words) // wb
    s = {name: [0] * CYCLES for name, flow, _ in _leaves(dut) if flow == wiring.In}
    for k in range(n):
        s["host__buf"][k], s["host__we"][k] = BufferId.INST, 1
        s["host__addr"][k], s["host__be"][k] = k, (1 << wb) - 1
        s["host__wdata"][k] = int.from_bytes(words[k * wb:(k + 1) * wb], "little")
    s["start"][n + 2] = 1
    s["length"] = [5] * CYCLES
    for name in s:
        if name.endswith(("ar__ready", "aw__ready", "w__ready")):
            s[name] = [1] * CYCLES
    return s


def _amaranth(dut, stim) -> dict[str, list[int]]:
    return run_per_cycle(dut, [(v, stim[name]) for name, flow, v in _leaves(dut) if flow == wiring.In],
                         {name: v for name, flow, v in _leaves(dut) if flow == wiring.Out}, CYCLES)


@pytest.mark.parametrize("target", ["sim-small", "ecp5-85k"])
def test_rtl_lints_clean_and_verilator_matches_amaranth(target, tmp_path):
    """sim-small through `llmfab compile --rtl` (the weight formats of a compiled fixture; the
    default buffers, block RAM), ecp5-85k through `llmfab rtl --buffers block_ram` (the default
    format)."""
    formats, buffers = DEFAULT_FORMATS, "block_ram"
    if target == "sim-small":
        out = tmp_path / "build" / "hw"
        cmd = ["compile", str(FIXTURES / "llama_ts_op14.onnx"), "--target", target, "--max-len", "16", "--rtl",
               "-o", str(tmp_path / "build")]
    else:
        out = tmp_path / "rtl"
        cmd = ["rtl", "--target", target, "--buffers", buffers, "-o", str(out)]
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", *cmd], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    if target == "sim-small":
        assert "weight formats int8 g32, int8 g64" in p.stdout
        formats = formats_of([Program.from_bytes(f.read_bytes()) for f in (tmp_path / "build" / "programs").iterdir()])
    assert {"rtl/accelerator.v", "vivado/create_project.tcl", "accelerator.core", "rtl.json"} <= \
        {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()}
    verilog = (out / "rtl" / "accelerator.v").read_text()
    assert lint(verilog, "accelerator") == []
    assert json.loads((out / "rtl.json").read_text())["buffers"] == buffers
    banks = load_target(target).buffer("weight").banks
    assert f"buf_weight_{banks - 1}" in verilog and f"buf_weight_{banks}" not in verilog   # a memory a bank

    t = load_target(target)
    dut = build_top(t, formats, buffers=buffers)["accelerator"]
    stim = _stimulus(t, dut)
    want = _amaranth(dut, stim)
    t0 = time.perf_counter()
    vsim = VerilatorSim(verilog, "accelerator")
    build = time.perf_counter() - t0
    run = vsim.run(stim)
    print(f"{target}: Verilator build {build:.0f} s, {run.cycles_per_second:,.0f} cycles/s")
    got = {name: [int(v) for v in np.asarray(vals)] if not isinstance(vals, list) else list(map(int, vals))
           for name, vals in run.outputs.items()}
    assert set(got) == set(want)
    active = [name for name in want if len(set(want[name])) > 1]
    assert len(active) >= 3                                       # the stimulus does something
    for name in want:
        assert got[name] == want[name], name
