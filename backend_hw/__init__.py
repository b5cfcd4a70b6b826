"""The accelerator's RTL in Amaranth, its cycle model, and the tools that build and check it.

- `accelerator.py`: `Accelerator` (controller, fetch, DMAs, matrix and SFU units, buffers) and
  `build_top(target)`, what `llmfab rtl` writes; `buffers.py`: the on-chip buffer bank;
  `serial_shell.py`: any component behind a few pins, for small packages;
- `cycle_model.py`: `RtlUnits`, the RTL's cost of each instruction for the simulator's one walk
  (`llmfab simulate --model rtl`);
- sub-packages: `protocol` (AXI4, buffer port, `Valid`, instruction fields), `engine` (DSP chains,
  unpacker, requantizer), `matrix`, `sfu`, `dma`, `control` (each unit with its cycle formula),
  `sim` (simulation harnesses), `toolflow` (Verilog, Yosys, nextpnr, Verilator).

Nothing here imports `llmfab.simulator` or `llmfab.passes`. The names below load on first use,
so `import llmfab.backend_hw.toolflow` does not elaborate anything.
"""
from importlib import import_module

_WHERE = {"Accelerator": "accelerator", "DEFAULT_FORMATS": "accelerator", "build_top": "accelerator",
          "formats_of": "accelerator", "BufferBank": "buffers", "SerialShell": "serial_shell",
          "RtlUnits": "cycle_model"}

PARTS = ("accelerator", "engine")   # the tops `llmfab rtl --part` writes (accelerator.build_top)

__all__ = sorted(_WHERE) + ["PARTS"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
