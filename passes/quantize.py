"""The quantize pass: every Linear / LM-head / Embedding weight becomes a `QuantizedWeight`.

Schemes come from a policy (passes/policy.py). GPTQ and SparseGPT need the Hessian `2 X^T X` of
each layer's inputs, which the reference interpreter produces on calibration token streams (the
float model's activations; deterministic seed). Tied weights (one table used by the embedding and
the LM head) are quantized once, with the LM head's plan: both read rows of the same [V, D] matrix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmfab.ir import ConstAttrs, Graph, InputRole, OpKind, TensorType, run
from llmfab.ir.quant import NM, QuantizedWeight

from .pass_base import Pass
from .policy import Policy, PolicyError, WeightPlan


@dataclass(frozen=True)
class WeightSite:
    const: str        # the weight's const node
    user: str         # the op that reads it
    role: str         # policy role
    layer: int | None
    shape: tuple[int, int]

    @property
    def label(self) -> str:
        return self.user


def weight_sites(g: Graph) -> list[WeightSite]:
    """The matrix weights of a fused graph, one per const (an LM head wins over a tied embedding)."""
    sites: dict[str, WeightSite] = {}
    for n in g.nodes():
        if n.op in (OpKind.LINEAR, OpKind.LMHEAD):
            w = g.node(n.inputs[1])
            sites[w.name] = WeightSite(w.name, n.name, n.attrs.role.value, n.attrs.layer, w.type.shape)
        elif n.op is OpKind.EMBEDDING and g.node(n.inputs[0]).attrs.weight:
            w = g.node(n.inputs[0])
            sites.setdefault(w.name, WeightSite(w.name, n.name, "embedding", None, w.type.shape))
    order = {n.name: i for i, n in enumerate(g.nodes())}
    return sorted(sites.values(), key=lambda s: order[s.user])


def weight_formats(g: Graph) -> list[dict]:
    """Each matrix weight's stored format, in graph order (reports: the bits of every layer):
    the op that reads it, its layer and role, bits, group along K, N:M pattern and the storage
    bits per weight (codes, indices, scales and shifts over the dense [N, K])."""
    out = []
    for s in weight_sites(g):
        d, n_k = g.node(s.const).data, s.shape[0] * s.shape[1]
        q = d.scheme if isinstance(d, QuantizedWeight) else None
        out.append({"weight": s.user, "layer": s.layer, "role": s.role,
                    "bits": q.bits if q else g.node(s.const).type.dtype.bits,
                    "group": d.group if q else None,
                    "sparsity": str(NM(*q.sparsity)) if q and q.sparsity else None,
                    "bits_per_weight": (d.storage_bits() if q else g.node(s.const).type.nbytes * 8) / n_k})
    return out


def token_streams(g: Graph, samples: int, seed: int, tokens: str | None = None, origin: str = "") -> list[np.ndarray]:
    """Token streams shaped like the graph's token input: windows of a token file (whitespace-
    separated ids, e.g. a tokenized calibration text) or, without one, deterministic random ids.
    `origin` names what gave the file (a policy field, a CLI option) in errors."""
    tok = next(n for n in g.inputs() if n.attrs.role is InputRole.TOKENS)
    vocab = next(g.node(u.inputs[0]).type.shape[0] for u in g.users(tok.name) if u.op is OpKind.EMBEDDING)
    if tokens is None:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, vocab, tok.type.shape) for _ in range(samples)]
    ids = read_token_file(tokens, vocab, origin)
    per = int(np.prod(tok.type.shape))
    where = f"{origin}: " if origin else ""
    if len(ids) < per:
        raise PolicyError(f"{where}{tokens}: {len(ids)} tokens, fewer than one stream of {per}")
    windows = [ids[i:i + per].reshape(tok.type.shape) for i in range(0, len(ids) - per + 1, per)]
    return windows[:samples]


def read_token_file(path: str, vocab: int, origin: str = "") -> np.ndarray:
    where = f"{origin}: " if origin else ""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise PolicyError(f"{where}{path}: cannot read the calibration token file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{where}{path}: a calibration token file is UTF-8 text (token ids), not binary") from None
    try:
        ids = np.array([int(t) for t in text.split()], dtype=np.int64)
    except ValueError:
        raise PolicyError(f"{where}{path}: a calibration token file holds integer token ids separated by "
                          "whitespace") from None
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise PolicyError(f"{where}{path}: token ids must be in [0, {vocab}), found {ids.min()}..{ids.max()}")
    return ids


def feeds_for(g: Graph, tokens: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {}
    for n in g.inputs():
        feeds[n.name] = tokens if n.attrs.role is InputRole.TOKENS else np.zeros(n.type.shape, np.float32)
    return feeds


def layer_inputs(g: Graph, sites: list[WeightSite], streams: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Float inputs X [tokens, K] of every Linear/LM head site, over all streams."""
    users = {s.user: g.node(s.user).inputs[0] for s in sites if g.node(s.user).op is not OpKind.EMBEDDING}
    got: dict[str, list[np.ndarray]] = {u: [] for u in users}
    for t in streams:
        vals = run(g, feeds_for(g, t), keep=set(users.values()))
        for u, x in users.items():
            got[u].append(np.asarray(vals[x], np.float64).reshape(-1, vals[x].shape[-1]))
    return {u: np.concatenate(v) for u, v in got.items()}


