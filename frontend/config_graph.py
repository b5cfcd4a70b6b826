"""The graph builder config-only import shares across families (frontend/config.py): the validated
architecture numbers, and the canonical fused ops (norms, projections, attention with its head
split, the LM head) named after the Hugging Face parameters."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.ir import (AbsentData, ArrayData, AttentionAttrs, AxisAttrs, DType, GeluApprox, GeluAttrs, Graph,
                       InputAttrs, InputRole, LinearAttrs, LinearRole, NormAttrs, OpKind, PermAttrs, RopeAttrs,
                       RopeStyle, ShapeAttrs, SliceAttrs, SoftcapAttrs, TensorType)

from .config_fields import _Fields

MAX_LAYERS = 1024   # 8x the deepest published decoder (126); more is a typo, and minutes of graph building
_ACTIVATIONS = {  # HF activation name -> (op, gelu approximation)
    "relu": (OpKind.RELU, None), "gelu": (OpKind.GELU, GeluApprox.NONE),
    "gelu_new": (OpKind.GELU, GeluApprox.TANH), "gelu_pytorch_tanh": (OpKind.GELU, GeluApprox.TANH),
    "gelu_fast": (OpKind.GELU, GeluApprox.TANH), "silu": (OpKind.SILU, None), "swish": (OpKind.SILU, None),
}


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

    def attention(self, i: int, q: str, k: str, v: str, scale: float, rope: tuple[str, str] | None,
                  head_norms: str | None = None, softcap: float | None = None) -> str:
        """Split heads, rotate, extend with the cache, attend, merge heads: [B,S,H*D] out.
        `head_norms`: the parameter prefix of an RMSNorm over each q and k head before RoPE (Qwen3's
        `{prefix}.q_norm` / `.k_norm`), one [head_dim] weight shared by the heads. `softcap`: the
        scores' softcap * tanh(scores / softcap) (Gemma2; `scale` already holds the 1 / softcap)."""
        a, B, S, p = self.a, self.B, self.S, f"layers.{i}.attn"

        def heads(x: str, tag: str, n: int) -> str:
            r = self.op(f"{p}.{tag}_heads", OpKind.RESHAPE, [x], ShapeAttrs((B, S, n, a.head_dim)))
            if head_norms and tag in "qk":
                w = self.weight(f"{head_norms}.{tag}_norm.weight", a.head_dim)
                r = self.op(f"{p}.{tag}_norm", OpKind.RMSNORM, [r, w], NormAttrs(a.eps, i))
            return self.op(f"{p}.{tag}_t", OpKind.TRANSPOSE, [r], PermAttrs((0, 2, 1, 3)))

        q, k, v = heads(q, "q", a.heads), heads(k, "k", a.kv_heads), heads(v, "v", a.kv_heads)
        return self.attend(i, q, k, v, scale, rope, softcap)

    def attend(self, i: int, q: str, k: str, v: str, scale: float, rope: tuple[str, str] | None,
               softcap: float | None = None, rotary: int | None = None) -> str:
        """From head-major q, k, v [B, H, S, D]: rotate (the first `rotary` dims of each head, by slice,
        rope and concat, when fewer than D), extend with the cache, attend, merge heads."""
        a, B, S, p = self.a, self.B, self.S, f"layers.{i}.attn"
        D = a.head_dim

        def rotate(x: str, tag: str) -> str:
            if rotary is None or rotary == D:
                return self.op(f"{p}.{tag}_rope", OpKind.ROPE, [x, *rope], RopeAttrs(RopeStyle.HALF))
            rot = self.op(f"{p}.{tag}_rot", OpKind.SLICE, [x], SliceAttrs((0,), (rotary,), (3,), (1,)))
            keep = self.op(f"{p}.{tag}_pass", OpKind.SLICE, [x], SliceAttrs((rotary,), (D,), (3,), (1,)))
            rot = self.op(f"{p}.{tag}_rope", OpKind.ROPE, [rot, *rope], RopeAttrs(RopeStyle.HALF))
            return self.op(f"{p}.{tag}_rotated", OpKind.CONCAT, [rot, keep], AxisAttrs(3))

        if rope:
            q, k = rotate(q, "q"), rotate(k, "k")
        if self.P:
            k = self.op(f"{p}.k_cache", OpKind.CONCAT, [f"past_key_values.{i}.key", k], AxisAttrs(2))
            v = self.op(f"{p}.v_cache", OpKind.CONCAT, [f"past_key_values.{i}.value", v], AxisAttrs(2))
            self.present += [(f"present.{i}.key", k), (f"present.{i}.value", v)]
        o = self.op(f"{p}.core", OpKind.ATTENTION, [q, k, v],
                    AttentionAttrs(a.heads, a.kv_heads, scale, True, i, softcap))
        o = self.op(f"{p}.out_t", OpKind.TRANSPOSE, [o], PermAttrs((0, 2, 1, 3)))
        return self.op(f"{p}.out", OpKind.RESHAPE, [o], ShapeAttrs((B, S, a.heads * a.head_dim)))

    def split(self, name: str, x: str, widths: tuple[int, ...]) -> list[str]:
        """The parts of x's last axis, in order: how a fused projection (qkv_proj, gate_up_proj) is used."""
        out, at = [], 0
        for j, w in enumerate(widths):
            out.append(self.op(f"{name}.{j}", OpKind.SLICE, [x], SliceAttrs((at,), (at + w,), (2,), (1,))))
            at += w
        return out

    def activation(self, name: str, x: str, op: OpKind, approx: GeluApprox | None) -> str:
        return self.op(name, op, [x], GeluAttrs(approx) if op is OpKind.GELU else None)

    def finish(self, h: str, embed: str, softcap: float | None = None, head: str = "lm_head.weight"):
        """LM head (tied to `embed` or its own weight `head`; with a `softcap`, its weights / softcap
        and softcap tanh(.) after it), then the graph outputs."""
        a = self.a
        w = embed if a.tied else self.weight(head, a.vocab, a.hidden)
        if softcap is None:
            self.op("logits", OpKind.LMHEAD, [h, w], LinearAttrs(LinearRole.LM_HEAD))
        else:
            y = self.op("lm_head", OpKind.LMHEAD, [h, self.g.add_scaled(w, 1 / softcap)], LinearAttrs(LinearRole.LM_HEAD))
            self.op("logits", OpKind.SOFTCAP, [y], SoftcapAttrs(softcap))
        self.g.add_output("logits", "logits")
        for out, node in self.present:
            self.g.add_output(out, node)


def _activation(f: _Fields, key: str, default: str) -> tuple[OpKind, GeluApprox | None]:
    return _ACTIVATIONS[f.choice(key, tuple(_ACTIVATIONS), default)]
