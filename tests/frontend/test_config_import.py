"""Config-only import (frontend/config.py): presets, shapes, errors, and execution with random weights."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from llmfab import ir
from llmfab.frontend.config import (PRESET_DIR, PRESETS, SUPPORTED_FAMILIES, ConfigError, load_config,
                                    load_preset, rope_cos_sin, with_random_weights)
from llmfab.ir import AbsentData, ConstAttrs, OpKind
from llmfab.passes.summary import summarize

# preset -> (parameters, layers, heads, kv_heads, head_dim, weight dtype)
PRESET_FACTS = {
    "llama2-7b": (6_738_415_616, 32, 32, 32, 128, ir.DType.FP16),
    "llama3-8b": (8_030_261_248, 32, 32, 8, 128, ir.DType.BF16),
    "mistral-7b": (7_241_732_096, 32, 32, 8, 128, ir.DType.BF16),
    "qwen2-7b": (7_615_616_512, 28, 28, 4, 128, ir.DType.BF16),
    "opt-6.7b": (6_658_473_984, 32, 32, 32, 128, ir.DType.FP16),
    "llama-3.2-1b": (1_235_814_400, 16, 32, 8, 64, ir.DType.BF16),
    "llama-3.2-3b": (3_212_749_824, 28, 24, 8, 128, ir.DType.BF16),
    "smollm-360m": (361_821_120, 32, 15, 5, 64, ir.DType.FP32),
    "phi-3-mini": (3_821_079_552, 32, 32, 32, 96, ir.DType.BF16),
    "qwen3-8b": (8_190_735_360, 36, 32, 8, 128, ir.DType.BF16),
    "gemma-2b": (2_506_172_416, 18, 8, 1, 256, ir.DType.BF16),     # the tied table counted once
    "gemma-7b": (8_537_680_896, 28, 16, 16, 256, ir.DType.BF16),
    "gemma2-2b": (2_614_341_888, 26, 8, 4, 256, ir.DType.FP32),
    "pythia-1b": (1_011_781_632, 16, 8, 8, 256, ir.DType.FP16),
    "stablelm-2-1.6b": (1_644_515_328, 24, 32, 32, 64, ir.DType.FP16),
}
# Gemma2's scale query_pre_attn_scalar^-0.5 / attn_logit_softcapping (the 1 / cap folded), and its caps
GEMMA2_2B = dict(scale=256 ** -0.5 / 50.0, softcap=50.0, final=30.0)


def weights(g: ir.Graph) -> list[ir.Node]:
    return [n for n in g.nodes() if n.op is OpKind.CONST and n.attrs.weight]


def op_counts(g: ir.Graph) -> Counter:
    return Counter(n.op for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT))


def tiny(family: str, **over) -> dict:
    """Tiny configs in the shapes examples/export_tiny.py uses (hidden 32, 2 layers, GQA 4/2)."""
    base = {
        "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-6,
                      max_position_embeddings=128, torch_dtype="float32"),
        "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rope_theta=1e6,
                      torch_dtype="float32"),
        "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128, sliding_window=64,
                        torch_dtype="float32"),
        "gemma": dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128, torch_dtype="float32"),
        "gemma2": dict(model_type="gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128,
                       query_pre_attn_scalar=16, attn_logit_softcapping=2.0, final_logit_softcapping=1.0,
                       torch_dtype="float32"),
        "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128,
                     vocab_size=128, activation_function="gelu_new", torch_dtype="float32"),
        "opt": dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=32, max_position_embeddings=128, vocab_size=128,
                    do_layer_norm_before=True, torch_dtype="float32"),
        "phi3": dict(model_type="phi3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
                     max_position_embeddings=128, sliding_window=64, torch_dtype="float32"),
        "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128, rope_theta=1e6,
                      torch_dtype="float32"),
        "gpt_neox": dict(model_type="gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=128, rotary_pct=0.5, rotary_emb_base=10000,
                         use_parallel_residual=True, torch_dtype="float32"),
        "stablelm": dict(model_type="stablelm", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128, partial_rotary_factor=0.25,
                         use_qkv_bias=True, torch_dtype="float32"),
    }[family]
    return {**base, **over}


# ---------------------------------------------------------------------------------------------
# presets


LLAMA32_ROPE = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
# Fields of the Hugging Face config.json files that the presets must reproduce exactly.
PRESET_FIELDS = {
    "llama2-7b": dict(model_type="llama", max_position_embeddings=4096, rms_norm_eps=1e-5, torch_dtype="float16",
                      tie_word_embeddings=False, rope_scaling=None),
    "llama3-8b": dict(model_type="llama", max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      torch_dtype="bfloat16", tie_word_embeddings=False, vocab_size=128256),
    "mistral-7b": dict(model_type="mistral", max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                       sliding_window=4096, torch_dtype="bfloat16", tie_word_embeddings=False),
    "qwen2-7b": dict(model_type="qwen2", max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1e6,
                     sliding_window=131072, use_sliding_window=False, torch_dtype="bfloat16",
                     tie_word_embeddings=False, vocab_size=152064, intermediate_size=18944),
    "opt-6.7b": dict(model_type="opt", max_position_embeddings=2048, ffn_dim=16384, do_layer_norm_before=True,
                     word_embed_proj_dim=4096, activation_function="relu", torch_dtype="float16"),
    "llama-3.2-1b": dict(model_type="llama", max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=LLAMA32_ROPE, tie_word_embeddings=True, torch_dtype="bfloat16",
                         hidden_size=2048, intermediate_size=8192, head_dim=64),
    "llama-3.2-3b": dict(model_type="llama", max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=LLAMA32_ROPE, tie_word_embeddings=True, torch_dtype="bfloat16",
                         hidden_size=3072, intermediate_size=8192, head_dim=128),
    "smollm-360m": dict(model_type="llama", max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                        tie_word_embeddings=True, hidden_size=960, intermediate_size=2560, vocab_size=49152),
    "phi-3-mini": dict(model_type="phi3", max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                       rope_scaling=None, sliding_window=2047, tie_word_embeddings=False, vocab_size=32064,
                       hidden_size=3072, intermediate_size=8192),
    "qwen3-8b": dict(model_type="qwen3", max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000,
                     head_dim=128, use_sliding_window=False, tie_word_embeddings=False, vocab_size=151936,
                     intermediate_size=12288),
    "gemma-2b": dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, max_position_embeddings=8192,
                     rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="bfloat16", vocab_size=256000),
    "gemma-7b": dict(model_type="gemma", hidden_size=3072, intermediate_size=24576, max_position_embeddings=8192,
                     rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="bfloat16", vocab_size=256000),
    "gemma2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, max_position_embeddings=8192,
                      query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                      sliding_window=4096, hidden_activation="gelu_pytorch_tanh", torch_dtype="float32",
                      vocab_size=256000),
    "pythia-1b": dict(model_type="gpt_neox", hidden_size=2048, intermediate_size=8192, num_attention_heads=8,
                      max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                      hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False, vocab_size=50304),
    "stablelm-2-1.6b": dict(model_type="stablelm", hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                            num_key_value_heads=32, max_position_embeddings=4096, partial_rotary_factor=0.25,
                            rope_theta=10000, use_qkv_bias=True, qk_layernorm=False, use_parallel_residual=False,
                            hidden_act="silu", layer_norm_eps=1e-5, tie_word_embeddings=False, vocab_size=100352),
}


@pytest.mark.parametrize("name", sorted(PRESET_FIELDS))
def test_preset_files_are_plain_hf_configs(name):
    assert set(PRESET_FIELDS) == set(PRESETS)
    cfg = json.loads((PRESET_DIR / PRESETS[name]).read_text())
    assert {k: cfg.get(k) for k in PRESET_FIELDS[name]} == PRESET_FIELDS[name]
    assert cfg["model_type"] in SUPPORTED_FAMILIES


@pytest.mark.parametrize("name", sorted(PRESET_FACTS))
def test_preset_shapes_and_parameters(name):
    params, layers, heads, kv, head_dim, dtype = PRESET_FACTS[name]
    g = load_preset(name)
    ir.verify(g, fused=True)
    assert g.name == name
    assert summarize(g).parameters == params
    assert {n.type.dtype for n in weights(g)} == {dtype}
    # shapes only; Gemma's embedding (and Gemma2's LM head) a scaled view of the tied table
    assert all(isinstance(getattr(n.data, "base", n.data), AbsentData) and not n.data.has_values for n in weights(g))
    m = g.meta
    assert (m["num_layers"], m["num_heads"], m["num_kv_heads"], m["head_dim"]) == (layers, heads, kv, head_dim)
    assert (m["source"], m["preset"], m["seq_len"], m["past_len"], m["batch"]) == ("config", name, 16, 0, 1)
    for key in ("family", "hidden_size", "intermediate_size", "vocab_size", "config_path"):
        assert key in m
    attn = [n for n in g.nodes() if n.op is OpKind.ATTENTION]
    assert [n.attrs.layer for n in attn] == list(range(layers))
    assert all((a.attrs.num_heads, a.attrs.num_kv_heads, a.attrs.causal) == (heads, kv, True) for a in attn)
    cap = GEMMA2_2B if name == "gemma2-2b" else dict(scale=1 / math.sqrt(head_dim), softcap=None)
    assert all(math.isclose(a.attrs.scale, cap["scale"]) and a.attrs.softcap == cap["softcap"] for a in attn)
    (out, node), = g.outputs
    assert out == "logits" and g.node(node).type == ir.TensorType(ir.DType.FP32, (1, 16, m["vocab_size"]))
    # activations are fp32 whatever the weight dtype
    assert all(n.type.dtype is ir.DType.FP32 for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT))


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b", "mistral-7b", "qwen2-7b", "llama-3.2-1b",
                                  "llama-3.2-3b", "smollm-360m"])
def test_llama_like_op_counts(name):
    L = PRESET_FACTS[name][1]
    assert op_counts(load_preset(name)) == Counter({
        OpKind.EMBEDDING: 1, OpKind.RMSNORM: 2 * L + 1, OpKind.LINEAR: 7 * L, OpKind.LMHEAD: 1,
        OpKind.ROPE: 2 * L, OpKind.ATTENTION: L, OpKind.SILU: L, OpKind.MUL: L, OpKind.ADD: 2 * L,
        OpKind.RESHAPE: 4 * L, OpKind.TRANSPOSE: 4 * L})


def test_phi3_fused_projections():
    """Phi-3: one qkv_proj and one gate_up_proj per layer, each split by slices (as its ONNX export fuses to)."""
    L = 32
    g = load_preset("phi-3-mini")
    assert op_counts(g) == Counter({
        OpKind.EMBEDDING: 1, OpKind.RMSNORM: 2 * L + 1, OpKind.LINEAR: 4 * L, OpKind.LMHEAD: 1, OpKind.SLICE: 5 * L,
        OpKind.ROPE: 2 * L, OpKind.ATTENTION: L, OpKind.SILU: L, OpKind.MUL: L, OpKind.ADD: 2 * L,
        OpKind.RESHAPE: 4 * L, OpKind.TRANSPOSE: 4 * L})
    assert g.node("model.layers.0.self_attn.qkv_proj.weight").type.shape == (3 * 3072, 3072)
    assert g.node("model.layers.0.mlp.gate_up_proj.weight").type.shape == (2 * 8192, 3072)
    assert g.node("layers.0.attn.qkv").attrs.role is ir.LinearRole.QKV
    assert g.node("layers.0.mlp.gate_up").attrs.role is ir.LinearRole.GATE_UP
    assert [g.node(f"layers.0.mlp.gate_up.{j}").attrs.starts for j in (0, 1)] == [(0,), (8192,)]
    assert g.node("layers.0.mlp.act").inputs == ("layers.0.mlp.gate_up.0",)    # silu(gate) * up


def test_qwen3_per_head_norms():
    """Qwen3: an RMSNorm over head_dim on each q and k head, before RoPE, one [head_dim] weight per layer each."""
    L = 36
    g = load_preset("qwen3-8b")
    assert op_counts(g)[OpKind.RMSNORM] == 4 * L + 1
    for t, heads in (("q", 32), ("k", 8)):
        n = g.node(f"layers.5.attn.{t}_norm")
        assert n.inputs[1] == f"model.layers.5.self_attn.{t}_norm.weight"
        assert g.node(n.inputs[1]).type.shape == (128,)
        assert n.type.shape == (1, 16, heads, 128) and n.attrs == ir.NormAttrs(1e-6, 5)
        assert g.node(f"layers.5.attn.{t}_t").inputs == (n.name,)
    assert "model.layers.0.self_attn.q_proj.bias" not in g


def test_pythia_fused_qkv_per_head_partial_rotary_parallel():
    """GPT-NeoX (pythia-1b): one query_key_value a layer viewed [B, S, H, 3 * D] and sliced after the heads'
    transpose, 64 of head_dim 256 rotated (slice, rope, concat), attention and MLP in parallel off two
    norms (mlp + attention + x), GELU (erf), biases everywhere, its own LM head `embed_out`."""
    L = 16
    g = load_preset("pythia-1b")
    assert op_counts(g) == Counter({
        OpKind.EMBEDDING: 1, OpKind.LAYERNORM: 2 * L + 1, OpKind.LINEAR: 4 * L, OpKind.LMHEAD: 1, OpKind.SLICE: 7 * L,
        OpKind.ROPE: 2 * L, OpKind.CONCAT: 2 * L, OpKind.ATTENTION: L, OpKind.GELU: L, OpKind.ADD: 2 * L,
        OpKind.RESHAPE: 2 * L, OpKind.TRANSPOSE: 2 * L})
    assert g.node("gpt_neox.layers.3.attention.query_key_value.weight").type.shape == (3 * 2048, 2048)
    assert "gpt_neox.layers.3.attention.dense.bias" in g and "gpt_neox.layers.3.mlp.dense_4h_to_h.bias" in g
    assert g.node("layers.3.attn.qkv_heads").type.shape == (1, 16, 8, 3 * 256)
    assert [(g.node(f"layers.3.attn.{t}").attrs.starts, g.node(f"layers.3.attn.{t}").attrs.axes) for t in "qkv"] \
        == [((0,), (3,)), ((256,), (3,)), ((512,), (3,))]
    assert g.const_value("rope.cos").shape == (1, 1, 16, 64)
    assert g.node("layers.3.attn.q_rot").type.shape == (1, 8, 16, 64)
    assert g.node("layers.3.attn.q_rotated").inputs == ("layers.3.attn.q_rope", "layers.3.attn.q_pass")
    assert g.node("layers.3.branches").inputs == ("layers.3.mlp.fc2", "layers.3.attn.o")
    assert g.node("layers.3.mlp.fc1").inputs[0] == "layers.3.post_norm"      # the MLP's own norm, of x
    assert g.node("layers.3.post_norm").inputs[0] == g.node("layers.3.input_norm").inputs[0]
    assert all(n.attrs.approx is ir.GeluApprox.NONE for n in g.nodes() if n.op is OpKind.GELU)
    assert g.node("logits").inputs[1] == "embed_out.weight"


def test_stablelm_2_preset():
    """stablelm-2-1.6b: LayerNorm, q/k/v biases (use_qkv_bias; o_proj none), 16 of head_dim 64 rotated, SwiGLU."""
    L = 24
    g = load_preset("stablelm-2-1.6b")
    assert op_counts(g) == Counter({
        OpKind.EMBEDDING: 1, OpKind.LAYERNORM: 2 * L + 1, OpKind.LINEAR: 7 * L, OpKind.LMHEAD: 1, OpKind.SLICE: 4 * L,
        OpKind.ROPE: 2 * L, OpKind.CONCAT: 2 * L, OpKind.ATTENTION: L, OpKind.SILU: L, OpKind.MUL: L,
        OpKind.ADD: 2 * L, OpKind.RESHAPE: 4 * L, OpKind.TRANSPOSE: 4 * L})
    assert all(f"model.layers.5.self_attn.{t}_proj.bias" in g for t in "qkv")
    assert "model.layers.5.self_attn.o_proj.bias" not in g and "model.layers.5.mlp.down_proj.bias" not in g
    assert g.const_value("rope.sin").shape == (1, 1, 16, 16) and g.meta["rotary_dims"] == 16


def test_stablelm_qk_layernorm_and_parallel_residual_compile_bit_exact():
    """stablelm-2-12b's layout: a LayerNorm of each q and k head with weights of their own ([H, 1, D], no
    bias) and attention and MLP in parallel off the input norm; compile's check runs the programs on the
    functional simulator bit for bit against the integer model (random weights)."""
    from llmfab.compile import compile_model
    cfg = tiny("stablelm", qk_layernorm=True, use_parallel_residual=True)
    g = load_config(cfg)
    for t, heads in (("q", 4), ("k", 2)):
        n = g.node(f"layers.1.attn.{t}_norm")
        assert n.op is OpKind.LAYERNORM and n.type.shape == (1, heads, 16, 8)
        assert n.inputs[1] == f"model.layers.1.self_attn.{t}_layernorm.weight"
        assert g.node(n.inputs[1]).type.shape == (heads, 1, 8)
        assert not g.const_value(n.inputs[2]).any()      # no bias
    assert g.node("layers.1.mlp.gate").inputs[0] == "layers.1.input_norm"
    assert "model.layers.1.post_attention_layernorm.weight" not in g
    r = with_random_weights(g, seed=1)
    assert abs(r.const_value("model.layers.1.self_attn.q_layernorm.weight").mean() - 1) < 0.1   # scales around 1
    c = compile_model("tiny-stablelm", "sim-small", max_len=16, prefill_step=4, check=True,
                      graph_at=lambda n: with_random_weights(load_config(cfg, seq_len=n), seed=3, std=0.2))
    assert c.checked == (3, 5)


@pytest.mark.parametrize("name,policy", [("pythia-1b", "int8"), ("stablelm-2-1.6b", "int4-g128")])
def test_neox_like_presets_compile(name, policy):
    """Programs and layout from the config alone: GPT-NeoX's qkv sliced on the head axis after the
    transpose, partial rotary's slices and concats, all lowered as strided copies."""
    from llmfab.compile import compile_model
    c = compile_model(name, "u280", policy=policy, max_len=64)
    assert c.programs and not c.images and c.checked == ()   # no weights: nothing to check against
    assert {e["stage"] for e in c.manifest["programs"]} == {"prefill", "decode"}


