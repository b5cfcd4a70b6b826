"""Config-only import of the LLaMA-shaped families (frontend/config.py): llama, qwen2, mistral,
gemma and gemma2 (rotary positions, RMSNorm, a gated MLP).

Gemma's weights are taken as the ONNX import folds them (passes/fold_scales.py): its norms' 1 + w
is the norm weight, the embedding reads the table times sqrt(hidden) (a `ScaledData` view of the
tied table), Gemma2's LM head the table / final_logit_softcapping before the soft-cap, and its
attention scale query_pre_attn_scalar^-0.5 / attn_logit_softcapping before the scores' soft-cap.
"""
from __future__ import annotations

import math
from typing import Mapping

from llmfab.ir import ArrayData, DType, LinearRole, OpKind

LLAMA_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2")

from .config_fields import _Fields
from .config_graph import _ACTIVATIONS, MAX_LAYERS, _Arch, _Builder
from .rope import rope_cos_sin


def _rope_params(f: _Fields) -> tuple[float, dict | None]:
    """rope theta and scaling from either `rope_theta`/`rope_scaling` (transformers 4) or
    `rope_parameters` (transformers 5)."""
    params = f.cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, Mapping):
            f.fail(f"field 'rope_parameters' must be an object, not {params!r}")
        theta = _Fields(params, f"{f.label}: rope_parameters").float("rope_theta", 10000.0)
        scaling, key = params, "rope_parameters"
    else:
        theta = f.float("rope_theta", 10000.0)
        scaling, key = f.cfg.get("rope_scaling"), "rope_scaling"
    if scaling is None:
        return theta, None
    if not isinstance(scaling, Mapping):
        f.fail(f"field {key!r} must be an object or null, not {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    sf = _Fields(scaling, f"{f.label}: {key}")
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": sf.float("factor")}
    if kind == "llama3":
        lo, hi = sf.float("low_freq_factor"), sf.float("high_freq_factor")
        if hi <= lo:
            sf.fail(f"field 'high_freq_factor' must be greater than low_freq_factor={lo}, not {hi}")
        return theta, {"rope_type": "llama3", "factor": sf.float("factor"), "low_freq_factor": lo,
                       "high_freq_factor": hi, "original_max_position_embeddings":
                       sf.int("original_max_position_embeddings")}
    f.fail(f"field {key!r} has rope type {kind!r}, which is not supported "
           "(supported: default, linear, llama3)")


def _arch_llama(f: _Fields, family: str, dtype: DType) -> _Arch:
    hidden = f.int("hidden_size")
    head_dim = f.cfg.get("head_dim")
    if head_dim is None:
        heads = f.heads("num_attention_heads", hidden, "hidden_size")
        head_dim = hidden // heads
    else:
        heads, head_dim = f.int("num_attention_heads"), f.int("head_dim")
    if head_dim % 2:
        f.fail(f"head dimension must be even for rotary embeddings, not {head_dim}")
    gemma = family.startswith("gemma")
    if not gemma:
        f.choice("hidden_act", ("silu", "swish"), "silu")
    return _Arch(family, f.int("num_hidden_layers", maximum=MAX_LAYERS), hidden, heads,
                 f.heads("num_key_value_heads", heads, "num_attention_heads", heads), head_dim,
                 f.int("intermediate_size"), f.int("vocab_size"), f.float("rms_norm_eps", 1e-6), dtype,
                 f.bool("tie_word_embeddings", gemma))


def _gemma(f: _Fields, family: str, head_dim: int) -> tuple[OpKind, object, float, float | None, float | None]:
    """Gemma's MLP activation (HF reads `hidden_activation` and ignores `hidden_act`: gelu_pytorch_tanh
    when absent or null), attention scale, and Gemma2's soft-caps (None: not capped)."""
    act, approx = _ACTIVATIONS[f.choice("hidden_activation", tuple(_ACTIVATIONS), "gelu_pytorch_tanh")
                               if f.cfg.get("hidden_activation") is not None else "gelu_pytorch_tanh"]
    if family == "gemma":
        return act, approx, head_dim ** -0.5, None, None
    caps = [None if f.cfg.get(k, 0) is None else f.float(k, d)
            for k, d in (("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0))]
    for k, c in zip(("attn_logit_softcapping", "final_logit_softcapping"), caps):
        if c is not None and c <= 0:
            f.fail(f"field {k!r} must be positive or null, not {c}")
    scale = f.float("query_pre_attn_scalar", 256.0) ** -0.5 / (caps[0] or 1.0)
    return act, approx, scale, caps[0], caps[1]


def _build_llama(f: _Fields, b: _Builder, family: str) -> dict:
    a, S, P = b.a, b.S, b.P
    total = S + P
    if family in ("mistral", "gemma2"):
        # MistralConfig defaults to a 4096 window (Gemma2's every other layer); null means full attention.
        window = None if f.cfg.get("sliding_window", 0) is None else f.int("sliding_window", 4096)
        if window is not None and total > window:
            f.fail(f"field 'sliding_window' is {window} but seq_len + past_len = {total}: sliding-window "
                   "attention is not supported beyond the window")
    if family == "qwen2" and f.bool("use_sliding_window", False):
        window = f.cfg.get("sliding_window")
        if window is not None and total > f.int("sliding_window"):
            f.fail(f"field 'sliding_window' is {window} with use_sliding_window=true but seq_len + "
                   f"past_len = {total}: sliding-window attention is not supported beyond the window")
    act, approx, scale, attn_cap, final_cap = _gemma(f, family, a.head_dim) if family.startswith("gemma") \
        else (OpKind.SILU, None, 1.0 / math.sqrt(a.head_dim), None, None)
    qkv_bias = True if family == "qwen2" else (family == "llama" and f.bool("attention_bias", False))
    o_bias = family == "llama" and f.bool("attention_bias", False)
    mlp_bias = family == "llama" and f.bool("mlp_bias", False)
    theta, scaling = _rope_params(f)
    cos, sin = rope_cos_sin(a.head_dim, theta, P, S, scaling)
    b.g.add_const("rope.cos", ArrayData(cos.reshape(1, 1, S, a.head_dim)))
    b.g.add_const("rope.sin", ArrayData(sin.reshape(1, 1, S, a.head_dim)))
    b.inputs()
    embed = b.weight("model.embed_tokens.weight", a.vocab, a.hidden)
    table = b.scaled(embed, math.sqrt(a.hidden)) if family.startswith("gemma") else embed
    x = b.op("embed", OpKind.EMBEDDING, [table, "input_ids"])
    qd, kvd = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for i in range(a.layers):
        w, n = f"model.layers.{i}", f"layers.{i}"
        h = b.rms_norm(f"{n}.input_norm", x, f"{w}.input_layernorm", i)
        q = b.linear(f"{n}.attn.q", h, f"{w}.self_attn.q_proj", qd, a.hidden, LinearRole.Q, i, qkv_bias)
        k = b.linear(f"{n}.attn.k", h, f"{w}.self_attn.k_proj", kvd, a.hidden, LinearRole.K, i, qkv_bias)
        v = b.linear(f"{n}.attn.v", h, f"{w}.self_attn.v_proj", kvd, a.hidden, LinearRole.V, i, qkv_bias)
        o = b.attention(i, q, k, v, scale, ("rope.cos", "rope.sin"), attn_cap)
        o = b.linear(f"{n}.attn.o", o, f"{w}.self_attn.o_proj", a.hidden, qd, LinearRole.O, i, o_bias)
        if family == "gemma2":   # Gemma2 norms each block's output too, before the residual add
            o = b.rms_norm(f"{n}.post_attn_norm", o, f"{w}.post_attention_layernorm", i)
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        pre_mlp = "pre_feedforward_layernorm" if family == "gemma2" else "post_attention_layernorm"
        h = b.rms_norm(f"{n}.post_norm", x, f"{w}.{pre_mlp}", i)
        g = b.linear(f"{n}.mlp.gate", h, f"{w}.mlp.gate_proj", a.inter, a.hidden, LinearRole.GATE, i, mlp_bias)
        u = b.linear(f"{n}.mlp.up", h, f"{w}.mlp.up_proj", a.inter, a.hidden, LinearRole.UP, i, mlp_bias)
        s = b.activation(f"{n}.mlp.act", g, act, approx)
        m = b.op(f"{n}.mlp.mul", OpKind.MUL, [s, u])
        d = b.linear(f"{n}.mlp.down", m, f"{w}.mlp.down_proj", a.hidden, a.inter, LinearRole.DOWN, i, mlp_bias)
        if family == "gemma2":
            d = b.rms_norm(f"{n}.post_mlp_norm", d, f"{w}.post_feedforward_layernorm", i)
        x = b.op(f"{n}.mlp_residual", OpKind.ADD, [x, d])
    b.finish(b.rms_norm("final_norm", x, "model.norm", None), embed, final_cap)
    if not b.g.users(embed):   # a tied Gemma2 reads only views of its table
        b.g.eliminate_dead_code()
    return {"rope_theta": theta, "rope_scaling": scaling,
            "max_position_embeddings": f.int("max_position_embeddings", None)}
