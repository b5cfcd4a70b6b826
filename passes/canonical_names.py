"""Readable, stable names for the fused graph: `layers.3.q_proj`, `layers.3.attention`, ...

Exporters name values `/model/layers.3/self_attn/MatMul_1_output_0` (TorchScript) or
`val_1234` (dynamo) and weights `onnx::MatMul_812`. After fusion every op knows its layer and
role, so names are derived from those; the ONNX name stays in `Node.origin` for error messages.
Runs after `annotate`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import ClassVar

from llmfab.ir import Graph, InputRole, LinearRole, OpKind

from .annotate import is_head_norm
from .pass_base import Pass

PARAM_SLOTS = {  # what each input slot of an op holds
    OpKind.EMBEDDING: {0: "weight"}, OpKind.LINEAR: {1: "weight", 2: "bias"},
    OpKind.LMHEAD: {1: "weight", 2: "bias"}, OpKind.RMSNORM: {1: "weight"},
    OpKind.LAYERNORM: {1: "weight", 2: "bias"},
}
LAYOUT = {OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.ROPE, OpKind.CONCAT, OpKind.SLICE}


@dataclass(frozen=True)
class CanonicalNames(Pass):
    name: ClassVar[str] = "canonical-names"

    def apply(self, g: Graph) -> None:
        # Commutative operands in dataflow order (residual first), as every exporter agrees on.
        order = {n.name: k for k, n in enumerate(g.nodes())}
        for n in g.nodes():
            if n.op in (OpKind.ADD, OpKind.MUL):
                ins = tuple(sorted(n.inputs, key=order.__getitem__))
                if ins != n.inputs:
                    g.set_node(dc_replace(n, inputs=ins))
        names: dict[str, str] = {}  # old -> new

        def give(node: str, new: str):
            if node not in names and g.node(node).op is not OpKind.INPUT:
                names[node] = new

        for n in g.nodes():
            a = n.attrs
            if n.op is OpKind.LMHEAD:
                give(n.name, "lm_head")
            elif n.op is OpKind.LINEAR and a.layer is not None:
                give(n.name, f"layers.{a.layer}.{a.role.value}")
            elif n.op is OpKind.ATTENTION:
                p = f"layers.{a.layer}"
                give(n.name, f"{p}.attention")
                for tag, x in zip("qkv", n.inputs[:3]):
                    self._chain_up(g, x, f"{p}.{tag}", give)
                self._chain_down(g, n.name, f"{p}.attention", give)
            elif n.op in (OpKind.RMSNORM, OpKind.LAYERNORM) and not is_head_norm(n):  # (those: _chain_up)
                if a.layer is None:
                    give(n.name, "final_norm")
                else:
                    feeds_linear = [u for u in g.users(n.name) if u.op is OpKind.LINEAR]
                    qkv = any(u.attrs.role.value in ("q_proj", "k_proj", "v_proj", "qkv_proj") for u in feeds_linear)
                    src = g.node(n.inputs[0])   # Gemma2 also norms the attention's and the MLP's outputs
                    post = src.attrs.role.value if src.op is OpKind.LINEAR else None
                    kind = {"o_proj": "post_attn_norm", "down_proj": "post_mlp_norm", "fc2": "post_mlp_norm"}.get(
                        post, "attn_norm" if qkv else "mlp_norm")
                    give(n.name, f"layers.{a.layer}.{kind}")
            elif n.op is OpKind.EMBEDDING:
                ids = g.node(n.inputs[1])
                tokens = ids.op is OpKind.INPUT and ids.attrs.role is InputRole.TOKENS
                give(n.name, "embed_tokens" if tokens else "embed_positions")
        # activations take their layer from the Linear they read, gating from the one it feeds
        for n in g.nodes():
            if n.name in names:
                continue
            if n.op in (OpKind.SILU, OpKind.GELU, OpKind.RELU):
                lin = g.node(n.inputs[0])
                if lin.op is OpKind.SLICE:      # the gate half of a gate_up_proj
                    lin = g.node(lin.inputs[0])
                if lin.op is OpKind.LINEAR and lin.attrs.layer is not None:
                    give(n.name, f"layers.{lin.attrs.layer}.{n.op.value}")
            elif n.op is OpKind.SOFTCAP and g.node(n.inputs[0]).op is OpKind.LMHEAD:
                give(n.name, "lm_head.softcap")
            elif n.op is OpKind.SLICE and (lin := g.node(n.inputs[0])).op is OpKind.LINEAR \
                    and lin.attrs.role is LinearRole.GATE_UP:
                gate = any(u.op in (OpKind.SILU, OpKind.GELU, OpKind.RELU) for u in g.users(n.name))
                give(n.name, f"layers.{lin.attrs.layer}.{'gate' if gate else 'up'}")
            elif n.op is OpKind.MUL:
                lin = next((u for u in g.users(n.name) if u.op is OpKind.LINEAR and u.attrs.layer is not None), None)
                if lin is not None:
                    give(n.name, f"layers.{lin.attrs.layer}.gate_mul")
        for n in g.nodes():  # residual adds: named after the block output they add
            if n.name in names or n.op is not OpKind.ADD:
                continue
            srcs = [names.get(i, "") for i in n.inputs]
            blocks = [s for s in srcs if s.endswith((".o_proj", ".down_proj", ".fc2", ".post_attn_norm",
                                                     ".post_mlp_norm"))]
            if len(blocks) == 2:       # attention + MLP summed before the residual add (GPT-NeoX, Phi-2, Falcon)
                give(n.name, blocks[0].rsplit(".", 1)[0] + ".branches")
            for s in blocks:
                attn = s.endswith(("o_proj", "post_attn_norm"))
                give(n.name, s.rsplit(".", 1)[0] + (".attn_residual" if attn else ".mlp_residual"))
            for s in srcs:
                if s.endswith(".branches"):
                    give(n.name, s.rsplit(".", 1)[0] + ".residual")
            if n.name not in names and any(s.startswith("embed_") for s in srcs):
                give(n.name, "embed_sum")
        # parameters and tables: named after their (first) user
        for n in g.nodes():
            if n.op is not OpKind.CONST or n.name in names:
                continue
            users = g.users(n.name)
            if not users or users[0].name not in names:
                continue
            u = users[0]
            slot = u.inputs.index(n.name)
            base = names[u.name]
            if u.op is OpKind.ROPE:
                give(n.name, "rope." + ("cos" if slot == 1 else "sin"))
            elif u.op is OpKind.EMBEDDING and slot == 1:
                give(n.name, "positions")
            elif n.attrs.weight:
                give(n.name, f"{base}.{PARAM_SLOTS.get(u.op, {}).get(slot, f'param{slot}')}")
        taken = set()
        for old, new in sorted(names.items(), key=lambda kv: kv[1]):
            final = new
            k = 1
            while final in taken or (final in g and final not in names):
                final, k = f"{new}_{k}", k + 1
            taken.add(final)
            names[old] = final
        # rename through temporaries so a new name may equal another node's old name
        for old in names:
            n = g.node(old)
            origin = n.origin or old
            g.set_node(dc_replace(n, origin=origin))
            g.rename(old, f"\0{old}")
        for old, new in names.items():
            g.rename(f"\0{old}", new)

    def _chain_up(self, g: Graph, x: str, prefix: str, give):
        """Name the layout ops between a projection and attention: q.reshape, q.transpose, q.rope
        (and a per-head norm: q_norm; partial rotary's concat(rope(slice), slice): q.rope of q.rot)."""
        while g.node(x).op in LAYOUT or is_head_norm(g.node(x)):
            n = g.node(x)
            if n.op in LAYOUT:
                give(x, f"{prefix}.{'cache' if n.op is OpKind.CONCAT else n.op.value}")
            else:
                give(x, f"{prefix}_norm")
            for r in (g.node(i) for i in n.inputs[:-1] if n.op is OpKind.CONCAT):
                if r.op is OpKind.ROPE:
                    give(r.name, f"{prefix}.rope")
                    if g.node(r.inputs[0]).op is OpKind.SLICE:
                        give(r.inputs[0], f"{prefix}.rot")
            x = n.inputs[-1] if n.op is OpKind.CONCAT else n.inputs[0]

    def _chain_down(self, g: Graph, x: str, prefix: str, give):
        while True:
            users = [u for u in g.users(x) if u.op in (OpKind.RESHAPE, OpKind.TRANSPOSE)]
            if len(users) != 1:
                return
            x = users[0].name
            give(x, f"{prefix}.{users[0].op.value}")
