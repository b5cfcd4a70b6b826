"""Verilator (Debian `verilator` 5.006): lint the emitted Verilog and simulate it cycle by cycle.

- `lint(verilog, top)`: `verilator --lint-only -Wall` with the waivers below; returns the warnings.
- `VerilatorSim(verilog, top)`: builds the design with a generated C++ main (`--cc --exe --build`,
  cached by content) that reads a file of input vectors, one per cycle, and writes one output
  vector per cycle; `run()` feeds it arrays and returns the outputs and the cycles per second.

Cycle convention (the same as an amaranth.sim testbench that does `ctx.set(...)`, reads with
`ctx.get(...)`, then `await ctx.tick()`): in cycle k the inputs of vector k are applied, the
design settles, the outputs are sampled as vector k, then `clk` rises once.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LINT_WAIVERS", "VerilatorError", "VerilatorSim", "SimRun", "lint", "verilator_path"]

NEEDS = "needs Verilator: apt-get install verilator"

# Waived only because Amaranth's Verilog style triggers them, not the design:
LINT_WAIVERS = {
    # Amaranth writes `$signed(a) + $signed(b)` on operands of different widths and relies on
    # Verilog's context-width extension; Amaranth's own shape rules already fixed every width.
    "WIDTH": "operand widths are set by Amaranth's shape rules; Verilog extends them by context",
    # Amaranth keeps one-bit-wider intermediates (`$2[20]`, the dropped carry of an add) and a wire
    # per data.Struct/Array field view (`i__payload.a[3]`) even when only some are read.
    "UNUSEDSIGNAL": "Amaranth's intermediate carry bits and struct field views are unread",
    # All submodules (`top.stage0`) go into one file named after the top.
    "DECLFILENAME": "Amaranth writes the whole hierarchy into one file",
    # Amaranth assigns every signal its default before a `case` and lets uncovered values keep it,
    # so an incomplete case is neither a latch nor an unknown.
    "CASEINCOMPLETE": "Amaranth assigns each signal's default before every case statement",
    # Bounds written for every Target become constant for some (a 2-bit phase `<= 3`, a byte skip
    # `<= 15` on 16-byte words); the comparison is still right.
    "CMPCONST": "parameterised bound checks are vacuous for some Target sizes",
}


class VerilatorError(RuntimeError):
    pass


def verilator_path() -> str:
    exe = shutil.which("verilator")
    if exe is None:
        raise VerilatorError(NEEDS)
    return exe


def lint(verilog: str, top: str, *, waivers: dict[str, str] = LINT_WAIVERS) -> list[str]:
    """The `%Warning` lines of `verilator --lint-only -Wall` on `verilog` (empty if clean);
    a `%Error` (a syntax error, an unknown module) raises VerilatorError."""
    exe = verilator_path()
    with tempfile.TemporaryDirectory(prefix="llmfab-lint-") as tmp:
        src = Path(tmp) / f"{top}.v"
        src.write_text(verilog)
        p = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-fatal", *(f"-Wno-{w}" for w in waivers),
                            "--top-module", top, src.name], cwd=tmp, capture_output=True, text=True)
    lines = (p.stdout + p.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("%Error")]
    if p.returncode != 0 or errors:
        raise VerilatorError(f"verilator lint of {top} failed: {errors[0] if errors else lines[-1:]}")
    return [ln for ln in lines if ln.startswith("%Warning")]


@dataclass(frozen=True)
class Port:
    name: str
    width: int
    cname: str          # the member name Verilator gives it in C++

    @property
    def words(self) -> int:
        return (self.width + 31) // 32


@dataclass(frozen=True)
class SimRun:
    outputs: dict[str, np.ndarray | list[int]]   # per cycle, unsigned: uint64 arrays up to 64 bits
    cycles: int
    seconds: float                                # simulation loop only (no file I/O)

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds > 0 else float("inf")


def ports(verilog: str, top: str) -> tuple[list[Port], list[Port]]:
    """The inputs and outputs of module `top` as Amaranth writes them (`input [7:0] a;`)."""
    m = re.search(rf"^module {re.escape(top)}\s*\(.*?^endmodule", verilog, re.S | re.M)
    if m is None:
        raise VerilatorError(f"module {top} not found in the Verilog")
    found = {"input": [], "output": []}
    for kind, msb, lsb, name in re.findall(r"^\s*(input|output)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?(\S+)\s*;",
                                           m[0], re.M):
        if name.startswith("\\"):
            raise VerilatorError(f"port {name} of {top} needs an escaped name; VerilatorSim takes plain names")
        width = int(msb) - int(lsb) + 1 if msb else 1
        found[kind].append(Port(name, width, _cname(name)))
    return found["input"], found["output"]


def _cname(name: str) -> str:
    """Verilator's C++ member name: a '_' that follows another '_' is written as `__05F`."""
    out, prev = [], ""
    for ch in name:
        out.append("__05F" if ch == "_" and prev == "_" else ch)
        prev = ch
    return "".join(out)