@pytest.mark.parametrize("family,field,value", [("stablelm", "partial_rotary_factor", 0.2),
                                                ("gpt_neox", "rotary_pct", 0.01), ("gpt_neox", "rotary_pct", 1.5)])
def test_error_rotated_dims(family, field, value):
    with pytest.raises(ConfigError, match=rf"^config\.json: field '{field}' is {value}: \d+ of head_dim 8 would be "
                                          r"rotated; it must be an even number from 2 to head_dim$"):
        load_config(tiny(family, **{field: value}))


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.2-3b", "smollm-360m"])
def test_tied_presets_share_the_embedding(name):
    g = load_preset(name)
    assert g.node("logits").inputs[1] == "model.embed_tokens.weight" and "lm_head.weight" not in g


@pytest.mark.parametrize("name", ["gemma-2b", "gemma-7b", "gemma2-2b"])
def test_gemma_op_counts_and_folded_scales(name):
    """GeGLU (tanh GELU), no op for the sqrt(hidden) embedding scale (a view of the tied table),
    Gemma2's two extra norms a layer and its soft-capped logits."""
    L, g = PRESET_FACTS[name][1], load_preset(name)
    two = name.startswith("gemma2")
    assert op_counts(g) == Counter({
        OpKind.EMBEDDING: 1, OpKind.RMSNORM: (4 if two else 2) * L + 1, OpKind.LINEAR: 7 * L, OpKind.LMHEAD: 1,
        OpKind.ROPE: 2 * L, OpKind.ATTENTION: L, OpKind.GELU: L, OpKind.MUL: L, OpKind.ADD: 2 * L,
        OpKind.RESHAPE: 4 * L, OpKind.TRANSPOSE: 4 * L, **({OpKind.SOFTCAP: 1} if two else {})})
    assert all(n.attrs.approx is ir.GeluApprox.TANH for n in g.nodes() if n.op is OpKind.GELU)
    hidden = g.meta["hidden_size"]
    (emb,) = (n for n in g.nodes() if n.op is OpKind.EMBEDDING)
    (head,) = (n for n in g.nodes() if n.op is OpKind.LMHEAD)
    table, w = g.node(emb.inputs[0]).data, g.node(head.inputs[1]).data
    assert math.isclose(table.factor, math.sqrt(hidden))
    assert getattr(w, "base", w) is table.base               # tied: one table, viewed twice
    if two:
        assert math.isclose(w.factor, 1 / GEMMA2_2B["final"])
        (cap,) = (n for n in g.nodes() if n.op is OpKind.SOFTCAP)
        assert cap.inputs == (head.name,) and cap.attrs.cap == GEMMA2_2B["final"]
        assert g.outputs == (("logits", cap.name),) or list(g.outputs) == [("logits", cap.name)]


