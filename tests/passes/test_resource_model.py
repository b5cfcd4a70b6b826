"""The resource analysis reads its per-unit costs from passes/resource_costs.yaml (fitted to
synthesis by benchmarks/calibrate_resources.py) and scales them with the Target's numbers."""
import dataclasses

import pytest
import yaml

from llmfab.ir.target import load_target
from llmfab.passes import resource_model
from llmfab.passes.resource_model import COSTS_FILE, CostFileError, FEATURES, block_rams, load_costs, unit_costs
from llmfab.passes.roofline import resource_units, resources


def _costs(tmp_path, edit):
    data = yaml.safe_load(COSTS_FILE.read_text())
    edit(data)
    p = tmp_path / "costs.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_costs(p)


def test_every_unit_of_both_flows_has_a_formula_over_target_features():
    c = load_costs()
    for flow in ("xilinx", "ecp5"):
        units = c["flows"][flow]["units"]
        assert {"mac_array", "requant", "attn", "sfu_lanes", "dma_load", "controller", "buffers"} <= set(units)
        for u in units.values():
            assert set(u["features"]) <= set(FEATURES)


def test_estimates_are_the_cost_file_formulas(tmp_path):
    t = load_target("sim-small")
    base = unit_costs(t)
    # one more LUT per SFU lane in the file: exactly `lanes` more LUTs in the estimate
    more = _costs(tmp_path, lambda d: d["flows"]["xilinx"]["units"]["sfu_lanes"]["lut"].__setitem__(
        0, d["flows"]["xilinx"]["units"]["sfu_lanes"]["lut"][0] + 1))
    assert unit_costs(t, more)["sfu_lanes"].lut == pytest.approx(base["sfu_lanes"].lut + t.sfu.lanes)
    assert unit_costs(t, more)["attn"] == base["attn"]


def test_estimates_scale_with_the_target():
    t = load_target("sim-small")
    c = load_costs()["flows"]["xilinx"]["units"]
    wide = dataclasses.replace(t, engine=dataclasses.replace(t.engine, n_chains=2 * t.engine.n_chains),
                               sfu=dataclasses.replace(t.sfu, lanes=3 * t.sfu.lanes))
    a, b = unit_costs(t), unit_costs(wide)
    stage_dsp = c["mac_array"]["dsp"][c["mac_array"]["features"].index("stages")]
    assert b["mac_array"].dsp - a["mac_array"].dsp == pytest.approx(stage_dsp * t.engine.macs)
    assert b["requant"].dsp == pytest.approx(2 * a["requant"].dsp) and a["requant"].dsp > 0
    assert b["sfu_lanes"].lut == pytest.approx(3 * a["sfu_lanes"].lut) and a["sfu_lanes"].lut > 0
    assert b["controller"] == a["controller"]
    assert resources(wide)["dsp"].used > resources(t)["dsp"].used


def test_totals_add_up_and_ecp5_uses_its_own_flow():
    for name in ("sim-small", "ecp5-85k", "u280"):
        t = load_target(name)
        units, res = resource_units(t), resources(t)
        for m in ("lut", "ff", "dsp"):
            assert res[m].used == round(sum(u[m] for u in units.values()))
        assert res["bram"].used == block_rams(t)[0] == sum(u["bram"] for u in units.values())
    assert resource_model.flow_of(load_target("ecp5-85k")) == "ecp5"
    assert resource_model.flow_of(load_target("u280")) == "xilinx"
    # ECP5 block RAM is counted in EBR (the device's 208), not BRAM36
    assert resources(load_target("ecp5-85k"))["bram"].capacity == load_target("ecp5-85k").device.ebr


@pytest.mark.parametrize("target", ["sim-small", "ecp5-85k"])
def test_estimate_is_within_15_percent_of_the_recorded_whole_design_synthesis(target):
    t = load_target(target)
    whole = load_costs()["flows"][resource_model.flow_of(t)]["whole_design"]
    assert whole["target"] == target
    res = resources(t)
    for m in ("lut", "ff", "dsp", "bram"):
        assert abs(res[m].used - whole[m]) <= 0.15 * whole[m], (m, res[m].used, whole[m])


def test_a_bad_cost_file_names_the_field(tmp_path):
    with pytest.raises(CostFileError, match=r"flows\.xilinx\.units\.attn\.ff must be 2 numbers"):
        _costs(tmp_path, lambda d: d["flows"]["xilinx"]["units"]["attn"].__setitem__("ff", [1]))
    with pytest.raises(CostFileError, match=r"flows\.ecp5\.units\.fetch\.features must list names"):
        _costs(tmp_path, lambda d: d["flows"]["ecp5"]["units"]["fetch"].__setitem__("features", ["luts"]))
