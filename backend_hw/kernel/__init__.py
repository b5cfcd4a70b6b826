"""The accelerator as a Xilinx Vitis RTL kernel: standard ports (`ap_clk`, `ap_rst_n`,
`m_axi_hbm<k>_*`, `s_axi_control_*`, `interrupt`), the ap_ctrl_hs register block, a loader that
fetches the program and token ids from device memory, and the packaging files (kernel.xml,
package_xo.tcl, the v++ link config).

- `args.py`: the kernel arguments and their register offsets, from the Target (`kernel_args`);
- `control.py`: `ControlRegs`, the AXI4-Lite subordinate with the ap_ctrl_hs registers;
- `vitis.py`: `KernelCore` (loader + accelerator + registers, `sync` domain) and `VitisKernel`
  (the same on `ap_clk` / `ap_rst_n`), `build_kernel(target)`;
- `package.py`: `kernel_files(target)`, the packaging files.
"""
from importlib import import_module

_WHERE = {"KernelArg": "args", "kernel_args": "args", "ControlRegs": "control", "KERNEL_NAME": "vitis",
          "KernelCore": "vitis", "VitisKernel": "vitis", "build_kernel": "vitis", "kernel_files": "package",
          "verilog_ports": "package"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
