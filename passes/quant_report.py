"""Quantize a fused graph by a policy and measure what it costs and what it keeps.

Per weight: scheme, storage bits per weight (codes + indices + scales) and output SQNR against
the float layer on held-out token streams. End to end: logits of the integer model (int8
activations and KV cache, docs/integer.md) against the float model, as mean cosine similarity
and top-1 agreement over every position of the evaluation streams.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from llmfab.ir import Graph, OpKind, run
from llmfab.ir.integer import check_kernels
from llmfab.ir.quant import QuantizedWeight

from .act_calibration import calibrate, set_static_scales
from .auto_precision import assign
from .policy import PER_TOKEN, STATIC, Policy
from .quantize import feeds_for, layer_inputs, quantize_graph, token_streams, weight_sites

EVAL_SEED_OFFSET = 1000  # evaluation streams never reuse calibration streams
EVAL_SAMPLES = 4         # the same evaluation set whatever the policy, so reports compare


@dataclass(frozen=True)
class LayerRow:
    name: str
    role: str
    layer: int | None
    shape: tuple[int, int]
    scheme: str
    method: str
    bits_per_weight: float
    sqnr_db: float | None
    groups: int = 1                  # scale groups per output row
    last_group: int = 0              # columns of the last group: fewer than the group when it does not divide K


@dataclass(frozen=True)
class QuantReport:
    model: str
    policy: str
    avg_bits_per_weight: float
    weight_bytes: int
    quantized_params: int
    other_weight_bytes: int
    logit_cosine: float | None
    top1_agreement: float | None
    eval_tokens: int
    integer_activations: bool
    layers: list[LayerRow] = field(default_factory=list)
    float_perplexity: float | None = None   # with an evaluation set (quantize --eval): the float graph
    perplexity: float | None = None         # ... and the quantized model (integer unless --float-activations)
    eval_set: dict | None = None            # {"file", "sequences", "length"} of that set
    activations: str = PER_TOKEN            # the policy's activation scales (STATIC: a what-if compile refuses)
    smoothing: float | None = None          # the policy's SmoothQuant alpha, None when off

    def to_json(self) -> dict:
        d = asdict(self)
        d["layers"] = [dict(asdict(r), shape=list(r.shape)) for r in self.layers]
        return d


def _sqnr(ref: np.ndarray, err: np.ndarray) -> float:
    e = float(np.sum(err ** 2))
    s = float(np.sum(ref ** 2))
    return math.inf if e == 0 else 10.0 * math.log10(max(s, 1e-300) / e)


def quantize_model(g: Graph, policy: Policy, *, integer: bool = True) -> tuple[Graph, QuantReport]:
    """A quantized copy of `g` and its report. `integer`: measure logits with the integer
    interpreter (int8 activations); else with the float interpreter on dequantized weights."""
    has_data = all(g.node(s.const).data.has_values for s in weight_sites(g))
    if integer and has_data:
        check_kernels(g)  # now, not after calibrating and quantizing
    cal = policy.calibration
    # f: the float model the weights are quantized from (smoothed, when the policy asks: the same
    # function, other weights); per-layer SQNRs are against its layers
    f = g.copy() if has_data and policy.smoothing is not None else g
    calib = calibrate(f, policy) if has_data else None
    plans = assign(f, policy, calib)
    q = f.copy()
    quantize_graph(q, plans, calib)
    if calib is not None and policy.activations == STATIC:
        set_static_scales(q, calib)

    rows, qbits, qparams = [], 0, 0
    evals = token_streams(g, EVAL_SAMPLES, cal.seed + EVAL_SEED_OFFSET) if has_data else []
    held_out = layer_inputs(f, weight_sites(f), evals) if has_data else None
    for s in weight_sites(q):
        qw: QuantizedWeight = q.node(s.const).data
        n, k = s.shape
        qbits += qw.storage_bits()
        qparams += n * k
        sqnr = None
        if has_data:
            w = np.asarray(f.node(s.const).data.numpy(), np.float64)
            d = w - qw.numpy().astype(np.float64)
            if s.role == "embedding":
                sqnr = _sqnr(w, d)
            else:
                x = held_out[s.user]
                sqnr = _sqnr(x @ w.T, x @ d.T)
        plan = plans[s.const]
        groups = qw.scheme.groups(k)
        rows.append(LayerRow(s.user, s.role, s.layer, s.shape, str(plan.scheme), plan.method,
                             qw.storage_bits() / (n * k), sqnr, groups, k - (groups - 1) * qw.group))
    quantized = {s.const for s in weight_sites(q)}
    other = sum(int(math.ceil(n.type.numel * 4)) for n in q.nodes()  # Q.16 int32 parameters
                if n.op is OpKind.CONST and n.attrs.weight and n.name not in quantized)
    weight_bytes = sum(int(math.ceil(q.node(c).data.storage_bits() / 8)) for c in quantized) + other

    cosine = top1 = None
    if has_data:
        cosine, top1 = _fidelity(g, q, evals, integer)
    report = QuantReport(g.name, policy.name, qbits / max(qparams, 1), weight_bytes, qparams, other,
                         cosine, top1, int(sum(t.size for t in evals)), integer and has_data, rows,
                         activations=policy.activations, smoothing=policy.smoothing)
    return q, report


def _fidelity(g: Graph, q: Graph, streams: list[np.ndarray], integer: bool) -> tuple[float, float]:
    if integer:
        from llmfab.ir.integer import run_integer as run_q
    else:
        run_q = run
    cos, agree, count = 0.0, 0, 0
    for t in streams:
        ref = np.asarray(run(g, feeds_for(g, t))["logits"], np.float64).reshape(-1, g.node(dict(g.outputs)["logits"]).type.shape[-1])
        got = np.asarray(run_q(q, feeds_for(q, t))["logits"], np.float64).reshape(ref.shape)
        num = np.sum(ref * got, axis=1)
        den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        cos += float(np.sum(num / np.where(den > 0, den, 1.0)))
        agree += int(np.sum(ref.argmax(1) == got.argmax(1)))
        count += len(ref)
    return cos / count, agree / count


def format_report(r: QuantReport) -> str:
    lines = [f"model        {r.model}", f"policy       {r.policy}",
             f"bits/weight  {r.avg_bits_per_weight:.3f} (codes + indices + scales, {r.quantized_params:,} weights)",
             f"weights      {r.weight_bytes / 1e9:.3f} GB" if r.weight_bytes > 1e8 else f"weights      {r.weight_bytes:,} bytes"]
    if r.activations != PER_TOKEN or r.smoothing is not None:
        acts = ("int8, one static scale per tensor (a what-if: compile refuses it)" if r.activations == STATIC
                else "int8, one scale per token row")
        lines.append(f"activations  {acts}" + (f"; smoothed, alpha {r.smoothing:g}" if r.smoothing is not None else ""))
    if r.logit_cosine is not None:
        kind = "integer model, int8 activations" if r.integer_activations else "dequantized weights"
        lines.append(f"fidelity     logit cosine {r.logit_cosine:.5f}, top-1 agreement {r.top1_agreement:.3f} "
                     f"({kind}, {r.eval_tokens} tokens)")
    else:
        lines.append("fidelity     n/a (config-only model: no weights)")
    if r.perplexity is not None:
        e = r.eval_set
        lines.append(f"perplexity   {r.perplexity:.4f} (float {r.float_perplexity:.4f}, "
                     f"{(r.perplexity / r.float_perplexity - 1) * 100:+.2f}%; {e['sequences']} x {e['length']} tokens "
                     f"of {e['file']})")
    lines.append(f"{'layer':28s} {'scheme':16s} {'method':6s} {'bits/w':>6s} {'SQNR dB':>8s}  groups")
    for row in r.layers:
        sq = "-" if row.sqnr_db is None else f"{row.sqnr_db:8.2f}"
        partial = row.last_group * row.groups != row.shape[1]
        groups = f"{row.groups}" + (f" (last {row.last_group} of K={row.shape[1]})" if partial else "")
        lines.append(f"{row.name[:28]:28s} {row.scheme:16s} {row.method:6s} {row.bits_per_weight:6.3f} {sq:>8s}  {groups}")
    return "\n".join(lines) + "\n"
