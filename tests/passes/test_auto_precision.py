"""Automatic mixed precision: loss-aware sensitivities and the budgeted assignment."""
import dataclasses
import itertools

import numpy as np
import pytest

from conftest import FIXTURES
from llmfab.flow import load_model
from llmfab.ir import ConstAttrs
from llmfab.ir.tensor_data import ArrayData
from llmfab.passes import auto_precision
from llmfab.passes.auto_precision import choose, loss_costs
from llmfab.passes.policy import PolicyError, parse_policy
from llmfab.passes.quant_report import quantize_model
from llmfab.passes.quantize import Calibrated, layer_inputs, plan_sites, quantize_weight, token_streams, weight_sites

CALIB = str(FIXTURES / "trained_llama_calib.txt")


def _scale_weight(g, const, factor):
    n = g.node(const)
    w = np.asarray(n.data.numpy(), np.float32) * factor
    g.set_node(dataclasses.replace(n, attrs=ConstAttrs(ArrayData(w, n.type.dtype), True)))


def test_loss_cost_ranks_by_effect_on_the_output_not_local_error():
    """Layer 0's attention output is damped 1000x on its way into the residual stream, so quantizing
    its v_proj hardly moves the logits, although v_proj's own relative output error at int2 is
    larger than layer 2's: a local error metric ranks them one way, the loss the other."""
    g = load_model(str(FIXTURES / "trained_llama.onnx"), seq_len=16)
    sites = {s.user: s for s in weight_sites(g)}
    _scale_weight(g, sites["layers.0.o_proj"].const, 1e-3)
    damped, plain = sites["layers.0.v_proj"], sites["layers.2.v_proj"]
    streams = token_streams(g, 2, 0, CALIB, "test")
    calib = Calibrated(layer_inputs(g, [damped, plain], streams), g, streams)
    plans = plan_sites(g, parse_policy({"default": {"bits": 2, "group": 128, "method": "rtn"}}, "p.yaml"))

    def local_error(s):
        w = np.asarray(g.node(s.const).data.numpy(), np.float64)
        d = w - quantize_weight(w, plans[s.const], None, s.const).numpy()
        x = calib[s.user]
        return np.sum((x @ d.T) ** 2) / np.sum((x @ w.T) ** 2)

    assert local_error(damped) > local_error(plain)
    costs = loss_costs(calib, [damped, plain], {s.const: [plans[s.const]] for s in (damped, plain)})
    assert 0 < 20 * costs[damped.const][0] < costs[plain.const][0]


def test_choose_is_the_optimum_within_the_budget():
    rng = np.random.default_rng(3)
    for _ in range(40):
        sites = int(rng.integers(1, 5))
        bits = [sorted(int(s) * b for b in (2, 3, 4, 8)) for s in rng.integers(1, 6, sites) * 64]
        cost = [sorted(rng.random(4) * 4.0 ** -np.arange(4))[::-1] for _ in range(sites)]
        budget = int(rng.integers(sum(b[0] for b in bits), sum(b[-1] for b in bits) + 1))
        pick = choose(bits, cost, budget)
        assert sum(bits[s][i] for s, i in pick.items()) <= budget
        best = min(sum(cost[s][i] for s, i in enumerate(c)) for c in itertools.product(range(4), repeat=sites)
                   if sum(bits[s][i] for s, i in enumerate(c)) <= budget)
        assert sum(cost[s][i] for s, i in pick.items()) == pytest.approx(best)
    assert choose([[4, 8]], [[1.0, 0.0]], 3) is None


def test_choose_coarse_units_stay_within_the_budget(monkeypatch):
    """Bit counts with no coarse common divisor: the budget in rounded-up units never overflows."""
    monkeypatch.setattr(auto_precision, "DP_UNITS", 50)
    bits = [[2 * n, 3 * n, 4 * n, 8 * n] for n in (997, 1009, 1013, 4099)]
    cost = [[1.0, 0.3, 0.1, 0.0]] * 4
    for budget in (2 * 7118, 3 * 7118, 3 * 7118 + 500, 4 * 7118, 8 * 7118):
        pick = choose(bits, cost, budget)
        assert sum(bits[s][i] for s, i in pick.items()) <= budget
    assert choose(bits, cost, 8 * 7118) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_auto_on_trained_weights_meets_the_budget_and_spends_it():
    pol = parse_policy({"default": {"bits": 3, "group": 64, "method": "rtn"}, "roles": {"embedding": {"bits": 8}},
                        "auto": {"target_bits": 3.0, "candidates": [2, 3, 4, 8]},
                        "calibration": {"samples": 2, "seq_len": 16, "tokens": CALIB}}, "p.yaml")
    _, r = quantize_model(load_model(str(FIXTURES / "trained_llama.onnx"), seq_len=16), pol)
    linear = [row for row in r.layers if row.role != "embedding"]
    params = sum(row.shape[0] * row.shape[1] for row in linear)
    code = sum(int(row.scheme[3]) * row.shape[0] * row.shape[1] for row in linear) / params
    assert 2.95 < code <= 3.0
    assert len({row.scheme for row in linear}) > 1     # not uniform: the sensitivities differ
    with pytest.raises(PolicyError, match="below the smallest reachable average 2.000"):
        quantize_model(load_model(str(FIXTURES / "trained_llama.onnx"), seq_len=16),
                       dataclasses.replace(pol, auto=dataclasses.replace(pol.auto, target_bits=1.9)))
