"""`llmfab` command line: the parser, and the commands on models and builds (inspect, interpret,
quantize, compile, simulate, execute, report, disasm, targets); `rtl`, `synth` and `run` are in cli_hw.py,
`explore` in cli_explore.py."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from llmfab.cli_eval import check_eval, eval_set, execute_eval, with_perplexity
from llmfab.cli_explore import add_explore_parser
from llmfab.cli_hw import add_run_parser, buffers_arg, cmd_rtl, cmd_synth
from llmfab.timing import DEFAULT_MODEL, TIMING_MODELS


def _write_atomic(path: Path, write, inputs=()) -> None:
    """Write through a temporary file in the same folder, so a failure leaves `path` untouched;
    only over a regular file that is none of `inputs` nor inside one (never a device node)."""
    from llmfab.ir.folders import check_output_file
    check_output_file(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_inspect(args) -> int:
    from llmfab.flow import leftover_primitives, load_model
    from llmfab.passes.pass_base import PipelineReport
    from llmfab.passes.summary import format_summary, summarize

    report = PipelineReport()
    g = load_model(args.model, seq_len=args.seq_len, past_len=args.past_len, passes=args.passes,
                   print_between=args.print_between_passes, report=report)
    if report.printed:
        print("".join(report.printed), end="")
    if args.time_passes:
        width = max(map(len, report.seconds), default=4)
        for name, sec in report.seconds.items():
            print(f"{name:{width}s} {sec * 1e3:9.2f} ms", file=sys.stderr)
        print(f"{'total':{width}s} {sum(report.seconds.values()) * 1e3:9.2f} ms", file=sys.stderr)
    s = summarize(g)
    left = leftover_primitives(g)
    if args.json:
        out = s.to_json()
        out["unfused"] = left
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(format_summary(s), end="")
        if args.print_ir:
            from llmfab.ir import print_graph
            print(print_graph(g, skip_consts=True), end="")
        if left:
            from llmfab.ir.verify import unfused_message, unfused_nodes
            what = "`llmfab compile` (and quantize with integer activations)"
            print(f"warning: {unfused_message(unfused_nodes(g), what, graph=g)}")
    return 0


def cmd_interpret(args) -> int:
    from llmfab.flow import FlowError, interpret, load_model, parse_tokens

    tokens = parse_tokens(args.tokens)
    if not str(args.model).endswith(".onnx"):
        raise FlowError(f"{args.model}: interpret needs an .onnx model with weights")
    g = load_model(args.model, seq_len=tokens.shape[1])
    outs = interpret(g, tokens)
    name = "logits" if "logits" in outs else next(iter(outs))
    logits = np.asarray(outs[name], dtype=np.float32)
    _write_atomic(Path(args.out), lambda f: np.save(f, logits), [args.model])
    print(f"wrote {args.out}: {name} {list(logits.shape)} float32 "
          f"(argmax of last position: {int(logits[0, -1].argmax())})")
    return 0


def cmd_quantize(args) -> int:
    from llmfab.flow import FlowError, load_model
    from llmfab.ir.integer import IntegerError
    from llmfab.passes.policy import load_policy
    from llmfab.passes.quant_report import format_report, quantize_model

    policy = load_policy(args.policy)
    if args.calibration:
        import dataclasses
        cal = dataclasses.replace(policy.calibration, tokens=args.calibration, origin="--calibration")
        policy = dataclasses.replace(policy, calibration=cal)
    data = eval_set(args.eval) if args.eval else None     # a bad file fails before minutes of work
    g = load_model(args.model, seq_len=args.seq_len or policy.calibration.seq_len)
    if data is not None:
        check_eval(args.model, g, data)
    try:
        q, report = quantize_model(g, policy, integer=not args.float_activations)
        if data is not None:
            report = with_perplexity(args.model, g, q, report, data, load_model)
    except IntegerError as e:  # the integer model failed on this graph: name the model
        raise FlowError(f"{args.model}: {e}") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(format_report(report), end="")
    return 0


def cmd_targets(args) -> int:
    from llmfab.ir.target import bundled_targets, format_targets, load_target

    targets = [load_target(n) for n in (args.names or bundled_targets())]
    if args.json:
        print(json.dumps({t.name: {"clock_mhz": t.clock_mhz, "chains": t.engine.n_chains,
                                   "chain_len": t.engine.chain_len, "dsp_used": t.dsp_used, "dsp": t.device.dsp,
                                   "bandwidth_gbps": t.memory.bandwidth_gbps, "capacity_gb": t.memory.capacity_gb}
                          for t in targets}, indent=2, sort_keys=True))
    else:
        print(format_targets(targets), end="" if format_targets(targets).endswith("\n") else "\n")
    return 0


def cmd_disasm(args) -> int:
    from llmfab.ir.isa import Program, disassemble

    path = Path(args.program)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"{path}: {e.strerror}") from None
    try:
        program = Program.from_bytes(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    print(f"; program {program.name!r}: {len(program.instructions)} instructions, {program.storage_bytes} bytes")
    print(disassemble(program), end="")
    return 0


def cmd_compile(args) -> int:
    from llmfab.compile import compile_inputs, compile_model, summary, write_build
    from llmfab.ir.folders import MARKER, check_output, marker

    check_output(args.out, "build", compile_inputs(args.model, args.target, args.policy))  # before minutes of work
    c = compile_model(args.model, args.target, policy=args.policy, max_len=args.max_len,
                      prefill_step=args.prefill_step, decode_step=args.decode_step, check=False if args.no_check else None)
    hw = {}
    if args.rtl:  # the accelerator for this build's weight formats, beside the programs, in the same write
        from llmfab.backend_hw.accelerator import build_top, formats_of
        from llmfab.backend_hw.toolflow.emit import rtl_files
        from llmfab.ir.isa import Program

        from . import progress
        formats = formats_of([Program.from_bytes(data) for _, data in c.programs])
        with progress.phase("rtl: elaborate and convert to Verilog"):
            files = rtl_files(build_top(c.target, formats, buffers=args.buffers), c.target, notes={"buffers": args.buffers})
        hw = {f"hw/{k}": v for k, v in (files | {MARKER: marker("rtl")}).items()}
    from . import progress
    with progress.phase(f"write {args.out}"):
        write_build(c, Path(args.out), hw)
    print(summary(c), end="")
    if c.checked:
        print(f"checked      bit-exact with the integer model: prompts of {' and '.join(map(str, c.checked))} tokens, "
              "a decode step after each")
    print(f"time         {c.seconds:.1f} s")
    print(f"wrote {args.out}/ (manifest.json, {len(c.programs)} programs, {len(c.images)} weight images)")
    if args.rtl:
        print(f"wrote {args.out}/hw/ (the accelerator's RTL for weight formats {', '.join(map(_format, formats))}; "
              f"`llmfab synth {args.out} --flow ...`)")
    return 0


def _at_least(lo: int):
    """argparse type: an integer >= lo (a 0 for --seq-len silently became the default before)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {v}")
        return v
    return parse


