"""Simulation-only harnesses: `AxiRam` (an AXI4 slave memory per HBM channel) and the
accelerator with its memories (`SimSystem`), run in amaranth.sim or Verilator
(`VerilatorSystem`). Nothing here is part of the emitted accelerator."""
from .axi_ram import AxiRam
from .system import SimSystem, SystemRun, VerilatorSystem

__all__ = ["AxiRam", "SimSystem", "SystemRun", "VerilatorSystem"]
