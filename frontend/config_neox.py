"""Config-only graphs of GPT-NeoX (Pythia) and StableLM (frontend/config.py): LayerNorm with bias,
rotary positions on the first `partial_rotary_factor` of each head (slice, rope, concat, as the
ONNX import fuses them), attention and MLP in sequence or in parallel (`use_parallel_residual`;
GPT-NeoX off two norms, StableLM off its one input norm).

GPT-NeoX fuses q, k and v per head in one `query_key_value` ([B, S, H, 3 * D], sliced after the
heads' transpose), with biases (`attention_bias`) and a GELU MLP with biases. StableLM has q/k/v
projections (biased with `use_qkv_bias`), a SwiGLU MLP, and with `qk_layernorm` a LayerNorm of each
q and k head with weights of its own and no bias: one norm whose weight has a row per head ([H, 1,
D], named `q_layernorm.weight`; Hugging Face keeps one `norms.{h}.weight` per head) and a zero bias.
"""
from __future__ import annotations

import math

import numpy as np

from llmfab.ir import ArrayData, DType, LinearRole, NormAttrs, OpKind, PermAttrs, ShapeAttrs, SliceAttrs

from .config_fields import _Fields
from .config_graph import MAX_LAYERS, _activation, _Arch, _Builder
from .config_llama import _rope_params
from .rope import rope_cos_sin

NEOX_LIKE = ("gpt_neox", "stablelm")


def arch_neox(f: _Fields, family: str, dtype: DType) -> _Arch:
    hidden = f.int("hidden_size")
    heads = f.heads("num_attention_heads", hidden, "hidden_size")
    kv = heads if family == "gpt_neox" else f.heads("num_key_value_heads", heads, "num_attention_heads", heads)
    return _Arch(family, f.int("num_hidden_layers", maximum=MAX_LAYERS), hidden, heads, kv, hidden // heads,
                 f.int("intermediate_size"), f.int("vocab_size"), f.float("layer_norm_eps", 1e-5), dtype,
                 f.bool("tie_word_embeddings", False))


def _rotary(f: _Fields, family: str, head_dim: int) -> tuple[float, dict | None, int]:
    """(theta, scaling, rotated dims per head): transformers 5 keeps both in `rope_parameters`,
    transformers 4 in `rope_theta` / `partial_rotary_factor` (GPT-NeoX: `rotary_emb_base`, `rotary_pct`)."""
    params = f.cfg.get("rope_parameters")
    src, key = f, "partial_rotary_factor"
    if isinstance(params, dict) and params.get(key) is not None:
        src = _Fields(params, f"{f.label}: rope_parameters")
    elif family == "gpt_neox" and f.cfg.get(key) is None:
        key = "rotary_pct"
    factor = src.float(key, 0.25)
    rotary = int(head_dim * factor)
    if factor > 1 or rotary < 2 or rotary % 2:
        src.fail(f"field {key!r} is {factor}: {rotary} of head_dim {head_dim} would be rotated; it must be an "
                 "even number from 2 to head_dim")
    if params is None and "rope_theta" not in f.cfg and family == "gpt_neox" and "rotary_emb_base" in f.cfg:
        theta, scaling = f.float("rotary_emb_base"), None
    else:
        theta, scaling = _rope_params(f, rotary)
    if scaling and scaling["rope_type"] == "longrope" and rotary < head_dim:
        # its attention_factor scales only the rotated dims: no scale of the scores takes it
        f.fail("rope type 'longrope' with partial rotary is not supported")
    return theta, scaling, rotary


