"""The timing model: never faster than the memory roofline, consistent utilisations, sensible trends."""
import json
import subprocess
import sys

import pytest

from conftest import FIXTURES, tiny_compiled
from llmfab.compile import compile_model, write_build
from llmfab.ir.isa import BufferId, MiscFunc, ProgramBuilder, Queue
from llmfab.ir.target import load_target
from llmfab.simulator import DesignUnits, schedule
from llmfab.simulator.run import SimulateError
from llmfab.timing import TimingModelError, simulate_build as simulate

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = {}
    for name, policy in (("int4", "int4-g128"), ("sparse", "w4-2of4")):
        d = tmp_path_factory.mktemp(name) / "build"
        write_build(compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "u280", policy=policy, max_len=128), d)
        out[name] = d
    return out


def _programs(build):
    from llmfab.ir.isa import Program
    m = json.loads((build / "manifest.json").read_text())
    return [(e, Program.from_bytes((build / e["file"]).read_bytes())) for e in m["programs"]]


@pytest.mark.parametrize("kind", ["int4", "sparse"])
def test_never_faster_than_the_memory_roofline(builds, kind):
    t = load_target("u280")
    units = DesignUnits(t)
    peak = t.memory.peak_gbps * 1e9
    for e, prog in _programs(builds[kind]):
        for length in {e["bucket"][0], (e["bucket"][0] + e["bucket"][1]) // 2, e["bucket"][1]}:
            st = schedule(prog, length, units)
            assert st.seconds >= st.hbm_bytes / peak           # the bandwidth bound
            assert 0 < st.hbm_utilization(t) <= 1 and 0 < st.dsp_utilization(t) <= 1
            assert all(0 <= b <= st.seconds * 1.000001 for b in st.busy.values())
            assert st.instructions == len(prog.instructions)


def test_trends(builds):
    t = load_target("u280")
    units = DesignUnits(t)
    dec = [p for e, p in _programs(builds["int4"]) if e["stage"] == "decode"][0]
    short, long = schedule(dec, 8, units), schedule(dec, 128, units)
    assert long.seconds > short.seconds and long.hbm_bytes > short.hbm_bytes   # more keys to read
    sdec = [p for e, p in _programs(builds["sparse"]) if e["stage"] == "decode"][0]
    assert schedule(sdec, 8, units).per_op["MV"] < short.per_op["MV"]               # 2:4 halves the engine passes


def test_a_wait_without_release_is_reported():
    b = ProgramBuilder("bad")
    b.misc(MiscFunc.RELU, wait=Queue.LOAD, rows=1, cols=4, src_buf=BufferId.ACT, dst_buf=BufferId.ACT)
    b.end()
    with pytest.raises(RuntimeError, match=r"^program 'bad': instruction 0 waits on load with no earlier release$"):
        schedule(b.build(), 1, DesignUnits(load_target("sim-small")))


def test_simulate_report_and_cli(builds):
    r = simulate(builds["int4"], 16, 64)
    assert r.ttft_s > 0 and 0 < r.decode_tokens_per_s <= r.roofline_decode_tokens_per_s
    assert 0 < r.hbm_utilization <= 1 and 0 < r.dsp_utilization <= 1
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "simulate", str(builds["int4"]), "--prefill", "16",
                        "--decode", "64", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    for key in ("ttft_s", "decode_tokens_per_s", "hbm_utilization", "dsp_utilization", "roofline_decode_tokens_per_s"):
        assert key in out
    with pytest.raises(SimulateError, match=r"must be positive and fit max_len 128"):
        simulate(builds["int4"], 100, 100)


def test_simulate_the_rtl_by_default(tmp_path):
    """The default timing is the accelerator RTL (backend_hw's RtlUnits, checked against Verilator
    in tests/hw/system/test_hw_system.py); `--model design` is the what-if of the pipelined design,
    which the RTL does not reach yet, and says so."""
    d = tmp_path / "build"
    write_build(tiny_compiled(), d)
    rtl, design = simulate(d, 5, 4), simulate(d, 5, 4, model="design")
    assert (design.model, rtl.model) == ("design", "rtl")
    assert rtl.ttft_s > 2 * design.ttft_s and rtl.decode_tokens_per_s < design.decode_tokens_per_s
    assert rtl.roofline_decode_tokens_per_s == design.roofline_decode_tokens_per_s
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "simulate", str(d), "--prefill", "5", "--decode", "4",
                        "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["model"] == "rtl" and out["ttft_s"] == pytest.approx(rtl.ttft_s)
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "simulate", str(d), "--prefill", "5", "--decode", "4",
                        "--model", "design"], capture_output=True, text=True)
    assert p.returncode == 0 and "what-if" in p.stdout.splitlines()[0], p.stdout + p.stderr
    with pytest.raises(TimingModelError, match=r"--model must be one of rtl, design, not 'fast'"):
        simulate(d, 5, 4, model="fast")


