"""Config-only import: a Hugging Face `config.json` becomes a fused IR graph with shapes, no weights.

Models too big to ship (7B+) are compiled, scheduled and costed from their architecture alone. The
graph built here is exactly the canonical fused form the ONNX importer and the fusion passes
produce, so every later stage sees one shape of graph; weights are CONST nodes whose data is
`AbsentData` (shape and dtype only), named after the Hugging Face parameters.

The file is parsed with `json.load` and nothing else; every field is checked and a bad one raises
`ConfigError` naming the file and the field.
"""
from __future__ import annotations

import importlib.resources
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from llmfab.ir import (AbsentData, ArrayData, AttentionAttrs, AxisAttrs, DType, GeluApprox,
                       GeluAttrs, Graph, InputAttrs, InputRole, LinearAttrs, LinearRole, NormAttrs,
                       OpKind, PermAttrs, RopeAttrs, RopeStyle, ShapeAttrs, SliceAttrs, TensorType,
                       verify)
from llmfab.ir.host import require

from .config_fields import ConfigError, _Fields
from .random_weights import with_random_weights
from .rope import rope_cos_sin


SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "opt")
PRESETS: dict[str, str] = {
    "llama2-7b": "llama2-7b.json",    # meta-llama/Llama-2-7b-hf
    "llama3-8b": "llama3-8b.json",    # meta-llama/Meta-Llama-3-8B
    "mistral-7b": "mistral-7b.json",  # mistralai/Mistral-7B-v0.1
    "qwen2-7b": "qwen2-7b.json",      # Qwen/Qwen2-7B
    "opt-6.7b": "opt-6.7b.json",      # facebook/opt-6.7b
}
PRESET_DIR = Path(str(importlib.resources.files("llmfab.presets")))  # package data, any install layout

_DTYPES = {"float16": DType.FP16, "bfloat16": DType.BF16, "float32": DType.FP32}
_ACTIVATIONS = {  # HF activation name -> (op, gelu approximation)
    "relu": (OpKind.RELU, None), "gelu": (OpKind.GELU, GeluApprox.NONE),
    "gelu_new": (OpKind.GELU, GeluApprox.TANH), "gelu_pytorch_tanh": (OpKind.GELU, GeluApprox.TANH),
    "gelu_fast": (OpKind.GELU, GeluApprox.TANH), "silu": (OpKind.SILU, None), "swish": (OpKind.SILU, None),
}
# ---------------------------------------------------------------------------------------------
# rotary parameters (the tables: rope.py)


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


# ---------------------------------------------------------------------------------------------
# graph building


@dataclass(frozen=True)
class _Arch:
    """The numbers every family shares, after validation."""
    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    eps: float
    dtype: DType
    tied: bool


