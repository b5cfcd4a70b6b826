"""Perplexity of the trained tiny LLaMA under each weight policy (issue 15, item 6).

    .venv/bin/python benchmarks/bench_accuracy.py [--json OUT.json] [--only TEXT]

The model is tests/fixtures/trained_llama.onnx (examples/train_tiny.py: byte-level, trained on the
Python stdlib's sources), measured on its held-out set tests/fixtures/trained_llama_eval.npy
(16 x 128 tokens from files it never saw). Every policy is calibrated on the same 8 x 128 tokens of
training text (tests/fixtures/trained_llama_calib.txt) instead of the bundled policies' random ids;
perplexity is the integer model's (int8 activations and KV cache), the same number `llmfab quantize
--eval` and `llmfab execute --eval` give. "KL" is the mean KL divergence (nats per prediction) of the
integer model's next-token distribution from the float model's on the same held-out set: how far
the policy moves the model, without the set's noise on which way (a perplexity a few hundredths of a
percent below float is luck, not accuracy). The logit cosine and top-1 columns are quantize's usual
fidelity numbers, measured on its 4 streams of random ids (not text). `--only TEXT` measures the
rows whose label contains TEXT (and the float row). Prints a Markdown table
(BENCHMARKS.md) and the activation ranges that explain the activation rows; about 15 minutes on 2 busy cores.

Rows past the weight policies: the activation side (int8 per token row, what the accelerator runs,
against one calibrated static scale per tensor, `activations: static-per-tensor`, a what-if of the
integer model that compile refuses), SmoothQuant-style smoothing (`smoothing: {alpha: 0.5}`), and
the automatic mixed policy at exactly a uniform policy's code bits (same group, method, embedding).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfab.flow import load_model  # noqa: E402
from llmfab.ir import run  # noqa: E402
from llmfab.ir.integer import run_integer  # noqa: E402
from llmfab.passes.perplexity import load_eval, log_softmax, nll_sum  # noqa: E402
from llmfab.ir.yaml_file import read_yaml  # noqa: E402
from llmfab.passes.act_calibration import migrate, smoothable  # noqa: E402
from llmfab.passes.policy import POLICY_DIR, PolicyError, load_policy, parse_policy  # noqa: E402
from llmfab.passes.quant_report import quantize_model  # noqa: E402
from llmfab.passes.quantize import adopt_parameters, feeds_for, layer_inputs, token_streams, weight_sites  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
MODEL, EVAL, CALIB = FIX / "trained_llama.onnx", FIX / "trained_llama_eval.npy", FIX / "trained_llama_calib.txt"
EMB8 = {"embedding": {"bits": 8, "group": 0, "method": "rtn", "sparsity": None}}

# (row label, bundled policy name or an inline policy)
POLICIES = [
    ("int8 g128 RTN", "int8"),
    ("int4 g128 RTN", "int4-g128"),
    ("int4 g128 GPTQ", "int4-g128-gptq"),
    ("int4 g32 RTN", "int4-g32"),
    ("int3 g64 GPTQ (emb int8)", "int3-g64"),
    ("w4 2:4 magnitude mask + GPTQ (emb int8)", {"name": "w4-2of4-magnitude", "roles": EMB8, "default": {
        "bits": 4, "group": 128, "method": "gptq", "sparsity": "2:4", "sparsity_method": "magnitude"}}),
    ("w4 2:4 SparseGPT (emb int8)", "w4-2of4"),
    ("mixed-3.5 (auto by sensitivity)", "mixed-3.5"),
]


def bundled(name: str, label: str, **top) -> dict:
    """A bundled policy with more top-level keys (activations, smoothing, auto)."""
    _, data = read_yaml(POLICY_DIR / f"{name}.yaml", "policy", PolicyError)
    return {**data, **top, "name": label}


STATIC = {"activations": "static-per-tensor"}
SMOOTH = {"smoothing": {"alpha": 0.5}}
POLICIES += [
    ("int8 g128 RTN, static per-tensor activations (what-if)", bundled("int8", "int8-static", **STATIC)),
    ("int8 g128 RTN, smoothed (alpha 0.5)", bundled("int8", "int8-smooth", **SMOOTH)),
    ("int8 g128 RTN, smoothed, static per-tensor (what-if)", bundled("int8", "int8-smooth-static", **SMOOTH, **STATIC)),
    ("int4 g128 GPTQ, static per-tensor activations (what-if)", bundled("int4-g128-gptq", "int4-static", **STATIC)),
    ("int4 g128 GPTQ, smoothed (alpha 0.5)", bundled("int4-g128-gptq", "int4-smooth", **SMOOTH)),
    ("int4 g128 GPTQ, smoothed, static per-tensor (what-if)",
     bundled("int4-g128-gptq", "int4-smooth-static", **SMOOTH, **STATIC)),
    # the automatic mixed policy at a uniform policy's code bits: same group, method and embedding
    ("mixed at int4 g128 GPTQ's bits (auto, 4.0 code bits)",
     bundled("int4-g128-gptq", "mixed-4.0", auto={"target_bits": 4.0, "candidates": [2, 3, 4, 8]})),
    ("mixed at int3 g64 GPTQ's bits (auto, 3.0 code bits, emb int8)",
     bundled("int3-g64", "mixed-3.0", auto={"target_bits": 3.0, "candidates": [2, 3, 4, 8]})),
]


# A function-preserving stress case: two channels of every norm output that feeds only linears
# made OUTLIER times larger (the norm's weight), the linears' columns that read them OUTLIER times
# smaller, the float model the same. Trained LLMs past a few billion parameters have such channels
# (LLM.int8(), SmoothQuant); this small model has none (see the ranges printed).
OUTLIER, OUTLIER_CHANNELS = 32.0, (17, 90)
PLANTED = [
    ("planted outliers: int8 g128 RTN, per token", bundled("int8", "int8")),
    ("planted outliers: int8 g128 RTN, static per-tensor (what-if)", bundled("int8", "int8-static", **STATIC)),
    ("planted outliers: int8 g128 RTN, smoothed", bundled("int8", "int8-smooth", **SMOOTH)),
    ("planted outliers: int8 g128 RTN, smoothed, static (what-if)", bundled("int8", "int8-smooth-static", **SMOOTH, **STATIC)),
]


def planted(g):
    h = g.copy()
    for norm, linears in smoothable(h):
        s = np.ones(h.node(norm).type.shape[-1])
        s[list(OUTLIER_CHANNELS)] = 1.0 / OUTLIER
        migrate(h, norm, linears, s)
    return h


def activation_ranges(g) -> str:
    """Why static scales cost what they cost: over the calibration text, for each linear input the
    tensor's max |x| against the median token row's (what one static scale gives away: bits of
    resolution of a typical row), and for the norm outputs the largest channel max over the median
    channel max (the outliers smoothing flattens)."""
    x = layer_inputs(g, weight_sites(g), token_streams(g, 8, 0, str(CALIB), "bench"))
    tensor = {u: np.abs(v).max() / np.median(np.abs(v).max(1)) for u, v in x.items()}
    chan = {n: np.abs(x[ls[0]]).max(0) for n, ls in smoothable(g)}
    chan = {n: c.max() / np.median(c) for n, c in chan.items()}
    worst_t, worst_c = max(tensor, key=tensor.get), max(chan, key=chan.get)
    return (f"tensor max / median row max over linear inputs: median {np.median(list(tensor.values())):.1f}, "
            f"largest {tensor[worst_t]:.1f} ({worst_t}); norm outputs, largest channel max / median channel max: "
            f"median {np.median(list(chan.values())):.1f}, largest {chan[worst_c]:.1f} ({worst_c})")


def policy_for(spec, seq_len: int):
    p = load_policy(spec) if isinstance(spec, str) else parse_policy(dict(spec), spec["name"])
    cal = dataclasses.replace(p.calibration, tokens=str(CALIB), origin="bench", samples=8, seq_len=seq_len)
    return dataclasses.replace(p, calibration=cal)


def logits(graph, runner, ids: np.ndarray) -> np.ndarray:
    return np.asarray(runner(graph, feeds_for(graph, ids[None]))["logits"], np.float64)[0]


def evaluate(g, q, data, ref: list[np.ndarray] | None = None) -> tuple[float, float, list[np.ndarray]]:
    """(perplexity, mean KL from the float model's log-probs `ref`, the log-probs) of the integer
    model of `q` on the set (`q` None: the float graph `g`). The perplexity is the one `llmfab quantize
    --eval` prints (passes.perplexity: the same sums in the same order), from the logits the KL uses."""
    qe, runner = g, run
    if q is not None:
        qe, runner = g.copy(), run_integer
        adopt_parameters(qe, q)
    total = count = kl = 0.0
    lps = []
    for i, ids in enumerate(data.ids):
        z = logits(qe, runner, ids)
        s, n = nll_sum(z, ids)
        total, count = total + s, count + n
        lps.append(log_softmax(z[:-1]))
        if ref is not None:
            kl += float(np.sum(np.exp(ref[i]) * (ref[i] - lps[-1])))
    return math.exp(total / count), kl / count, lps


def measure(g, policies, data, float_label: str) -> list[dict]:
    """A row per policy on the float graph `g` (bound to the set's length), after `g`'s float row."""
    fp, _, ref = evaluate(g, None, data)
    print(f"| {float_label} | 32 | {fp:.4f} | | | | | |")
    rows = []
    for label, spec in policies:
        t0 = time.perf_counter()
        q, rep = quantize_model(g, policy_for(spec, data.length))
        qp, kl, _ = evaluate(g, q, data, ref)
        row = {"policy": label, "bits_per_weight": rep.avg_bits_per_weight, "perplexity": qp,
               "float_perplexity": fp, "kl_from_float": kl, "logit_cosine": rep.logit_cosine,
               "top1_agreement": rep.top1_agreement, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"| {label} | {row['bits_per_weight']:.3f} | {qp:.4f} | {(qp / fp - 1) * 100:+.2f}% | {kl:.5f} | "
              f"{rep.logit_cosine:.5f} | {rep.top1_agreement:.3f} | {row['seconds']:.0f} |", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    ap.add_argument("--only", default="", help="measure only the rows whose label contains this text")
    args = ap.parse_args(argv)
    data = load_eval(str(EVAL))
    g = load_model(str(MODEL), seq_len=data.length)
    print("| policy | bits/weight | perplexity | vs float | KL (nats) | logit cosine (random ids) | top-1 (random ids) "
          "| time (s) |\n|---|---|---|---|---|---|---|---|")
    rows = measure(g, [p for p in POLICIES if args.only in p[0]], data, "float (fp32)")
    h = planted(g)
    planted_rows = [p for p in PLANTED if args.only in p[0]]
    if planted_rows:
        rows += measure(h, planted_rows, data, f"planted outliers ({OUTLIER:g}x, channels {OUTLIER_CHANNELS}): float")
    ranges = {"model": activation_ranges(g), "planted": activation_ranges(h)}
    print(f"\nActivation ranges on the calibration text, the model: {ranges['model']}; "
          f"with the planted outliers: {ranges['planted']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(MODEL.relative_to(ROOT)), "eval": str(EVAL.relative_to(ROOT)),
                                               "sequences": data.sequences, "length": data.length, "rows": rows,
                                               "activation_ranges": ranges},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
