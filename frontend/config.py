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
from pathlib import Path
from typing import Mapping


from llmfab.ir import DType, Graph, LinearRole, OpKind, SliceAttrs, verify
from llmfab.ir.host import require

from .config_fields import ConfigError, _Fields
from .config_graph import MAX_LAYERS, _activation, _Arch, _Builder
from .config_llama import LLAMA_LIKE, arch_llama, build_llama
from .config_neox import NEOX_LIKE, arch_neox, build_neox
from .random_weights import with_random_weights
from .rope import rope_cos_sin


SUPPORTED_FAMILIES = (*LLAMA_LIKE, *NEOX_LIKE, "gpt2", "opt")
PRESETS: dict[str, str] = {
    "llama2-7b": "llama2-7b.json",    # meta-llama/Llama-2-7b-hf
    "llama3-8b": "llama3-8b.json",    # meta-llama/Meta-Llama-3-8B
    "mistral-7b": "mistral-7b.json",  # mistralai/Mistral-7B-v0.1
    "qwen2-7b": "qwen2-7b.json",      # Qwen/Qwen2-7B
    "opt-6.7b": "opt-6.7b.json",      # facebook/opt-6.7b
    "llama-3.2-1b": "llama-3.2-1b.json",  # meta-llama/Llama-3.2-1B
    "llama-3.2-3b": "llama-3.2-3b.json",  # meta-llama/Llama-3.2-3B
    "smollm-360m": "smollm-360m.json",    # HuggingFaceTB/SmolLM-360M
    "phi-3-mini": "phi-3-mini.json",      # microsoft/Phi-3-mini-4k-instruct
    "qwen3-8b": "qwen3-8b.json",          # Qwen/Qwen3-8B
    "gemma-2b": "gemma-2b.json",          # google/gemma-2b
    "gemma-7b": "gemma-7b.json",          # google/gemma-7b
    "gemma2-2b": "gemma2-2b.json",        # google/gemma-2-2b
    "pythia-1b": "pythia-1b.json",        # EleutherAI/pythia-1b
    "stablelm-2-1.6b": "stablelm-2-1.6b.json",  # stabilityai/stablelm-2-1_6b
}
PRESET_DIR = Path(str(importlib.resources.files("llmfab.presets")))  # package data, any install layout

_DTYPES = {"float16": DType.FP16, "bfloat16": DType.BF16, "float32": DType.FP32}


# ---------------------------------------------------------------------------------------------
# GPT-2 and OPT (the LLaMA-like families: config_llama.py)


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


def _graph_bytes(a: _Arch, batch: int, seq: int, past: int) -> int:
    """What building the graph certainly allocates: its nodes, and the RoPE tables or position ids
    (weights are shapes only, never arrays)."""
    tables = 6 * 4 * seq * a.head_dim if a.family in LLAMA_LIKE + NEOX_LIKE else 3 * 8 * batch * seq
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
    if family in LLAMA_LIKE:
        arch = arch_llama(f, family, dtype)
    elif family in NEOX_LIKE:
        arch = arch_neox(f, family, dtype)
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
    elif family in NEOX_LIKE:
        extra = build_neox(f, b, family)
    else:
        extra = build_llama(f, b, family)
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
