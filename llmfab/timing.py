"""The timing models `llmfab simulate --model NAME` offers, and the simulate command's wiring.

One walk (simulator/schedule.py), two cost models: the pipelined design the Target describes
(`DesignUnits`) and the accelerator RTL as built (`backend_hw.RtlUnits`, which imports Amaranth:
only when asked). Kept light so the CLI can take its choices from `TIMING_MODELS`.
"""
from __future__ import annotations

from .build import Build


class TimingModelError(ValueError):
    pass


def _design_units(build: Build):
    from llmfab.simulator import DesignUnits
    return DesignUnits(build.target)


def _rtl_units(build: Build):
    from llmfab.backend_hw.accelerator import formats_of
    from llmfab.backend_hw.cycle_model import RtlUnits
    return RtlUnits(build.target, formats_of(build.programs()))


# the first is the default: the RTL as emitted, the model Verilator validates on whole programs;
# "design" is a what-if, the pipelined accelerator the Target describes, which the RTL does not implement
TIMING_MODELS = {"rtl": _rtl_units, "design": _design_units}
DEFAULT_MODEL = next(iter(TIMING_MODELS))


def timing_units(build: Build, model: str = DEFAULT_MODEL):
    """The `Units` of `model` for `build` (the RTL is built for the build's weight formats)."""
    if model not in TIMING_MODELS:
        raise TimingModelError(f"--model must be one of {', '.join(TIMING_MODELS)}, not {model!r}")
    return TIMING_MODELS[model](build)


def simulate_build(path, prefill: int, decode: int, model: str = DEFAULT_MODEL, trace=None):
    """`llmfab simulate`: the build at `path` timed on the `model`'s units."""
    from llmfab.simulator.run import simulate
    build = Build.open(path)
    return simulate(build, prefill, decode, timing_units(build, model), trace)