@pytest.mark.parametrize("name,target,policy", [("gemma-2b", "vhk158", "int8"), ("gemma-7b", "vhk158", "int4-g128"),
                                                ("gemma2-2b", "u280", "int8")])
def test_gemma_presets_compile(name, target, policy, tmp_path):
    """`llmfab compile PRESET`: programs and layout from the config alone; Gemma2's soft-capped
    logits (256000 columns) go to the SFU in pieces of MISC's 16-bit `cols`."""
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "compile", name, "--target", target, "--policy", policy,
                        "--max-len", "256", "-o", str(tmp_path / "BUILD")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "BUILD" / "manifest.json").read_text())
    assert m["max_len"] == 256 and m["programs"]
    if name == "gemma2-2b":
        from llmfab.ir.isa import MiscFunc, Opcode, Program
        for entry in m["programs"]:
            prog = Program.from_bytes((tmp_path / "BUILD" / entry["file"]).read_bytes())
            start = dict((label, k) for k, label in entry["sections"])["lm_head.softcap"]
            caps = [i for i in prog.instructions[start:] if i.op is Opcode.MISC]
            assert {i.fields["func"] for i in caps} == {MiscFunc.SOFTCAP}
            assert [i.fields["cols"] for i in caps] == [1 << 15] * 7 + [256000 - 7 * (1 << 15)]
            assert {i.fields["imm"] for i in caps} == {30 << 16}
            layer0 = [i for i in prog.instructions if i.op is Opcode.MISC and i.fields["func"] == MiscFunc.SOFTCAP]
            assert {i.fields["imm"] for i in layer0} == {30 << 16, 50 << 16}   # the scores' cap too