class VerilatorSim:
    """`verilog`: the text of the design; `top`: its top module; `clock`: the clock input (None for
    a design without one); `cache_dir`: where builds are kept (default ~/.cache/llmfab/verilator)."""

    def __init__(self, verilog: str, top: str, *, clock: str | None = "clk", cache_dir: Path | str | None = None):
        exe = verilator_path()
        ins, self.outputs = ports(verilog, top)
        names = [p.name for p in ins]
        if clock is not None and clock not in names:
            raise ValueError(f"clock must be an input of {top} ({', '.join(names)}) or None, not {clock!r}")
        self.top, self.clock = top, clock
        self.inputs = [p for p in ins if p.name != clock]
        harness = _harness(top, self.inputs, self.outputs, clock)
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        key = hashlib.sha256("\0".join((version, top, verilog, harness)).encode()).hexdigest()[:20]
        root = Path(cache_dir) if cache_dir is not None else \
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmfab" / "verilator"
        self.build_dir = root / f"{top}-{key}"
        self.exe = self.build_dir / "Vsim"
        if not self.exe.is_file():
            self._build(exe, verilog, harness, root)

    def _build(self, exe: str, verilog: str, harness: str, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.top}-", dir=root))
        try:
            (tmp / f"{self.top}.v").write_text(verilog)
            (tmp / "main.cpp").write_text(harness)
            p = subprocess.run([exe, "--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint",
                                "-Wno-style", "--top-module", self.top, "-Mdir", "obj", "-o", "../Vsim",
                                f"{self.top}.v", "main.cpp"], cwd=tmp, capture_output=True, text=True)
            if p.returncode != 0:
                err = next((ln for ln in (p.stdout + p.stderr).splitlines() if "rror" in ln), "see the build log")
                raise VerilatorError(f"verilator build of {self.top} failed: {err}")
            shutil.rmtree(tmp / "obj")   # keep the executable, drop the ~MB of objects
            try:
                os.replace(tmp, self.build_dir)
            except OSError:              # another process built the same design meanwhile
                if not self.exe.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run(self, inputs: dict[str, object], cycles: int | None = None, *, outputs=None) -> SimRun:
        """`inputs`: input name -> one value per cycle (ints or an int array; negative values are
        taken modulo 2**width); inputs not given are 0. `cycles` defaults to the inputs' length.
        `outputs`: the output names to return (default all; converting wide ones costs time)."""
        known = {p.name: p for p in self.inputs}
        for name in inputs:
            if name not in known:
                raise ValueError(f"{name!r} is not an input of {self.top} (inputs: {', '.join(known)})")
        outs = {q.name for q in self.outputs}
        for name in outputs or ():
            if name not in outs:
                raise ValueError(f"{name!r} is not an output of {self.top} (outputs: {', '.join(sorted(outs))})")
        wanted = outs if outputs is None else set(outputs)
        lengths = {len(v) for v in inputs.values()}
        if cycles is None:
            if len(lengths) != 1:
                raise ValueError("give cycles, or inputs of one common length")
            cycles = lengths.pop()
        elif any(n < cycles for n in lengths):
            raise ValueError(f"every input needs {cycles} values")
        in_words = sum(p.words for p in self.inputs)
        buf = np.zeros((cycles, in_words), dtype="<u4")
        col = 0
        for p in self.inputs:
            if p.name in inputs:
                buf[:, col:col + p.words] = _to_words(inputs[p.name], p.width, cycles)
            col += p.words
        with tempfile.TemporaryDirectory(prefix="llmfab-vsim-") as tmp:
            fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
            buf.tofile(fin)
            p = subprocess.run([str(self.exe), str(fin), str(fout), str(cycles)], capture_output=True, text=True)
            if p.returncode != 0:
                raise VerilatorError(f"simulation of {self.top} failed: {(p.stdout + p.stderr).strip()[-300:]}")
            out_words = sum(q.words for q in self.outputs)
            raw = np.fromfile(fout, dtype="<u4").reshape(cycles, out_words)
        done, seconds = p.stdout.split()
        outputs, col = {}, 0
        for q in self.outputs:
            if q.name in wanted:
                outputs[q.name] = _from_words(raw[:, col:col + q.words], q.width)
            col += q.words
        return SimRun(outputs=outputs, cycles=int(done), seconds=float(seconds))