def _format(f) -> str:
    from llmfab.ir.quant import NM
    bits, pattern, group = f
    return f"int{bits}" + (f" {NM(*pattern)}" if pattern else "") + f" g{group}"


def _write_html(path: str, data: dict, inputs) -> None:
    """`--html OUT.html`: the page drawn from `data`, the dict `--json` prints."""
    from .report_html import render_html
    check = [Path(p) for p in inputs if p]
    html = render_html(data)      # before touching the file: a missing matplotlib leaves it as it was
    _write_atomic(Path(path), lambda f: f.write(html.encode()), check)


def _print_data(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text, end="\n" if args.json else "")
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr if args.json else sys.stdout)


def cmd_simulate(args) -> int:
    from llmfab.ir.folders import check_output_file
    from llmfab.simulator.run import SimReport, format_report

    from .report import simulate_data

    for out in (args.trace, args.html):
        if out:
            check_output_file(out, [args.build])
    d = simulate_data(args.build, args.prefill, args.decode, model=args.model, trace=args.trace)
    if args.html:
        _write_html(args.html, d, [args.build])
    fields = SimReport.__dataclass_fields__
    r = SimReport(**{k: v for k, v in d.items() if k in fields})
    _print_data(args, d, format_report(r))
    return 0


def cmd_execute(args) -> int:
    from llmfab.flow import FlowError, execute_build, parse_tokens
    from llmfab.ir.folders import check_output_file

    if args.eval:
        if args.tokens or args.out or args.generate:
            raise FlowError("--eval measures perplexity on its own: give it without --tokens, --out and --generate")
        return execute_eval(args)
    if not args.tokens or not args.out:
        raise FlowError("execute needs --tokens and --out (or --eval DATA for perplexity)")
    check_output_file(args.out, [args.build])   # before the run
    logits, generated = execute_build(args.build, parse_tokens(args.tokens), args.generate)
    _write_atomic(Path(args.out), lambda f: np.save(f, logits), [args.build])
    print(f"wrote {args.out}: logits {list(logits.shape)} float32 from the integer model run on the simulator"
          + (f"; generated {' '.join(map(str, generated))}" if generated else ""))
    return 0


