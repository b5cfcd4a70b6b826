"""The matrix engine through Yosys: every multiplier in a DSP block, the chains as PCOUT->PCIN
cascades, and as many DSPs as the resource analysis predicts (passes/roofline.py)."""
import dataclasses

import pytest

from llmfab.backend_hw.toolflow import synth
from llmfab.backend_hw.engine.matrix_engine import MatrixEngine
from llmfab.ir.target import DSPPrimitive, load_target
from llmfab.passes.roofline import engine_dsp

pytestmark = pytest.mark.synth


def _engine(primitive: DSPPrimitive):
    t = load_target("sim-small")
    t = dataclasses.replace(t, engine=dataclasses.replace(t.engine, dsp_primitive=primitive))
    return t, MatrixEngine(t, weight_bits=8, group=128)


def _no_fabric_multipliers(cells: dict[str, int]):
    assert not [c for c in cells if c.startswith("$") and c != "$scopeinfo"], cells   # nothing left unmapped


@pytest.mark.parametrize("family,primitive,cell", [("xcup", DSPPrimitive.DSP48E2, "DSP48E2"),
                                                   ("xc7", DSPPrimitive.BEHAVIOURAL, "DSP48E1")])
def test_engine_maps_to_dsp_cascades(family, primitive, cell):
    t, eng = _engine(primitive)
    r = synth.xilinx(eng, "engine", family=family)
    print(f"sim-small engine, {family}: {r.cells}; lut {r.lut} ff {r.ff} dsp {r.dsp} in {r.seconds:.1f} s")
    _no_fabric_multipliers(r.cells)
    if family == "xcup":                                                # the U280's family
        assert r.cells[cell] == engine_dsp(t)                           # what the analysis predicts
    e = t.engine
    chains = [n for n in synth.cascades(synth.cells_of_type(r.netlist, "engine", cell)) if n >= e.chain_len]
    assert chains[:e.n_chains] == [e.chain_len] * e.n_chains            # each chain one cascade