class _Builder:
    def __init__(self, g: Graph, arch: _Arch, batch: int, seq: int, past: int):
        self.g, self.a, self.B, self.S, self.P = g, arch, batch, seq, past
        self.present: list[tuple[str, str]] = []

    def op(self, name: str, op: OpKind, inputs, attrs=None) -> str:
        return self.g.add_op(name, op, inputs, attrs).name

    def weight(self, name: str, *shape: int) -> str:
        self.g.add_const(name, AbsentData(shape, self.a.dtype, name), weight=True)
        return name

    def linear(self, name: str, x: str, param: str, n_out: int, k_in: int, role: LinearRole,
               layer: int | None, bias: bool) -> str:
        ins = [x, self.weight(f"{param}.weight", n_out, k_in)]
        if bias:
            ins.append(self.weight(f"{param}.bias", n_out))
        return self.op(name, OpKind.LINEAR, ins, LinearAttrs(role, layer))

    def rms_norm(self, name: str, x: str, param: str, layer: int | None) -> str:
        return self.op(name, OpKind.RMSNORM, [x, self.weight(f"{param}.weight", self.a.hidden)],
                       NormAttrs(self.a.eps, layer))

    def layer_norm(self, name: str, x: str, param: str, layer: int | None) -> str:
        h = self.a.hidden
        return self.op(name, OpKind.LAYERNORM, [x, self.weight(f"{param}.weight", h),
                                                self.weight(f"{param}.bias", h)], NormAttrs(self.a.eps, layer))

    def inputs(self):
        """input_ids, then the KV cache of every layer (the order the ONNX export uses)."""
        a = self.a
        self.g.add_input("input_ids", TensorType(DType.INT64, (self.B, self.S)), InputAttrs(InputRole.TOKENS))
        if self.P:
            t = TensorType(DType.FP32, (self.B, a.kv_heads, self.P, a.head_dim))
            for i in range(a.layers):
                self.g.add_input(f"past_key_values.{i}.key", t, InputAttrs(InputRole.PAST_KEY, i))
                self.g.add_input(f"past_key_values.{i}.value", t, InputAttrs(InputRole.PAST_VALUE, i))

    def positions(self, offset: int) -> str:
        """CONST int64 [B,S] positions past_len+offset.. for a learned position table."""
        pos = np.arange(self.P + offset, self.P + offset + self.S, dtype=np.int64)
        self.g.add_const("positions", ArrayData(np.broadcast_to(pos, (self.B, self.S)).copy()))
        return "positions"

    def attention(self, i: int, q: str, k: str, v: str, scale: float, rope: tuple[str, str] | None) -> str:
        """Split heads, rotate, extend with the cache, attend, merge heads: [B,S,H*D] out."""
        a, B, S, p = self.a, self.B, self.S, f"layers.{i}.attn"

        def heads(x: str, tag: str, n: int) -> str:
            r = self.op(f"{p}.{tag}_heads", OpKind.RESHAPE, [x], ShapeAttrs((B, S, n, a.head_dim)))
            return self.op(f"{p}.{tag}_t", OpKind.TRANSPOSE, [r], PermAttrs((0, 2, 1, 3)))

        q, k, v = heads(q, "q", a.heads), heads(k, "k", a.kv_heads), heads(v, "v", a.kv_heads)
        if rope:
            q = self.op(f"{p}.q_rope", OpKind.ROPE, [q, *rope], RopeAttrs(RopeStyle.HALF))
            k = self.op(f"{p}.k_rope", OpKind.ROPE, [k, *rope], RopeAttrs(RopeStyle.HALF))
        if self.P:
            k = self.op(f"{p}.k_cache", OpKind.CONCAT, [f"past_key_values.{i}.key", k], AxisAttrs(2))
            v = self.op(f"{p}.v_cache", OpKind.CONCAT, [f"past_key_values.{i}.value", v], AxisAttrs(2))
            self.present += [(f"present.{i}.key", k), (f"present.{i}.value", v)]
        o = self.op(f"{p}.core", OpKind.ATTENTION, [q, k, v],
                    AttentionAttrs(a.heads, a.kv_heads, scale, True, i))
        o = self.op(f"{p}.out_t", OpKind.TRANSPOSE, [o], PermAttrs((0, 2, 1, 3)))
        return self.op(f"{p}.out", OpKind.RESHAPE, [o], ShapeAttrs((B, S, a.heads * a.head_dim)))

    def activation(self, name: str, x: str, op: OpKind, approx: GeluApprox | None) -> str:
        return self.op(name, op, [x], GeluAttrs(approx) if op is OpKind.GELU else None)

    def finish(self, h: str, embed: str):
        """LM head (tied to `embed` or its own `lm_head.weight`), then the graph outputs."""
        a = self.a
        w = embed if a.tied else self.weight("lm_head.weight", a.vocab, a.hidden)
        self.op("logits", OpKind.LMHEAD, [h, w], LinearAttrs(LinearRole.LM_HEAD))
        self.g.add_output("logits", "logits")
        for out, node in self.present:
            self.g.add_output(out, node)


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
    f.choice("hidden_act", ("silu", "swish"), "silu")
    return _Arch(family, f.int("num_hidden_layers", maximum=MAX_LAYERS), hidden, heads,
                 f.heads("num_key_value_heads", heads, "num_attention_heads", heads), head_dim,
                 f.int("intermediate_size"), f.int("vocab_size"), f.float("rms_norm_eps", 1e-6), dtype,
                 f.bool("tie_word_embeddings", False))


