#!/usr/bin/env python3
"""Export tiny random-initialised decoder LLMs to ONNX test fixtures.

Builds tiny decoder-only models (llama, qwen2, mistral, gpt2, opt; falcon and phi with
attention and MLP in parallel off one shared norm; mistral_kv1, Mistral with a single KV head;
phi3 (phi3_longrope: Phi-3-128k's longrope scaling), qwen3, llama32 (llama3 RoPE scaling, tied embeddings),
gpt_neox, stablelm (stablelm_qkln: stablelm-2-12b's per-head q/k LayerNorms, parallel residual) and smollm
(a LLaMA with hidden 96 and FFN 160, widths that are not whole 128-groups); gemma and gemma2: GeGLU,
RMSNorm with 1 + w, sqrt(hidden)-scaled tied embeddings, and Gemma2's post-norms and logit soft-capping)
from HuggingFace ``transformers`` config classes with a fixed seed (no downloads),
exports each with both PyTorch ONNX exporters (TorchScript and dynamo), plus
with-KV-cache decoder variants, verifies every file against PyTorch with
onnxruntime, and writes ``manifest.json`` describing the fixtures.

Usage (dev-only dependencies, see ``pyproject.toml`` ``[export]`` extra)::

    python examples/export_tiny.py --out tests/fixtures

Exits non-zero if any export fails verification or fails to export at all
(``--allow-export-failures`` tolerates the latter: such variants are then only
reported, with the error, under ``"failed"`` in the manifest).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import traceback
import zlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    FalconConfig,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)
from transformers.cache_utils import DynamicLayer

SEED = 1234
MAX_IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14
ATOL = 1e-4
ATOL_FP16 = 2e-3  # fp16 exports: onnxruntime and PyTorch both compute in half precision
ATTN_IMPL = "sdpa"

# Example shapes used at export time. Batch 2 (not 1) so torch.export does not
# specialise the batch dim to 1; seq 8 for the static fallback.
EXPORT_BATCH = 2
EXPORT_SEQ = 8
EXPORT_PAST = 4

# Tiny shared dimensions.
VOCAB = 128
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 64
MAX_POS = 128

# New families go at the end. The first eight seed from SEED + their index here; later ones from
# their name (family_seed), so branches that add families side by side cannot shift each other's weights.
FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "falcon", "phi", "mistral_kv1",
            "phi3", "qwen3", "llama32", "gpt_neox", "stablelm", "smollm", "gemma", "gemma2", "stablelm_qkln",
            "phi3_longrope"]
INDEX_SEEDED = 8
# gemma and gemma2 were added on a branch of their own as index 8 and 9 (SEED + index); their
# committed fixtures keep those seeds.
FIXED_SEEDS = {"gemma": SEED + 8, "gemma2": SEED + 9}
CLAIMED = FAMILIES[:5]  # exported with both exporters at several opsets; the others with dynamo at 18
# ... and with TorchScript at opset 14 too (the ones whose TorchScript export works with transformers 5;
# phi3_longrope's does not: "Exporting the operator 'aten::copy' to ONNX opset version 14 is not
# supported", from transformers' in-place update of the rotary frequencies)
TS_TOO = ("llama32", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "stablelm", "smollm", "stablelm_qkln")
# Gemma2's soft-caps, small so the tiny random model's scores and logits reach the tanh's bend
# (gemma-2-2b: 50 and 30); its attention is eager (transformers' sdpa path has no soft-cap)
GEMMA2_ATTN_CAP, GEMMA2_FINAL_CAP = 2.0, 1.0
LONGROPE_ORIGINAL = 16  # phi3_longrope's original_max_position_embeddings: longer prompts take the long factors
GEMMA2_INIT = 0.15  # initializer_range, so that scores and logits are large enough to be capped


def family_seed(family: str) -> int:
    i = FAMILIES.index(family)
    if family in FIXED_SEEDS:
        return FIXED_SEEDS[family]
    return SEED + i if i < INDEX_SEEDED else SEED + zlib.crc32(family.encode()) % 10000


def attn_impl(family: str) -> str:
    return "eager" if family == "gemma2" else ATTN_IMPL


def make_config(family: str):
    common = dict(vocab_size=VOCAB, use_cache=False, torch_dtype="float32")
    if family == "llama":
        return LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
            max_position_embeddings=MAX_POS, **common,
        )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
            max_position_embeddings=MAX_POS, **common,
        )
    if family in ("mistral", "mistral_kv1"):
        return MistralConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=1 if family == "mistral_kv1" else KV_HEADS,
            head_dim=HEAD_DIM, max_position_embeddings=MAX_POS, **common,
        )
    if family == "falcon":  # falcon-7b's layout: multi-query (one KV head), fused qkv, one shared LayerNorm
        return FalconConfig(
            hidden_size=HIDDEN, ffn_hidden_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, new_decoder_architecture=False, multi_query=True, parallel_attn=True,
            bias=False, alibi=False, max_position_embeddings=MAX_POS, **common,
        )
    if family == "phi":  # phi-2's layout: one shared LayerNorm, partial rotary, gelu_new, biased LM head
        return PhiConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=MAX_POS,
            rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"},
            **common,
        )
    if family == "gemma":  # gemma-2b's layout (scaled down): GeGLU, RMSNorm (1 + w), tied, sqrt(hidden) embedding
        return GemmaConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=MAX_POS, **common,
        )
    if family == "gemma2":  # gemma-2-2b's layout: Gemma's plus post-norms, soft-caps, query_pre_attn_scalar
        return Gemma2Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=MAX_POS,
            query_pre_attn_scalar=2 * HEAD_DIM, attn_logit_softcapping=GEMMA2_ATTN_CAP,
            final_logit_softcapping=GEMMA2_FINAL_CAP, initializer_range=GEMMA2_INIT, **common,
        )
    if family == "phi3":  # Phi-3's layout: fused qkv_proj and gate_up_proj, RMSNorm, SwiGLU
        return Phi3Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
            original_max_position_embeddings=MAX_POS, pad_token_id=0, bos_token_id=0, eos_token_id=0, **common,
        )
    if family == "phi3_longrope":  # Phi-3-128k's longrope: short factors up to the original length, long beyond
        return Phi3Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
            original_max_position_embeddings=LONGROPE_ORIGINAL,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0, 3.0],
                             "long_factor": [1.2, 2.5, 4.0, 8.0],
                             "original_max_position_embeddings": LONGROPE_ORIGINAL},
            pad_token_id=0, bos_token_id=0, eos_token_id=0, **common,
        )
    if family == "qwen3":  # Qwen3: RMSNorm over head_dim on each q and k head, no q/k/v bias
        return Qwen3Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
            max_position_embeddings=MAX_POS, **common,
        )
    if family in ("llama32", "smollm"):
        # Llama-3.2's llama3 RoPE scaling, with original_max_position_embeddings 64 so that the three
        # bands (kept, smoothed, divided by factor) each hold some of head_dim 8's frequencies; tied
        # embeddings. smollm: SmolLM's shape (tied, GQA 3:1), hidden 96 / FFN 160 (not 128-multiples).
        if family == "llama32":
            dims = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                        num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, num_hidden_layers=LAYERS)
            rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        else:
            dims = dict(hidden_size=96, intermediate_size=160, num_attention_heads=6, num_key_value_heads=2,
                        head_dim=16, num_hidden_layers=1)   # one layer: the file stays ~330 KB
            rope = {"rope_type": "default", "rope_theta": 10000.0}
        return LlamaConfig(max_position_embeddings=MAX_POS, tie_word_embeddings=True,
                           rope_parameters=rope, **dims, **common)
    if family == "gpt_neox":  # Pythia's layout: fused per-head qkv, partial rotary (25%), parallel residual
        return GPTNeoXConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=MAX_POS, use_parallel_residual=True,
            rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "rope_type": "default"},
            **common,
        )
    if family in ("stablelm", "stablelm_qkln"):  # StableLM-2's layout: LayerNorm, partial rotary (25%), SwiGLU, GQA
        # stablelm_qkln: stablelm-2-12b's, a LayerNorm of its own (no bias) on each q and k head, and
        # attention and MLP in parallel off one shared norm
        extra = dict(qk_layernorm=True, use_parallel_residual=True) if family == "stablelm_qkln" else {}
        return StableLmConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
            rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "rope_type": "default"},
            **extra, **common,
        )
    if family == "gpt2":
        return GPT2Config(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTERMEDIATE,
            n_positions=MAX_POS, bos_token_id=0, eos_token_id=0, **common,
        )
    if family == "opt":
        return OPTConfig(
            hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN,
            max_position_embeddings=MAX_POS, **common,
        )
    raise ValueError(family)


def config_summary(family: str, cfg) -> dict[str, Any]:
    """Architecture facts an importer needs, normalised across families."""
    def g(*names, default=None):
        for n in names:
            v = getattr(cfg, n, None)
            if v is not None:
                return v
        return default

    heads = g("num_attention_heads", "n_head")
    hidden = g("hidden_size", "n_embd")
    rope = None
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rope = rp.get("rope_theta")
    if rope is None:
        rope = getattr(cfg, "rope_theta", None)
    inter = g("intermediate_size", "ffn_dim", "n_inner")
    summary = {
        "model_type": cfg.model_type,
        "num_layers": g("num_hidden_layers", "n_layer"),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": g("num_key_value_heads", default=heads),
        "head_dim": g("head_dim", default=hidden // heads),
        "vocab": cfg.vocab_size,
        "intermediate": inter,
        "max_position_embeddings": g("max_position_embeddings", "n_positions"),
        "rms_norm_eps": getattr(cfg, "rms_norm_eps", None),
        "layer_norm_eps": g("layer_norm_epsilon", "layer_norm_eps"),
        "rope_theta": rope,
        "activation": g("hidden_act", "activation_function"),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "attention_bias": getattr(cfg, "attention_bias", None),
        "partial_rotary_factor": rp.get("partial_rotary_factor") if isinstance(rp, dict) else None,
        "parallel_attn": family in ("falcon", "phi", "gpt_neox", "stablelm_qkln"),
        "sliding_window": getattr(cfg, "sliding_window", None),
        "use_sliding_window": getattr(cfg, "use_sliding_window", None),
        "positions": "rope" if rope is not None else "learned",
    }
    if family == "opt":
        summary["do_layer_norm_before"] = cfg.do_layer_norm_before
        summary["learned_position_offset"] = 2  # OPTLearnedPositionalEmbedding offset
    if family == "qwen2":
        summary["attention_bias"] = True  # q/k/v projections carry bias in Qwen2
    if isinstance(rp, dict) and rp.get("rope_type", "default") != "default":
        summary["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    if family == "qwen3":
        summary["qk_norm"] = True
    if family == "stablelm_qkln":
        summary["qk_layernorm"] = True  # one LayerNorm per q and per k head, each with its own weight
    if family == "gemma2":
        summary.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                       attn_logit_softcapping=cfg.attn_logit_softcapping,
                       final_logit_softcapping=cfg.final_logit_softcapping)
    return summary


def build_model(family: str):
    cfg = make_config(family)
    cfg._attn_implementation = attn_impl(family)
    torch.manual_seed(family_seed(family))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_impl(family), dtype=torch.float32)
    # HF init gives norm weights = 1 and biases = 0; perturb so tests exercise them.
    with torch.no_grad():
        for mod in model.modules():
            cls = type(mod).__name__
            if isinstance(mod, torch.nn.LayerNorm) or cls.endswith("RMSNorm"):
                if getattr(mod, "weight", None) is not None:
                    # Gemma's RMSNorm multiplies by 1 + w (HF inits w = 0)
                    one = 0.0 if cls.startswith("Gemma") else 1.0
                    mod.weight.copy_(one + 0.1 * torch.randn_like(mod.weight))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
        for name, p in model.named_parameters():
            if name.endswith("bias") and torch.count_nonzero(p) == 0:
                p.copy_(0.02 * torch.randn_like(p))
    model.eval()
    model.config.use_cache = False
    return model


# --------------------------------------------------------------------------
# Wrappers with flat tensor signatures.


class NoCacheWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


def make_cache(flat_past, n_layers: int) -> DynamicCache:
    """Build a DynamicCache from [k0, v0, k1, v1, ...] without the lazy empty-tensor cat."""
    cache = DynamicCache()
    cache.layers = []
    for i in range(n_layers):
        layer = DynamicLayer()
        k, v = flat_past[2 * i], flat_past[2 * i + 1]
        layer.dtype, layer.device = k.dtype, k.device
        layer.keys, layer.values = k, v
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache


class KVCacheWrapper(torch.nn.Module):
    def __init__(self, model, n_layers: int):
        super().__init__()
        self.model = model
        self.n_layers = n_layers

    def forward(self, input_ids, attention_mask, *flat_past):
        cache = make_cache(flat_past, self.n_layers)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask,
            past_key_values=cache, use_cache=True,
        )
        res = [out.logits]
        for layer in out.past_key_values.layers:
            res.append(layer.keys)
            res.append(layer.values)
        return tuple(res)


# --------------------------------------------------------------------------


@dataclass
class Variant:
    family: str
    exporter: str  # "ts" | "dynamo"
    opset: int  # always passed explicitly (torch 2.13's dynamo default is 20, not 18)
    kv_cache: bool = False
    ext_data: bool = False
    keep_node_metadata: bool = False  # dynamo only
    fp16: bool = False  # export the model in half precision (model.half())

    @property
    def name(self) -> str:
        base = f"{self.family}_{self.exporter}_op{self.opset}"
        if self.kv_cache:
            base += "_kvcache"
        if self.ext_data:
            base += "_extdata"
        if self.fp16:
            base += "_fp16"
        return base

    def relpath(self) -> str:
        if self.ext_data:
            return f"{self.family}_{self.exporter}_extdata/model.onnx"
        return f"{self.name}.onnx"


def variants() -> list[Variant]:
    vs: list[Variant] = []
    for fam in CLAIMED:
        vs.append(Variant(fam, "ts", 14))
        if fam in ("llama", "gpt2"):
            vs.append(Variant(fam, "ts", 17))
        vs.append(Variant(fam, "dynamo", 18, keep_node_metadata=(fam == "llama")))
        if fam == "qwen2":
            vs.append(Variant(fam, "dynamo", 20))
    for fam in FAMILIES[len(CLAIMED):]:
        vs.append(Variant(fam, "dynamo", 18))
        if fam in TS_TOO:
            vs.append(Variant(fam, "ts", 14))
    for fam in ("llama", "gpt2"):
        vs.append(Variant(fam, "ts", 14, kv_cache=True))
        vs.append(Variant(fam, "dynamo", 18, kv_cache=True))
    vs.append(Variant("llama", "dynamo", 18, ext_data=True))
    vs.append(Variant("llama", "ts", 14, fp16=True))
    vs.append(Variant("gpt2", "dynamo", 18, fp16=True))
    return vs


def io_names(n_layers: int, kv: bool):
    ins = ["input_ids", "attention_mask"]
    outs = ["logits"]
    if kv:
        for i in range(n_layers):
            ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


def example_inputs(cfg_sum, kv: bool, batch: int, seq: int, past: int, gen: torch.Generator):
    ids = torch.randint(0, cfg_sum["vocab"], (batch, seq), generator=gen, dtype=torch.int64)
    total = seq + (past if kv else 0)
    mask = torch.ones((batch, total), dtype=torch.int64)
    args = [ids, mask]
    if kv:
        shape = (batch, cfg_sum["kv_heads"], past, cfg_sum["head_dim"])
        for _ in range(cfg_sum["num_layers"]):
            args.append(torch.randn(shape, generator=gen))
            args.append(torch.randn(shape, generator=gen))
    return tuple(args)


def ts_dynamic_axes(ins, outs, kv: bool):
    ax: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total_seq" if kv else "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    if kv:
        for n in ins[2:]:
            ax[n] = {0: "batch", 2: "past_seq"}
        for n in outs[1:]:
            ax[n] = {0: "batch", 2: "total_seq"}
    return ax


def dynamo_dynamic_shapes(ins, kv: bool):
    """Named torch.export Dims so the ONNX graph gets readable symbolic dims."""
    Dim = torch.export.Dim
    batch, seq = Dim("batch", min=1, max=1024), Dim("seq", min=1, max=MAX_POS)
    if not kv:
        return ({0: batch, 1: seq}, {0: batch, 1: seq})
    # torch.export (2.13 / transformers 5.23) guards 4 <= total_seq during tracing and rejects a
    # wider range; the guard is not baked into the ONNX graph (total_seq = 2 runs fine in ORT).
    past, total = Dim("past_seq", min=1, max=MAX_POS), Dim("total_seq", min=4, max=2 * MAX_POS)
    # KVCacheWrapper.forward(input_ids, attention_mask, *flat_past): the varargs are one tuple.
    return ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: past} for _ in ins[2:]))


def fix_and_save(model_proto: onnx.ModelProto, path: str, ext_data: bool) -> str | None:
    note = None
    if model_proto.ir_version > MAX_IR_VERSION:
        note = f"ir_version lowered {model_proto.ir_version} -> {MAX_IR_VERSION}"
        model_proto.ir_version = MAX_IR_VERSION
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if ext_data:
        loc = os.path.basename(path) + ".data"
        if os.path.exists(os.path.join(os.path.dirname(path), loc)):
            os.remove(os.path.join(os.path.dirname(path), loc))
        onnx.save(model_proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=loc, size_threshold=1024)
        os.chmod(os.path.join(os.path.dirname(path), loc), 0o644)  # onnx creates it 0600
    else:
        onnx.save(model_proto, path, save_as_external_data=False)
    onnx.checker.check_model(path, full_check=True)
    return note


def do_export(v: Variant, model, cfg_sum, path: str) -> dict[str, Any]:
    """Export one variant to ``path``. Returns info about dynamic-ness."""
    n_layers = cfg_sum["num_layers"]
    ins, outs = io_names(n_layers, v.kv_cache)
    wrapper = KVCacheWrapper(model, n_layers) if v.kv_cache else NoCacheWrapper(model)
    wrapper.eval()
    gen = torch.Generator().manual_seed(SEED)
    args = example_inputs(cfg_sum, v.kv_cache, EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST, gen)
    info: dict[str, Any] = {"dynamic_seq": True, "dynamic_batch": True, "static_seq": None, "notes": []}
    with tempfile.TemporaryDirectory() as td:
        tmp = os.path.join(td, "m.onnx")
        if v.exporter == "ts":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, args, tmp, dynamo=False, opset_version=v.opset,
                    input_names=ins, output_names=outs,
                    dynamic_axes=ts_dynamic_axes(ins, outs, v.kv_cache),
                    do_constant_folding=True,
                )
            proto = onnx.load(tmp)
        else:
            kw = dict(dynamo=True, input_names=ins, output_names=outs, external_data=False,
                      opset_version=v.opset)
            try:
                prog = torch.onnx.export(wrapper, args, dynamic_shapes=dynamo_dynamic_shapes(ins, v.kv_cache), **kw)
            except Exception as e:  # fall back to static shapes
                msg = f"dynamic export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); static shapes used"
                info["notes"].append(msg)
                print(f"  [{v.name}] {msg}")
                prog = torch.onnx.export(wrapper, args, **kw)
                info.update(dynamic_seq=False, dynamic_batch=False, static_seq=EXPORT_SEQ)
            prog.save(tmp, external_data=False)
            proto = onnx.load(tmp)
            if not v.keep_node_metadata:
                # The dynamo exporter attaches per-node metadata_props (module namespace, stack
                # info) that double the file size; keep it in one fixture only.
                stripped = 0
                for node in proto.graph.node:
                    stripped += len(node.metadata_props)
                    del node.metadata_props[:]
                for fn in proto.functions:
                    for node in fn.node:
                        stripped += len(node.metadata_props)
                        del node.metadata_props[:]
                if stripped:
                    info["notes"].append(f"stripped {stripped} node metadata_props entries (size)")
            # Check which dims actually came out symbolic.
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            info["dynamic_batch"] = bool(dims[0].dim_param)
            info["dynamic_seq"] = bool(dims[1].dim_param)
            if not info["dynamic_seq"]:
                info["static_seq"] = dims[1].dim_value
    got_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if got_opset != v.opset:
        raise RuntimeError(f"asked for opset {v.opset}, exporter wrote {got_opset}")
    note = fix_and_save(proto, path, v.ext_data)
    if note:
        info["notes"].append(note)
    return info


def verify(v: Variant, model, cfg_sum, path: str, info) -> list[dict[str, Any]]:
    if v.family == "phi3_longrope":
        # tracing leaves HF's lazily cached long_inv_freq a traced value (PyTorch then gives 2e-3 off
        # past the original length); a fresh model of the same seed is the reference
        model = build_model(v.family)
    n_layers = cfg_sum["num_layers"]
    ins, outs = io_names(n_layers, v.kv_cache)
    wrapper = KVCacheWrapper(model, n_layers) if v.kv_cache else NoCacheWrapper(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess_in = [i.name for i in sess.get_inputs()]
    sess_out = [o.name for o in sess.get_outputs()]
    assert sess_in == ins, (sess_in, ins)
    assert sess_out == outs, (sess_out, outs)
    if info["dynamic_seq"]:
        cases = [(2, 5, 3), (1, 9, 6), (3, 1, 7), (1, 1, 1)]
        if v.family == "phi3_longrope":  # past the original length: the long factors
            cases.append((1, 3 * LONGROPE_ORIGINAL // 2, 0))
        if v.kv_cache:
            cases.append((2, 4, 0))  # prefill through the cache graph with an empty past
        if not info["dynamic_batch"]:
            cases = [(EXPORT_BATCH, s_, p_) for _, s_, p_ in cases]
    else:
        cases = [(EXPORT_BATCH, info["static_seq"], EXPORT_PAST)]
    gen = torch.Generator().manual_seed(SEED + 7)
    results = []
    for batch, seq, past in cases:
        args = example_inputs(cfg_sum, v.kv_cache, batch, seq, past, gen)
        with torch.no_grad():
            if v.kv_cache:
                ref = [t.numpy() for t in wrapper(*args)]
                # Independent reference for logits: plain HF call with a fresh cache.
                cache = make_cache(args[2:], n_layers)
                ref0 = model(input_ids=args[0], attention_mask=args[1], past_key_values=cache,
                             use_cache=True).logits.numpy()
                assert np.allclose(ref0, ref[0])
            else:
                ref = [model(input_ids=args[0], attention_mask=args[1], use_cache=False).logits.numpy()]
        row = {"batch": batch, "seq": seq, "past": past if v.kv_cache else 0}
        try:
            got = sess.run(None, {n: a.numpy() for n, a in zip(ins, args)})
        except Exception as e:  # noqa: BLE001 - reported as a verification failure
            row.update(logits_diff=float("inf"), max_diff_all_outputs=float("inf"),
                       error=f"{type(e).__name__}: {str(e)[:500]}")
            print(f"  ORT ERROR b={batch} s={seq} p={past}: {row['error']}")
            results.append(row)
            continue
        diffs = [float(np.max(np.abs(g - r))) if g.shape == r.shape else float("inf") for g, r in zip(got, ref)]
        row.update(logits_diff=diffs[0], max_diff_all_outputs=max(diffs))
        results.append(row)
    return results


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    c = collections.Counter(n.op_type for n in proto.graph.node)
    for f in proto.functions:
        c.update(n.op_type for n in f.node)
    return dict(sorted(c.items()))


def value_info(vi) -> dict[str, Any]:
    t = vi.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": vi.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": shape}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", help="output directory")
    ap.add_argument("--only", default=None, help="comma-separated fixture-name substrings to export")
    ap.add_argument("--allow-export-failures", action="store_true",
                    help="exit 0 even if some variant could not be exported (still fails on bad numerics)")
    ap.add_argument("--clean", action="store_true", help="remove existing *.onnx/*_extdata in --out first")
    args = ap.parse_args(argv)

    torch.use_deterministic_algorithms(True, warn_only=True)
    out = args.out
    os.makedirs(out, exist_ok=True)
    if args.clean:
        for f in os.listdir(out):
            p = os.path.join(out, f)
            if f.endswith(".onnx"):
                os.remove(p)
            elif f.endswith("_extdata") and os.path.isdir(p):
                shutil.rmtree(p)

    vs = variants()
    if args.only:
        keys = args.only.split(",")
        vs = [v for v in vs if any(k in v.name for k in keys)]

    models: dict[str, Any] = {}
    cfgs: dict[str, dict] = {}
    entries, failed, bad = [], [], []
    rows = []
    for v in vs:
        if v.family not in models:
            models[v.family] = build_model(v.family)
            cfgs[v.family] = config_summary(v.family, models[v.family].config)
        model, cs = models[v.family], cfgs[v.family]
        if v.fp16:  # the same weights, rounded to half precision
            import copy
            model = copy.deepcopy(model).half()
        atol = ATOL_FP16 if v.fp16 else ATOL
        path = os.path.join(out, v.relpath())
        print(f"exporting {v.relpath()} ...", flush=True)
        try:
            info = do_export(v, model, cs, path)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            print(f"  EXPORT FAILED: {err.splitlines()[0][:500]}")
            traceback.print_exc(limit=3, file=sys.stdout)
            failed.append({"fixture": v.relpath(), "error": err[:2000]})
            for p in (path, path + ".data"):
                if os.path.exists(p):
                    os.remove(p)
            continue
        try:
            res = verify(v, model, cs, path, info)
        except Exception as e:
            res = [{"batch": -1, "seq": -1, "past": -1, "logits_diff": float("inf"),
                    "max_diff_all_outputs": float("inf"), "error": f"{type(e).__name__}: {e}"}]
            print(f"  VERIFY ERROR: {type(e).__name__}: {str(e)[:500]}")
        ok = all(r["max_diff_all_outputs"] < atol for r in res)
        if not ok:
            bad.append(v.relpath())
        proto = onnx.load(path, load_external_data=False)
        size = os.path.getsize(path) + (os.path.getsize(path + ".data") if v.ext_data else 0)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        entry = {
            "file": v.relpath(),
            "family": v.family,
            "exporter": "torchscript" if v.exporter == "ts" else "dynamo",
            "opset": opset,
            "ir_version": proto.ir_version,
            "has_kv_cache": v.kv_cache,
            "external_data": (v.relpath() + ".data").split("/")[-1] if v.ext_data else None,
            "dynamic_seq": info["dynamic_seq"],
            "dynamic_batch": info["dynamic_batch"],
            "static_seq": info["static_seq"],
            "example_past_seq": EXPORT_PAST if v.kv_cache else None,
            "attn_implementation": attn_impl(v.family),
            "node_metadata_props": v.keep_node_metadata if v.exporter == "dynamo" else False,
            "dtype": "float16" if v.fp16 else "float32",
            "size_bytes": size,
            "config": cs,
            "inputs": [value_info(i) for i in proto.graph.input],
            "outputs": [value_info(o) for o in proto.graph.output],
            "num_nodes": len(proto.graph.node),
            "num_functions": len(proto.functions),
            "op_counts": op_counts(proto),
            "verification": {"atol": atol, "ok": ok, "cases": res},
            "notes": info["notes"],
        }
        entries.append(entry)
        for r in res:
            rows.append((v.relpath(), size, r["batch"], r["seq"], r["past"], r["logits_diff"],
                         r["max_diff_all_outputs"], "ok" if r["max_diff_all_outputs"] < atol else "FAIL"))

    manifest = {
        "generator": "examples/export_tiny.py",
        "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "export_example_shapes": {"batch": EXPORT_BATCH, "seq": EXPORT_SEQ, "past_seq": EXPORT_PAST},
        "weight_init": "HF default init (std 0.02; gemma2: 0.15) with seed family_seed(family); LayerNorm/RMSNorm "
                       "weight=1+0.1*randn (Gemma's, which multiply by 1+w: 0.1*randn), norm bias=0.1*randn, "
                       "other all-zero biases=0.02*randn",
        "fixtures": entries,
        "failed": failed,
    }
    man_path = os.path.join(out, "manifest.json")
    old = json.load(open(man_path)) if os.path.exists(man_path) else {}
    for key, value in old.items():  # entries other scripts own (examples/train_tiny.py's "trained") stay
        manifest.setdefault(key, value)
    if args.only and old:
        # Merge into existing manifest; the top-level versions stay those of the earlier fixtures,
        # and each fixture exported now records its own.
        for e in entries:
            e["versions"] = manifest["versions"]
        manifest["versions"] = old.get("versions", manifest["versions"])
        names = {e["file"] for e in entries}
        manifest["fixtures"] = [e for e in old.get("fixtures", []) if e["file"] not in names] + entries
        order = {v.relpath(): i for i, v in enumerate(variants())}
        manifest["fixtures"].sort(key=lambda e: order.get(e["file"], len(order)))
    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")

    print()
    hdr = f"{'fixture':44s} {'bytes':>8s} {'B':>2s} {'S':>3s} {'P':>3s} {'logits_diff':>12s} {'max_diff':>12s}  status"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r[0]:44s} {r[1]:8d} {r[2]:2d} {r[3]:3d} {r[4]:3d} {r[5]:12.3e} {r[6]:12.3e}  {r[7]}")
    if failed:
        print("\nexport failures:")
        for f_ in failed:
            print(f"  {f_['fixture']}: {f_['error'].splitlines()[0][:300]}")
    total = sum(e["size_bytes"] for e in entries)
    print(f"\n{len(entries)} fixtures, {total} bytes total; {len(bad)} failed verification; {len(failed)} failed export")
    if bad:
        print("verification failures: " + ", ".join(bad))
        return 1
    if failed and not args.allow_export_failures:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
