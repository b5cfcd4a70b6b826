"""Perplexity of the trained tiny LLaMA under each weight policy (issue 15, item 6).

    .venv/bin/python benchmarks/bench_accuracy.py [--json OUT.json]

The model is tests/fixtures/trained_llama.onnx (examples/train_tiny.py: byte-level, trained on the
Python stdlib's sources), measured on its held-out set tests/fixtures/trained_llama_eval.npy
(16 x 128 tokens from files it never saw). Every policy is calibrated on the same 8 x 128 tokens of
training text (tests/fixtures/trained_llama_calib.txt) instead of the bundled policies' random ids;
perplexity is the integer model's (int8 activations and KV cache), the same number `llmfab quantize
--eval` and `llmfab execute --eval` give. The logit cosine and top-1 columns are quantize's usual
fidelity numbers, measured on its 4 streams of random ids (not text). Prints a Markdown table
(BENCHMARKS.md); about 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfab.flow import load_model  # noqa: E402
from llmfab.passes.perplexity import load_eval, model_perplexities  # noqa: E402
from llmfab.passes.policy import load_policy, parse_policy  # noqa: E402
from llmfab.passes.quant_report import quantize_model  # noqa: E402

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


def policy_for(spec, seq_len: int):
    p = load_policy(spec) if isinstance(spec, str) else parse_policy(dict(spec), spec["name"])
    cal = dataclasses.replace(p.calibration, tokens=str(CALIB), origin="bench", samples=8, seq_len=seq_len)
    return dataclasses.replace(p, calibration=cal)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    data = load_eval(str(EVAL))
    g = load_model(str(MODEL), seq_len=data.length)
    rows, float_ppl = [], None
    print("| policy | bits/weight | perplexity | vs float | logit cosine (random ids) | top-1 (random ids) | time (s) |\n"
          "|---|---|---|---|---|---|---|")
    for label, spec in POLICIES:
        t0 = time.perf_counter()
        q, rep = quantize_model(g, policy_for(spec, data.length))
        fp, qp = model_perplexities(g, q, data)
        if float_ppl is None:
            float_ppl = fp
            print(f"| float (fp32) | 32 | {fp:.4f} | | | | |")
        assert fp == float_ppl
        row = {"policy": label, "bits_per_weight": rep.avg_bits_per_weight, "perplexity": qp,
               "float_perplexity": fp, "logit_cosine": rep.logit_cosine, "top1_agreement": rep.top1_agreement,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"| {label} | {row['bits_per_weight']:.3f} | {qp:.4f} | {(qp / fp - 1) * 100:+.2f}% | "
              f"{rep.logit_cosine:.5f} | {rep.top1_agreement:.3f} | {row['seconds']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(MODEL.relative_to(ROOT)), "eval": str(EVAL.relative_to(ROOT)),
                                               "sequences": data.sequences, "length": data.length, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
