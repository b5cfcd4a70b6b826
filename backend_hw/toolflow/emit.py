"""Write the hardware outputs: Verilog, a Vivado project script and a FuseSoC core.

`write_rtl(designs, target, out_dir)` writes

    out_dir/rtl/<name>.v               one file per design (amaranth.back.verilog, no src attributes)
    out_dir/vivado/create_project.tcl  `vivado -mode batch -source vivado/create_project.tcl`
    out_dir/vivado/clocks.xdc          the `clk` port at target.clock_mhz
    out_dir/<top>.core                 FuseSoC CAPI2: targets default, sim (Verilator), synth
    out_dir/rtl.json                   top, target, clock, files: what `llmfab synth DIR` reads
    out_dir/target.yaml                the target file the RTL was generated for (when read from one)
    out_dir/.llmfab                    the marker that lets a later `llmfab rtl -o out_dir` replace it

The bytes depend only on the designs and the target (`rtl_files`). The folder is written whole
and renamed into place by `llmfab.ir.folders.write_folder`: a failure leaves any previous output
untouched, and an existing path is replaced only if it is an RTL folder llmfab wrote.
"""
from __future__ import annotations

import json
from pathlib import Path

from .synth import _check_name, to_verilog

__all__ = ["MANIFEST", "U280_PART", "rtl_files", "vivado_part", "write_rtl", "read_rtl"]

MANIFEST = "rtl.json"
U280_PART = "xcu280-fsvh2892-2L-e"   # the Vivado project's part when the target is not a Xilinx device
CLOCK_PORT = "clk"                   # Amaranth's `sync` domain clock


def write_rtl(designs: dict, target, out_dir: Path | str, *, top: str | None = None,
              notes: dict | None = None, inputs=(), clock: str = CLOCK_PORT, extra=None) -> Path:
    """`designs`: name -> an Amaranth Component, an `(elaboratable, ports)` pair or Verilog text.
    `top`: the top-level design (default: the first name); `notes`: more manifest entries (e.g.
    the buffer organisation); `inputs`: files the folder must not hold (the target file); `clock`:
    the top's clock port; `extra`: a callable (the Verilog of the top) -> more files (relative path
    -> text), e.g. a kernel's packaging files. Returns `out_dir` as a Path."""
    from llmfab.ir.folders import check_output, write_folder
    check_output(out_dir, "rtl", inputs)   # before the slow conversion
    return write_folder(out_dir, "rtl", rtl_files(designs, target, top=top, notes=notes, clock=clock,
                                                             extra=extra), inputs)


def vivado_part(t) -> str:
    """The Vivado part of target `t`: its own on a Xilinx device, else the U280's."""
    from llmfab.ir.target import DeviceFamily
    xilinx = t.device.family in (DeviceFamily.XILINX_ULTRASCALE_PLUS, DeviceFamily.XILINX_VERSAL)
    return t.device.part if xilinx else U280_PART


def rtl_files(designs: dict, target, *, top: str | None = None, notes: dict | None = None,
              clock: str = CLOCK_PORT, extra=None) -> dict[str, bytes]:
    """Every file of an RTL folder (relative path -> bytes), generated in memory: a design that
    fails to convert writes nothing."""
    from llmfab.ir.target import TARGET_FILE, load_target
    t = target if not isinstance(target, (str, Path)) else load_target(target)
    if not isinstance(designs, dict) or not designs:
        raise TypeError(f"designs must be a non-empty dict of name to design, not {designs!r:.80}")
    for name in designs:
        _check_name(name)
    top = next(iter(designs)) if top is None else top
    if top not in designs:
        raise ValueError(f"top must be one of the designs ({', '.join(designs)}), not {top!r}")
    files: dict[str, str] = {}
    for name, d in designs.items():
        design, ports = d if isinstance(d, tuple) else (d, None)
        files[f"rtl/{name}.v"] = to_verilog(design, name, ports)
    rtl = sorted(files)
    part = vivado_part(t)
    files["vivado/clocks.xdc"] = _xdc(t, clock)
    files["vivado/create_project.tcl"] = _tcl(t, top, rtl, part, clock)
    files[f"{top}.core"] = _core(t, top, rtl, part)
    if extra is not None:
        files.update(extra(files[f"rtl/{top}.v"]))
    keep = {"target_file": TARGET_FILE} if t.text else {}     # the target as read, for `llmfab synth`
    if t.text:
        files[TARGET_FILE] = t.text
    files[MANIFEST] = json.dumps({"top": top, "target": t.name, "clock_mhz": t.clock_mhz,
                                  "family": t.device.family.value, "part": t.device.part,
                                  "vivado_part": part, "files": rtl, **keep, **(notes or {})},
                                 indent=2, sort_keys=True) + "\n"
    return {k: v.encode() for k, v in files.items()}


