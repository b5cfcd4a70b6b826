"""`llmfab rtl --kernel vitis`: the kernel top's Verilog ports are the standard Vitis names, and
kernel.xml, package_xo.tcl and link.cfg agree with them (parsed: XML, tclsh with stub Vivado
commands, the link config's lines). The Verilog tests elaborate sim-small (~40 s): `sim` tier."""
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from llmfab.backend_hw.kernel.args import kernel_args
from llmfab.backend_hw.kernel.package import _kernel_xml, _link_cfg, kernel_files, verilog_ports
from llmfab.backend_hw.kernel.vitis import M_AXI_SIGNALS
from llmfab.ir.target import load_target

LITE = ["AWADDR", "AWVALID", "AWREADY", "WDATA", "WSTRB", "WVALID", "WREADY", "BRESP", "BVALID", "BREADY",
        "ARADDR", "ARVALID", "ARREADY", "RDATA", "RRESP", "RVALID", "RREADY"]
MAXI = ["ARADDR", "ARLEN", "ARSIZE", "ARBURST", "ARVALID", "ARREADY", "RDATA", "RRESP", "RLAST", "RVALID",
        "RREADY", "AWADDR", "AWLEN", "AWSIZE", "AWBURST", "AWVALID", "AWREADY", "WDATA", "WSTRB", "WLAST",
        "WVALID", "WREADY", "BRESP", "BVALID", "BREADY"]


@pytest.fixture(scope="module")
def written():
    from llmfab.backend_hw.kernel.vitis import build_kernel
    from llmfab.backend_hw.toolflow.emit import rtl_files
    t = load_target("sim-small")
    files = rtl_files(build_kernel(t), t, clock="ap_clk", extra=lambda v: kernel_files(t, v))
    return t, {k: v.decode() for k, v in files.items()}


def _xml_ports_args(text):
    k = ET.fromstring(text).find("kernel")
    return k, {p.get("name"): p.attrib for p in k.find("ports")}, [a.attrib for a in k.find("args")]