def test_llama2_7b_exact_counts():
    c = op_counts(load_preset("llama2-7b"))
    assert (c[OpKind.ATTENTION], c[OpKind.RMSNORM], c[OpKind.LINEAR], c[OpKind.LMHEAD], c[OpKind.ROPE]) \
        == (32, 65, 224, 1, 64)


def test_opt_op_counts_and_tied_head():
    g = load_preset("opt-6.7b")
    assert op_counts(g) == Counter({
        OpKind.EMBEDDING: 2, OpKind.LAYERNORM: 65, OpKind.LINEAR: 192, OpKind.LMHEAD: 1,
        OpKind.ATTENTION: 32, OpKind.RELU: 32, OpKind.ADD: 65, OpKind.RESHAPE: 128, OpKind.TRANSPOSE: 128})
    params = sum(n.type.numel for n in weights(g))
    assert abs(params - 6.66e9) / 6.66e9 < 0.005
    head = g.node("logits")
    assert head.inputs[1] == "model.decoder.embed_tokens.weight"
    assert "lm_head.weight" not in g
    assert g.node("model.decoder.embed_positions.weight").type.shape == (2050, 4096)
    assert g.const_value("positions").tolist() == [list(range(2, 18))]


def test_untied_llama_head_has_its_own_weight():
    g = load_preset("llama2-7b")
    assert g.node("logits").inputs[1] == "lm_head.weight"
    assert g.node("logits").attrs == ir.LinearAttrs(ir.LinearRole.LM_HEAD)


