"""`llmfab run BUILD --xclbin K.xclbin --tokens ...`: a build on the Vitis kernel of an Alveo card
through XRT's Python binding, pyxrt (imported only here, only when asked).

The plan (buffers, banks, arguments, runs, where the logits are) is `backend_hw.kernel.host`'s;
this file is the thin layer of XRT calls: open the card, load the xclbin, open the kernel (in
exclusive mode, for `read_register`), allocate each buffer in the bank of the argument it is
reached through (`kernel.group_id(index)`), copy the images and programs, then per run: write the
token ids, set the arguments (pointers as sub-buffers), start, wait with a timeout, read the
`status` and `cycles` registers where this pyxrt has `read_register`.

Never run on a card here (no XRT, no Alveo): docs/hardware.md says what to expect to adjust.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmfab.backend_hw.kernel.args import status_names
from llmfab.backend_hw.kernel.host import HostPlan, Run, Slice, drive, host_plan
from llmfab.backend_hw.kernel.vitis import KERNEL_NAME


class XrtMissing(RuntimeError):
    pass


def _pyxrt():
    return importlib.import_module("pyxrt")


def check_xrt(xclbin: str | Path, device: int = 0):
    """pyxrt, once the xclbin, pyxrt and a card are all there; else XrtMissing naming each one
    that is missing."""
    missing = []
    if not Path(xclbin).is_file():
        missing.append(f"the xclbin {xclbin} (no such file: `make xclbin` builds it where Vivado and v++ are "
                       f"installed; docs/hardware.md)")
    try:
        xrt = _pyxrt()
    except ImportError as e:
        xrt = None
        where = os.environ.get("XILINX_XRT")
        missing.append("pyxrt, XRT's Python binding (" + (f"XILINX_XRT={where} but `import pyxrt` failed: {e}" if where
                       else "install XRT and `source /opt/xilinx/xrt/setup.sh`, which puts it on PYTHONPATH") + ")")
    if xrt is not None:
        try:
            count = len(xrt.enumerate_devices())
        except Exception as e:   # XRT raises its own runtime errors; say which
            count, why = 0, f": {type(e).__name__}: {e}"
        else:
            why = ""
        if count <= device:
            missing.append(f"a card: XRT sees {count} device(s), --device {device} asked{why} (`xbutil examine` lists them)")
    else:
        missing.append("a card (not looked for without pyxrt)")
    if missing:
        raise XrtMissing("llmfab run needs XRT and an Alveo card with the llmfab kernel; missing: " + "; ".join(missing))
    return xrt


@dataclass(frozen=True)
class RunReport:
    length: int
    program: str
    cycles: int | None      # None: this pyxrt cannot read registers
    status: int | None


class XrtKernel:
    """The plan's buffers on the card and a `start` / `read` pair for `host.drive`."""

    def __init__(self, xrt, plan: HostPlan, xclbin: Path, device: int, timeout_s: float):
        self.xrt, self.plan, self.timeout_ms = xrt, plan, max(1, int(timeout_s * 1000))
        self.device = xrt.device(device)
        uuid = self.device.load_xclbin(str(xclbin))
        self.kernel = xrt.kernel(self.device, uuid, KERNEL_NAME, xrt.kernel.cu_access_mode.exclusive)
        self.index = {a.name: i for i, a in enumerate(plan.args)}    # kernel.xml's argument ids
        self.args = {a.name: a for a in plan.args}
        self.bos = {}
        for b in plan.buffers:
            bo = xrt.bo(self.device, b.size, xrt.bo.normal, self.kernel.group_id(self.index[b.arg.name]))
            bo.write(np.frombuffer(b.contents.ljust(b.size, b"\0"), np.uint8), 0)   # zeros: the KV cache starts empty
            bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, b.size, 0)
            self.bos[b.name] = bo
        self.subs = {}

    def _bo(self, s: Slice):
        if s.offset == 0 and s.size == self.bos[s.buffer].size():
            return self.bos[s.buffer]
        key = (s.buffer, s.offset, s.size)
        if key not in self.subs:
            self.subs[key] = self.xrt.bo(self.bos[s.buffer], s.size, s.offset)
        return self.subs[key]

    def start(self, run: Run) -> RunReport:
        xrt, tokens = self.xrt, self.bos["tokens"]
        tokens.write(np.frombuffer(run.tokens, np.uint8), 0)
        tokens.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(run.tokens), 0)
        r = xrt.run(self.kernel)
        for a, v in self.plan.arguments(run):
            r.set_arg(self.index[a.name], v if isinstance(v, int) else self._bo(v))
        r.start()
        state = r.wait(self.timeout_ms)
        if state != xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"the kernel run at LEN {run.length} ({run.program}) ended {state} within "
                               f"{self.timeout_ms} ms (--timeout)")
        status = cycles = None
        if hasattr(self.kernel, "read_register"):
            status = self.kernel.read_register(self.args["status"].offset)
            at = self.args["cycles"].offset
            cycles = self.kernel.read_register(at) | self.kernel.read_register(at + 4) << 32
            if status:
                raise RuntimeError(f"the kernel run at LEN {run.length} ({run.program}) reports status {status:#x}: "
                                   f"{', '.join(status_names(status))} (docs/hardware.md, the status register)")
        return RunReport(run.length, run.program, cycles, status)

    def read(self, slices: list[Slice]) -> bytes:
        out = []
        for s in slices:
            bo = self.bos[s.buffer]
            bo.sync(self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, s.size, s.offset)
            out.append(bytes(bo.read(s.size, s.offset)))
        return b"".join(out)


def plan_for(build) -> HostPlan:
    """The host plan of an opened `llmfab.build.Build`."""
    programs = {e["file"]: build.program_file(e) for e in build.manifest["programs"]}
    return host_plan(build.target, build.manifest, programs, build.images())


def run_on_card(build_dir, xclbin, tokens, generate: int = 0, device: int = 0, timeout_s: float = 60.0):
    """(prompt logits [1, L, vocab] float32, generated ids, a RunReport per kernel run)."""
    from llmfab.build import Build
    from llmfab.ir.fixed_point import from_fixed
    xrt = check_xrt(xclbin, device)
    plan = plan_for(Build.open(build_dir))
    k = XrtKernel(xrt, plan, Path(xclbin), device, timeout_s)
    logits, generated, reports = drive(plan, k.start, k.read, tokens, generate)
    return from_fixed(logits).astype(np.float32)[None], generated, reports