def _to_words(values, width: int, cycles: int) -> np.ndarray:
    words = (width + 31) // 32
    if width < 64:
        v = (np.asarray(values[:cycles], dtype=np.int64) & ((1 << width) - 1)).astype(np.uint64)
        return np.stack([(v >> np.uint64(32 * i)) & np.uint64(0xFFFFFFFF) for i in range(words)], axis=1)
    mask = (1 << width) - 1
    return np.array([[(int(x) & mask) >> (32 * i) & 0xFFFFFFFF for i in range(words)] for x in values[:cycles]],
                    dtype=np.uint64).reshape(cycles, words)


def _from_words(w: np.ndarray, width: int):
    if width <= 64:
        v = np.zeros(len(w), dtype=np.uint64)
        for i in range(w.shape[1]):
            v |= w[:, i].astype(np.uint64) << np.uint64(32 * i)
        return v
    return [sum(int(x) << (32 * i) for i, x in enumerate(row)) for row in w]


def _harness(top: str, ins: list[Port], outs: list[Port], clock: str | None) -> str:
    """The C++ main: read all input vectors, run, write all output vectors, print cycles and seconds."""
    def assign(p: Port, at: int) -> str:
        if p.width <= 32:
            return f"    m->{p.cname} = w[{at}];\n"
        if p.width <= 64:
            return f"    m->{p.cname} = (uint64_t)w[{at}] | ((uint64_t)w[{at + 1}] << 32);\n"
        return "".join(f"    m->{p.cname}[{i}] = w[{at + i}];\n" for i in range(p.words))

    def sample(p: Port, at: int) -> str:
        if p.width <= 32:
            return f"    o[{at}] = (uint32_t)m->{p.cname};\n"
        if p.width <= 64:
            return f"    o[{at}] = (uint32_t)m->{p.cname}; o[{at + 1}] = (uint32_t)(m->{p.cname} >> 32);\n"
        return "".join(f"    o[{at + i}] = m->{p.cname}[{i}];\n" for i in range(p.words))

    set_in, at = "", 0
    for p in ins:
        set_in += assign(p, at)
        at += p.words
    n_in = at
    get_out, at = "", 0
    for p in outs:
        get_out += sample(p, at)
        at += p.words
    n_out = at
    tick = f"    m->{clock} = 1; m->eval(); m->{clock} = 0; m->eval();\n" if clock else ""
    init = f"  m->{clock} = 0;\n" if clock else ""
    return f"""\
// Generated by llmfab.backend_hw.toolflow.verilator for `{top}`: argv in.bin out.bin cycles.
#include "V{top}.h"
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {{
  if (argc != 4) {{ std::fprintf(stderr, "usage: Vsim in.bin out.bin cycles\\n"); return 2; }}
  const size_t cycles = std::strtoull(argv[3], nullptr, 10), n_in = {n_in}, n_out = {n_out};
  std::vector<uint32_t> in(cycles * n_in + 1), out(cycles * n_out + 1);
  FILE* fi = std::fopen(argv[1], "rb");
  if (!fi || std::fread(in.data(), 4, cycles * n_in, fi) != cycles * n_in) {{
    std::fprintf(stderr, "cannot read %zu input words from %s\\n", cycles * n_in, argv[1]); return 1; }}
  std::fclose(fi);
  VerilatedContext* ctx = new VerilatedContext;
  V{top}* m = new V{top}{{ctx}};
{init}  m->eval();
  auto t0 = std::chrono::steady_clock::now();
  for (size_t c = 0; c < cycles; ++c) {{
    const uint32_t* w = &in[c * n_in];
    uint32_t* o = &out[c * n_out];
    (void)w; (void)o;
{set_in}    m->eval();
{get_out}{tick}  }}
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m->final();
  FILE* fo = std::fopen(argv[2], "wb");
  if (!fo || std::fwrite(out.data(), 4, cycles * n_out, fo) != cycles * n_out) {{
    std::fprintf(stderr, "cannot write %s\\n", argv[2]); return 1; }}
  std::fclose(fo);
  std::printf("%zu %.9f\\n", cycles, s);
  delete m;
  delete ctx;
  return 0;
}}
"""