@pytest.mark.parametrize("name,kv", [("llama3-8b", 8), ("mistral-7b", 8), ("qwen2-7b", 4)])
def test_gqa_projections(name, kv):
    g = load_preset(name)
    hidden = g.meta["hidden_size"]
    assert g.meta["num_kv_heads"] == kv
    assert g.node("model.layers.0.self_attn.k_proj.weight").type.shape == (kv * 128, hidden)
    assert g.node("model.layers.0.self_attn.v_proj.weight").type.shape == (kv * 128, hidden)
    assert g.node("layers.0.attn.k_rope").type.shape == (1, kv, 16, 128)


def test_qwen2_has_qkv_biases_only():
    g = load_preset("qwen2-7b")
    for p in ("q", "k", "v"):
        assert f"model.layers.27.self_attn.{p}_proj.bias" in g
        assert len(g.node(f"layers.27.attn.{p}").inputs) == 3
    assert "model.layers.0.self_attn.o_proj.bias" not in g
    assert "model.layers.0.self_attn.q_proj.bias" not in load_preset("llama2-7b")


def test_llama_attention_bias_field():
    g = load_config(tiny("llama", attention_bias=True, mlp_bias=True))
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.1.self_attn.{p}.bias" in g
    assert "model.layers.1.mlp.down_proj.bias" in g


def test_linear_roles_and_layers():
    g = load_preset("llama2-7b")
    roles = Counter(n.attrs.role.value for n in g.nodes() if n.op is OpKind.LINEAR)
    assert roles == {r: 32 for r in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert all(n.attrs.layer is not None for n in g.nodes() if n.op is OpKind.LINEAR)


def test_loading_llama2_7b_is_cheap():
    code = ("import resource; from llmfab.frontend.config import load_preset; g = load_preset('llama2-7b'); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    rss_kb = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert rss_kb < 1024 * 1024


def test_weights_have_no_values():
    g = load_preset("llama2-7b")
    with pytest.raises(ir.WeightDataMissing, match=r"model\.layers\.0\.self_attn\.q_proj\.weight"):
        g.node("model.layers.0.self_attn.q_proj.weight").data.numpy()


@pytest.mark.parametrize("name", sorted(PRESET_FACTS))
def test_past_len_adds_kv_cache(name):
    params, layers, heads, kv, head_dim, _ = PRESET_FACTS[name]
    g = load_preset(name, seq_len=1, past_len=100, batch=2)
    ir.verify(g, fused=True)
    ins = {n.name: n for n in g.inputs()}
    assert len(ins) == 1 + 2 * layers
    assert ins["input_ids"].type.shape == (2, 1)
    last = layers - 1
    k = ins[f"past_key_values.{last}.key"]
    assert k.type.shape == (2, kv, 100, head_dim)
    assert k.attrs == ir.InputAttrs(ir.InputRole.PAST_KEY, last)
    assert ins[f"past_key_values.{last}.value"].attrs == ir.InputAttrs(ir.InputRole.PAST_VALUE, last)
    outs = dict(g.outputs)
    assert list(outs)[:3] == ["logits", "present.0.key", "present.0.value"]
    assert len(outs) == 1 + 2 * layers
    assert g.node(outs[f"present.{last}.value"]).type.shape == (2, kv, 101, head_dim)
    caches = [n for n in g.nodes() if n.op is OpKind.CONCAT and n.inputs[0].startswith("past_key_values.")]
    assert len(caches) == 2 * layers
    assert g.meta["past_len"] == 100


# ---------------------------------------------------------------------------------------------
# errors


def test_error_missing_field():
    cfg = tiny("llama")
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match=r"^config\.json: missing required field 'hidden_size'$"):
        load_config(cfg)


def test_error_unknown_model_type():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'model_type' is 'bert', which is not supported "
                                          r"\(supported: llama, qwen2, mistral, phi3, qwen3, gemma, gemma2, gpt_neox, stablelm, gpt2, "
                                          r"opt\)$"):
        load_config({"model_type": "bert"})
    with pytest.raises(ConfigError, match=r"^config\.json: missing required field 'model_type' "
                                          r"\(supported: llama, qwen2, mistral, phi3, qwen3, gemma, gemma2, gpt_neox, stablelm, gpt2, "
                                          r"opt\)$"):
        load_config({})


