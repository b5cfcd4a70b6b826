"""Whole compiled programs on the whole accelerator in Verilator, for several weight policies: the
tiny LLaMA's prefill (a 5-token prompt: one chunk) and the decode step after it, bit-exact with the functional
simulator, and their cycles against the RTL's cycle model and the pipelined design's.

    .venv/bin/python benchmarks/bench_rtl_programs.py [--policy int8 int4-g128 w4-2of4] [--buffers block_ram]
                                                      [--model M.onnx | --wide HIDDEN FFN]

`--wide 64 160` runs the tiny LLaMA re-weighted to those widths (tests/wide_models.py), whose K is
not whole scale groups: the packer's zero-padded K (docs/integer.md) on the RTL.

One Verilator build per policy (its weight formats; ~2 minutes each, cached in ~/.cache/llmfab).
CI runs the int8 build (tests/hw/system/test_hw_system.py); this covers the other formats. Exits 1
if any run differs from the functional simulator by a byte.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from llmfab.backend_hw.accelerator import formats_of
from llmfab.backend_hw.cycle_model import RtlUnits
from llmfab.backend_hw.sim.system import VerilatorSystem
from llmfab.compile import compile_model
from llmfab.ir.isa import BufferId, Program
from llmfab.ir.target import load_target
from llmfab.simulator import DesignUnits, schedule
from llmfab.simulator.functional import Machine

MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llama_ts_op14.onnx"
PROMPT = [3, 77, 12, 5, 90]


def _program(c, stage: str, length: int) -> Program:
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def run_policy(policy: str, buffers: str, target: str = "sim-small", model: Path = MODEL) -> bool:
    t = load_target(target)
    c = compile_model(str(model), target, max_len=16, policy=policy)
    step = c.manifest["prefill_step"]          # the prompt is one prefill chunk: LEN = its end
    prompt = PROMPT[:step]                     # (wide models get shorter chunks in sim-small's buffers)
    progs = {"prefill": (_program(c, "prefill", step), step),
             "decode": (_program(c, "decode", len(prompt) + 1), len(prompt) + 1)}
    formats = formats_of([p for p, _ in progs.values()])
    t0 = time.perf_counter()
    vs = VerilatorSystem(t, formats, [max(c.layout.used)] * t.memory.channels, organisation=buffers)
    build = time.perf_counter() - t0
    m = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    m.write(BufferId.ACT, 0, np.array(prompt + [0] * (step - len(prompt)), "<i4").tobytes())
    hz, ok = t.clock_mhz * 1e6, True
    for stage, (prog, length) in progs.items():
        if stage == "decode":
            m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
        hbm = [bytes(h) for h in m.hbm]
        bufs = {b: bytes(v) for b, v in m.buffers.items() if b is not BufferId.INST}
        rtl_model = schedule(prog, length, RtlUnits(t, formats)).seconds * hz
        design = schedule(prog, length, DesignUnits(t)).seconds * hz
        run = vs.run(prog, length, hbm, bufs, max_cycles=int(1.5 * rtl_model) + 1000)
        m.run(prog, length)
        same = run.hbm == [bytes(h) for h in m.hbm] and all(
            run.buffers[b] == bytes(m.buffers[b]) for b in (BufferId.ACT, BufferId.SCRATCH, BufferId.KV, BufferId.WEIGHT))
        ok &= same
        print(f"| {policy} | {stage} | {'yes' if same else 'NO'} | {run.cycles:,} | {rtl_model:,.0f} "
              f"({run.cycles / rtl_model - 1:+.1%}) | {design:,.0f} | {build:.0f} s |", flush=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", nargs="+", default=["int8", "int4-g128", "w4-2of4"])
    ap.add_argument("--buffers", default="block_ram", choices=["block_ram", "ports"])
    ap.add_argument("--model", type=Path, default=MODEL, help="an ONNX model (default: the tiny LLaMA)")
    ap.add_argument("--wide", type=int, nargs=2, metavar=("HIDDEN", "FFN"),
                    help="the tiny LLaMA re-weighted to these widths (tests/wide_models.py)")
    a = ap.parse_args()
    model = a.model
    if a.wide:
        import tempfile
        sys.path.insert(0, str(MODEL.parents[1]))
        from wide_models import widen
        model = widen(MODEL, Path(tempfile.mkdtemp(prefix="llmfab-wide-")) / "wide.onnx", *a.wide)
    print(f"| policy | program | bit-exact | RTL cycles ({a.buffers}) | RtlUnits | design | Verilator build |")
    print("|---|---|---|---|---|---|---|")
    ok = all([run_policy(p, a.buffers, model=model) for p in a.policy])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
