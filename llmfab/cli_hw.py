"""The hardware commands of the `llmfab` command line: `rtl` (write the accelerator's Verilog),
`synth` (Yosys / nextpnr on it) and `run` (a build on an Alveo card, run_xrt.py); cli.py builds
the parser and dispatches here."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def buffers_arg(p) -> None:
    from llmfab.backend_hw.buffers import ORGANISATIONS
    p.add_argument("--buffers", choices=ORGANISATIONS, default="block_ram",
                   help="the buffers' organisation in the RTL: block_ram (default: banks of simple dual-port "
                        "memories behind arbiters; synthesizes to block RAM; within 1%% of `simulate --model rtl` "
                        "on sim-small) or ports (every unit its own port on every memory, which `simulate "
                        "--model rtl` times exactly; simulation only: Yosys cannot map it to block RAM)")


def cmd_rtl(args) -> int:
    from llmfab.backend_hw.toolflow.emit import write_rtl
    from llmfab.ir.folders import check_output
    from llmfab.ir.target import load_target

    t = load_target(args.target)
    kernel = getattr(args, "kernel", None)
    if kernel and args.part != "accelerator":
        raise ValueError(f"--kernel {kernel} wraps the whole accelerator, not --part {args.part}")
    check_output(args.out, "rtl", [Path(args.target)])   # before the slow elaboration
    try:
        from llmfab.backend_hw.accelerator import build_top
    except ImportError as e:
        raise RuntimeError(f"the accelerator top is not available (llmfab.backend_hw.accelerator.build_top: {e})") from None
    from . import progress
    extra = {}
    with progress.phase(f"rtl: build the {args.part} for {t.name}"):
        if kernel:
            from llmfab.backend_hw.kernel.package import kernel_files
            from llmfab.backend_hw.kernel.vitis import build_kernel
            top = build_kernel(t, buffers=args.buffers)
            extra = {"clock": "ap_clk", "extra": lambda verilog: kernel_files(t, verilog)}
        else:
            top = build_top(t, part=args.part, buffers=args.buffers)
    designs = top if isinstance(top, dict) else {args.part: top}
    notes = {"buffers": args.buffers} if args.part == "accelerator" else {}
    if kernel:
        notes["kernel"] = kernel
    with progress.phase("rtl: elaborate, convert to Verilog and write"):
        out = write_rtl(designs, t, Path(args.out), notes=notes or None, inputs=[Path(args.target)], **extra)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}/ for {t.name} ({t.clock_mhz:g} MHz): {', '.join(files)}")
    return 0


def synth_hint(manifest: dict, out_of_memory: bool) -> str:
    """What to make smaller when synthesis of the RTL `manifest` (rtl.json) describes fails."""
    ports = manifest.get("buffers") == "ports"
    why = ("this RTL's buffers are the simulation organisation (a port per client on every memory), which "
           "Yosys builds from flip-flops")
    if not out_of_memory:
        return f"; {why} until it runs out of memory: write it with `llmfab rtl --buffers block_ram`" if ports else ""
    tries = [f"`llmfab rtl --buffers block_ram` ({why})"] if ports else []
    if manifest.get("top") == "accelerator":
        tries.append("`llmfab rtl --part engine` (the matrix engine alone)")
    if manifest.get("target") != "sim-small":
        tries.append(f"a smaller target than {manifest.get('target')} (`--target sim-small`)")
    return "; try " + ", or ".join(tries) if tries else "; no smaller design to suggest: this part does not fit"


def cmd_synth(args) -> int:
    from llmfab.backend_hw.toolflow import synth
    from llmfab.backend_hw.toolflow.emit import read_rtl
    from llmfab.ir.folders import inside
    from llmfab.ir.target import DeviceFamily, load_target

    from . import progress
    manifest, sources = read_rtl(args.build)
    top = manifest["top"]
    here = Path(args.build) / ("hw" if (Path(args.build) / "hw" / "rtl.json").is_file() else "")
    work = here / f"synth-{args.flow}"
    try:
        if args.flow == "ecp5":
            t = load_target(inside(here, manifest["target_file"], "rtl.json target_file")
                            if "target_file" in manifest else manifest["target"])
            if t.device.family is not DeviceFamily.LATTICE_ECP5:
                t = load_target("ecp5-85k")  # RTL for another device: place it on the bundled ECP5
            r = synth.ecp5(sources, top, target=t, out_dir=work, phase=progress.phase)
        else:
            r = synth.xilinx(sources, top, family="xc7" if args.flow == "xc7" else "xcup", keep=work,
                             phase=progress.phase)
    except synth.SynthError as e:
        raise synth.SynthError(f"{e} (logs in {work}/){synth_hint(manifest, e.out_of_memory)}") from None
    print(json.dumps(r.to_json(), indent=2, sort_keys=True) if args.json else synth.format_report(r), end="\n" if args.json else "")
    missed = synth.timing_failure(r)
    if missed and not args.allow_timing_fail:  # the report is printed; a script must still see the failure
        print(f"llmfab: error: {missed}; pass --allow-timing-fail to accept it", file=sys.stderr)
        return 1
    return 0


def add_run_parser(sub, at_least) -> None:
    r = sub.add_parser("run", help="run a build on an Alveo card: the Vitis kernel through XRT (pyxrt)")
    r.add_argument("build", help="a BUILD folder written by `llmfab compile` (with weights) for the kernel's target")
    r.add_argument("--xclbin", required=True, help="the kernel linked for the card (`make xclbin`, docs/hardware.md)")
    r.add_argument("--tokens", required=True, help='prompt token ids, e.g. "1 2 3"')
    r.add_argument("--generate", type=at_least(0), default=0, help="also decode this many tokens greedily (the "
                   "KV cache stays on the card)")
    r.add_argument("--out", default=None, help="where to write the prompt's logits (.npy, [1, seq, vocab])")
    r.add_argument("--device", type=at_least(0), default=0, help="the card's XRT index (default 0)")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each kernel run (default 60)")
    r.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from llmfab.flow import parse_tokens
    from llmfab.ir.folders import check_output_file
    from llmfab.run_xrt import run_on_card

    from .cli import _write_atomic
    ids = parse_tokens(args.tokens)
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if args.out:
        check_output_file(args.out, [args.build])   # before the run
    logits, generated, reports = run_on_card(args.build, args.xclbin, ids, args.generate, args.device, args.timeout)
    for r in reports:
        took = f"{r.cycles:,} cycles" if r.cycles is not None else "cycles not read (this pyxrt has no read_register)"
        print(f"run LEN {r.length:5d} {r.program}: {took}")
    if args.out:
        import numpy as np
        _write_atomic(Path(args.out), lambda f: np.save(f, logits), [args.build])
    print(f"next token {int(logits[0, -1].argmax())}" + (f"; generated {' '.join(map(str, generated))}" if generated else "")
          + (f"; wrote {args.out}" if args.out else ""))
    return 0
