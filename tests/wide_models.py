"""Tiny decoders of any hidden and FFN width, from the exported fixtures (issue 15, "any K").

`widen(src, dst, hidden, ffn)` rewrites an exported LLaMA-style fixture (q/k/v/o, gate/up/down,
lm_head; the TorchScript exports) with new random weights of hidden size `hidden` and FFN width
`ffn`; the heads keep their count and size (q_proj maps hidden to heads x head_dim, as configs with
an explicit `head_dim` do), so no reshape of the graph changes and onnxruntime runs the result as
the golden model. Widths like 160 or 250 are what real models have (SmolLM: 576, 960, 1536) and
what no bundled group size divides.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STD = 0.02                      # the exports' init (HF default)


def _matmul_weights(model: onnx.ModelProto) -> list[str]:
    """Initializer names of the MatMul weights in graph order: per layer ROLES, then lm_head."""
    inits = {i.name for i in model.graph.initializer}
    return [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def widen(src: Path, dst: Path, hidden: int, ffn: int, seed: int = 0) -> Path:
    """Write `src` with hidden size `hidden` and FFN width `ffn` (new weights, seeded) to `dst`."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = _matmul_weights(model)
    if len(names) % len(ROLES) != 1:
        raise ValueError(f"{src}: {len(names)} MatMul weights are not {len(ROLES)} per layer plus lm_head")
    new: dict[str, np.ndarray] = {}
    for i, name in enumerate(names[:-1]):
        fan_in, fan_out = arrays[name].shape            # ONNX MatMul weights are [in, out]
        shape = {"q_proj": (hidden, fan_out), "k_proj": (hidden, fan_out), "v_proj": (hidden, fan_out),
                 "o_proj": (fan_in, hidden), "gate_proj": (hidden, ffn), "up_proj": (hidden, ffn),
                 "down_proj": (ffn, hidden)}[ROLES[i % len(ROLES)]]
        new[name] = rng.normal(0, STD, shape)
    new[names[-1]] = rng.normal(0, STD, (hidden, arrays[names[-1]].shape[1]))
    for name, a in arrays.items():
        if name.endswith("embed_tokens.weight"):
            new[name] = rng.normal(0, STD, (a.shape[0], hidden))
        elif name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            new[name] = 1 + 0.1 * rng.normal(size=hidden)
    for init in model.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(new[init.name].astype(np.float32), init.name))
    del model.graph.value_info[:]                       # inferred shapes of the old widths
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
