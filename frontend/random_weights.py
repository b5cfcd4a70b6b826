"""Random weights for a config-only graph, so a model too big to ship can still be run small."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from llmfab.ir import ArrayData, ConstAttrs, DType, Graph, OpKind, ScaledData


def with_random_weights(graph: Graph, seed: int = 0, std: float = 0.02) -> Graph:
    """A copy of a config-only graph with random values for every weight (for tests and demos).

    Norm scales are drawn around 1 and everything else around 0, in the weight's own dtype.
    """
    rng = np.random.default_rng(seed)
    g = graph.copy()
    drawn: dict[int, ArrayData] = {}   # id(absent data) -> its values, so views of one weight stay tied

    def draw(d, name: str) -> ArrayData:
        if id(d) in drawn:
            return drawn[id(d)]
        shape, dt = d.shape, d.dtype
        # a norm's scale: [D], or a row per head [H, 1.., D] (StableLM's q/k_layernorm)
        is_scale = name.endswith(".weight") and (len(shape) == 1 or len(shape) > 2 and set(shape[1:-1]) == {1})
        a = (1.0 if is_scale else 0.0) + rng.standard_normal(shape) * (0.1 if is_scale else std)
        a = a.astype(np.float32)
        if dt is DType.BF16:  # round to nearest-even bf16, stored in float32
            u = a.view(np.uint32)
            a = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) & np.uint32(0xFFFF0000)).view(np.float32)
        drawn[id(d)] = ArrayData(a.astype(dt.numpy), dt)
        return drawn[id(d)]

    for node in g.nodes():
        if node.op is not OpKind.CONST or node.data.has_values:
            continue
        d = node.data   # a scaled view (Gemma's embedding, Gemma2's LM head) of a weight: the same view of its values
        data = ScaledData(draw(d.base, node.name), d.factor) if isinstance(d, ScaledData) else draw(d, node.name)
        g.set_node(replace(node, attrs=ConstAttrs(data, node.attrs.weight)))
    return g
