"""Automatic mixed precision: bits per layer by measured sensitivity, to a target average.

Each Linear / LM-head site is tried at every candidate width with the policy's method; its cost is
the relative output error `||X (W - Q)^T||^2 / ||X W^T||^2` on calibration inputs. Starting from
the widest candidate everywhere, the site whose next narrower width adds the least relative error
per bit saved steps down, until the average code width of these sites (bits per weight of the
integer codes, as "3.5-bit" is meant in the literature; the report's `avg_bits_per_weight` also
counts scales, indices and the fixed-plan embedding table) reaches the target.
Config-only models have no activations: every site then gets the same error model (noise energy
proportional to size * 4^-bits, the LM head weighted 4x), which spreads the narrow widths over the
decoder layers.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmfab.ir import Graph

from .policy import Policy, PolicyError, WeightPlan
from .quantize import hessian, plan_sites, quantize_weight, weight_sites


def assign(g: Graph, policy: Policy, inputs: dict[str, np.ndarray] | None) -> dict[str, WeightPlan]:
    plans = plan_sites(g, policy)
    auto = policy.auto
    sites = [s for s in weight_sites(g) if s.role != "embedding"]
    if auto is None or not sites:
        return plans
    cands = list(auto.candidates)
    cost: dict[str, list[float]] = {}
    bits: dict[str, list[int]] = {}
    for s in sites:
        base = plans[s.const]
        options = [dataclasses.replace(base, scheme=dataclasses.replace(base.scheme, bits=b)) for b in cands]
        n, k = s.shape
        bits[s.const] = [int(n * k * p.scheme.kept_fraction()) * p.scheme.bits for p in options]
        node = g.node(s.const)
        if inputs is None or not node.data.has_values:
            # No activations: noise energy ~ size * 4^-bits, the LM head counted 4x (known sensitive).
            weight = s.shape[0] * s.shape[1] * (4.0 if s.role == "lm_head" else 1.0)
            cost[s.const] = [weight * 4.0 ** -b for b in cands]
            continue
        w = np.asarray(node.data.numpy(), np.float64)
        x = inputs[s.user]
        h = hessian(x) if base.needs_calibration else None
        ref = float(np.sum((x @ w.T) ** 2)) or 1.0
        cost[s.const] = [float(np.sum((x @ (w - quantize_weight(w, p, h, s.const).numpy().astype(np.float64)).T) ** 2)) / ref
                         for p in options]
    params = sum(s.shape[0] * s.shape[1] for s in sites)
    level = {s.const: len(cands) - 1 for s in sites}
    total = sum(bits[c][level[c]] for c in level)
    target = auto.target_bits * params
    floor = sum(bits[c][0] for c in level)
    if floor > target:
        raise PolicyError(f"{policy.source}: auto target of {auto.target_bits} code bits per weight is below "
                          f"the smallest reachable average {floor / params:.3f} with candidates {cands}")
    while total > target:
        best, best_rate = None, None
        for c, lv in level.items():
            if lv == 0:
                continue
            saved = bits[c][lv] - bits[c][lv - 1]
            rate = (cost[c][lv - 1] - cost[c][lv]) / saved
            if best_rate is None or rate < best_rate:
                best, best_rate = c, rate
        total -= bits[best][level[best]] - bits[best][level[best] - 1]
        level[best] -= 1
    for c, lv in level.items():
        base = plans[c]
        plans[c] = dataclasses.replace(base, scheme=dataclasses.replace(base.scheme, bits=cands[lv]))
    return plans
