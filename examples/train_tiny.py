#!/usr/bin/env python3
"""Train a tiny LLaMA on the Python standard library's sources (byte tokens) and export it.

A fixture for measuring accuracy on trained weights (issue 15, item 4), not a product: a
LlamaForCausalLM (hidden 128, 4 layers, 4 heads, FFN 384, vocab 256 = one token per byte,
128 positions) trained on CPU for a fixed number of steps on the top-level ``*.py`` files of
``sysconfig.get_paths()["stdlib"]`` (a sorted list: every machine with Python has them). Every
10th file of that list is held out: the evaluation set is cut from those files only.

Writes into ``--out`` (default tests/fixtures):

- ``trained_llama.onnx``: the dynamo export at opset 18 (the exporter and checks of
  examples/export_tiny.py), weights inside the file;
- ``trained_llama_eval.npy``: int64 token ids [16, 128] from the held-out files;
- ``trained_llama_calib.txt``: 8 x 128 whitespace-separated token ids from the training files,
  for GPTQ/SparseGPT calibration (``llmfab quantize --calibration``);
- an entry ``trained_llama.onnx`` under ``"trained"`` in ``manifest.json`` (config, corpus, training,
  perplexities; not under ``"fixtures"``, which the importer tests run over).

Deterministic for a given Python stdlib, torch build and thread count: fixed seeds, fixed file
list, ``torch.use_deterministic_algorithms``, 2 threads, a fixed number of steps (not a time
budget). Usage: ``python examples/train_tiny.py --out tests/fixtures`` (``make trained-fixture``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_tiny  # noqa: E402  (the exporter, its ONNX fix-ups and its onnxruntime check)

SEED = 4321
THREADS = 2
VOCAB = 256           # one token per byte
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 128, 4, 4, 4, 384
SEQ = 128             # training context = the model's positions = the evaluation length
BATCH = 32
STEPS = 200
LR, WARMUP = 3e-3, 40
HOLD_OUT_EVERY = 10   # files 0, 10, 20, ... of the sorted list are held out
EVAL_SEQS, CALIB_SEQS = 16, 8
NAME = "trained_llama"


def corpus() -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): the sorted top-level *.py files of the stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"), key=lambda p: p.name)
    held = [f for i, f in enumerate(files) if i % HOLD_OUT_EVERY == 0]
    train = [f for i, f in enumerate(files) if i % HOLD_OUT_EVERY != 0]
    return train, held


def token_bytes(files: list[Path]) -> np.ndarray:
    """The files' bytes, one token each, files separated by a newline."""
    return np.frombuffer(b"\n".join(f.read_bytes() for f in files), np.uint8).astype(np.int64)


def windows(ids: np.ndarray, count: int, length: int) -> np.ndarray:
    """`count` non-overlapping windows of `length` tokens spread evenly over `ids`."""
    starts = np.linspace(0, len(ids) - length, count).astype(np.int64)
    return np.stack([ids[s:s + length] for s in starts])


def make_model() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
                      max_position_embeddings=SEQ, tie_word_embeddings=False, use_cache=False,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = export_tiny.ATTN_IMPL
    torch.manual_seed(SEED)
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def perplexity(model, seqs: np.ndarray) -> float:
    model.eval()
    ids = torch.from_numpy(seqs)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).double(), ids[:, 1:].reshape(-1))
    return math.exp(float(nll))