def read_rtl(path: Path | str) -> tuple[dict, dict[str, str]]:
    """The manifest and the Verilog files (name -> text) of a folder `write_rtl` wrote; `path` may
    also be a BUILD folder holding one in `rtl/..` (a `hw/` sub-folder)."""
    p = Path(path)
    for cand in (p, p / "hw"):
        if (cand / MANIFEST).is_file():
            p = cand
            break
    else:
        if not p.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
        raise FileNotFoundError(f"{path}: no {MANIFEST}: not a folder written by `llmfab rtl` or `llmfab compile`")
    from llmfab.ir.folders import inside
    try:
        manifest = json.loads((p / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, list):
            raise TypeError(f"'files' must be a list, not {type(files).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{p / MANIFEST}: unreadable RTL manifest: {e}") from None
    try:   # only files inside the folder, whatever the manifest says
        sources = {Path(f).name: inside(p, f, f"{MANIFEST} files entry").read_text() for f in files}
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p / MANIFEST}: a listed file cannot be read: {e}") from None
    return manifest, sources


def _xdc(t, clock: str = CLOCK_PORT) -> str:
    period = 1000.0 / t.clock_mhz
    return (f"# {t.name}: kernel clock {t.clock_mhz:g} MHz\n"
            f"create_clock -period {period:.3f} -name {clock} [get_ports {clock}]\n")


def _tcl(t, top: str, rtl: list[str], part: str, clock: str = CLOCK_PORT) -> str:
    files = " \\\n    ".join(f"[file join $root {f}]" for f in rtl)
    return f"""\
# Generated by llmfab for target {t.name}: a Vivado project for {part}, top `{top}`,
# clock `{clock}` at {t.clock_mhz:g} MHz (vivado/clocks.xdc).
# Run from anywhere: vivado -mode batch -source <this folder>/create_project.tcl
# then, in the project: launch_runs synth_1 -jobs 8; launch_runs impl_1 -to_step write_bitstream
set root [file normalize [file join [file dirname [info script]] ..]]
create_project -force {top} [file join $root vivado {top}] -part {part}
set_property target_language Verilog [current_project]
add_files -norecurse [list \\
    {files}]
set_property top {top} [current_fileset]
add_files -fileset constrs_1 -norecurse [file join $root vivado clocks.xdc]
update_compile_order -fileset sources_1
"""


def _core(t, top: str, rtl: list[str], part: str) -> str:
    from llmfab.ir.target import DeviceFamily
    files = "".join(f"      - {f}\n" for f in rtl)
    if t.device.family is DeviceFamily.LATTICE_ECP5:
        from .synth import _nextpnr_device
        synth = (f"    default_tool: trellis\n"
                 f"    filesets: [rtl]\n"
                 f"    tools:\n"
                 f"      trellis:\n"
                 f"        nextpnr_options: [{', '.join(_nextpnr_device(t.device.part))}, "
                 f"--freq, '{t.clock_mhz:g}', --lpf-allow-unconstrained]\n")
    else:
        synth = (f"    default_tool: vivado\n"
                 f"    filesets: [rtl, constraints]\n"
                 f"    tools:\n"
                 f"      vivado:\n"
                 f"        part: {part}\n")
    return f"""\
CAPI=2:
# Generated by llmfab for target {t.name}. `fusesoc --cores-root . run --target synth llmfab:hw:{top}`
name: llmfab:hw:{top}:0.1.0
description: llmfab accelerator for {t.name} ({t.device.part}, {t.clock_mhz:g} MHz)

filesets:
  rtl:
    files:
{files}    file_type: verilogSource
  constraints:
    files:
      - vivado/clocks.xdc
    file_type: xdc

targets:
  default:
    filesets: [rtl]
    toplevel: {top}
  sim:
    default_tool: verilator
    filesets: [rtl]
    toplevel: {top}
    tools:
      verilator:
        mode: lint-only
        verilator_options: [-Wall]
  synth:
{synth}    toplevel: {top}
"""
