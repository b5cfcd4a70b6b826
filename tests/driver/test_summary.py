"""passes/summary.py: parameters, bytes and op counts without reading weight values."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmfab import ir
from llmfab.frontend.config import load_preset
from llmfab.ir import DType, LazyData, OpKind, TensorType, TransposedData
from llmfab.passes.summary import GraphSummary, format_summary, summarize

PRESETS = {  # name -> (parameters, layers, bytes per parameter, dtype)
    "llama2-7b": (6_738_415_616, 32, 2, "fp16"),
    "llama3-8b": (8_030_261_248, 32, 2, "bf16"),
    "mistral-7b": (7_241_732_096, 32, 2, "bf16"),
    "qwen2-7b": (7_615_616_512, 28, 2, "bf16"),
    "opt-6.7b": (6_658_473_984, 32, 2, "fp16"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_summary(name):
    params, layers, bpp, dt = PRESETS[name]
    s = summarize(load_preset(name))
    assert (s.name, s.layers, s.parameters) == (name, layers, params)
    assert s.weight_bytes == params * bpp
    assert s.weight_bytes_by_dtype == {dt: params * bpp}
    assert s.ops["attention"] == layers and s.ops["lm_head"] == 1
    assert "const" not in s.ops and "input" not in s.ops
    assert list(s.ops) == sorted(s.ops)
    assert (s.seq_len, s.past_len, s.batch) == (16, 0, 1)
    assert [t.name for t in s.outputs] == ["logits"]
    assert s.inputs[0].name == "input_ids" and s.inputs[0].role == "tokens"


def test_llama2_format():
    text = format_summary(summarize(load_preset("llama2-7b")))
    assert "6.74 B (6,738,415,616)" in text
    assert "13.48 GB" in text
    lines = dict(line.split(None, 1) for line in text.splitlines() if line.startswith("  "))
    assert lines["attention"] == "32" and lines["linear"] == "224" and lines["fp16"] == "13.48 GB"
    assert text.splitlines()[0].split() == ["model", "llama2-7b", "(llama)"]


def test_to_json_keys():
    s = summarize(load_preset("mistral-7b", seq_len=4, past_len=8))
    d = s.to_json()
    assert set(d) == {"name", "family", "layers", "parameters", "ops", "weight_bytes", "weight_bytes_by_dtype",
                      "inputs", "outputs", "seq_len", "past_len", "batch"}
    assert json.loads(json.dumps(d)) == d
    assert d["inputs"][1] == {"name": "past_key_values.0.key", "dtype": "fp32", "shape": [1, 8, 8, 128],
                              "role": "past_key"}
    assert d["outputs"][1]["shape"] == [1, 8, 12, 128]
    assert d["ops"]["concat"] == 64
    assert "62 more" in format_summary(s)


def _never(name):
    def load():
        raise AssertionError(f"summarize read the values of {name}")
    return load


def small_graph() -> ir.Graph:
    """Tied embedding/head (one CONST used twice), a transposed view of it, an int4 weight, a
    non-weight constant, and weights whose values must never be read."""
    g = ir.Graph("small")
    g.add_input("ids", TensorType(DType.INT64, (1, 3)), ir.InputAttrs(ir.InputRole.TOKENS))
    emb = LazyData((10, 4), DType.FP16, _never("emb"))
    g.add_const("emb", emb, weight=True)
    g.add_const("emb_t", TransposedData(TransposedData(emb)), weight=True)  # a view of the same storage
    g.add_const("w4", LazyData((4, 4), DType.INT4, _never("w4")), weight=True)
    g.add_const("b", LazyData((4,), DType.FP32, _never("b")), weight=True)
    g.add_const("c", ir.ArrayData(np.ones((4,), np.float32)))  # folded constant, not a parameter
    g.add_op("x", OpKind.EMBEDDING, ["emb", "ids"])
    g.add_op("x2", OpKind.ADD, ["x", "c"])
    g.add_op("y", OpKind.LINEAR, ["x2", "w4"])
    g.add_const("ln_w", ir.AbsentData((4,), DType.BF16, "ln_w"), weight=True)
    g.add_op("h", OpKind.RMSNORM, ["y", "ln_w"], ir.NormAttrs(1e-5))
    g.add_op("logits", OpKind.LMHEAD, ["h", "emb"], ir.LinearAttrs(ir.LinearRole.LM_HEAD))
    g.add_op("logits_t", OpKind.LMHEAD, ["h", "emb_t"], ir.LinearAttrs(ir.LinearRole.LM_HEAD))
    g.add_op("last", OpKind.LINEAR, ["h", "w4", "b"])
    g.add_output("logits", "logits")
    g.add_output("out", "last")
    return g


def test_small_graph_counts_tied_weights_once():
    g = small_graph()
    ir.verify(g, fused=True)
    s = summarize(g)
    assert isinstance(s, GraphSummary)
    assert s.parameters == 40 + 16 + 4 + 4
    # fp16 emb 80 B; int4 [4,4] packs to 8 B; fp32 bias 16 B; bf16 norm 8 B
    assert s.weight_bytes_by_dtype == {"bf16": 8, "fp16": 80, "fp32": 16, "int4": 8}
    assert s.weight_bytes == 112
    assert s.ops == {"add": 1, "embedding": 1, "linear": 2, "lm_head": 2, "rms_norm": 1}
    assert s.layers == 0  # no meta and no attention nodes
    assert (s.family, s.seq_len, s.past_len, s.batch) == (None, None, None, None)
    assert [(t.name, t.dtype, t.shape) for t in s.outputs] == [("logits", "fp32", (1, 3, 10)),
                                                               ("out", "fp32", (1, 3, 4))]
    assert "small" in format_summary(s) and "112 B" in format_summary(s)


def test_layers_from_attention_nodes_without_meta():
    g = load_preset("qwen2-7b", seq_len=2)
    g.meta.pop("num_layers")
    assert summarize(g).layers == 28
