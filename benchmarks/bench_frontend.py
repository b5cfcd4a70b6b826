"""Front-end benchmarks: config-only analysis of 7B presets, ONNX import + fusion, interpreter.

    .venv/bin/python benchmarks/bench_frontend.py            # presets and fixtures
    /work/exportenv/bin/python benchmarks/bench_frontend.py --deep   # + a 32-layer LLaMA export

`--deep` needs torch and transformers (the `export` extra) to export a LLaMA with the layer count
and graph size of LLaMA2-7B (32 layers, ~9k ONNX nodes) but narrow layers, so it fits in seconds.
Each measurement runs in a fresh subprocess so peak RSS is that of the command alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def measure(code: str, repeat: int = 3) -> tuple[float, float, str]:
    """Best wall time (s) and peak RSS (MB) of `python -c code` over `repeat` fresh processes."""
    best, rss, out = float("inf"), 0.0, ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        p = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT)
        dt = time.perf_counter() - t0
        if p.returncode:
            raise RuntimeError(p.stderr)
        best = min(best, dt)
        rss = max(rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, before / 1024)
        out = p.stdout.strip()
    return best, rss, out


def presets():
    print("| command | wall (s) | peak RSS (MB) | result |\n|---|---|---|---|")
    for name in ("llama2-7b", "llama3-8b", "mistral-7b", "qwen2-7b", "opt-6.7b"):
        dt, rss, out = measure(f"from llmfab.cli import main; main(['inspect', '{name}', '--json'])")
        params = json.loads(out)["parameters"]
        print(f"| `llmfab inspect {name}` | {dt:.2f} | {rss:.0f} | {params / 1e9:.3f} B parameters |")


def fixtures():
    print("\n| fixture | import + fuse (ms) | interpret 16 tokens (ms) |\n|---|---|---|")
    code = """
import time, numpy as np
from llmfab.flow import load_model, interpret
t0 = time.perf_counter(); g = load_model('{f}', seq_len=16); t1 = time.perf_counter()
interpret(g, np.arange(16)[None] % 100); t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""
    for f in sorted((ROOT / "tests/fixtures").glob("*.onnx")):
        if "kvcache" in f.name:
            continue
        _, _, out = measure(code.format(f=f), repeat=1)
        imp, run = map(float, out.split())
        print(f"| {f.name} | {imp:.0f} | {run:.1f} |")


def deep():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=32000, hidden_size=128, intermediate_size=344, num_hidden_layers=32, use_cache=False,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "llama32.onnx"
        ids = torch.ones((1, 8), dtype=torch.long)
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes={"input_ids": {1: "s"}, "attention_mask": {1: "s"}},
                          opset_version=14, dynamo=False)
        import onnx
        m = onnx.load(str(path))
        nodes = len(m.graph.node)
        m.ir_version = min(m.ir_version, 10)
        onnx.save(m, str(path))
        venv = ROOT / ".venv/bin/python"
        code = f"""
import time
from llmfab.flow import load_model
t0 = time.perf_counter(); g = load_model('{path}', seq_len=128); print(time.perf_counter() - t0, len(g))
"""
        p = subprocess.run([str(venv), "-c", code], capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            raise RuntimeError(p.stderr)
        t, n = p.stdout.split()
        print(f"\n32-layer LLaMA (TorchScript, opset 14, {nodes} ONNX nodes, hidden 128): "
              f"import + fusion at seq 128 in {float(t):.2f} s -> {n} IR nodes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--deep", action="store_true", help="also export and import a 32-layer LLaMA (needs torch)")
    a = ap.parse_args()
    if a.deep:
        deep()
    else:
        presets()
        fixtures()
