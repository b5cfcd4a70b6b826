"""Config-only graphs of the LLaMA-like families (frontend/config.py): RMSNorm, rotary positions,
a gated MLP. llama (with Llama 3.1/3.2's llama3 RoPE scaling and tied embeddings), qwen2 (q/k/v bias),
mistral (sliding window), phi3 (fused qkv_proj and gate_up_proj), qwen3 (an RMSNorm over each
q and k head), gemma and gemma2 (GeGLU, tied embeddings; Gemma2's post-norms and soft-caps).

Gemma's weights are taken as the ONNX import folds them (passes/fold_scales.py): its norms' 1 + w
is the norm weight, the embedding reads the table times sqrt(hidden) (a `ScaledData` view of the
tied table), Gemma2's LM head the table / final_logit_softcapping before the soft-cap, and its
attention scale query_pre_attn_scalar^-0.5 / attn_logit_softcapping before the scores' soft-cap.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from llmfab.ir import ArrayData, DType, LinearRole, OpKind

from .config_fields import _Fields
from .config_graph import MAX_LAYERS, _activation, _Arch, _Builder
from .rope import rope_cos_sin

LLAMA_LIKE = ("llama", "qwen2", "mistral", "phi3", "qwen3", "gemma", "gemma2")


def _rope_params(f: _Fields, dim: int | None = None) -> tuple[float, dict | None]:
    """rope theta and scaling from either `rope_theta`/`rope_scaling` (transformers 4) or
    `rope_parameters` (transformers 5); `dim`: the rotated dims per head (longrope's factors are
    dim / 2 each)."""
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
    if kind in ("longrope", "su"):   # Phi-3-128k's ("su" its earlier name)
        return theta, _longrope(f, sf, dim)
    f.fail(f"field {key!r} has rope type {kind!r}, which is not supported "
           "(supported: default, linear, llama3, longrope)")


def _longrope(f: _Fields, sf: _Fields, dim: int | None) -> dict:
    """Phi-3's longrope as Hugging Face resolves it: factor max_position_embeddings /
    original_max_position_embeddings unless given, attention_factor sqrt(1 + ln factor / ln original)
    (1 for a factor <= 1) unless given; which factor list applies is rope_cos_sin's (by position)."""
    top = f.int("max_position_embeddings")
    orig = sf.int("original_max_position_embeddings", None) or f.int("original_max_position_embeddings", top)
    factor = sf.float("factor", top / orig)
    attention = sf.float("attention_factor", 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig)))
    out = {"rope_type": "longrope", "original_max_position_embeddings": orig, "attention_factor": attention}
    for key in ("short_factor", "long_factor"):
        v = sf.get(key)[1]
        if not isinstance(v, list) or (dim is not None and len(v) != dim // 2) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v):
            sf.fail(f"field {key!r} must be a list of {dim // 2 if dim else 'rotary_dim / 2'} positive numbers "
                    f"(one per rotated frequency), not {v!r:.60}")
        out[key] = tuple(float(x) for x in v)
    return out


def _partial_rotary(f: _Fields) -> None:
    """Rotating only part of each head is what the ONNX import handles (Phi-2, StableLM, GPT-NeoX);
    the config builder rotates whole heads."""
    params = f.cfg.get("rope_parameters")
    for src in (f.cfg, params if isinstance(params, Mapping) else {}):
        v = src.get("partial_rotary_factor")
        if v is not None and v != 1.0:
            f.fail(f"field 'partial_rotary_factor' is {v!r}: rotating part of each head is not supported "
                   "config-only (import an ONNX export instead)")


def arch_llama(f: _Fields, family: str, dtype: DType) -> _Arch:
    hidden = f.int("hidden_size")
    # Qwen3Config's head_dim defaults to 128 and Gemma's to 256, the others' to hidden / heads
    default = {"qwen3": 128, "gemma": 256, "gemma2": 256}.get(family)
    head_dim = f.cfg.get("head_dim", default)
    if head_dim is None:
        heads = f.heads("num_attention_heads", hidden, "hidden_size")
        head_dim = hidden // heads
    else:
        heads, head_dim = f.int("num_attention_heads"), f.int("head_dim", default)
    if head_dim % 2:
        f.fail(f"head dimension must be even for rotary embeddings, not {head_dim}")
    gemma = family.startswith("gemma")
    if not gemma:   # (Gemma's activation is `hidden_activation`: _gemma)
        f.choice("hidden_act", ("silu", "swish"), "silu")
    return _Arch(family, f.int("num_hidden_layers", maximum=MAX_LAYERS), hidden, heads,
                 f.heads("num_key_value_heads", heads, "num_attention_heads", heads), head_dim,
                 f.int("intermediate_size"), f.int("vocab_size"), f.float("rms_norm_eps", 1e-6), dtype,
                 f.bool("tie_word_embeddings", gemma))


def _gemma(f: _Fields, family: str, head_dim: int) -> tuple[OpKind, object, float, float | None, float | None]:
    """Gemma's MLP activation (HF reads `hidden_activation` and ignores `hidden_act`: gelu_pytorch_tanh
    when absent or null), attention scale, and Gemma2's soft-caps (None: not capped)."""
    act, approx = _activation(f, "hidden_activation", "gelu_pytorch_tanh")
    if family == "gemma":
        return act, approx, head_dim ** -0.5, None, None
    caps = [None if f.cfg.get(k, 0) is None else f.float(k, d)
            for k, d in (("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0))]
    for k, c in zip(("attn_logit_softcapping", "final_logit_softcapping"), caps):
        if c is not None and c <= 0:
            f.fail(f"field {k!r} must be positive or null, not {c}")
    scale = f.float("query_pre_attn_scalar", 256.0) ** -0.5 / (caps[0] or 1.0)
    return act, approx, scale, caps[0], caps[1]


def _check_window(f: _Fields, family: str, total: int) -> int | None:
    """Sliding-window attention equals causal attention up to the window; beyond it is not supported.
    Returns the window (None: full attention)."""
    if family in ("mistral", "phi3", "gemma2"):
        # MistralConfig defaults to a 4096 window (Gemma2Config too, on every other layer), Phi3Config
        # to none; an explicit null means full attention
        default = None if family == "phi3" else 4096
        window = None if f.cfg.get("sliding_window", default) is None else f.int("sliding_window", default)
        if window is not None and total > window:
            f.fail(f"field 'sliding_window' is {window} but seq_len + past_len = {total}: sliding-window "
                   "attention is not supported beyond the window")
        return window
    if family in ("qwen2", "qwen3") and f.bool("use_sliding_window", False):
        window = f.cfg.get("sliding_window")
        if window is not None and total > f.int("sliding_window"):
            f.fail(f"field 'sliding_window' is {window} with use_sliding_window=true but seq_len + "
                   f"past_len = {total}: sliding-window attention is not supported beyond the window")
        return window
    return None


def build_llama(f: _Fields, b: _Builder, family: str) -> dict:
    a, S, P = b.a, b.S, b.P
    window = _check_window(f, family, S + P)
    _partial_rotary(f)
    o_bias = family in ("llama", "qwen3") and f.bool("attention_bias", False)   # (Phi-3 has no biases)
    qkv_bias = family == "qwen2" or o_bias     # Qwen2: q/k/v always biased, o_proj never
    mlp_bias = family == "llama" and f.bool("mlp_bias", False)
    act, approx, scale, attn_cap, final_cap = _gemma(f, family, a.head_dim) if family.startswith("gemma") \
        else (OpKind.SILU, None, 1.0 / math.sqrt(a.head_dim), None, None)
    theta, scaling = _rope_params(f, a.head_dim)
    if scaling and scaling["rope_type"] == "longrope":   # q and k both times attention_factor: the scores its square
        scale *= float(np.float32(scaling["attention_factor"])) ** 2   # (float32, as Hugging Face's tables take it)
    cos, sin = rope_cos_sin(a.head_dim, theta, P, S, scaling)
    b.g.add_const("rope.cos", ArrayData(cos.reshape(1, 1, S, a.head_dim)))
    b.g.add_const("rope.sin", ArrayData(sin.reshape(1, 1, S, a.head_dim)))
    b.inputs()
    embed = b.weight("model.embed_tokens.weight", a.vocab, a.hidden)
    table = b.g.add_scaled(embed, math.sqrt(a.hidden)) if family.startswith("gemma") else embed
    x = b.op("embed", OpKind.EMBEDDING, [table, "input_ids"])
    qd, kvd = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for i in range(a.layers):
        w, n = f"model.layers.{i}", f"layers.{i}"
        h = b.rms_norm(f"{n}.input_norm", x, f"{w}.input_layernorm", i)
        if family == "phi3":   # one qkv_proj, sliced
            qkv = b.linear(f"{n}.attn.qkv", h, f"{w}.self_attn.qkv_proj", qd + 2 * kvd, a.hidden, LinearRole.QKV,
                           i, qkv_bias)
            q, k, v = b.split(f"{n}.attn.qkv", qkv, (qd, kvd, kvd))
        else:
            q = b.linear(f"{n}.attn.q", h, f"{w}.self_attn.q_proj", qd, a.hidden, LinearRole.Q, i, qkv_bias)
            k = b.linear(f"{n}.attn.k", h, f"{w}.self_attn.k_proj", kvd, a.hidden, LinearRole.K, i, qkv_bias)
            v = b.linear(f"{n}.attn.v", h, f"{w}.self_attn.v_proj", kvd, a.hidden, LinearRole.V, i, qkv_bias)
        o = b.attention(i, q, k, v, scale, ("rope.cos", "rope.sin"),
                        head_norms=f"{w}.self_attn" if family == "qwen3" else None, softcap=attn_cap)
        o = b.linear(f"{n}.attn.o", o, f"{w}.self_attn.o_proj", a.hidden, qd, LinearRole.O, i, o_bias)
        if family == "gemma2":   # Gemma2 norms each block's output too, before the residual add
            o = b.rms_norm(f"{n}.post_attn_norm", o, f"{w}.post_attention_layernorm", i)
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        pre_mlp = "pre_feedforward_layernorm" if family == "gemma2" else "post_attention_layernorm"
        h = b.rms_norm(f"{n}.post_norm", x, f"{w}.{pre_mlp}", i)
        if family == "phi3":   # one gate_up_proj, sliced: gate first
            gu = b.linear(f"{n}.mlp.gate_up", h, f"{w}.mlp.gate_up_proj", 2 * a.inter, a.hidden, LinearRole.GATE_UP,
                          i, mlp_bias)
            g, u = b.split(f"{n}.mlp.gate_up", gu, (a.inter, a.inter))
        else:
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
    return {"rope_theta": theta, "rope_scaling": scaling, "attention_window": window,
            "max_position_embeddings": f.int("max_position_embeddings", None)}
