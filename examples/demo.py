"""`make demo`: the whole llmfab flow that exists so far, on the bundled tiny LLaMA.

1. import the ONNX file a user exported (TorchScript and dynamo exporters), fuse it to LLM ops;
2. run the reference interpreter on a prompt and compare with onnxruntime (the golden model);
3. quantize it (int8, int4 GPTQ, int4 + 2:4 SparseGPT) and run the integer model, which is the
   bit-exact specification of the accelerator, against the float model;
4. compile it for the U280 target: instruction programs for every prompt length and decode
   context (length buckets), the HBM weight images, a manifest — every program checked;
5. execute the compiled programs on the functional simulator (bit-exact with the integer model)
   and time them with the timing model;
6. run a decode step on the accelerator's RTL (Amaranth -> Verilog -> Verilator; needs Verilator);
7. analyse a 7B model from its Hugging Face config alone (no weights needed): parameters, weight
   storage under each policy, the U280 roofline;
and print a short summary; 8. write the HTML reports (`llmfab report --html`) of the tiny LLaMA and
LLaMA2-7B on the U280 into build/reports/ and say where; 9. write the Vitis kernel folder for
sim-small (`llmfab rtl --kernel vitis`) into build/sim-small-kernel/ and say what runs it.
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = [ROOT / "tests/fixtures/llama_ts_op14.onnx", ROOT / "tests/fixtures/llama_dynamo_op18.onnx"]
PROMPT = [1, 15, 42, 7, 99, 3, 64, 20]


def main() -> int:
    from llmfab.flow import interpret, leftover_primitives, load_model
    from llmfab.ir import OpKind, print_graph
    from llmfab.passes.summary import summarize

    lines = []
    for path in MODELS:
        t0 = time.perf_counter()
        g = load_model(str(path), seq_len=len(PROMPT))
        dt = time.perf_counter() - t0
        ops = collections.Counter(n.op.value for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT))
        print(f"== {path.name}: imported and fused in {dt * 1000:.0f} ms")
        print("   " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
        if path == MODELS[0]:
            layer0 = [l for l in print_graph(g, skip_consts=True).splitlines() if "layer=0" in l]
            print("   layer 0 (fused IR, LLM-level ops):")
            for line in layer0:
                print("     " + line.strip()[:140])
        logits = interpret(g, np.array([PROMPT]))["logits"]
        try:
            import onnxruntime as ort
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ref = sess.run(["logits"], {"input_ids": np.array([PROMPT]),
                                        "attention_mask": np.ones((1, len(PROMPT)), np.int64)})[0]
            err = float(np.abs(logits - ref).max() / np.abs(ref).max())
            match = f"matches onnxruntime to {err:.1e} (relative)"
        except ImportError:
            match = "onnxruntime not installed: no golden comparison"
        print(f"   interpreter on {len(PROMPT)} tokens: next token {int(logits[0, -1].argmax())}; {match}")
        left = leftover_primitives(g)
        lines.append(f"{path.name:28s} {summarize(g).parameters:>8,} params, "
                     f"{ops['attention']} attention, {len(left)} unfused ops, {match}")

    from llmfab.ir.integer import run_integer
    from llmfab.passes.policy import load_policy
    from llmfab.passes.quant_report import quantize_model

    g = load_model(str(MODELS[0]), seq_len=32)
    print(f"== quantize {MODELS[0].name} (integer model: int8 activations and KV cache)")
    for name in ("int8", "int4-g128-gptq", "w4-2of4"):
        t0 = time.perf_counter()
        q, r = quantize_model(g, load_policy(name))
        print(f"   {name:15s} {r.avg_bits_per_weight:5.2f} bits/weight, logit cosine {r.logit_cosine:.5f}, "
              f"top-1 agreement {r.top1_agreement:.3f} ({time.perf_counter() - t0:.1f} s)")
        lines.append(f"{'tiny llama @ ' + name:28s} {r.avg_bits_per_weight:.2f} bits/weight, "
                     f"integer-model logit cosine {r.logit_cosine:.4f}")
    ids = np.array([PROMPT + PROMPT[:8] * 3])[:, :32]
    fq = run_integer(q, {"input_ids": ids})["logits"]
    print(f"   integer model (w4-2of4) next token for the prompt: {int(fq[0, len(PROMPT) - 1].argmax())}")

    import tempfile

    from llmfab.compile import compile_model, write_build
    print(f"== compile {MODELS[0].name} for u280 (int4-g128-gptq, max length 128)")
    c = compile_model(str(MODELS[0]), "u280", policy="int4-g128-gptq", max_len=128)
    from llmfab.timing import simulate_build as simulate
    with tempfile.TemporaryDirectory() as d:
        write_build(c, Path(d) / "build")
        files = sorted(str(p.relative_to(Path(d) / "build")) for p in (Path(d) / "build").rglob("*.bin"))
        sim = simulate(Path(d) / "build", len(PROMPT), 32)    # the RTL's timing, every instruction
    m = c.manifest
    dec = [p for p in m["programs"] if p["stage"] == "decode"]
    print(f"   {len(m['programs'])} programs ({len(dec)} decode), {m['instruction_bytes_total'] / 1e3:.1f} kB of "
          f"instructions ({m['instruction_bytes_per_exact_length'] / 1e6:.2f} MB if one per exact length), "
          f"{len(m['weights'])} HBM channel images; files: {files[0]} ... ({c.seconds:.1f} s)")
    lines.append(f"{'tiny llama -> u280':28s} {len(m['programs'])} programs, decode {dec[0]['instructions']} "
                 f"instructions, {m['instruction_bytes_total'] / 1e3:.0f} kB total")
    print(f"   simulated on the u280 RTL: time to first token {sim.ttft_s * 1e6:.1f} us, {sim.decode_tokens_per_s:,.0f} decode "
          f"tokens/s (HBM {sim.hbm_utilization:.0%} busy; `llmfab simulate BUILD` shows where the time goes)")
    lines.append(f"{'tiny llama, simulated':28s} TTFT {sim.ttft_s * 1e6:.1f} us, {sim.decode_tokens_per_s:,.0f} tokens/s on u280")

    # run the programs instruction by instruction and compare with the integer interpreter
    from llmfab.ir.integer import run_integer_raw
    from llmfab.ir.isa import Program
    from llmfab.ir.target import load_target
    from llmfab.simulator.execute import run_prompt
    from llmfab.simulator.functional import Machine
    t = load_target("u280")
    machine = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    prompt = np.array(PROMPT)

    def chunk(end):  # the prefill program of the chunk ending at LEN = end
        return next(p for p in m["programs"] if p["stage"] == "prefill" and p["bucket"][0] <= end <= p["bucket"][1])
    run_prompt(machine, prompt, m["prefill_step"], lambda end: Program.from_bytes(dict(c.programs)[chunk(end)["file"]]))
    got = np.frombuffer(machine.read_row(c.layout.output, len(prompt) - 1), "<i4")
    g8 = load_model(str(MODELS[0]), seq_len=len(prompt))
    for n in g8.nodes():  # the compiled graph's quantized weights
        if n.op is OpKind.CONST and n.name in c.graph and hasattr(c.graph.node(n.name).data, "codes"):
            g8.set_node(c.graph.node(n.name))
    want = run_integer_raw(g8, {"input_ids": prompt[None]})["logits"][0, -1]
    same = np.array_equal(got[:len(want)], want)
    print(f"   executed the prefill program ({chunk(m['prefill_step'])['instructions']} instructions): logits "
          f"{'equal bit for bit to' if same else 'DIFFER from'} the integer interpreter; next token {int(got.argmax())}")
    lines.append(f"{'executed on the simulator':28s} {'bit-exact' if same else 'MISMATCH'} with the integer model")

    rtl_line = _rtl_step(MODELS[0], PROMPT)
    if rtl_line:
        lines.append(rtl_line)

    t0 = time.perf_counter()
    big = load_model("llama2-7b", seq_len=128)
    s = summarize(big)
    dt = time.perf_counter() - t0
    print(f"== llama2-7b (config only): {s.parameters / 1e9:.2f} B parameters, "
          f"{s.weight_bytes / 1e9:.2f} GB of fp16 weights, {s.layers} layers, analysed in {dt * 1000:.0f} ms")
    lines.append(f"{'llama2-7b (preset)':28s} {s.parameters:,} params, {s.weight_bytes / 1e9:.2f} GB fp16, "
                 f"{s.ops.get('attention', 0)} attention")
    for name in ("int4-g128", "w4-2of4"):
        _, r = quantize_model(big, load_policy(name))
        print(f"   llama2-7b at {name}: {r.avg_bits_per_weight:.3f} bits/weight, {r.weight_bytes / 1e9:.2f} GB")
        lines.append(f"{'llama2-7b @ ' + name:28s} {r.weight_bytes / 1e9:.2f} GB of weights")
    from llmfab.passes.roofline import roofline
    q7, _ = quantize_model(big, load_policy("w4-2of4"))
    rf = roofline(q7, load_target("u280"), "decode", 1, 640)
    print(f"   llama2-7b w4-2of4 on u280, decode at context 640: {rf.bytes / 1e9:.2f} GB per token, HBM roofline "
          f"{1 / rf.bound_seconds(load_target('u280')):.0f} tokens/s (simulated: see BENCHMARKS.md)")
    lines.append(f"{'llama2-7b w4-2of4 on u280':28s} roofline {1 / rf.bound_seconds(load_target('u280')):.0f} tokens/s "
                 f"at context 640 (FlightLLM: 55)")

    print("\nSummary")
    for line in lines:
        print("  " + line)
    print("  Next: `llmfab inspect MODEL`, `llmfab interpret MODEL.onnx --tokens \"1 2 3\" --out logits.npy`,")
    print("        `llmfab quantize MODEL --policy int4-g128-gptq`, `llmfab compile MODEL --target u280 -o BUILD`,")
    print("        `llmfab simulate BUILD`, `llmfab rtl --target sim-small -o RTL`, `llmfab synth RTL --flow xilinx`")
    _html_reports()
    _kernel_folder()
    return 0


KERNEL = ROOT / "build" / "sim-small-kernel"


def _kernel_folder() -> None:
    """What `llmfab rtl --target sim-small --kernel vitis -o build/sim-small-kernel` writes; the ~40 s
    conversion is skipped when the folder was written from the same backend_hw/ and ir/ sources."""
    import hashlib
    import json

    from llmfab.backend_hw.kernel.package import kernel_files
    from llmfab.backend_hw.kernel.vitis import build_kernel
    from llmfab.backend_hw.toolflow.emit import write_rtl
    from llmfab.ir.target import load_target

    print("\n== the accelerator as a Vitis RTL kernel (m_axi_hbm<k>, s_axi_control, kernel.xml, package_xo.tcl, "
          "link.cfg)")
    h = hashlib.sha256()
    for f in sorted([*(ROOT / "backend_hw").rglob("*.py"), *(ROOT / "ir").rglob("*.py")]):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    key = h.hexdigest()[:20]
    try:
        same = json.loads((KERNEL / "rtl.json").read_text()).get("sources") == key
    except (OSError, ValueError):
        same = False
    t0 = time.perf_counter()
    if not same:
        t = load_target("sim-small")
        write_rtl(build_kernel(t), t, KERNEL, notes={"buffers": "block_ram", "kernel": "vitis", "sources": key},
                  clock="ap_clk", extra=lambda verilog: kernel_files(t, verilog))
    files = sorted(str(p.relative_to(KERNEL)) for p in KERNEL.rglob("*") if p.is_file())
    print(f"   {'kept' if same else 'wrote'} {KERNEL.relative_to(ROOT)}/ ({time.perf_counter() - t0:.0f} s): "
          f"{', '.join(f for f in files if f.startswith(('rtl/', 'kernel/')))}")
    print("   for a card: `make xclbin TARGET=u280 PLATFORM=...` (Vivado and v++), then `llmfab run BUILD --xclbin "
          "build/u280-kernel/llmfab.xclbin --tokens ...` (pyxrt); neither was ever run here (docs/hardware.md)")


REPORTS = ROOT / "build" / "reports"


def _html_reports() -> None:
    """What `llmfab report MODEL --target u280 --html OUT.html` writes, for the tiny LLaMA and LLaMA2-7B."""
    from llmfab.report import report_data
    from llmfab.report_html import render_html

    print("\n== HTML reports (roofline, where the time goes, speed against context, resources, bits per layer)")
    REPORTS.mkdir(parents=True, exist_ok=True)
    for name, model, policy, prefill, decode in (("tiny-llama-u280", str(MODELS[0]), "int4-g128", 16, 48),
                                                  ("llama2-7b-u280", "llama2-7b", "w4-2of4", 128, 512)):
        t0 = time.perf_counter()
        d = report_data(model, "u280", policy, prefill, decode)
        try:
            page = render_html(d)
        except RuntimeError as e:    # matplotlib missing: `make demo` installs it (the test extra)
            print(f"   skipped: {e}")
            return
        out = REPORTS / f"{name}.html"
        out.write_text(page)
        print(f"   wrote {out} ({len(page) / 1e3:.0f} kB, {time.perf_counter() - t0:.0f} s): {policy}, "
              f"{d['simulate']['decode_tokens_per_s']:,.1f} decode tokens/s in the design what-if (the RTL: `llmfab simulate`); open it in a browser")


def _rtl_step(model: Path, prompt: list[int]) -> str | None:
    """The accelerator's RTL for sim-small runs the decode step in Verilator; same bytes as the
    functional simulator? (The Verilog and the Verilator build are cached after the first run.)"""
    import shutil

    from llmfab.backend_hw.accelerator import formats_of
    from llmfab.backend_hw.cycle_model import RtlUnits
    from llmfab.backend_hw.sim.system import VerilatorSystem
    from llmfab.compile import compile_model
    from llmfab.ir.isa import BufferId, Program
    from llmfab.ir.target import load_target
    from llmfab.simulator import DesignUnits, schedule
    from llmfab.simulator.execute import run_prompt
    from llmfab.simulator.functional import Machine

    print("== the accelerator RTL (Amaranth -> Verilog, block-RAM buffers as `llmfab rtl` writes them) for "
          "sim-small runs one decode step in Verilator")
    if shutil.which("verilator") is None:
        print("   skipped: needs Verilator (apt-get install verilator)")
        return None
    t = load_target("sim-small")
    c = compile_model(str(model), "sim-small", max_len=16, policy="int8")

    def prog(stage, n):
        e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= n <= e["bucket"][1])
        return Program.from_bytes(dict(c.programs)[e["file"]])
    dec = prog("decode", len(prompt) + 1)
    m = Machine.for_target(t, [d for _, d in c.images], max(c.layout.used))
    run_prompt(m, np.array(prompt), c.manifest["prefill_step"], lambda end: prog("prefill", end))
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
    t0 = time.perf_counter()
    vs = VerilatorSystem(t, formats_of([dec]), [max(c.layout.used)] * t.memory.channels, organisation="block_ram")
    print(f"   Verilog and Verilator model ready in {time.perf_counter() - t0:.0f} s (cached after the first run)")
    hbm, bufs = [bytes(h) for h in m.hbm], {b: bytes(v) for b, v in m.buffers.items() if b is not BufferId.INST}
    hz = t.clock_mhz * 1e6
    timed = schedule(dec, len(prompt) + 1, DesignUnits(t)).seconds * hz
    predicted = schedule(dec, len(prompt) + 1, RtlUnits(t, formats_of([dec]))).seconds * hz
    run = vs.run(dec, len(prompt) + 1, hbm, bufs, max_cycles=int(1.1 * predicted) + 1000)
    m.run(dec, len(prompt) + 1)
    same = run.hbm == [bytes(h) for h in m.hbm]
    print(f"   {len(dec.instructions)} instructions in {run.cycles:,} cycles ({run.sim.cycles_per_second:,.0f} cycles/s "
          f"in Verilator); HBM after the step {'equals' if same else 'DIFFERS from'} the functional simulator")
    print(f"   the RTL's cycle model (llmfab simulate --model rtl) predicted {predicted:,.0f} cycles (it does not "
          f"count the buffers' refused requests); the pipelined design (the what-if timing model) takes {timed:,.0f}")
    return (f"{'decode step on the RTL':28s} {'bit-exact' if same else 'MISMATCH'}, {run.cycles:,} cycles "
            f"(RTL cycle model {predicted:,.0f}, pipelined design {timed:,.0f})")


if __name__ == "__main__":
    sys.exit(main())