@pytest.mark.parametrize("heads", [0, 7, "32", True])
def test_error_heads_not_dividing_hidden(heads):
    cfg = json.loads((PRESET_DIR / "llama2-7b.json").read_text())
    cfg["num_attention_heads"] = heads
    with pytest.raises(ConfigError, match=r"^config\.json: field 'num_attention_heads' must be a positive int "
                                          rf"dividing hidden_size=4096, not {heads!r}$"):
        load_config(cfg)


def test_error_kv_heads_not_dividing_heads():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'num_key_value_heads' must be a positive int "
                                          r"dividing num_attention_heads=4, not 3$"):
        load_config(tiny("llama", num_key_value_heads=3))


def test_error_opt_post_norm_names_file_and_field(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(tiny("opt", do_layer_norm_before=False)))
    with pytest.raises(ConfigError, match=rf"^{p}: field 'do_layer_norm_before' is false: post-norm OPT "
                                          r"\(opt-350m\) is not supported$"):
        load_config(p)


def test_error_opt_projection():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'word_embed_proj_dim' is 16 but hidden_size is 32: "
                                          r"project_in/project_out are not supported$"):
        load_config(tiny("opt", word_embed_proj_dim=16))


def test_error_bad_dtype_and_bad_activation():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'torch_dtype' must be one of float16, bfloat16, "
                                          r"float32, not 'int8'$"):
        load_config(tiny("llama", torch_dtype="int8"))
    with pytest.raises(ConfigError, match=r"^config\.json: field 'hidden_act' must be one of silu, swish, "
                                          r"not 'gelu'$"):
        load_config(tiny("llama", hidden_act="gelu"))


def test_error_sliding_window():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'sliding_window' is 64 but seq_len \+ past_len = 72: "
                                          r"sliding-window attention is not supported beyond the window$"):
        load_config(tiny("mistral"), seq_len=8, past_len=64)
    load_config(tiny("mistral"), seq_len=8, past_len=56)  # exactly the window: plain causal attention
    load_config(tiny("mistral", sliding_window=None), seq_len=8, past_len=600)
    with pytest.raises(ConfigError, match=r"^config\.json: field 'sliding_window' is 16 with use_sliding_window=true"):
        load_config(tiny("qwen2", use_sliding_window=True, sliding_window=16), seq_len=32)
    load_config(tiny("qwen2", sliding_window=16), seq_len=32)  # use_sliding_window defaults to false


def test_error_positions_beyond_learned_table():
    with pytest.raises(ConfigError, match=r"^config\.json: seq_len \+ past_len = 130 exceeds field 'n_positions' = 128 "
                                          r"\(the learned position table has no more rows\)$"):
        load_config(tiny("gpt2"), seq_len=2, past_len=128)


def test_error_phi3_window_and_partial_rotary():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'sliding_window' is 64 but seq_len \+ past_len = 65: "
                                          r"sliding-window attention is not supported beyond the window$"):
        load_config(tiny("phi3"), seq_len=1, past_len=64)
    load_config(tiny("phi3", sliding_window=None), seq_len=1, past_len=100)
    with pytest.raises(ConfigError, match=r"^config\.json: field 'partial_rotary_factor' is 0\.75: rotating part of "
                                          r"each head is not supported config-only \(import an ONNX export instead\)$"):
        load_config(tiny("phi3", partial_rotary_factor=0.75))
    with pytest.raises(ConfigError, match=r"field 'sliding_window' is 16 with use_sliding_window=true"):
        load_config(tiny("qwen3", use_sliding_window=True, sliding_window=16), seq_len=32)


def test_error_rope_scaling_type():
    with pytest.raises(ConfigError, match=r"^config\.json: field 'rope_scaling' has rope type 'yarn', which is not "
                                          r"supported \(supported: default, linear, llama3, longrope\)$"):
        load_config(tiny("llama", rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ConfigError, match=r"^config\.json: rope_scaling: missing required field 'low_freq_factor'$"):
        load_config(tiny("llama", rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    with pytest.raises(ConfigError, match=r"^config\.json: rope_scaling: field 'short_factor' must be a list of 4 "
                                          r"positive numbers \(one per rotated frequency\), not \[1\.0\]$"):
        load_config(tiny("phi3", rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}))
    with pytest.raises(ConfigError, match=r"^config\.json: rope_scaling: field 'long_factor' must be a list of 4 "):
        load_config(tiny("phi3", rope_scaling={"type": "su", "short_factor": [1.0] * 4, "long_factor": [1, 2, 0, 3]}))
    with pytest.raises(ConfigError, match=r"^config\.json: rope_scaling: missing required field 'long_factor'$"):
        load_config(tiny("phi3", rope_scaling={"type": "longrope", "short_factor": [1.0] * 4}))
    with pytest.raises(ConfigError, match=r"^config\.json: field 'rope_parameters' has rope type 'yarn'"):
        load_config(tiny("qwen3", rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}))


def test_error_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown preset 'llama-70b' \(presets: llama2-7b, llama3-8b, mistral-7b, "
                                          r"qwen2-7b, opt-6\.7b, llama-3\.2-1b, llama-3\.2-3b, smollm-360m, phi-3-mini, qwen3-8b, "
                                          r"gemma-2b, gemma-7b, gemma2-2b, pythia-1b, stablelm-2-1\.6b\)$"):
        load_preset("llama-70b")
    bad = tmp_path / "bad.json"
    bad.write_text("{'model_type': 'llama'}")
    with pytest.raises(ConfigError, match=rf"^{bad}: not valid JSON \("):
        load_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"^{bad}: the top level must be a JSON object, not list$"):
        load_config(bad)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'none.json'}: cannot read the config"):
        load_config(tmp_path / "none.json")
    with pytest.raises(ConfigError, match=r"^seq_len must be an int >= 1, not 0$"):
        load_config(tiny("llama"), seq_len=0)