def build_neox(f: _Fields, b: _Builder, family: str) -> dict:
    a, S, P, D = b.a, b.S, b.P, b.a.head_dim
    theta, scaling, rotary = _rotary(f, family, D)
    parallel = f.bool("use_parallel_residual", family == "gpt_neox")
    neox = family == "gpt_neox"
    qkv_bias = f.bool("attention_bias", True) if neox else f.bool("use_qkv_bias", False)
    qk_norm = not neox and f.bool("qk_layernorm", False)
    if neox:
        act, approx = _activation(f, "hidden_act", "gelu")
    else:
        f.choice("hidden_act", ("silu", "swish"), "silu")
        act, approx = OpKind.SILU, None
    cos, sin = rope_cos_sin(rotary, theta, P, S, scaling)
    b.g.add_const("rope.cos", ArrayData(cos.reshape(1, 1, S, rotary)))
    b.g.add_const("rope.sin", ArrayData(sin.reshape(1, 1, S, rotary)))
    b.inputs()
    root = "gpt_neox" if neox else "model"
    embed = b.weight(f"{root}.embed_in.weight" if neox else "model.embed_tokens.weight", a.vocab, a.hidden)
    x = b.op("embed", OpKind.EMBEDDING, [embed, "input_ids"])
    qd, kvd = a.heads * D, a.kv_heads * D
    for i in range(a.layers):
        w, n = f"{root}.layers.{i}", f"layers.{i}"
        h = b.layer_norm(f"{n}.input_norm", x, f"{w}.input_layernorm", i)
        # parallel: the MLP first, as the exports order it (residual adds take operands in that order)
        if parallel:
            m = _mlp(b, f"{n}.mlp", b.layer_norm(f"{n}.post_norm", x, f"{w}.post_attention_layernorm", i)
                     if neox else h, w, i, act, approx)
        if neox:   # one query_key_value: per head q, k, v of D each
            qkv = b.linear(f"{n}.attn.qkv", h, f"{w}.attention.query_key_value", 3 * qd, a.hidden, LinearRole.QKV,
                           i, qkv_bias)
            r = b.op(f"{n}.attn.qkv_heads", OpKind.RESHAPE, [qkv], ShapeAttrs((b.B, S, a.heads, 3 * D)))
            t = b.op(f"{n}.attn.qkv_t", OpKind.TRANSPOSE, [r], PermAttrs((0, 2, 1, 3)))
            q, k, v = (b.op(f"{n}.attn.{tag}", OpKind.SLICE, [t], SliceAttrs((j * D,), ((j + 1) * D,), (3,), (1,)))
                       for j, tag in enumerate("qkv"))
            out_param, out_bias = f"{w}.attention.dense", qkv_bias
        else:
            q, k, v = (_heads(b, f"{n}.attn.{tag}", b.linear(f"{n}.attn.{tag}_proj", h, f"{w}.self_attn.{tag}_proj",
                                                            width, a.hidden, role, i, qkv_bias), heads)
                       for tag, width, heads, role in (("q", qd, a.heads, LinearRole.Q), ("k", kvd, a.kv_heads,
                                                       LinearRole.K), ("v", kvd, a.kv_heads, LinearRole.V)))
            if qk_norm:
                q = _head_layer_norm(b, f"{n}.attn.q_norm", q, f"{w}.self_attn.q_layernorm", a.heads, i)
                k = _head_layer_norm(b, f"{n}.attn.k_norm", k, f"{w}.self_attn.k_layernorm", a.kv_heads, i)
            out_param, out_bias = f"{w}.self_attn.o_proj", False
        o = b.attend(i, q, k, v, 1.0 / math.sqrt(D), ("rope.cos", "rope.sin"), rotary=rotary)
        o = b.linear(f"{n}.attn.o", o, out_param, a.hidden, qd, LinearRole.O, i, out_bias)
        if parallel and neox:      # mlp + attention + x
            x = b.op(f"{n}.residual", OpKind.ADD, [x, b.op(f"{n}.branches", OpKind.ADD, [m, o])])
            continue
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        if not parallel:
            m = _mlp(b, f"{n}.mlp", b.layer_norm(f"{n}.post_norm", x, f"{w}.post_attention_layernorm", i),
                     w, i, act, approx)
        x = b.op(f"{n}.mlp_residual", OpKind.ADD, [x, m])
    final = f"{root}.final_layer_norm" if neox else "model.norm"
    b.finish(b.layer_norm("final_norm", x, final, None), embed, head="embed_out.weight" if neox else "lm_head.weight")
    return {"rope_theta": theta, "rope_scaling": scaling, "rotary_dims": rotary, "parallel_residual": parallel,
            "max_position_embeddings": f.int("max_position_embeddings", None)}


def _heads(b: _Builder, name: str, x: str, heads: int) -> str:
    """[B, S, n * D] -> [B, n, S, D]."""
    r = b.op(f"{name}_heads", OpKind.RESHAPE, [x], ShapeAttrs((b.B, b.S, heads, b.a.head_dim)))
    return b.op(f"{name}_t", OpKind.TRANSPOSE, [r], PermAttrs((0, 2, 1, 3)))


def _head_layer_norm(b: _Builder, name: str, x: str, param: str, heads: int, layer: int) -> str:
    """StableLM's LayerNorm of each head ([B, H, S, D]), weights of its own per head, no bias."""
    D = b.a.head_dim
    w = b.weight(f"{param}.weight", heads, 1, D)
    zero = b.g.add_const(f"{param}.bias", ArrayData(np.zeros(D, np.float32)), weight=True).name
    return b.op(name, OpKind.LAYERNORM, [x, w, zero], NormAttrs(b.a.eps, layer))


def _mlp(b: _Builder, n: str, h: str, w: str, i: int, act: OpKind, approx) -> str:
    """GPT-NeoX's dense_h_to_4h, GELU, dense_4h_to_h (with biases); StableLM's SwiGLU (none)."""
    a = b.a
    if a.family == "gpt_neox":
        h = b.linear(f"{n}.fc1", h, f"{w}.mlp.dense_h_to_4h", a.inter, a.hidden, LinearRole.FC1, i, True)
        h = b.activation(f"{n}.act", h, act, approx)
        return b.linear(f"{n}.fc2", h, f"{w}.mlp.dense_4h_to_h", a.hidden, a.inter, LinearRole.FC2, i, True)
    g = b.linear(f"{n}.gate", h, f"{w}.mlp.gate_proj", a.inter, a.hidden, LinearRole.GATE, i, False)
    u = b.linear(f"{n}.up", h, f"{w}.mlp.up_proj", a.inter, a.hidden, LinearRole.UP, i, False)
    s = b.activation(f"{n}.act", g, act, approx)
    return b.linear(f"{n}.down", b.op(f"{n}.mul", OpKind.MUL, [s, u]), f"{w}.mlp.down_proj", a.hidden, a.inter,
                    LinearRole.DOWN, i, False)
