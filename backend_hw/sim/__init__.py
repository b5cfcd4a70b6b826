"""Simulation-only harnesses: `AxiRam` (an AXI4 slave memory per HBM channel) and the
accelerator with its memories (`SimSystem`), run in amaranth.sim or Verilator
(`VerilatorSystem`), and the Vitis kernel core with `AxiSignature` ports (`KernelHarness`). Nothing here is part of the emitted accelerator. Names load on first use:
the units' cycle formulas read `AxiRam`'s latencies while the accelerator is still importing."""
from importlib import import_module

_WHERE = {"AxiRam": "axi_ram", "SimSystem": "system", "SystemRun": "system", "VerilatorSystem": "system",
          "KernelHarness": "kernel_system"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
