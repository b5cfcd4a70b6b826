"""The activation side of a policy, from calibration inputs: SmoothQuant-style smoothing and
static per-tensor activation scales.

Smoothing (`smoothing: {alpha: a}`, Xiao et al., SmoothQuant): for a norm whose output only feeds
linears, channel j of that output is divided by `s_j = max|X_j|^a / max|W_:,j|^(1-a)` (the max of W
over every linear it feeds) and column j of those weights multiplied by it. X W^T is unchanged in
exact arithmetic; the division is folded into the norm's weight (and a LayerNorm's bias), so no op
is added and the programs compile as for any weights. Outlier channels of X shrink, which is what a
per-tensor (or per-token) int8 scale suffers from; the weights take the range instead. Norms whose
output reaches anything else (a residual, a tied embedding table) are left alone.

Static scales (`activations: static-per-tensor`): each linear's input gets one calibrated max |X|
(LinearAttrs.act_amax), which the integer interpreter uses for every row. The accelerator cannot
run it: its QUANT_ROWS scales every row by that row's own max (docs/integer.md); it is a what-if
for accuracy, and compile refuses it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmfab.ir import ConstAttrs, Graph, OpKind
from llmfab.ir.fixed_point import to_fixed
from llmfab.ir.tensor_data import ArrayData

from .policy import STATIC, Policy
from .quantize import Calibrated, adopt_parameters, layer_inputs, token_streams, weight_sites

_NORMS = (OpKind.RMSNORM, OpKind.LAYERNORM)
_LINEARS = (OpKind.LINEAR, OpKind.LMHEAD)
MIN_SCALE = 1e-5


def smoothable(g: Graph) -> list[tuple[str, list[str]]]:
    """(norm, the linears it feeds) for every norm whose output only feeds linears (as their input)
    and whose weight, bias and the linears' weights are constants read by no other node."""
    out = []
    for n in g.nodes():
        if n.op not in _NORMS:
            continue
        users = g.users(n.name)
        if not users or any(u.op not in _LINEARS or u.inputs[0] != n.name or n.name in u.inputs[1:] for u in users):
            continue
        consts = list(n.inputs[1:]) + [u.inputs[1] for u in users]
        if all(g.node(c).op is OpKind.CONST and g.node(c).data.has_values and len(g.users(c)) == 1 for c in consts):
            out.append((n.name, [u.name for u in users]))
    return out


def _set(g: Graph, name: str, values: np.ndarray) -> None:
    n = g.node(name)
    data = ArrayData(np.asarray(values, np.float32), n.type.dtype)
    g.set_node(dataclasses.replace(n, attrs=ConstAttrs(data, n.attrs.weight)))


def _weights(g: Graph, linears: list[str]) -> list[np.ndarray]:
    return [np.asarray(g.node(g.node(u).inputs[1]).data.numpy(), np.float64) for u in linears]


def migrate(g: Graph, norm: str, linears: list[str], s: np.ndarray) -> None:
    """Divide channel j of `norm`'s output by s_j and multiply column j of the weights of `linears`
    (the linears it feeds, `smoothable`) by it, in place: the same float function."""
    for c in g.node(norm).inputs[1:]:   # weight (and LayerNorm bias)
        _set(g, c, np.asarray(g.node(c).data.numpy(), np.float64) / s)
    for u, w in zip(linears, _weights(g, linears)):
        _set(g, g.node(u).inputs[1], w * s[None, :])


def smooth(g: Graph, alpha: float, inputs: dict[str, np.ndarray]) -> list[str]:
    """Migrate scale from each smoothable norm's output into its linears (in place); `inputs`:
    layer_inputs() of the unsmoothed graph. Returns the norms smoothed."""
    done = []
    for norm, linears in smoothable(g):
        x_max = np.max(np.abs(inputs[linears[0]]), axis=0)
        w_max = np.max([np.max(np.abs(w), axis=0) for w in _weights(g, linears)], axis=0)
        ok = (x_max > 0) & (w_max > 0)
        s = np.ones_like(x_max)
        s[ok] = np.maximum(x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha), MIN_SCALE)
        migrate(g, norm, linears, s)
        done.append(norm)
    return done


def set_static_scales(g: Graph, inputs: dict[str, np.ndarray]) -> None:
    """Each linear's calibrated max |X| as its static activation scale (Q.16, in place)."""
    for s in weight_sites(g):
        node = g.node(s.user)
        if node.op in _LINEARS:
            amax = int(to_fixed(np.max(np.abs(inputs[s.user]))))
            g.set_node(dataclasses.replace(node, attrs=dataclasses.replace(node.attrs, act_amax=amax)))


def needs_inputs(policy: Policy, plans) -> bool:
    """Whether quantizing by `policy` reads calibration activations (`plans`: its plans)."""
    return bool(policy.auto or policy.smoothing is not None or policy.activations == STATIC
                or any(p.needs_calibration for p in plans.values()))


def calibrate(g: Graph, policy: Policy, at: Graph | None = None) -> Calibrated:
    """Smooth `g` in place if the policy asks, then the calibration inputs of every weight site
    (of the smoothed graph: what GPTQ, the sensitivities and static scales must see), with that
    graph and the streams. `at`: the same model bound to the policy's calibration length, to run
    the streams on when `g` is bound to another (compile's max length), so that quantize and
    compile calibrate alike."""
    cal = policy.calibration
    at = g if at is None else at
    sites = weight_sites(at)
    streams = token_streams(at, cal.samples, cal.seed, cal.tokens, cal.origin)
    inputs = layer_inputs(at, sites, streams)
    if policy.smoothing is not None and smooth(g, policy.smoothing, inputs):
        if at is not g:
            adopt_parameters(at, g)
        inputs = layer_inputs(at, sites, streams)
    return Calibrated(inputs, at, streams)