def _build_llama(f: _Fields, b: _Builder, family: str) -> dict:
    a, S, P = b.a, b.S, b.P
    total = S + P
    if family == "mistral":
        # MistralConfig defaults to a 4096 window; an explicit null means full attention.
        window = None if f.cfg.get("sliding_window", 0) is None else f.int("sliding_window", 4096)
        if window is not None and total > window:
            f.fail(f"field 'sliding_window' is {window} but seq_len + past_len = {total}: sliding-window "
                   "attention is not supported beyond the window")
    if family == "qwen2" and f.bool("use_sliding_window", False):
        window = f.cfg.get("sliding_window")
        if window is not None and total > f.int("sliding_window"):
            f.fail(f"field 'sliding_window' is {window} with use_sliding_window=true but seq_len + "
                   f"past_len = {total}: sliding-window attention is not supported beyond the window")
    qkv_bias = True if family == "qwen2" else (family == "llama" and f.bool("attention_bias", False))
    o_bias = family == "llama" and f.bool("attention_bias", False)
    mlp_bias = family == "llama" and f.bool("mlp_bias", False)
    theta, scaling = _rope_params(f)
    cos, sin = rope_cos_sin(a.head_dim, theta, P, S, scaling)
    b.g.add_const("rope.cos", ArrayData(cos.reshape(1, 1, S, a.head_dim)))
    b.g.add_const("rope.sin", ArrayData(sin.reshape(1, 1, S, a.head_dim)))
    b.inputs()
    embed = b.weight("model.embed_tokens.weight", a.vocab, a.hidden)
    x = b.op("embed", OpKind.EMBEDDING, [embed, "input_ids"])
    qd, kvd = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for i in range(a.layers):
        w, n = f"model.layers.{i}", f"layers.{i}"
        h = b.rms_norm(f"{n}.input_norm", x, f"{w}.input_layernorm", i)
        q = b.linear(f"{n}.attn.q", h, f"{w}.self_attn.q_proj", qd, a.hidden, LinearRole.Q, i, qkv_bias)
        k = b.linear(f"{n}.attn.k", h, f"{w}.self_attn.k_proj", kvd, a.hidden, LinearRole.K, i, qkv_bias)
        v = b.linear(f"{n}.attn.v", h, f"{w}.self_attn.v_proj", kvd, a.hidden, LinearRole.V, i, qkv_bias)
        o = b.attention(i, q, k, v, 1.0 / math.sqrt(a.head_dim), ("rope.cos", "rope.sin"))
        o = b.linear(f"{n}.attn.o", o, f"{w}.self_attn.o_proj", a.hidden, qd, LinearRole.O, i, o_bias)
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        h = b.rms_norm(f"{n}.post_norm", x, f"{w}.post_attention_layernorm", i)
        g = b.linear(f"{n}.mlp.gate", h, f"{w}.mlp.gate_proj", a.inter, a.hidden, LinearRole.GATE, i, mlp_bias)
        u = b.linear(f"{n}.mlp.up", h, f"{w}.mlp.up_proj", a.inter, a.hidden, LinearRole.UP, i, mlp_bias)
        s = b.op(f"{n}.mlp.act", OpKind.SILU, [g])
        m = b.op(f"{n}.mlp.mul", OpKind.MUL, [s, u])
        d = b.linear(f"{n}.mlp.down", m, f"{w}.mlp.down_proj", a.hidden, a.inter, LinearRole.DOWN, i, mlp_bias)
        x = b.op(f"{n}.mlp_residual", OpKind.ADD, [x, d])
    b.finish(b.rms_norm("final_norm", x, "model.norm", None), embed)
    return {"rope_theta": theta, "rope_scaling": scaling,
            "max_position_embeddings": f.int("max_position_embeddings", None)}


