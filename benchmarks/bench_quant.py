"""Quantization fidelity on the fixtures and sizes of the 7B presets.

    .venv/bin/python benchmarks/bench_quant.py

For each family's TorchScript fixture: int8 logit fidelity of the integer model (int8 weights,
activations and KV cache) against the float model; mean per-layer output SQNR of int4 g128
round-to-nearest vs GPTQ; of int4 g128 2:4 with magnitude pruning vs SparseGPT. Then the storage
of LLaMA2-7B (config only) under every bundled policy.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfab.flow import load_model  # noqa: E402
from llmfab.passes.policy import load_policy, parse_policy  # noqa: E402
from llmfab.passes.quant_report import quantize_model  # noqa: E402

FIXTURES = ["llama_ts_op14", "qwen2_ts_op14", "mistral_ts_op14", "gpt2_ts_op14", "opt_ts_op14"]
CAL = {"samples": 8, "seq_len": 32, "seed": 0}


def mean_sqnr(report) -> float:
    vals = [r.sqnr_db for r in report.layers if r.role != "embedding"]
    return float(np.mean(vals))


def policy(default: dict, name: str):
    return parse_policy({"name": name, "default": default, "calibration": CAL}, name)


def main():
    print("| fixture | int8 logit cosine | int8 top-1 | int4 g128 RTN SQNR (dB) | int4 g128 GPTQ SQNR (dB) "
          "| 2:4 magnitude SQNR (dB) | 2:4 SparseGPT SQNR (dB) |\n|---|---|---|---|---|---|---|")
    for f in FIXTURES:
        g = load_model(str(ROOT / "tests/fixtures" / f"{f}.onnx"), seq_len=32)
        _, r8 = quantize_model(g, policy({"bits": 8, "group": 128}, "int8"))
        _, rtn = quantize_model(g, policy({"bits": 4, "group": 128, "method": "rtn"}, "rtn"))
        _, gq = quantize_model(g, policy({"bits": 4, "group": 128, "method": "gptq"}, "gptq"))
        _, mag = quantize_model(g, policy({"bits": 4, "group": 128, "method": "gptq", "sparsity": "2:4",
                                           "sparsity_method": "magnitude"}, "mag"))
        _, sgpt = quantize_model(g, policy({"bits": 4, "group": 128, "method": "gptq", "sparsity": "2:4",
                                            "sparsity_method": "sparsegpt"}, "sgpt"))
        print(f"| {f} | {r8.logit_cosine:.5f} | {r8.top1_agreement:.3f} | {mean_sqnr(rtn):.2f} | "
              f"{mean_sqnr(gq):.2f} | {mean_sqnr(mag):.2f} | {mean_sqnr(sgpt):.2f} |")
    print("\n| LLaMA2-7B (config only) policy | bits/weight (codes + indices + scales) | weight bytes | seconds |\n|---|---|---|---|")
    g = load_model("llama2-7b")
    for name in ("int8", "int4-g128", "int4-g128-gptq", "w4-2of4", "mixed-3.5"):
        t0 = time.perf_counter()
        _, r = quantize_model(g, load_policy(name))
        print(f"| {name} | {r.avg_bits_per_weight:.3f} | {r.weight_bytes / 1e9:.3f} GB | {time.perf_counter() - t0:.2f} |")


if __name__ == "__main__":
    main()
