"""Automatic mixed precision: bits per layer by measured sensitivity, to a target average.

Each Linear / LM-head site is tried at every candidate width with the policy's method, alone (every
other weight float), and its cost is what that does to the model's output: the mean KL divergence
of the next-token distribution from the float model's, over every position of the calibration
streams (a loss-aware sensitivity: a layer whose error the rest of the network amplifies, or that
feeds the softmax directly like the LM head, costs what it costs in log-likelihood, not in its own
output's relative error). Small errors add up to first order, so the assignment minimizes the sum
of the sites' costs subject to the average code width of these sites (bits per weight of the
integer codes, as "3.5-bit" is meant in the literature; the report's `avg_bits_per_weight` also
counts scales, indices and the fixed-plan embedding table) not exceeding the target: a
multiple-choice knapsack, solved by dynamic programming over the bit budget (`choose`: exactly, or
on large models to 1/20,000 of the bits above the narrowest widths). Measuring takes (sites x
candidates) forward passes of the float interpreter over the calibration streams (about a minute
for 29 sites x 4 widths x 8 x 128 tokens of the 1M-parameter trained fixture).
Config-only models have no activations: every site then gets the same error model (noise energy
proportional to size * 4^-bits, the LM head weighted 4x), which spreads the narrow widths over the
decoder layers.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from llmfab.ir import Graph, run

from .perplexity import log_softmax
from .policy import Policy, PolicyError, WeightPlan
from .quantize import Calibrated, WeightSite, feeds_for, hessian, plan_sites, quantize_weight, set_weight, weight_sites

DP_UNITS = 20_000   # budget resolution of the knapsack when the bit counts share no coarse common unit


def assign(g: Graph, policy: Policy, inputs: Calibrated | None) -> dict[str, WeightPlan]:
    plans = plan_sites(g, policy)
    auto = policy.auto
    sites = [s for s in weight_sites(g) if s.role != "embedding"]
    if auto is None or not sites:
        return plans
    cands = list(auto.candidates)
    options = {s.const: [dataclasses.replace(plans[s.const], scheme=dataclasses.replace(plans[s.const].scheme, bits=b))
                         for b in cands] for s in sites}
    bits = {s.const: [int(s.shape[0] * s.shape[1] * p.scheme.kept_fraction()) * p.scheme.bits for p in options[s.const]]
            for s in sites}
    if inputs is None or not all(g.node(s.const).data.has_values for s in sites):
        # No activations: noise energy ~ size * 4^-bits, the LM head counted 4x (known sensitive).
        cost = {s.const: [s.shape[0] * s.shape[1] * (4.0 if s.role == "lm_head" else 1.0) * 4.0 ** -b for b in cands]
                for s in sites}
    else:
        cost = loss_costs(inputs, sites, options)
    params = sum(s.shape[0] * s.shape[1] for s in sites)
    target = math.floor(auto.target_bits * params)
    levels = choose([bits[s.const] for s in sites], [cost[s.const] for s in sites], target)
    if levels is None:
        floor = sum(b[0] for b in bits.values())
        raise PolicyError(f"{policy.source}: auto target of {auto.target_bits} code bits per weight is below "
                          f"the smallest reachable average {floor / params:.3f} with candidates {cands}")
    for c, lv in levels.items():
        plans[sites[c].const] = options[sites[c].const][lv]
    return plans


def loss_costs(calib: Calibrated, sites: list[WeightSite], options: dict[str, list[WeightPlan]]) -> dict[str, list[float]]:
    """Per site, per option: the mean KL divergence (nats per position) of the model's next-token
    distribution with only that weight quantized by that option from the float model's, on the
    calibration streams (run on `calib.graph`, the float model they were taken on)."""
    g = calib.graph.copy()
    ref = [log_softmax(_logits(g, t)) for t in calib.streams]
    out = {}
    for s in sites:
        node = g.node(s.const)
        w = np.asarray(node.data.numpy(), np.float64)
        h = hessian(calib[s.user]) if options[s.const][0].needs_calibration else None
        costs = []
        for p in options[s.const]:
            set_weight(g, s.const, quantize_weight(w, p, h, s.const))
            kl, n = 0.0, 0
            for t, lp in zip(calib.streams, ref):
                lq = log_softmax(_logits(g, t))
                kl += float(np.sum(np.exp(lp) * (lp - lq)))
                n += len(lp)
            costs.append(max(kl / n, 0.0) if math.isfinite(kl) else math.inf)  # inf: never chosen over a finite one
        g.set_node(node)  # float again for the next site
        out[s.const] = costs
    return out


def _logits(g: Graph, tokens: np.ndarray) -> np.ndarray:
    z = np.asarray(run(g, feeds_for(g, tokens))["logits"], np.float64)
    return z.reshape(-1, z.shape[-1])


def choose(bits: list[list[int]], cost: list[list[float]], budget: int) -> dict[int, int] | None:
    """The option index per site (options ordered narrowest first) minimizing the total cost with
    total bits <= `budget`, or None when even the narrowest options do not fit. Dynamic programming
    over the bits above the narrowest options' (so that budget is always reachable), in units of
    their greatest common divisor, or, when that leaves more than DP_UNITS units, in units of
    1/DP_UNITS of that spare budget with every extra rounded up (never over the budget; at most one
    unit per site left unspent). Ties go to the wider option, so equal costs spend the budget."""
    spare = budget - sum(opts[0] for opts in bits)
    if spare < 0:
        return None
    if sum(opts[-1] for opts in bits) <= budget:  # every combination fits: each site's cheapest
        return {s: max(range(len(c)), key=lambda i: (-c[i], i)) for s, c in enumerate(cost)}
    extra = [[b - opts[0] for b in opts] for opts in bits]
    unit = math.gcd(*(e for opts in extra for e in opts)) or 1
    if spare // unit > DP_UNITS:
        unit = -(-spare // DP_UNITS)
    units = spare // unit
    size = [[-(-e // unit) for e in opts] for opts in extra]
    best = np.zeros(units + 1)        # best[u]: the least cost of the sites so far within u units
    picks = []
    for sizes, costs in zip(size, cost):
        new = np.full(units + 1, math.inf)
        pick = np.zeros(units + 1, np.int8)
        for i, (w, c) in enumerate(zip(sizes, costs)):
            if w > units:
                continue
            cand = np.full(units + 1, math.inf)
            cand[w:] = best[:units + 1 - w] + c
            better = cand <= new                   # <=: the later (wider) option wins ties
            new = np.where(better, cand, new)
            pick = np.where(better, i, pick)
        best = new
        picks.append(pick)
    out, u = {}, units
    for site in range(len(bits) - 1, -1, -1):
        out[site] = int(picks[site][u])
        u -= size[site][out[site]]
    return out