# ---------------------------------------------------------------------------------------------
# rope tables


def test_llama3_rope_scaling_changes_tables():
    base = json.loads((PRESET_DIR / "llama3-8b.json").read_text())
    scaled = {**base, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    g0, g1 = load_config(base, seq_len=4, past_len=1000), load_config(scaled, seq_len=4, past_len=1000)
    c0, c1 = g0.const_value("rope.cos"), g1.const_value("rope.cos")
    assert c0.shape == c1.shape == (1, 1, 4, 128)
    assert not np.allclose(c0, c1, atol=1e-3)
    # high frequencies (short wavelengths) are left alone, low ones divided by the factor
    np.testing.assert_array_equal(c0[..., :8], c1[..., :8])
    # independent float64 evaluation of the Llama 3.1 rule
    d = np.arange(0, 128, 2) / 128
    inv = 1.0 / 500000.0 ** d
    wl = 2 * np.pi / inv
    smooth = (8192 / wl - 1.0) / (4.0 - 1.0)
    ref = np.where(wl < 8192 / 4, inv, np.where(wl > 8192, inv / 8, (1 - smooth) * inv / 8 + smooth * inv))
    ang = np.arange(1000, 1004)[:, None] * ref[None]
    np.testing.assert_allclose(c1[0, 0], np.cos(np.concatenate([ang, ang], -1)), atol=2e-4)


def test_linear_rope_scaling_divides_positions():
    c_lin, _ = rope_cos_sin(16, 10000.0, 0, 8, {"rope_type": "linear", "factor": 2.0})
    c0, _ = rope_cos_sin(16, 10000.0, 0, 4)
    np.testing.assert_allclose(c_lin[::2], c0, atol=1e-6)
    g = load_config(tiny("llama", rope_scaling={"type": "linear", "factor": 2.0}), seq_len=8)
    np.testing.assert_array_equal(g.const_value("rope.cos")[0, 0], rope_cos_sin(8, 10000.0, 0, 8,
                                  {"rope_type": "linear", "factor": 2.0})[0])


def test_phi3_longrope_picks_factors_by_length():
    """Phi-3-128k's longrope (config.json as Phi-3-mini-128k writes it: top-level
    original_max_position_embeddings, `rope_scaling` of type longrope): the short factors while
    seq_len + past_len stays within the original length, the long ones past it; the tables times
    sqrt(1 + ln(max / original) / ln original), as transformers computes them."""
    short, long = [1.0, 1.5, 2.0, 3.0], [1.2, 2.5, 4.0, 8.0]
    cfg = tiny("phi3", sliding_window=None, max_position_embeddings=128, original_max_position_embeddings=16,
               rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long})
    gain = math.sqrt(1 + math.log(8) / math.log(16))
    for seq, past, ext in ((16, 0, short), (8, 8, short), (17, 0, long), (1, 20, long)):
        g = load_config(cfg, seq_len=seq, past_len=past)
        inv = 1.0 / (np.array(ext) * 10000.0 ** (np.arange(0, 8, 2) / 8))
        ang = np.arange(past, past + seq)[:, None] * inv[None]
        np.testing.assert_allclose(g.const_value("rope.sin")[0, 0], np.sin(np.concatenate([ang, ang], -1)), atol=2e-6)
        assert g.meta["rope_scaling"]["attention_factor"] == pytest.approx(gain)
        # q and k both rotated by tables times gain: the scores gain^2, in attention's scale
        assert g.node("layers.0.attn.core").attrs.scale == pytest.approx(gain ** 2 / math.sqrt(8))
    given = load_config({**cfg, "rope_scaling": {**cfg["rope_scaling"], "attention_factor": 1.0}}, seq_len=4)
    assert given.node("layers.0.attn.core").attrs.scale == pytest.approx(1 / math.sqrt(8))
    with pytest.raises(ConfigError, match=r"^config\.json: rope type 'longrope' with partial rotary is not supported$"):
        load_config(tiny("stablelm", max_position_embeddings=128,
                         rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}))


def test_transformers5_rope_parameters():
    cfg = tiny("llama")
    g_old = load_config({**cfg, "rope_theta": 5e5})
    g_new = load_config({**cfg, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}, "dtype": "float32"})
    np.testing.assert_array_equal(g_old.const_value("rope.sin"), g_new.const_value("rope.sin"))


# ---------------------------------------------------------------------------------------------
# execution with random weights