def _arch_gpt2(f: _Fields, dtype: DType) -> _Arch:
    hidden = f.int("n_embd", aliases=("hidden_size",))
    heads = f.heads("n_head", hidden, "n_embd", aliases=("num_attention_heads",))
    return _Arch("gpt2", f.int("n_layer", aliases=("num_hidden_layers",), maximum=MAX_LAYERS), hidden, heads, heads,
                 hidden // heads, f.int("n_inner", 4 * hidden), f.int("vocab_size"),
                 f.float("layer_norm_epsilon", 1e-5), dtype, f.bool("tie_word_embeddings", True))


def _build_gpt2(f: _Fields, b: _Builder) -> dict:
    a, D = b.a, b.a.hidden
    n_pos = f.int("n_positions", aliases=("max_position_embeddings",))
    _check_positions(f, b, n_pos, "n_positions")
    act, approx = _activation(f, "activation_function", "gelu_new")
    scale_weights = f.bool("scale_attn_weights", True)
    by_layer = f.bool("scale_attn_by_inverse_layer_idx", False)
    b.inputs()
    wte = b.weight("transformer.wte.weight", a.vocab, D)
    tok = b.op("embed", OpKind.EMBEDDING, [wte, "input_ids"])
    pos = b.op("embed_positions", OpKind.EMBEDDING,
               [b.weight("transformer.wpe.weight", n_pos, D), b.positions(0)])
    x = b.op("embed_sum", OpKind.ADD, [tok, pos])
    for i in range(a.layers):
        w, n = f"transformer.h.{i}", f"layers.{i}"
        h = b.layer_norm(f"{n}.input_norm", x, f"{w}.ln_1", i)
        # HF Conv1D stores [K, N]; IR Linear weights are [N, K].
        qkv = b.linear(f"{n}.attn.qkv", h, f"{w}.attn.c_attn", 3 * D, D, LinearRole.QKV, i, True)
        q, k, v = (b.op(f"{n}.attn.{t}", OpKind.SLICE, [qkv], SliceAttrs((j * D,), ((j + 1) * D,), (2,), (1,)))
                   for j, t in enumerate("qkv"))
        scale = (1.0 / math.sqrt(a.head_dim) if scale_weights else 1.0) / ((i + 1) if by_layer else 1)
        o = b.attention(i, q, k, v, scale, None)
        o = b.linear(f"{n}.attn.o", o, f"{w}.attn.c_proj", D, D, LinearRole.O, i, True)
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        h = b.layer_norm(f"{n}.post_norm", x, f"{w}.ln_2", i)
        h = b.linear(f"{n}.mlp.fc1", h, f"{w}.mlp.c_fc", a.inter, D, LinearRole.FC1, i, True)
        h = b.activation(f"{n}.mlp.act", h, act, approx)
        h = b.linear(f"{n}.mlp.fc2", h, f"{w}.mlp.c_proj", D, a.inter, LinearRole.FC2, i, True)
        x = b.op(f"{n}.mlp_residual", OpKind.ADD, [x, h])
    b.finish(b.layer_norm("final_norm", x, "transformer.ln_f", None), wte)
    return {"max_position_embeddings": n_pos}


def _arch_opt(f: _Fields, dtype: DType) -> _Arch:
    hidden = f.int("hidden_size")
    heads = f.heads("num_attention_heads", hidden, "hidden_size")
    return _Arch("opt", f.int("num_hidden_layers", maximum=MAX_LAYERS), hidden, heads, heads, hidden // heads,
                 f.int("ffn_dim"), f.int("vocab_size"), 1e-5, dtype, f.bool("tie_word_embeddings", True))