def train(model, data: np.ndarray, eval_seqs: np.ndarray, steps: int, log) -> dict:
    gen = np.random.default_rng(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0, history = time.perf_counter(), []
    for step in range(steps):
        model.train()
        starts = gen.integers(0, len(data) - SEQ - 1, BATCH)
        batch = torch.from_numpy(np.stack([data[s:s + SEQ] for s in starts]))
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            ppl = perplexity(model, eval_seqs)
            history.append({"step": step, "train_loss": round(float(loss), 4), "eval_perplexity": round(ppl, 4)})
            log(f"step {step:4d}  train loss {float(loss):.4f}  held-out perplexity {ppl:.3f}  "
                f"{time.perf_counter() - t0:.0f} s")
    return {"seconds": round(time.perf_counter() - t0, 1), "history": history}


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", help="output directory")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    args = ap.parse_args(argv)

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_files, held_files = corpus()
    data, held = token_bytes(train_files), token_bytes(held_files)
    eval_seqs = windows(held, EVAL_SEQS, SEQ)
    calib = windows(data, CALIB_SEQS, SEQ)
    print(f"corpus: {len(train_files)} training files ({len(data):,} bytes), "
          f"{len(held_files)} held out ({len(held):,} bytes)", flush=True)

    model = make_model()
    run = train(model, data, eval_seqs, args.steps, lambda s: print(s, flush=True))
    model.eval()
    float_ppl = perplexity(model, eval_seqs)

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{NAME}.onnx")
    variant = export_tiny.Variant("llama", "dynamo", 18)
    cfg_sum = export_tiny.config_summary("llama", model.config)
    info = export_tiny.do_export(variant, model, cfg_sum, onnx_path)
    checks = export_tiny.verify(variant, model, cfg_sum, onnx_path, info)
    ok = all(r["max_diff_all_outputs"] < export_tiny.ATOL for r in checks)

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input_ids": eval_seqs, "attention_mask": np.ones_like(eval_seqs)})[0]
    lp = logits[:, :-1].astype(np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    ort_ppl = math.exp(-float(np.take_along_axis(lp, eval_seqs[:, 1:, None], -1).mean()))

    eval_path = os.path.join(args.out, f"{NAME}_eval.npy")
    np.save(eval_path, eval_seqs.astype(np.int64), allow_pickle=False)
    calib_path = os.path.join(args.out, f"{NAME}_calib.txt")
    with open(calib_path, "w") as f:
        f.write("\n".join(" ".join(map(str, row)) for row in calib) + "\n")

    proto = onnx.load(onnx_path)
    entry = {
        "file": f"{NAME}.onnx", "family": "llama", "exporter": "dynamo", "opset": 18,
        "ir_version": proto.ir_version, "has_kv_cache": False, "external_data": None,
        "dynamic_seq": info["dynamic_seq"], "dynamic_batch": info["dynamic_batch"], "static_seq": info["static_seq"],
        "attn_implementation": export_tiny.ATTN_IMPL, "dtype": "float32",
        "size_bytes": os.path.getsize(onnx_path), "sha256": sha256(onnx_path),
        "config": cfg_sum, "parameters": sum(p.numel() for p in model.parameters()),
        "inputs": [export_tiny.value_info(i) for i in proto.graph.input],
        "outputs": [export_tiny.value_info(o) for o in proto.graph.output],
        "op_counts": export_tiny.op_counts(proto),
        "verification": {"atol": export_tiny.ATOL, "ok": ok, "cases": checks},
        "generator": "examples/train_tiny.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "training": {
            "corpus": "top-level *.py files of sysconfig.get_paths()['stdlib'], sorted by name, bytes as tokens; "
                      f"every {HOLD_OUT_EVERY}th file (index 0, {HOLD_OUT_EVERY}, ...) held out",
            "train_files": len(train_files), "train_bytes": int(len(data)),
            "held_out_files": [f.name for f in held_files], "held_out_bytes": int(len(held)),
            "seed": SEED, "threads": THREADS, "steps": args.steps, "batch": BATCH, "seq": SEQ,
            "optimizer": f"AdamW lr {LR} betas (0.9, 0.95) wd 0.1, {WARMUP} warmup steps, cosine to 0, clip 1.0",
            "seconds": run["seconds"], "history": run["history"],
        },
        "eval": {"file": f"{NAME}_eval.npy", "shape": list(eval_seqs.shape), "dtype": "int64",
                 "sha256": sha256(eval_path),
                 "what": f"{EVAL_SEQS} windows of {SEQ} tokens spread evenly over the held-out files",
                 "float_perplexity_torch": round(float_ppl, 5), "float_perplexity_onnxruntime": round(ort_ppl, 5)},
        "calibration": {"file": f"{NAME}_calib.txt", "shape": list(calib.shape),
                        "what": f"{CALIB_SEQS} windows of {SEQ} tokens spread evenly over the training files"},
    }
    man_path = os.path.join(args.out, "manifest.json")
    manifest = json.load(open(man_path)) if os.path.exists(man_path) else {"fixtures": []}
    # under "trained", not "fixtures": the tests parametrized over the random-initialised exports stay so
    manifest["trained"] = [e for e in manifest.get("trained", []) if e["file"] != entry["file"]] + [entry]
    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {onnx_path} ({entry['size_bytes']:,} bytes, {entry['parameters']:,} parameters), {eval_path}, "
          f"{calib_path}; held-out perplexity {float_ppl:.4f} (torch), {ort_ppl:.4f} (onnxruntime); "
          f"training {run['seconds']} s; export check {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