def cmd_report(args) -> int:
    from llmfab.ir.folders import check_output_file

    from .report import format_report, report_data

    if args.html:
        check_output_file(args.html, [args.model, args.target, args.policy])
    d = report_data(args.model, args.target, args.policy, args.prefill, args.decode)
    if args.html and d["fits"]:
        _write_html(args.html, d, [args.model, args.target, args.policy])
    _print_data(args, d, format_report(d))
    return 0 if d["fits"] else 1


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line like every other error (`llmfab compile: error: ...`, exit 2);
    `--help` still prints the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from llmfab.backend_hw import PARTS  # light: names only, no Amaranth
    from llmfab.backend_hw.toolflow.synth import FLOWS
    p = _Parser(prog="llmfab", description="Compile decoder LLMs onto FPGA accelerators.")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr (shown only on a terminal anyway)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    i = sub.add_parser("inspect", help="summarise the fused graph of a model")
    i.add_argument("model", help="an .onnx file, a Hugging Face config.json, or a preset name")
    i.add_argument("--seq-len", type=_at_least(1), default=None, help="sequence length to bind (default: 16)")
    i.add_argument("--past-len", type=_at_least(0), default=0, help="tokens already in the KV cache (default 0)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--print-ir", action="store_true", help="also print the fused graph")
    i.add_argument("--passes", metavar="P1,P2{opt=v},...", default=None,
                   help="the pass pipeline to run after import instead of the default fusion; an unknown "
                   "name lists the registry (llmfab.passes.PASSES)")
    i.add_argument("--print-between-passes", action="store_true", help="print the graph after each pass")
    i.add_argument("--time-passes", action="store_true", help="print each pass's time (to stderr)")
    i.set_defaults(func=cmd_inspect)

    q = sub.add_parser("quantize", help="quantize a model by a policy and measure the result")
    q.add_argument("model", help="an .onnx file, a Hugging Face config.json, or a preset name")
    q.add_argument("--policy", required=True, help="a policy YAML file or a bundled policy name "
                   "(int8, int4-g128, int4-g128-gptq, int4-g32, int3-g64, w4-2of4, mixed-3.5)")
    q.add_argument("--seq-len", type=_at_least(1), default=None, help="tokens per calibration/evaluation stream "
                   "(default: the policy's calibration seq_len)")
    q.add_argument("--calibration", default=None, metavar="TOKENS",
                   help="file of whitespace-separated token ids to calibrate on (default: random ids)")
    q.add_argument("--float-activations", action="store_true",
                   help="measure logits with dequantized weights and float activations")
    q.add_argument("--eval", default=None, metavar="DATA", help="a .npy of token ids [sequences, length]: also "
                   "report float_perplexity (the float graph) and perplexity (the quantized model) on it")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("compile", help="compile a model for a target: programs, weight images, manifest")
    c.add_argument("model", help="an .onnx file, a Hugging Face config.json, or a preset name")
    c.add_argument("--target", required=True, help="a bundled target (u280, vhk158, ecp5-85k, sim-small, sim-medium) or a YAML file")
    c.add_argument("--policy", default="int8", help="quantization policy (default int8)")
    c.add_argument("--max-len", type=int, default=None,
                   help="longest prompt + generation (default 2048, or the model's positions if fewer)")
    c.add_argument("--prefill-step", type=int, default=None, help="prompt tokens per bucket (default: 128 or "
                   "the largest that fits the buffers)")
    c.add_argument("--decode-step", type=int, default=None, help="context lengths per decode bucket (default: "
                   "as many keys as one KV tile holds)")
    c.add_argument("-o", "--out", required=True, help="the BUILD folder to write")
    c.add_argument("--no-check", action="store_true", help="do not run the programs against the integer model "
                   "(by default compile does for models with weights up to 50 M parameters)")
    c.add_argument("--rtl", action="store_true", help="also write the accelerator's RTL for this build's weight "
                   "formats into BUILD/hw (Verilog, Vivado TCL, FuseSoC core; slow for large targets)")
    buffers_arg(c)
    c.set_defaults(func=cmd_compile)

    s = sub.add_parser("simulate", help="time a build: time to first token and decode tokens/s")
    s.add_argument("build", help="a BUILD folder written by `llmfab compile`")
    s.add_argument("--prefill", type=int, default=128, help="prompt length (default 128)")
    s.add_argument("--decode", type=int, default=128, help="decode steps (default 128)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--trace", metavar="FILE", help="write each instruction of the middle decode step with its "
                   "queue and begin/end cycle (CSV)")
    s.add_argument("--model", choices=tuple(TIMING_MODELS), default=DEFAULT_MODEL,
                   help="time the accelerator RTL `llmfab rtl` emits (default; the model Verilator validates "
                   "on whole programs), or `design`: a what-if, the pipelined design the target describes, "
                   "which the RTL does not implement yet")
    html_arg(s)
    s.set_defaults(func=cmd_simulate)

    rp = sub.add_parser("report", help="roofline, resources and power of a model on a target")
    rp.add_argument("model", help="an .onnx file, a Hugging Face config.json, or a preset name")
    rp.add_argument("--target", required=True, help="a bundled target or a YAML file")
    rp.add_argument("--policy", default="int8", help="quantization policy (default int8)")
    rp.add_argument("--prefill", type=_at_least(1), default=128, help="prompt length L (default 128)")
    rp.add_argument("--decode", type=_at_least(0), default=512, help="decode steps: decode is analysed at context L+N")
    rp.add_argument("--json", action="store_true", help="print one JSON object")
    html_arg(rp)
    rp.set_defaults(func=cmd_report)

    add_explore_parser(sub, _at_least)

    x = sub.add_parser("execute", help="run a build's programs on the functional simulator")
    x.add_argument("build", help="a BUILD folder written by `llmfab compile` (with weights)")
    x.add_argument("--tokens", default=None, help='prompt token ids, e.g. "1 2 3"')
    x.add_argument("--out", default=None, help="where to write the prompt's logits (.npy, [1, seq, vocab])")
    x.add_argument("--generate", type=_at_least(0), default=0, help="also decode this many tokens greedily")
    x.add_argument("--eval", default=None, metavar="DATA", help="instead of --tokens: the perplexity of the "
                   "programs on a .npy of token ids [sequences, length] (each sequence a prompt of its own)")
    x.add_argument("--json", action="store_true", help="with --eval: print one JSON object")
    x.set_defaults(func=cmd_execute)

    t = sub.add_parser("targets", help="list the bundled hardware targets and their key numbers")
    t.add_argument("names", nargs="*", help="target names or YAML files (default: every bundled target)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_targets)

    d = sub.add_parser("disasm", help="print a compiled program as text")
    d.add_argument("program", help="a program file (BUILD/programs/*.bin)")
    d.set_defaults(func=cmd_disasm)

    r = sub.add_parser("interpret", help="run the reference interpreter on token ids")
    r.add_argument("model", help="an .onnx file")
    r.add_argument("--tokens", required=True, help='token ids, e.g. "1 2 3"')
    r.add_argument("--out", required=True, help="where to write the logits (.npy, [1, seq, vocab])")
    r.set_defaults(func=cmd_interpret)

    hr = sub.add_parser("rtl", help="write the accelerator's Verilog, Vivado script and FuseSoC core (no model)")
    hr.add_argument("--target", required=True, help="a bundled target (u280, vhk158, ecp5-85k, sim-small, sim-medium) or a YAML file")
    hr.add_argument("-o", "--out", required=True, help="the folder to write (replaced only if it holds an earlier output)")
    hr.add_argument("--part", choices=PARTS, default="accelerator",
                    help="the whole accelerator (default) or the matrix engine alone behind a serial shell "
                         "(small packages: make bitstream)")
    hr.add_argument("--kernel", choices=("vitis",), default=None,
                    help="wrap the accelerator as a Vitis RTL kernel (ap_clk, m_axi_hbm<k>, s_axi_control) and "
                         "write kernel.xml, package_xo.tcl and a v++ link config in kernel/")
    buffers_arg(hr)
    hr.set_defaults(func=cmd_rtl)

    hs = sub.add_parser("synth", help="synthesize RTL: Yosys cell counts (xilinx, xc7) or an ECP5 bitstream (ecp5)")
    hs.add_argument("build", help="a folder written by `llmfab rtl` (or a BUILD folder holding one)")
    hs.add_argument("--flow", required=True, choices=FLOWS,
                    help="xilinx: synth_xilinx -family xcup; xc7: -family xc7; ecp5: synth_ecp5 + nextpnr-ecp5 + ecppack")
    hs.add_argument("--json", action="store_true", help="print one JSON object")
    hs.add_argument("--no-pnr", action="store_true",
                    help="ecp5: stop after synth_ecp5 (cell counts only: no nextpnr, Fmax or bitstream)")
    hs.add_argument("--allow-timing-fail", action="store_true",
                    help="ecp5: exit 0 even when the routed Fmax misses the target clock (default: exit 1)")
    hs.set_defaults(func=cmd_synth)
    add_run_parser(sub, _at_least)
    for command in sub.choices.values():   # `llmfab compile ... --quiet` as well as `llmfab --quiet compile ...`
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress on stderr (shown only on a terminal anyway)")
    return p


def html_arg(p) -> None:
    p.add_argument("--html", metavar="OUT.html", help="also write one self-contained HTML page with the plots "
                   "(needs matplotlib: pip install 'llmfab[report]'); its numbers are the --json ones")


_PATHS = ("model", "build", "program", "out", "trace", "target", "policy", "names", "calibration", "html", "space",
          "cache", "eval", "xclbin")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in _PATHS:   # '' is the current folder to pathlib: `disasm ''` said '.: Is a directory'
        v = getattr(args, name, None)
        if v == "" or isinstance(v, list) and "" in v:
            print(f"llmfab {args.command}: error: argument {name}: must not be empty", file=sys.stderr)
            return 2
    from . import progress
    progress.set_quiet(args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `llmfab inspect ... | head`
        sys.stderr.close()
        return 0
    except Exception as e:  # one clear line, never a traceback (LLMFAB_DEBUG=1 shows it)
        if os.environ.get("LLMFAB_DEBUG"):
            raise
        known = isinstance(e, (ValueError, OSError, RuntimeError, KeyError))
        prefix = "error" if known else f"internal error ({type(e).__name__})"
        print(f"llmfab: {prefix}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