@pytest.mark.sim
def test_verilog_ports_are_the_vitis_names(written):
    t, files = written
    ports = verilog_ports(files["rtl/llmfab.v"], "llmfab")
    want = {"ap_clk", "ap_rst_n", "interrupt"} | {f"s_axi_control_{s}" for s in LITE} | {f"m_axi_hbm0_{s}" for s in MAXI}
    assert set(ports) == want
    assert ports["m_axi_hbm0_ARADDR"] == ("output", 64) and ports["m_axi_hbm0_AWADDR"] == ("output", 64)
    assert ports["m_axi_hbm0_RDATA"] == ("input", t.memory.port_width_bits)
    assert ports["m_axi_hbm0_WSTRB"] == ("output", t.memory.port_width_bits // 8)
    assert ports["s_axi_control_AWADDR"] == ("input", 12) and ports["s_axi_control_RDATA"] == ("output", 32)
    assert ports["ap_clk"] == ports["ap_rst_n"] == ("input", 1)
    assert "get_ports ap_clk" in files["vivado/clocks.xdc"]


@pytest.mark.sim
def test_kernel_xml_matches_the_verilog(written):
    t, files = written
    ports = verilog_ports(files["rtl/llmfab.v"], "llmfab")
    kernel, xports, xargs = _xml_ports_args(files["kernel/kernel.xml"])
    assert kernel.get("name") == "llmfab" and kernel.get("hwControlProtocol") == "ap_ctrl_hs"
    for name, p in xports.items():
        signals = LITE if p["mode"] == "slave" else MAXI
        for s in signals:
            assert f"{name}_{s}" in ports, f"{name}_{s}"
        assert int(p["dataWidth"]) == ports[f"{name}_RDATA"][1]
    bundles = {n for n, p in xports.items() if p["mode"] == "master"}
    assert bundles == {n[:-len("_ARADDR")] for n in ports if n.startswith("m_axi") and n.endswith("_ARADDR")}
    assert [(a["name"], int(a["offset"], 16), int(a["size"], 16)) for a in xargs] == \
        [(a.name, a.offset, a.size) for a in kernel_args(t)]
    for a in xargs:
        assert a["port"] in xports
        assert (a["addressQualifier"] == "1") == (a["port"] != "s_axi_control")
    assert {a["port"] for a in xargs} == set(xports)       # every bundle has an argument


@pytest.mark.sim
def test_package_tcl_parses_and_packages_the_kernel(written, tmp_path):
    if shutil.which("tclsh") is None:
        pytest.skip("needs tclsh: apt-get install tcl")
    t, files = written
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    stub = tmp_path / "stub.tcl"
    stub.write_text('set calls {}\n'
                    'proc unknown {args} { global calls; lappend calls $args; return "" }\n'
                    'set argv {}; set argc 0\n'
                    f'source {tmp_path / "kernel" / "package_xo.tcl"}\n'
                    'foreach c $calls { puts $c }\n')
    out = subprocess.run(["tclsh", str(stub)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = out.stdout.splitlines()
    pkg = [c for c in calls if c.startswith("package_xo ")]
    assert len(pkg) == 1 and "-kernel_name llmfab" in pkg[0]
    assert f"-kernel_xml {tmp_path / 'kernel' / 'kernel.xml'}" in pkg[0]
    assert any(c.startswith("add_files") and str(tmp_path / "rtl" / "llmfab.v") in c for c in calls)
    _, xports, _ = _xml_ports_args(files["kernel/kernel.xml"])
    assoc = {c.split()[2] for c in calls if c.startswith("ipx::associate_bus_interfaces")}
    assert assoc == set(xports)


@pytest.mark.sim
def test_kernel_top_lints_clean(written):
    if shutil.which("verilator") is None:
        pytest.skip("needs Verilator: apt-get install verilator")
    from llmfab.backend_hw.toolflow.verilator import lint
    _, files = written
    warnings = lint(files["rtl/llmfab.v"], "llmfab")
    # the one warning: Vitis's name for the interrupt port is also a C++ word (Verilator mangles it)
    assert [w for w in warnings if "SYMRSVDWORD" not in w] == []
    assert all(w.endswith("'interrupt'") for w in warnings)


def test_link_config_maps_every_bundle():
    t = load_target("u280")
    lines = _link_cfg(t).splitlines()
    assert "[connectivity]" in lines and "nk=llmfab:1:llmfab_1" in lines and "slr=llmfab_1:SLR0" in lines
    sp = [ln for ln in lines if ln.startswith("sp=")]
    assert sp == [f"sp=llmfab_1.m_axi_hbm{k}:HBM[{k}]" for k in range(32)]
    _, xports, _ = _xml_ports_args(_kernel_xml(t))
    assert {s.split(".")[1].split(":")[0] for s in sp} == {n for n in xports if n.startswith("m_axi")}
    assert _link_cfg(load_target("sim-small")).count("DDR[0]") == 1


def test_packaging_refuses_verilog_with_other_ports():
    t = load_target("sim-small")
    bad = "module llmfab(ap_clk, clk);\n  input ap_clk;\n  input clk;\nendmodule\n"
    with pytest.raises(ValueError, match=r"^the kernel's Verilog ports differ from its packaging: "):
        kernel_files(t, bad)
    with pytest.raises(ValueError, match=r"^no module llmfab in the Verilog$"):
        kernel_files(t, "module other(a);\n input a;\nendmodule\n")


def test_signal_table_is_the_axi4_set():
    assert sorted(s for s, _, _ in M_AXI_SIGNALS) == sorted(MAXI)


def test_cli_refuses_kernel_with_the_engine_part(tmp_path, capsys):
    from llmfab.cli import main
    assert main(["rtl", "--target", "sim-small", "--kernel", "vitis", "--part", "engine", "-o", str(tmp_path / "k")]) == 2
    assert capsys.readouterr().err == "llmfab: error: --kernel vitis wraps the whole accelerator, not --part engine\n"
    assert not (tmp_path / "k").exists()


def test_packaging_files_are_deterministic_and_follow_the_target():
    from llmfab.backend_hw.kernel.package import _package_tcl
    t = load_target("u280")
    assert _kernel_xml(t) == _kernel_xml(load_target("u280")) and _link_cfg(t) == _link_cfg(t)
    _, xports, xargs = _xml_ports_args(_kernel_xml(t))
    assert len([p for p in xports.values() if p["mode"] == "master"]) == 32
    assert {p["dataWidth"] for n, p in xports.items() if n != "s_axi_control"} == {"512"}   # the kernel's ports
    assert len(xargs) == 7 + 32
    assert [a["name"] for a in xargs[5:7]] == ["status", "cycles"] and xargs[6]["type"] == "ulong"
    assert "-part xcu280-fsvh2892-2L-e" in _package_tcl(t)


@pytest.mark.parametrize("present", [(), ("vivado",)])
def test_make_xclbin_names_the_missing_tool(tmp_path, present):
    """`make xclbin` checks for Vivado and v++ before anything else and names the ones missing
    (the tools themselves are not here: only the message is tested; a present one is a stub that
    would fail if run)."""
    from conftest import ROOT
    for tool in present:
        (tmp_path / tool).write_text("#!/bin/sh\nexit 3\n")
        (tmp_path / tool).chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"
    assert [t for t in ("vivado", "v++") if shutil.which(t, path=path)] == list(present)
    out = subprocess.run(["make", "-s", "xclbin", "TARGET=sim-small", f"KERNEL_DIR={tmp_path / 'k'}"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": path}, timeout=60)
    assert out.returncode != 0
    missing = " ".join(t for t in ("vivado", "v++") if t not in present)
    assert out.stderr.startswith(f"make xclbin: not on PATH: {missing}; install Vitis (Vivado and v++) and "
                                 f"source its settings64.sh (docs/hardware.md)\n")
    assert not (tmp_path / "k").exists()                  # stopped before `llmfab rtl`
