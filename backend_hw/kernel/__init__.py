"""The accelerator as a Xilinx Vitis RTL kernel: standard ports (`ap_clk`, `ap_rst_n`,
`m_axi_hbm<k>_*`, `s_axi_control_*`, `interrupt`), the ap_ctrl_hs register block, a loader that
fetches the program and token ids from device memory, and the packaging files (kernel.xml,
package_xo.tcl, the v++ link config).

- `args.py`: the kernel arguments and their register offsets, from the Target (`kernel_args`),
  the `status` bits (`STATUS_BITS`), the register writes that set arguments (`register_writes`);
- `control.py`: `ControlRegs`, the AXI4-Lite subordinate with the ap_ctrl_hs registers;
- `status.py`: `KernelStatus`, the read-only `status` (error bits) and `cycles` registers;
- `vitis.py`: `KernelCore` (loader + accelerator + registers, `sync` domain) and `VitisKernel`
  (the same on `ap_clk` / `ap_rst_n`), `build_kernel(target)`;
- `package.py`: `kernel_files(target)`, the packaging files;
- `host.py`: `HostPlan`, what a host runner allocates, copies and writes for a build (pure: the
  XRT calls are llmfab/run_xrt.py's).
"""
from .args import STATUS_BITS, KernelArg, kernel_args, register_writes, status_names
from .control import ControlRegs
from .host import HostPlan, host_plan
from .package import kernel_files, verilog_ports
from .status import KernelStatus
from .vitis import KERNEL_NAME, KernelCore, VitisKernel, build_kernel

__all__ = ["ControlRegs", "HostPlan", "KERNEL_NAME", "KernelArg", "KernelCore", "KernelStatus", "STATUS_BITS",
           "VitisKernel", "build_kernel", "host_plan", "kernel_args", "kernel_files", "register_writes", "status_names",
           "verilog_ports"]
