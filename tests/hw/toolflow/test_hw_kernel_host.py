"""The host runner's plan (backend_hw/kernel/host.py) against the build's manifest, kernel.xml and
link.cfg, without XRT: the buffers in the banks link.cfg connects their arguments' bundles to, the
argument list in kernel.xml's order, the programs' instruction words where their pointers point;
the host loop driven over the kernel's contract on the functional simulator gives `llmfab
execute`'s logits and tokens; `llmfab run` without XRT names what is missing. No pyxrt is faked:
the XRT layer (llmfab/run_xrt.py) has never run on a card."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import tiny_compiled
from llmfab.backend_hw.kernel.args import CTRL, register_writes, status_names
from llmfab.backend_hw.kernel.host import drive, host_plan
from llmfab.backend_hw.kernel.package import _kernel_xml, _link_cfg
from llmfab.build import Build
from llmfab.compile import write_build
from llmfab.ir.fixed_point import from_fixed
from llmfab.ir.isa import INST_BYTES, BufferId, Opcode, Program, SysFunc, decode, make, program_header
from llmfab.simulator.functional import Machine

PROMPT = [3, 77, 12, 5, 90]


@pytest.fixture(scope="module", params=["sim-small", "u280"])
def build(request, tmp_path_factory):
    """The tiny LLaMA built for sim-small (one channel) and u280 (32 HBM channels, the logits
    rows striped over all of them)."""
    out = tmp_path_factory.mktemp("kh") / "build"
    write_build(tiny_compiled(target=request.param), out)
    return Build.open(out)


def _plan(build):
    from llmfab.run_xrt import plan_for
    return plan_for(build)


def test_buffers_sit_in_the_banks_link_cfg_maps_their_bundles_to(build):
    plan, t = _plan(build), build.target
    sp = dict(ln[len("sp=llmfab_1."):].split(":") for ln in _link_cfg(t).splitlines() if ln.startswith("sp="))
    assert {b.name for b in plan.buffers} == {f"hbm{k}" for k in range(t.memory.channels)} | {"programs", "tokens"}
    assert len(sp) == t.memory.channels
    for b in plan.buffers:
        assert b.bank == sp[b.arg.bundle], b.name
        assert b.size % 4096 == 0 and len(b.contents) <= b.size
    assert [plan.buffer(f"hbm{k}").bank for k in range(t.memory.channels)] == \
        [f"{t.memory.kind.name}[{k}]" for k in range(t.memory.channels)]
    assert plan.buffer("programs").arg.name == "program" and plan.buffer("tokens").arg.name == "tokens"
    for k, image in enumerate(build.images()):
        hb = plan.buffer(f"hbm{k}")
        assert hb.contents == image and hb.size >= build.manifest["hbm"]["bytes_per_channel"]


def test_arguments_follow_kernel_xml(build):
    plan, t = _plan(build), build.target
    xargs = [a.attrib for a in ET.fromstring(_kernel_xml(t)).find("kernel").find("args")]
    assert [(a.name, a.offset) for a in plan.args] == [(a["name"], int(a["offset"], 16)) for a in xargs]
    run = plan.prefill(PROMPT)[0]
    got = plan.arguments(run)
    ro = {a["name"] for a in xargs if a["name"] in ("status", "cycles")}
    assert ro == {"status", "cycles"}
    assert [a.name for a, _ in got] == [a["name"] for a in xargs if a["name"] not in ro]
    for a, v in got:                     # pointers are buffer slices, scalars numbers, as kernel.xml says
        xa = next(x for x in xargs if x["name"] == a.name)
        assert (xa["addressQualifier"] == "1") == (not isinstance(v, int)), a.name


def test_program_pointers_hold_the_programs_instruction_words(build):
    plan = _plan(build)
    code = plan.buffer("programs").contents
    for e in build.manifest["programs"]:
        s = plan.programs[e["file"]]
        data = build.program_file(e)
        _, head, count = program_header(data)
        assert s.offset % 4096 == 0 and s.size == count * INST_BYTES
        assert code[s.offset:s.offset + s.size] == data[head:]
    runs = plan.prefill(PROMPT) + [plan.decode(len(PROMPT) + 1, 7)]
    for r in runs:
        assert r.program == build.entry("decode" if r is runs[-1] else "prefill", r.length)["file"]
    step = build.manifest["prefill_step"]
    assert [len(r.tokens) for r in runs] == [4 * step] * (len(runs) - 1) + [4]
    assert np.frombuffer(runs[0].tokens, "<i4")[:len(PROMPT)].tolist() == PROMPT[:step]


def test_logit_rows_are_the_output_region(build):
    plan = _plan(build)
    o = build.manifest["output"]
    for row in (0, len(PROMPT) - 1):
        sl = plan.logits(row)
        assert [s.buffer for s in sl] == [f"hbm{o['channel'] + c}" for c in range(o["channels"])]
        assert {s.offset for s in sl} == {o["addr"] + row * o["row_bytes"] // o["channels"]}
    with pytest.raises(ValueError, match="outside the build's"):
        plan.logits(o["rows"])


class FunctionalKernel:
    """The kernel's contract (docs/hardware.md, what one run does) on the functional simulator:
    the host's buffers at distinct device addresses; a run copies `program_bytes` at `program`
    into INST, `tokens_bytes` at `tokens` into ACT and runs LEN = `length`, every channel k's
    addresses offsets into the buffer at `hbm<k>`."""

    def __init__(self, plan, build):
        t = build.target
        self.plan = plan
        self.address = {b.name: (i + 1) << 32 for i, b in enumerate(plan.buffers)}
        self.mem = {b.name: bytearray(b.contents.ljust(b.size, b"\0")) for b in plan.buffers}
        self.machine = Machine.for_target(t, [], 0)
        self.runs = 0

    def _at(self, addr, n):
        name = next(k for k, v in self.address.items() if v <= addr < v + len(self.mem[k]))
        off = addr - self.address[name]
        return self.mem[name][off:off + n]

    def start(self, run):
        self.mem["tokens"][:len(run.tokens)] = run.tokens
        v = self.plan.register_values(run, self.address)
        words = self._at(v["program"], v["program_bytes"])
        prog = Program("kernel", tuple(decode(words[i:i + INST_BYTES]) for i in range(0, len(words), INST_BYTES)))
        self.machine.write(BufferId.ACT, 0, bytes(self._at(v["tokens"], v["tokens_bytes"])))
        k = 0
        self.machine.hbm = []
        while f"hbm{k}" in v:                      # channel k is the buffer hbm<k> points at
            name = next(n for n, a in self.address.items() if a == v[f"hbm{k}"])
            self.machine.hbm.append(self.mem[name])
            k += 1
        self.machine.run(prog, v["length"])
        self.runs += 1
        return self.runs

    def read(self, slices):
        return b"".join(bytes(self.mem[s.buffer][s.offset:s.offset + s.size]) for s in slices)


def test_host_loop_over_the_kernel_contract_matches_execute(build):
    from llmfab.flow import execute_build
    plan = _plan(build)
    k = FunctionalKernel(plan, build)
    logits, generated, reports = drive(plan, k.start, k.read, PROMPT, 3)
    want, want_gen = execute_build(build.path, np.array([PROMPT]), 3)
    assert np.array_equal(from_fixed(logits).astype(np.float32)[None], want)
    assert generated == want_gen and len(generated) == 3
    assert reports == list(range(1, len(plan.prefill(PROMPT)) + 4))
    with pytest.raises(ValueError, match="must fit max_len"):
        drive(plan, k.start, k.read, PROMPT, build.max_len)


def test_plan_refuses_what_the_kernel_cannot_run(build):
    t, m = build.target, build.manifest
    programs = {e["file"]: build.program_file(e) for e in m["programs"]}
    with pytest.raises(ValueError, match=rf"has 0 weight images; the kernel runs a build with one per memory channel "
                                         rf"\({t.memory.channels}\)"):
        host_plan(t, m, programs, [])
    big = Program("big", (make(Opcode.SYS, func=SysFunc.END),) * (t.buffer_bytes[BufferId.INST] // INST_BYTES + 1))
    first = m["programs"][0]["file"]
    with pytest.raises(ValueError, match=rf"^program {first} has [\d,]+ bytes of instructions; the kernel's INST "
                                         rf"buffer holds [\d,]+ \(target {t.name}\): the loader would cut it$"):
        host_plan(t, m, {**programs, first: big.to_bytes()}, build.images())


def test_register_writes_and_status_names():
    from llmfab.ir.target import load_target
    t = load_target("sim-small")
    assert register_writes(t, {"length": 6, "hbm0": 0x1_2345_6789}) == [(0x10, 6), (0x48, 0x2345_6789), (0x4C, 1)]
    with pytest.raises(ValueError, match=r"^'status' is not a kernel argument the host sets"):
        register_writes(t, {"status": 0})
    with pytest.raises(ValueError, match="does not fit its 4 bytes"):
        register_writes(t, {"length": 1 << 32})
    assert status_names(0b10011) == ["illegal_instruction", "read_error", "tokens_cut"]
    assert status_names(1 << 9) == ["bit9"] and CTRL == 0


def test_run_without_xrt_says_what_is_missing(build, tmp_path, capsys):
    """This machine has no XRT: `llmfab run` names pyxrt, the card and (when absent) the xclbin,
    and writes nothing."""
    with pytest.raises(ImportError):
        __import__("pyxrt")
    from llmfab.cli import main
    out = tmp_path / "logits.npy"
    assert main(["run", str(build.path), "--xclbin", str(tmp_path / "k.xclbin"), "--tokens", "1 2 3",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmfab: error: llmfab run needs XRT and an Alveo card with the llmfab kernel; missing: ")
    assert f"the xclbin {tmp_path / 'k.xclbin'} (no such file" in err
    assert "pyxrt, XRT's Python binding" in err and "/opt/xilinx/xrt/setup.sh" in err
    assert "a card (not looked for without pyxrt)" in err
    assert not out.exists()
    (tmp_path / "k.xclbin").write_bytes(b"xclbin2\0")
    assert main(["run", str(build.path), "--xclbin", str(tmp_path / "k.xclbin"), "--tokens", "1 2 3"]) == 2
    err = capsys.readouterr().err
    assert "the xclbin" not in err and "pyxrt" in err
    assert main(["run", str(build.path), "--xclbin", str(tmp_path / "k.xclbin"), "--tokens", "1", "--timeout", "0"]) == 2
    assert capsys.readouterr().err == "llmfab: error: --timeout must be a positive number of seconds, not 0.0\n"