def _build_opt(f: _Fields, b: _Builder) -> dict:
    a, D = b.a, b.a.hidden
    if not f.bool("do_layer_norm_before", True):
        f.fail("field 'do_layer_norm_before' is false: post-norm OPT (opt-350m) is not supported")
    proj = f.int("word_embed_proj_dim", D)
    if proj != D:
        f.fail(f"field 'word_embed_proj_dim' is {proj} but hidden_size is {D}: "
               "project_in/project_out are not supported")
    if not f.bool("layer_norm_elementwise_affine", True):
        f.fail("field 'layer_norm_elementwise_affine' is false: layer norms without weights are not supported")
    bias = f.bool("enable_bias", True)
    n_pos = f.int("max_position_embeddings")
    _check_positions(f, b, n_pos, "max_position_embeddings")
    act, approx = _activation(f, "activation_function", "relu")
    b.inputs()
    embed = b.weight("model.decoder.embed_tokens.weight", a.vocab, D)
    tok = b.op("embed", OpKind.EMBEDDING, [embed, "input_ids"])
    # OPTLearnedPositionalEmbedding keeps 2 extra rows: position p reads row p + 2.
    pos = b.op("embed_positions", OpKind.EMBEDDING,
               [b.weight("model.decoder.embed_positions.weight", n_pos + 2, D), b.positions(2)])
    x = b.op("embed_sum", OpKind.ADD, [tok, pos])
    for i in range(a.layers):
        w, n = f"model.decoder.layers.{i}", f"layers.{i}"
        h = b.layer_norm(f"{n}.input_norm", x, f"{w}.self_attn_layer_norm", i)
        q = b.linear(f"{n}.attn.q", h, f"{w}.self_attn.q_proj", D, D, LinearRole.Q, i, bias)
        k = b.linear(f"{n}.attn.k", h, f"{w}.self_attn.k_proj", D, D, LinearRole.K, i, bias)
        v = b.linear(f"{n}.attn.v", h, f"{w}.self_attn.v_proj", D, D, LinearRole.V, i, bias)
        o = b.attention(i, q, k, v, 1.0 / math.sqrt(a.head_dim), None)
        o = b.linear(f"{n}.attn.o", o, f"{w}.self_attn.out_proj", D, D, LinearRole.O, i, bias)
        x = b.op(f"{n}.attn_residual", OpKind.ADD, [x, o])
        h = b.layer_norm(f"{n}.post_norm", x, f"{w}.final_layer_norm", i)
        h = b.linear(f"{n}.mlp.fc1", h, f"{w}.fc1", a.inter, D, LinearRole.FC1, i, bias)
        h = b.activation(f"{n}.mlp.act", h, act, approx)
        h = b.linear(f"{n}.mlp.fc2", h, f"{w}.fc2", D, a.inter, LinearRole.FC2, i, bias)
        x = b.op(f"{n}.mlp_residual", OpKind.ADD, [x, h])
    if not f.bool("_remove_final_layer_norm", False):
        x = b.layer_norm("final_norm", x, "model.decoder.final_layer_norm", None)
    b.finish(x, embed)
    return {"max_position_embeddings": n_pos}


def _activation(f: _Fields, key: str, default: str) -> tuple[OpKind, GeluApprox | None]:
    return _ACTIVATIONS[f.choice(key, tuple(_ACTIVATIONS), default)]


def _check_positions(f: _Fields, b: _Builder, n_pos: int, key: str):
    if b.S + b.P > n_pos:
        f.fail(f"seq_len + past_len = {b.S + b.P} exceeds field {key!r} = {n_pos} "
               "(the learned position table has no more rows)")


# ---------------------------------------------------------------------------------------------
# entry points


