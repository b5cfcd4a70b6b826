"""Name what the fused graph computes: the LM head, each Linear's role, each op's layer.

Roles come from structure, not names (TorchScript exports rename weights `onnx::MatMul_123`):
a Linear feeding attention's q/k/v is q/k/v_proj (qkv_proj if it feeds all three), the Linear
reading attention's output is o_proj, an MLP Linear feeding the activation is gate or fc1, the
one multiplied with the activation is up (gate_up if one Linear, sliced, is both), the one after it
down or fc2. A norm over each head of q or k (Qwen3's q_norm/k_norm) lies between a projection and
attention like a layout op.
"""
from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import ClassVar

import networkx as nx
import numpy as np

from llmfab.ir import Graph, LinearRole, OpKind, ScaledData

from .pass_base import Pass

PASS_THROUGH = {OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.SLICE, OpKind.CONCAT, OpKind.ROPE,
                OpKind.GATHER, OpKind.CAST, OpKind.SOFTCAP}
ACTIVATIONS = {OpKind.SILU, OpKind.GELU, OpKind.RELU}


def is_head_norm(n) -> bool:
    """A norm over each head's rows of q or k ([B, S, H, D]), not over the residual stream ([B, S, D])."""
    return n.op in (OpKind.RMSNORM, OpKind.LAYERNORM) and n.type.rank >= 4


def _sources(g: Graph, name: str, want: set[OpKind], heads: bool = False) -> set[str]:
    """Nodes of kinds `want` reached upward from `name` through structural ops only (and with
    `heads`, through per-head norms)."""
    out, stack, seen = set(), [name], set()
    while stack:
        n = g.node(stack.pop())
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.op in want:
            out.add(n.name)
        elif n.op in PASS_THROUGH or (heads and is_head_norm(n)):
            # data flows through input 0 (all inputs of a concat)
            stack.extend(n.inputs if n.op is OpKind.CONCAT else n.inputs[:1])
    return out


def _through_slices(g: Graph, name: str) -> list:
    """The users of `name`, and the users of the slices of it in place of those slices."""
    out = []
    for u in g.users(name):
        out.extend(g.users(u.name) if u.op is OpKind.SLICE else [u])
    return out


def _set(g: Graph, name: str, **changes):
    n = g.node(name)
    g.set_node(dc_replace(n, attrs=dc_replace(n.attrs, **changes)))