class Calibrated(dict):
    """layer_inputs() of the calibration streams (site user -> X), with what produced them: the
    float graph they ran on (bound to the calibration length) and the streams, for measurements of
    the whole model (auto_precision's loss-aware sensitivities)."""

    def __init__(self, inputs: dict[str, np.ndarray], graph: Graph, streams: list[np.ndarray]):
        super().__init__(inputs)
        self.graph = graph
        self.streams = streams


def hessian(x: np.ndarray) -> np.ndarray:
    return 2.0 * x.T @ x / max(len(x), 1)


def quantize_weight(w: np.ndarray, plan: WeightPlan, h: np.ndarray | None, name: str) -> QuantizedWeight:
    from .quant_methods import gptq, nm_mask_magnitude, rtn, sparsegpt

    sch = plan.scheme
    if h is None:  # no calibration inputs
        plan = WeightPlan(sch, "rtn", "magnitude")
    if sch.sparsity is not None and plan.sparsity_method == "sparsegpt":
        return sparsegpt(w, h, sch, name=name)
    mask = nm_mask_magnitude(w, *sch.sparsity) if sch.sparsity is not None else None
    if plan.method == "gptq":
        return gptq(w, h, sch, mask=mask, name=name)
    return rtn(w, sch, mask=mask, name=name)


def set_weight(g: Graph, const: str, qw: QuantizedWeight) -> None:
    n = g.node(const)
    g.set_node(dataclasses.replace(n, attrs=ConstAttrs(qw, True), type=TensorType(qw.dtype, qw.shape)))


def adopt_parameters(g: Graph, q: Graph) -> None:
    """Put the parameters a policy gave `q` into `g`, the same model at another length (in place, by
    name): quantized weights, weights it changed (norms smoothing divided) and the linears'
    attributes (a static activation scale)."""
    for n in g.nodes():
        if n.name not in q:
            continue
        src = q.node(n.name)
        if n.op is OpKind.CONST and n.attrs.weight and src.op is OpKind.CONST:
            if isinstance(src.data, QuantizedWeight):
                set_weight(g, n.name, src.data)
            elif src.type == n.type:
                g.set_node(dataclasses.replace(n, attrs=src.attrs))
        elif n.op in (OpKind.LINEAR, OpKind.LMHEAD) and src.op is n.op:
            g.set_node(dataclasses.replace(n, attrs=src.attrs))


def quantize_graph(g: Graph, plans: dict[str, WeightPlan], inputs: dict[str, np.ndarray] | None) -> None:
    """Replace each site's weight by its quantized form (in place). `inputs`: layer_inputs()."""
    for site in weight_sites(g):
        plan = plans[site.const]
        node = g.node(site.const)
        if not node.data.has_values:  # config-only: the format alone, for sizes
            set_weight(g, site.const, QuantizedWeight(plan.scheme, site.shape, name=site.const))
            continue
        w = np.asarray(node.data.numpy(), np.float64)
        # A table only an Embedding reads has no calibration inputs: it gets round-to-nearest.
        h = hessian(inputs[site.user]) if plan.needs_calibration and site.user in inputs else None
        set_weight(g, site.const, quantize_weight(w, plan, h, site.const))


def plan_sites(g: Graph, policy: Policy) -> dict[str, WeightPlan]:
    """Each site's plan. Any group fits any K: a group that does not divide K leaves a partial last
    group (docs/integer.md), which the quantize report shows per layer."""
    plans = {}
    for s in weight_sites(g):
        plan = policy.plan(s.role, s.layer)
        if plan.scheme.sparsity and any(u.op is OpKind.EMBEDDING for u in g.users(s.const)):
            # a table the embedding reads (a tied LM head) stays dense: rows are looked up whole
            plan = dataclasses.replace(plan, scheme=dataclasses.replace(plan.scheme, sparsity=None))
        plans[s.const] = plan
    return plans


@dataclass(frozen=True)
class Quantize(Pass):
    """`quantize{policy=int4-g128-gptq}`: the pass form of the flow, for pipelines."""
    name: ClassVar[str] = "quantize"
    policy: str = "int8"

    def apply(self, g: Graph) -> None:
        from .auto_precision import assign
        from .policy import load_policy

        from .act_calibration import calibrate, set_static_scales
        from .policy import STATIC

        policy = load_policy(self.policy)
        has_data = all(g.node(s.const).data.has_values for s in weight_sites(g))
        inputs = calibrate(g, policy) if has_data else None
        quantize_graph(g, assign(g, policy, inputs), inputs)
        if inputs is not None and policy.activations == STATIC:
            set_static_scales(g, inputs)
