"""The tools around the RTL: Verilog and project files (`emit`), Yosys / nextpnr / ecppack
(`synth`, `yosys`), Verilator lint and simulation (`verilator`). No Amaranth is imported here
until a design is converted."""
from . import emit, synth, verilator, yosys

__all__ = ["emit", "synth", "verilator", "yosys"]