def _read(path: Path, label: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except OSError as e:
        raise ConfigError(f"{label}: cannot read the config ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:   # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
        raise ConfigError(f"{label}: not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{label}: the top level must be a JSON object, not {type(cfg).__name__}")
    return cfg


# measured: a node of the config graph (networkx entry, Node, type, attrs) takes ~1.35 KB
_NODE_BYTES, _NODES_PER_LAYER = 1400, 36
MAX_LAYERS = 1024   # 8x the deepest published decoder (126); more is a typo, and minutes of graph building


def _graph_bytes(a: _Arch, batch: int, seq: int, past: int) -> int:
    """What building the graph certainly allocates: its nodes, and the RoPE tables or position ids
    (weights are shapes only, never arrays)."""
    tables = 6 * 4 * seq * a.head_dim if a.family in ("llama", "qwen2", "mistral") else 3 * 8 * batch * seq
    return _NODE_BYTES * _NODES_PER_LAYER * (a.layers + 1) + tables


def _build(cfg: Mapping, label: str, seq_len: int, past_len: int, batch: int, name: str | None) -> Graph:
    for arg, v, lo in (("seq_len", seq_len, 1), ("past_len", past_len, 0), ("batch", batch, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"{arg} must be an int >= {lo}, not {v!r}")
    f = _Fields(cfg, label)
    family = f.get("model_type", None)[1]
    if family is None:
        f.fail(f"missing required field 'model_type' (supported: {', '.join(SUPPORTED_FAMILIES)})")
    if family not in SUPPORTED_FAMILIES:
        f.fail(f"field 'model_type' is {family!r}, which is not supported "
               f"(supported: {', '.join(SUPPORTED_FAMILIES)})")
    dtype_key, dt = f.get("torch_dtype", "float32", aliases=("dtype",))
    if not isinstance(dt, str) or dt not in _DTYPES:
        f.fail(f"field {dtype_key!r} must be one of {', '.join(_DTYPES)}, not {dt!r}")
    dtype = _DTYPES[dt]
    if family in ("llama", "qwen2", "mistral"):
        arch = _arch_llama(f, family, dtype)
    elif family == "gpt2":
        arch = _arch_gpt2(f, dtype)
    else:
        arch = _arch_opt(f, dtype)
    require(_graph_bytes(arch, batch, seq_len, past_len),
            f"{label}: the graph of {arch.layers} layers at seq_len {seq_len} + past_len {past_len}")
    if name is None:
        src = cfg.get("_name_or_path")
        name = src if isinstance(src, str) and src else family
    g = Graph(name)
    b = _Builder(g, arch, batch, seq_len, past_len)
    if family == "gpt2":
        extra = _build_gpt2(f, b)
    elif family == "opt":
        extra = _build_opt(f, b)
    else:
        extra = _build_llama(f, b, family)
    g.meta.update(
        family=family, num_layers=arch.layers, hidden_size=arch.hidden, num_heads=arch.heads,
        num_kv_heads=arch.kv_heads, head_dim=arch.head_dim, intermediate_size=arch.inter,
        vocab_size=arch.vocab, seq_len=seq_len, past_len=past_len, batch=batch, source="config",
        weight_dtype=dtype.short, tie_word_embeddings=arch.tied, **extra)
    verify(g, fused=True)
    return g


def load_config(source: str | os.PathLike | Mapping, *, seq_len: int = 16, past_len: int = 0,
                batch: int = 1) -> Graph:
    """The fused graph of the model `source` describes (a config.json path, or the parsed dict).

    Activations are [batch, seq_len, hidden]; with past_len > 0 the graph takes and returns a KV
    cache (`past_key_values.{i}.key/value` in, `present.{i}.key/value` out).
    """
    if isinstance(source, Mapping):
        g = _build(source, "config.json", seq_len, past_len, batch, None)
        g.meta["config_path"] = None
        return g
    path = Path(source)
    g = _build(_read(path, str(path)), str(path), seq_len, past_len, batch, None)
    g.meta["config_path"] = str(path)
    return g


def load_preset(name: str, **kw) -> Graph:
    """The graph of a bundled model config (see `PRESETS`); keywords as for `load_config`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return _load_preset(name, PRESET_DIR / PRESETS[name], **kw)


def _load_preset(name: str, path: Path, *, seq_len: int = 16, past_len: int = 0, batch: int = 1) -> Graph:
    g = _build(_read(path, str(path)), str(path), seq_len, past_len, batch, name)
    g.meta.update(config_path=str(path), preset=name)
    return g


__all__ = ["ConfigError", "SUPPORTED_FAMILIES", "PRESETS", "load_config", "load_preset",
           "rope_cos_sin", "with_random_weights"]
