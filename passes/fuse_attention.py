"""Scaled dot-product attention with causal masking and grouped-query heads.

    softmax(scale * (q @ k^T) + mask) @ v   ->   Attention(q, k, v){num_heads, num_kv_heads, scale, causal}

q is [B, H, S, D]; k and v are [B, Hkv, T, D] (T = past + S), before HF's `repeat_kv`
(reshape(expand(unsqueeze(k)))) which this pass strips so the op sees the real KV heads (any
ratio H / Hkv, one KV head included).
Scalar scales anywhere on the q, k or score path are multiplied into `scale`. Soft-capped scores
c * tanh(scale * (q @ k^T) / c) (Gemma2) give `softcap=c`, the 1 / c in `scale`. The additive mask,
folded to a constant at import, becomes `causal=True` when it is exactly the causal pattern;
any other constant mask is kept as a fourth input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmfab.ir import ArrayData, AttentionAttrs, Graph, OpKind, PermAttrs, ShapeAttrs

from .pass_base import Pass
from .patterns import find_or_add, replace, split_const

MASKED = -65504.0  # a mask entry at or below this removes the score (HF: -inf or finfo.min of fp16/fp32)


def _peel_scale(g: Graph, name: str) -> tuple[str, float]:
    """Strip scalar multiplications/divisions: returns (source, product of the scales)."""
    scale = 1.0
    while True:
        n = g.node(name)
        if n.op in (OpKind.MUL, OpKind.DIV) and (sc := split_const(g, n)) is not None:
            src, c = sc
            if n.op is OpKind.DIV and n.inputs[1] != src:
                scale /= c
            elif n.op is OpKind.MUL:
                scale *= c
            else:
                return name, scale
            name = src
        else:
            return name, scale


def _softcap(g: Graph, name: str) -> tuple[str, float] | None:
    """(tanh's input, c) if `name` is tanh(.) * c with the tanh used only there (or tanh(.): c = 1,
    as exporters drop the / 1 and * 1)."""
    n = g.node(name)
    if n.op is OpKind.TANH:
        return n.inputs[0], 1.0
    if n.op is not OpKind.MUL or (sc := split_const(g, n)) is None or sc[1] <= 0:
        return None
    t = g.node(sc[0])
    if t.op is not OpKind.TANH or len(g.users(t.name)) != 1:
        return None
    return t.inputs[0], sc[1]


def _same_order_source(g: Graph, name: str) -> str:
    """The earliest value with the elements of `name` in the same order: back through reshapes and
    transposes that move only axes of size 1 (exporters spell a one-head split either way)."""
    while True:
        n = g.node(name)
        if n.op is OpKind.TRANSPOSE:
            big = [p for p in n.attrs.perm if g.node(n.inputs[0]).type.shape[p] != 1]
            if big != sorted(big):
                return name
        elif n.op is not OpKind.RESHAPE:
            return name
        name = n.inputs[0]


def _strip_repeat_kv(g: Graph, name: str) -> str:
    """k if `name` is reshape(expand(u, [B,Hkv,r,T,D]), [B,Hkv*r,T,D]) where u holds k [B,Hkv,T,D]
    as [B,Hkv,1,T,D] (HF's repeat_kv, any ratio r, a single KV head included)."""
    r = g.node(name)
    if r.op is not OpKind.RESHAPE or r.type.rank != 4:
        return name
    e = g.node(r.inputs[0])
    if e.op is not OpKind.EXPAND or e.type.rank != 5:
        return name
    u = g.node(e.inputs[0])
    B, Hkv, one, T, D = u.type.shape if u.type.rank == 5 else (None,) * 5
    if one != 1 or e.type.shape[:2] != (B, Hkv) or e.type.shape[3:] != (T, D) \
            or r.type.shape != (B, Hkv * e.type.shape[2], T, D):
        return name
    if u.op is OpKind.RESHAPE and g.node(u.inputs[0]).type.shape == (B, Hkv, T, D):
        return u.inputs[0]
    src = _same_order_source(g, u.name)
    if g.node(src).type.shape == (B, Hkv, T, D):
        return src
    if Hkv == 1:   # one head: [B, T, 1, D] and [B, 1, T, D] hold the same order; spell it as every
        # other export does (reshape to heads, transpose), so the graph is the config's
        heads = find_or_add(g, u.name + ".heads", OpKind.RESHAPE, [src], ShapeAttrs((B, T, 1, D)))
        return find_or_add(g, u.name + ".kv", OpKind.TRANSPOSE, [heads], PermAttrs((0, 2, 1, 3)))
    return find_or_add(g, u.name + ".kv", OpKind.RESHAPE, [src], ShapeAttrs((B, Hkv, T, D)))


def _key_from_transposed(g: Graph, name: str) -> str | None:
    """k if `name` is k with its last two axes swapped (adding a transpose node if needed)."""
    n = g.node(name)
    if n.op is not OpKind.TRANSPOSE:
        return None
    perm = list(n.attrs.perm)
    perm[-1], perm[-2] = perm[-2], perm[-1]
    if perm == list(range(len(perm))):
        return n.inputs[0]
    return find_or_add(g, name + ".k", OpKind.TRANSPOSE, [n.inputs[0]], PermAttrs(tuple(perm)))


def _mask_kind(mask: np.ndarray, S: int, T: int) -> str:
    """'causal', 'none' or 'general' for an additive mask broadcastable to [.., S, T]."""
    m = np.broadcast_to(mask, mask.shape[:-2] + (S, T)).reshape(-1, S, T)
    if not (m == m[0]).all():
        return "general"
    m = m[0]
    allowed = np.arange(T)[None, :] <= np.arange(S)[:, None] + (T - S)
    if (m[allowed] == 0).all() and (m[~allowed] <= MASKED).all():
        return "causal"  # (checked first: with one query the causal mask is all zeros)
    return "none" if (m == 0).all() else "general"


@dataclass(frozen=True)
class FuseAttention(Pass):
    name: ClassVar[str] = "fuse-attention"

    def apply(self, g: Graph) -> None:
        for sm in g.nodes():
            if sm.name in g and sm.op is OpKind.SOFTMAX and sm.attrs.axis == sm.type.rank - 1 and sm.type.rank == 4:
                self._fuse(g, sm)
        g.eliminate_dead_code()

    def _fuse(self, g: Graph, sm) -> None:
        users = g.users(sm.name)
        if len(users) != 1 or users[0].op is not OpKind.MATMUL or users[0].inputs[0] != sm.name:
            return
        pv = users[0]
        scores, mask = sm.inputs[0], None
        n = g.node(scores)
        if n.op is OpKind.ADD:
            for s_, m_ in (n.inputs, n.inputs[::-1]):
                if (mv := g.const_value(m_)) is not None and mv.ndim >= 2:
                    scores, mask = s_, mv
                    break
            else:
                return
        elif n.op is OpKind.WHERE:
            cond, a, b = n.inputs
            cv = g.const_value(cond)
            if cv is None:
                return
            if (fill := g.const_value(b)) is not None and fill.size == 1 and float(fill.ravel()[0]) <= MASKED:
                scores, mask = a, np.where(cv, np.float32(0), np.float32(-np.inf))
            elif (fill := g.const_value(a)) is not None and fill.size == 1 and float(fill.ravel()[0]) <= MASKED:
                scores, mask = b, np.where(cv, np.float32(-np.inf), np.float32(0))
            else:
                return
        softcap = None
        if (cap := _softcap(g, scores)) is not None:
            scores, softcap = cap
        mm_name, scale = _peel_scale(g, scores)
        mm = g.node(mm_name)
        if mm.op is not OpKind.MATMUL:
            return
        q, qs = _peel_scale(g, mm.inputs[0])
        kt, ks = _peel_scale(g, mm.inputs[1])
        k = _key_from_transposed(g, kt)
        if k is None:
            return
        k, ks2 = _peel_scale(g, k)
        k, v = _strip_repeat_kv(g, k), _strip_repeat_kv(g, pv.inputs[1])
        qt, kt_, vt = (g.node(x).type for x in (q, k, v))
        if qt.rank != 4 or kt_.rank != 4 or vt.rank != 4:
            return
        B, H, S, D = qt.shape
        Hkv, T = kt_.shape[1], kt_.shape[2]
        if Hkv == 0 or H % Hkv or vt.shape[:3] != (B, Hkv, T) or kt_.shape != (B, Hkv, T, D):
            return
        causal, inputs = False, [q, k, v]
        if mask is not None:
            kind = _mask_kind(mask, S, T)
            if kind == "causal":
                causal = True
            elif kind == "general":
                m = g.add_const(g.unique_name(sm.name + ".mask"), ArrayData(mask.astype(np.float32)))
                inputs.append(m.name)
        scale = float(scale * qs * ks * ks2)
        if abs(scale * D ** 0.5 - 1) < 1e-3 and softcap is None:  # 1/sqrt(D), split by exporters into two
            scale = D ** -0.5                   # rounded roots (float32: ~1e-7 off, float16 exports: ~4e-4 off)
        attrs = AttentionAttrs(num_heads=H, num_kv_heads=Hkv, scale=scale, causal=causal, softcap=softcap)
        replace(g, pv.name, OpKind.ATTENTION, inputs, attrs)