@pytest.mark.parametrize("model", ["design", "rtl"])
def test_breakdown_adds_up_and_trace_lists_every_instruction(builds, tmp_path, model):
    r = simulate(builds["int4"], 16, 64, trace=tmp_path / "trace.csv", model=model)
    cycle = 1 / (load_target("u280").clock_mhz * 1e6)
    for stage, b in r.breakdown.items():
        # the sections (2 layers, embedding, final norm, LM head) partition the run (the RTL's
        # one-cycle register between a unit's done and the next issue: a cycle per section at most)
        slack = 1e-12 if model == "design" else len(b["sections"]) * cycle
        assert abs(sum(b["sections"].values()) - b["seconds"]) <= slack, stage
        assert {"layers.0", "layers.1", "embed_tokens", "lm_head"} <= set(b["sections"])
        assert all(v >= 0 for v in b["sections"].values())
        assert set(b["units"]) == {"load", "matrix", "sfu", "store"}
        assert all(0 <= v <= b["seconds"] * 1.000001 for v in b["units"].values())
    assert r.breakdown["prefill"]["seconds"] == r.ttft_s
    # the two layers of the fixture do the same work: the same time to within a few percent
    lay = r.breakdown["decode"]["sections"]
    assert abs(lay["layers.0"] - lay["layers.1"]) <= 0.1 * lay["layers.0"]
    rows = (tmp_path / "trace.csv").read_text().splitlines()
    mid = sorted(r.decode_s_per_token)[1]
    prog = [p for e, p in _programs(builds["int4"]) if e["stage"] == "decode" and e["bucket"][0] <= mid <= e["bucket"][1]][0]
    assert rows[0] == "index,queue,op,begin_cycle,end_cycle,cycles"
    assert len(rows) - 1 == sum(1 for i in prog.instructions if i.op.name != "SYS")
    ends = [int(row.split(",")[4]) for row in rows[1:]]
    total = round(r.decode_s_per_token[mid] * load_target("u280").clock_mhz * 1e6)
    # the RTL halts a cycle after END executes, the cycle after the queues drained
    assert total - max(ends) == (0 if model == "design" else 2)


@pytest.mark.parametrize("target,policy", [("u280", "int4-g128"), ("sim-small", "w4-2of4"), ("ecp5-85k", "int8")])
def test_simulated_time_never_beats_the_roofline_bound(target, policy):
    from llmfab.ir.isa import Program
    from llmfab.passes.roofline import roofline
    t = load_target(target)
    c = compile_model(str(FIXTURES / "gpt2_ts_op14.onnx"), target, policy=policy, max_len=32)
    units = DesignUnits(t)
    files = dict(c.programs)
    for e in c.manifest["programs"]:
        prog = Program.from_bytes(files[e["file"]])
        for length in {e["bucket"][0], e["bucket"][1]}:
            sim = schedule(prog, length, units).seconds
            if e["stage"] == "decode":
                bound = roofline(c.graph, t, "decode", 1, length).bound_seconds(t)
            else:  # one chunk: at least a prefill of its rows (its keys start at LEN - step)
                step = c.manifest["prefill_step"]
                bound = roofline(c.graph, t, "prefill", step, step).bound_seconds(t)
            assert sim >= bound > 0, (e["file"], length, sim, bound)


def test_report_json():
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "report", "llama2-7b", "--target", "u280", "--policy",
                        "int4-g128", "--prefill", "128", "--decode", "512", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    rows = out["roofline"]
    assert {r["stage"] for r in rows} == {"prefill", "decode"}
    for r in rows:
        assert {"op", "stage", "ops", "bytes", "intensity", "bound"} <= set(r) and r["bound"] in ("memory", "compute")
    dec_linear = [r for r in rows if r["stage"] == "decode" and r["kind"] == "linear"]
    assert len(dec_linear) == 224 and all(r["bound"] == "memory" for r in dec_linear)  # decode GEMV: memory-bound
    for k in ("dsp", "lut", "ff", "bram", "uram"):
        assert 0 < out["resources"][k]["used"]
    for k in ("dsp", "ff", "bram", "uram"):   # LUTs: the synthesis-calibrated estimate exceeds the device
        assert out["resources"][k]["used"] <= out["resources"][k]["capacity"]   # (BENCHMARKS.md, resources)
    assert out["resources"]["dsp"]["capacity"] == 9024
    units = out["resource_units"]
    assert round(sum(u["lut"] for u in units.values())) == out["resources"]["lut"]["used"]
    # the decode bound of int4 g128 weights alone is the HBM roofline of DESIGN.md (~135 tok/s)
    weights = sum(r["bytes"] for r in rows if r["stage"] == "decode" and r["kind"] in ("linear", "lm_head"))
    assert 125 < 460e9 / weights < 145