@dataclass(frozen=True)
class Annotate(Pass):
    name: ClassVar[str] = "annotate"

    def apply(self, g: Graph) -> None:
        nodes = g.nodes()
        attn = [n.name for n in nodes if n.op is OpKind.ATTENTION]
        linear = {OpKind.LINEAR, OpKind.LMHEAD}
        # LM head: the Linear that (through structural ops) produces the logits output.
        outs = dict(g.outputs)
        logits = outs.get("logits", g.outputs[0][1] if g.outputs else None)
        for lm in sorted(_sources(g, logits, linear)) if logits else []:
            n = g.node(lm)
            if n.op is OpKind.LINEAR:
                new = g.add_op(g.unique_name("lm_head"), OpKind.LMHEAD, n.inputs,
                               dc_replace(n.attrs, role=LinearRole.LM_HEAD), origin=n.origin)
                g.replace_all_uses(lm, new.name)
                g.eliminate_dead_code()
        self._tie_lm_head(g)
        blocks = []      # the residual stream entering each layer: what its attention's norm reads
        for i, a in enumerate(attn):
            _set(g, a, layer=i)
            q, k, v = g.node(a).inputs[:3]
            srcs = [_sources(g, x, linear, heads=True) for x in (q, k, v)]
            for role, s in zip((LinearRole.Q, LinearRole.K, LinearRole.V), srcs):
                for lin in s:
                    _set(g, lin, role=LinearRole.QKV if all(lin in t for t in srcs) else role, layer=i)
            norms = {g.node(lin).inputs[0] for t in srcs for lin in t}
            if len(norms) == 1 and g.node(x := norms.pop()).op in (OpKind.RMSNORM, OpKind.LAYERNORM):
                blocks.append(g.node(x).inputs[0])
        by_block = len(blocks) == len(attn)
        if by_block:
            # Layer i holds what comes after its residual stream input and before the next one's:
            # right whether the MLP follows attention or runs beside it (Falcon, Phi-2, GPT-NeoX).
            after_block = [nx.descendants(g._g, x) for x in blocks]
            def block_of(name: str) -> int:
                return sum(name in d for d in after_block) - 1
        else:
            # Layer index of every node: how many attentions precede it.
            after = [nx.descendants(g._g, a) for a in attn]
            def layer_of(name: str) -> int:
                return sum(name in d for d in after)
            def block_of(name: str) -> int:
                return layer_of(name) - 1
        for n in g.nodes():
            if n.op is OpKind.LINEAR and n.attrs.role is LinearRole.UNKNOWN:
                self._mlp_role(g, n, attn, block_of(n.name))
            elif n.op in (OpKind.RMSNORM, OpKind.LAYERNORM):
                # The final norm feeds the head; every other one belongs to a layer.
                qkv = {LinearRole.Q, LinearRole.K, LinearRole.V, LinearRole.QKV}
                users = g.users(n.name)
                feeds_qkv = any(u.op is OpKind.LINEAR and u.attrs.role in qkv for u in users)
                feeds_head = any(u.op is OpKind.LMHEAD for u in users)
                layer = block_of(n.name) if by_block else layer_of(n.name) - (0 if feeds_qkv else 1)
                _set(g, n.name, layer=None if feeds_head else layer)
        g.meta.setdefault("num_layers", len(attn))

    def _tie_lm_head(self, g: Graph) -> None:
        """Exporters store a tied LM head as a second copy of the embedding table: share it (with a
        scale fold-scales folded into either, the head becomes a scaled view of the table's data)."""
        def unscaled(d):
            return (d.base, d.factor) if isinstance(d, ScaledData) else (d, 1.0)
        tables = [g.node(n.inputs[0]) for n in g.nodes() if n.op is OpKind.EMBEDDING]
        for head in [n for n in g.nodes() if n.op is OpKind.LMHEAD]:
            w = g.node(head.inputs[1])
            (wb, wf) = unscaled(w.data)
            for t in tables:
                tb = unscaled(t.data)[0]
                if t.name != w.name and t.type.shape == w.type.shape and tb.has_values \
                        and wb.has_values and np.array_equal(tb.numpy(), wb.numpy()):
                    shared = t.name if t.data is tb and wf == 1.0 else g.add_const(
                        g.unique_name(w.name), ScaledData(tb, wf), weight=True).name
                    g.set_node(dc_replace(head, inputs=(head.inputs[0], shared, *head.inputs[2:])))
                    g.eliminate_dead_code()
                    break

    def _mlp_role(self, g: Graph, n, attn: list[str], layer: int) -> None:
        x = g.node(n.inputs[0])
        from_attn = _sources(g, x.name, {OpKind.ATTENTION})
        if from_attn:
            role = LinearRole.O
        elif x.op in ACTIVATIONS:
            role = LinearRole.FC2
        elif x.op is OpKind.MUL and any(g.node(i).op in ACTIVATIONS for i in x.inputs):
            role = LinearRole.DOWN
        else:
            users = _through_slices(g, n.name)
            acts = {u.name for u in users if u.op in ACTIVATIONS}
            muls = [u for u in users if u.op is OpKind.MUL]
            if any(acts & set(m.inputs) for m in muls):       # gate and up: one Linear, two slices
                role = LinearRole.GATE_UP
            elif acts:
                gated = any(w.op is OpKind.MUL for a in acts for w in g.users(a))
                role = LinearRole.GATE if gated else LinearRole.FC1
            elif any(g.node(i).op in ACTIVATIONS for m in muls for i in m.inputs):
                role = LinearRole.UP
            else:
                role = LinearRole.UNKNOWN
        _set(g, n.name, role=role, layer=layer if layer >= 0 else None)
