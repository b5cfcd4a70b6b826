"""Random small decoders in the fused IR, for the property test of compile + execute: the block
layouts of the supported families (sequential pre-norm; attention and MLP in parallel off one
shared norm, as Falcon and Phi-2, or off two norms, as GPT-NeoX), any GQA ratio (one KV head
included), fused qkv split on the head axis (Falcon), partial rotary by slice + concat (Phi),
tied or own LM head, biases, SwiGLU or GELU MLPs, RMSNorm or LayerNorm, the embedding scaled by
sqrt(hidden) (Gemma), an RMSNorm over each q and k head (Qwen3), a LayerNorm of each q and k head with
weights of its own (StableLM's q/k_layernorm; on [B, S, H, D] or on [B, H, S, D]), gate and up in one
Linear split by two slices (Phi-3)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.frontend.rope import rope_cos_sin
from llmfab.ir import (ArrayData, AttentionAttrs, AxisAttrs, DType, GeluApprox, GeluAttrs, Graph, InputAttrs,
                       InputRole, LinearAttrs, LinearRole, NormAttrs, OpKind, PermAttrs, RopeAttrs, RopeStyle,
                       ShapeAttrs, SliceAttrs, TensorType, verify)

BLOCKS = ("sequential", "parallel-shared-norm", "parallel-two-norms")


@dataclass(frozen=True)
class Spec:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    block: str                 # one of BLOCKS
    tied: bool
    fused_qkv: bool            # one linear, q/k/v sliced on the head axis of [B, S, H + 2 Hkv, D]
    rotary: int                # rotated dims per head (head_dim: full; less: slice + concat)
    swiglu: bool               # silu(gate) * up, else gelu(fc1)
    layer_norm: bool           # LayerNorm (with bias), else RMSNorm
    bias: bool
    embed_scale: bool          # embeddings times sqrt(hidden), a constant broadcast over rows
    seed: int
    qk_norm: bool = False      # RMSNorm over head_dim of each q and k head, before RoPE
    gate_up: bool = False      # SwiGLU's gate and up as one Linear, sliced
    head_ln: str | None = None  # "seq-major" / "head-major": a LayerNorm per q and k head, parameters [H, 1.., D]


def build(spec: Spec, seq: int) -> Graph:
    """The decoder of `spec` at `seq` tokens, with weights drawn from `spec.seed` (the same at every seq)."""
    rng = np.random.default_rng(spec.seed)
    H, Hkv, D = spec.heads, spec.kv_heads, spec.head_dim
    hid = H * D
    g = Graph(f"random-{spec.seed}")

    def op(name, kind, inputs, attrs=None):
        return g.add_op(name, kind, inputs, attrs).name

    def weight(name, *shape, scale=0.0):
        a = (scale + rng.standard_normal(shape) * (0.1 if scale else 0.3 / np.sqrt(shape[-1]))).astype(np.float32)
        return g.add_const(name, ArrayData(a), weight=True).name

    def linear(name, x, n_out, k_in, role, layer, bias=spec.bias):
        ins = [x, weight(f"{name}.weight", n_out, k_in)] + ([weight(f"{name}.bias", n_out)] if bias else [])
        return op(name, OpKind.LINEAR, ins, LinearAttrs(role, layer))

    def norm(name, x, layer):
        if spec.layer_norm:
            return op(name, OpKind.LAYERNORM, [x, weight(f"{name}.weight", hid, scale=1.0), weight(f"{name}.bias", hid)],
                      NormAttrs(1e-5, layer))
        return op(name, OpKind.RMSNORM, [x, weight(f"{name}.weight", hid, scale=1.0)], NormAttrs(1e-6, layer))

    def head_ln(name, x, n, layer, shape):
        return op(f"{name}_ln", OpKind.LAYERNORM, [x, weight(f"{name}_ln.weight", *shape, scale=1.0),
                                                  weight(f"{name}_ln.bias", *shape)], NormAttrs(1e-5, layer))

    def heads(name, x):   # [B, S, n, D] -> [B, n, S, D]
        return op(f"{name}.transpose", OpKind.TRANSPOSE, [x], PermAttrs((0, 2, 1, 3)))

    def rope(name, x):
        r = spec.rotary
        if r == D:
            return op(f"{name}.rope", OpKind.ROPE, [x, "rope.cos", "rope.sin"], RopeAttrs(RopeStyle.HALF))
        rot = op(f"{name}.rot", OpKind.SLICE, [x], SliceAttrs((0,), (r,), (3,), (1,)))
        keep = op(f"{name}.pass", OpKind.SLICE, [x], SliceAttrs((r,), (D,), (3,), (1,)))
        rot = op(f"{name}.rope", OpKind.ROPE, [rot, "rope.cos", "rope.sin"], RopeAttrs(RopeStyle.HALF))
        return op(f"{name}.cat", OpKind.CONCAT, [rot, keep], AxisAttrs(3))

    cos, sin = rope_cos_sin(spec.rotary, 10000.0, 0, seq)
    g.add_const("rope.cos", ArrayData(cos.reshape(1, 1, seq, spec.rotary)))
    g.add_const("rope.sin", ArrayData(sin.reshape(1, 1, seq, spec.rotary)))
    g.add_input("input_ids", TensorType(DType.INT64, (1, seq)), InputAttrs(InputRole.TOKENS))
    table = weight("embed_tokens.weight", spec.vocab, hid)
    x = op("embed_tokens", OpKind.EMBEDDING, [table, "input_ids"])
    if spec.embed_scale:
        c = g.add_const("embed_scale", ArrayData(np.array(np.sqrt(hid), np.float32))).name
        x = op("embed_scaled", OpKind.MUL, [x, c])
    for i in range(spec.layers):
        p = f"layers.{i}"
        h = norm(f"{p}.attn_norm", x, i)
        if spec.fused_qkv:
            qkv = linear(f"{p}.qkv_proj", h, (H + 2 * Hkv) * D, hid, LinearRole.QKV, i)
            r = op(f"{p}.qkv.reshape", OpKind.RESHAPE, [qkv], ShapeAttrs((1, seq, H + 2 * Hkv, D)))
            parts = [(0, H), (H, H + Hkv), (H + Hkv, H + 2 * Hkv)]
            q, k, v = (op(f"{p}.{t}.slice", OpKind.SLICE, [r], SliceAttrs((a,), (b,), (2,), (1,)))
                       for t, (a, b) in zip("qkv", parts))
        else:
            q, k, v = (op(f"{p}.{t}.reshape", OpKind.RESHAPE,
                          [linear(f"{p}.{t}_proj", h, n * D, hid, role, i)], ShapeAttrs((1, seq, n, D)))
                       for t, n, role in (("q", H, LinearRole.Q), ("k", Hkv, LinearRole.K), ("v", Hkv, LinearRole.V)))
        if spec.qk_norm:
            q, k = (op(f"{p}.{t}_norm", OpKind.RMSNORM, [x_, weight(f"{p}.{t}_norm.weight", D, scale=1.0)],
                       NormAttrs(1e-6, i)) for t, x_ in (("q", q), ("k", k)))
        if spec.head_ln == "seq-major":
            q, k = head_ln(f"{p}.q", q, H, i, (H, D)), head_ln(f"{p}.k", k, Hkv, i, (Hkv, D))
        q, k, v = heads(f"{p}.q", q), heads(f"{p}.k", k), heads(f"{p}.v", v)
        if spec.head_ln == "head-major":
            q, k = head_ln(f"{p}.q", q, H, i, (H, 1, D)), head_ln(f"{p}.k", k, Hkv, i, (Hkv, 1, D))
        q, k = rope(f"{p}.q", q), rope(f"{p}.k", k)
        a = op(f"{p}.attention", OpKind.ATTENTION, [q, k, v], AttentionAttrs(H, Hkv, D ** -0.5, True, i))
        a = op(f"{p}.attention.transpose", OpKind.TRANSPOSE, [a], PermAttrs((0, 2, 1, 3)))
        a = op(f"{p}.attention.reshape", OpKind.RESHAPE, [a], ShapeAttrs((1, seq, hid)))
        o = linear(f"{p}.o_proj", a, hid, hid, LinearRole.O, i)
        if spec.block == "sequential":
            x = op(f"{p}.attn_residual", OpKind.ADD, [x, o])
            m_in = norm(f"{p}.mlp_norm", x, i)
        else:
            m_in = h if spec.block == "parallel-shared-norm" else norm(f"{p}.mlp_norm", x, i)
        if spec.swiglu and spec.gate_up:
            gu = linear(f"{p}.gate_up_proj", m_in, 2 * spec.ffn, hid, LinearRole.GATE_UP, i)
            gate, up = (op(f"{p}.{t}", OpKind.SLICE, [gu], SliceAttrs((a,), (a + spec.ffn,), (2,), (1,)))
                        for t, a in (("gate", 0), ("up", spec.ffn)))
        if spec.swiglu:
            if not spec.gate_up:
                gate = linear(f"{p}.gate_proj", m_in, spec.ffn, hid, LinearRole.GATE, i)
                up = linear(f"{p}.up_proj", m_in, spec.ffn, hid, LinearRole.UP, i)
            act = op(f"{p}.mul", OpKind.MUL, [op(f"{p}.silu", OpKind.SILU, [gate]), up])
            m = linear(f"{p}.down_proj", act, hid, spec.ffn, LinearRole.DOWN, i)
        else:
            fc1 = linear(f"{p}.fc1", m_in, spec.ffn, hid, LinearRole.FC1, i)
            act = op(f"{p}.gelu", OpKind.GELU, [fc1], GeluAttrs(GeluApprox.TANH))
            m = linear(f"{p}.fc2", act, hid, spec.ffn, LinearRole.FC2, i)
        if spec.block == "sequential":
            x = op(f"{p}.mlp_residual", OpKind.ADD, [x, m])
        else:   # x + attention + MLP, both branches read the same input
            x = op(f"{p}.residual", OpKind.ADD, [x, op(f"{p}.branches", OpKind.ADD, [o, m])])
    head = table if spec.tied else weight("lm_head.weight", spec.vocab, hid)
    op("lm_head", OpKind.LMHEAD, [norm("final_norm", x, None), head], LinearAttrs(LinearRole.LM_HEAD))
    g.add_output("logits", "lm_head")
    g.meta.update(seq_len=seq, past_len=0, batch=1, family=f"random-{spec.block}", num_layers=spec.layers)
    verify(g, fused=True)
    return g