def ids_for(shape, vocab=128, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tiny_model_runs(family, dtype):
    g = with_random_weights(load_config(tiny(family, torch_dtype=dtype), seq_len=5), seed=1, std=0.2)
    ir.verify(g, fused=True)
    out = ir.run(g, {"input_ids": ids_for((1, 5))})
    assert out["logits"].shape == (1, 5, 128)
    assert out["logits"].dtype == np.float32
    assert np.all(np.isfinite(out["logits"]))


def copy_weights(src: ir.Graph, dst: ir.Graph) -> ir.Graph:
    """dst with src's weight values (by parameter name)."""
    g = dst.copy()
    for n in weights(g):
        g.set_node(ir.Node(n.name, n.op, (), ConstAttrs(src.node(n.name).data, True), n.type))
    return g


def prefill_cache(g: ir.Graph, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Run a past_len=0 graph and return its per-layer K/V (after rope) as a decode graph's past inputs."""
    g = g.copy()
    for i in range(g.meta["num_layers"]):
        k, v = g.node(f"layers.{i}.attn.core").inputs[1:3]
        g.add_output(f"past_key_values.{i}.key", k)
        g.add_output(f"past_key_values.{i}.value", v)
    out = ir.run(g, {"input_ids": ids})
    return {k: v for k, v in out.items() if k.startswith("past_key_values.")}


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_prefill_then_decode_matches_full_run(family):
    """Running 6 tokens at once equals 4 tokens, then 2 more against the 4-token KV cache."""
    cfg = tiny(family)
    full = with_random_weights(load_config(cfg, seq_len=6), seed=2, std=0.2)
    pre = copy_weights(full, load_config(cfg, seq_len=4))
    dec = copy_weights(full, load_config(cfg, seq_len=2, past_len=4))
    ids = ids_for((1, 6), seed=3)
    ref = ir.run(full, {"input_ids": ids})["logits"]
    np.testing.assert_allclose(ir.run(pre, {"input_ids": ids[:, :4]})["logits"], ref[:, :4], rtol=1e-5, atol=1e-5)
    out = ir.run(dec, {"input_ids": ids[:, 4:], **prefill_cache(pre, ids[:, :4])})
    np.testing.assert_allclose(out["logits"], ref[:, 4:], rtol=1e-5, atol=1e-5)
    assert out["present.1.key"].shape == (1, dec.meta["num_kv_heads"], 6, 8)


# ---------------------------------------------------------------------------------------------
# an independent plain-numpy LLaMA forward pass (float64, explicit head loop, pairwise rotation)


def llama_reference(W: dict[str, np.ndarray], cfg: dict, ids: np.ndarray,
                    past: dict[str, np.ndarray] | None = None, past_len: int = 0):
    H, Hkv, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    D = cfg["hidden_size"] // H
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    B, S = ids.shape
    w = {k: v.astype(np.float64) for k, v in W.items()}

    def rms(x, g):
        return g * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)

    pos = np.arange(past_len, past_len + S, dtype=np.float64)
    ang = pos[:, None] * (theta ** (-np.arange(D // 2) * 2.0 / D))[None, :]  # [S, D/2]
    c, s = np.cos(ang), np.sin(ang)

    def rotate(t):  # t [S, D]: pair element j with j + D/2, rotate by the position's angle
        a, b = t[:, :D // 2], t[:, D // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

    x = w["model.embed_tokens.weight"][ids]
    present = {}
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        out = np.zeros((B, S, H * D))
        for bi in range(B):
            ks = [rotate(k[bi, :, j * D:(j + 1) * D]) for j in range(Hkv)]
            vs = [v[bi, :, j * D:(j + 1) * D] for j in range(Hkv)]
            if past is not None:
                ks = [np.concatenate([past[f"past_key_values.{i}.key"][bi, j], ks[j]]) for j in range(Hkv)]
                vs = [np.concatenate([past[f"past_key_values.{i}.value"][bi, j], vs[j]]) for j in range(Hkv)]
            present.setdefault(f"present.{i}.key", []).append(np.stack(ks))
            present.setdefault(f"present.{i}.value", []).append(np.stack(vs))
            for hh in range(H):
                j = hh // (H // Hkv)  # the kv head this query head shares
                qh = rotate(q[bi, :, hh * D:(hh + 1) * D])
                scores = qh @ ks[j].T / math.sqrt(D)
                T = ks[j].shape[0]
                for r in range(S):  # query r sits at absolute position past_len + r
                    scores[r, past_len + r + 1:T] = -np.inf
                e = np.exp(scores - scores.max(axis=-1, keepdims=True))
                out[bi, :, hh * D:(hh + 1) * D] = (e / e.sum(axis=-1, keepdims=True)) @ vs[j]
        x = x + out @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    logits = rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T
    return logits, {k: np.stack(v) for k, v in present.items()}


@pytest.mark.parametrize("past_len,batch", [(0, 1), (5, 1), (3, 2)])
def test_tiny_llama_matches_numpy_reference(past_len, batch):
    cfg = tiny("llama", num_attention_heads=8, num_key_value_heads=2, rope_theta=500.0)  # D=4, 4 q heads per kv head
    g = with_random_weights(load_config(cfg, seq_len=6, past_len=past_len, batch=batch), seed=4, std=0.3)
    W = {n.name: n.data.numpy() for n in weights(g)}
    ids = ids_for((batch, 6), seed=5)
    rng = np.random.default_rng(6)
    past = {n.name: rng.standard_normal(n.type.shape).astype(np.float32) for n in g.inputs()
            if n.name.startswith("past_key_values.")}
    out = ir.run(g, {"input_ids": ids, **past})
    logits, present = llama_reference(W, cfg, ids, past or None, past_len)
    assert np.abs(logits).max() > 0.5  # weights large enough that attention is far from uniform
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    if past_len:
        assert set(present) == set(out) - {"logits"}
        for name, ref in present.items():
            np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-5)
