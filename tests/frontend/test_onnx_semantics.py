"""ONNX semantics the importer must get right, each checked against onnxruntime.

(Regression tests for a review: each of these once gave a silently different answer.)
"""
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run
from llmfab.flow import load_model
from llmfab.frontend import ImportOptions, ModelError, import_onnx
from llmfab.ir import run

ROWS = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32) * 4


def _model(tmp_path, nodes, inits=(), opset=18, out_shape=("a", "b", "c"), name="m.onnx"):
    """input_ids [1, 3] -> h = Gather(T, input_ids) [1, 3, 8] -> nodes -> logits."""
    g = helper.make_graph([helper.make_node("Gather", ["T", "input_ids"], ["h"], name="embed"), *nodes], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(ROWS, "T"), *inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def _both(path, fuse=False):
    ids = np.array([[1, 4, 2]], np.int64)
    ref = ort_run(path, {"input_ids": ids})["logits"]
    g = load_model(str(path), seq_len=3) if fuse else import_onnx(path, ImportOptions(seq_len=3))
    return run(g, {"input_ids": ids})["logits"], ref


def c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def test_gemm_alpha_scales_only_the_product(tmp_path):
    path = _model(tmp_path, [helper.make_node("Reshape", ["h", "s"], ["h2"]),
                             helper.make_node("Gemm", ["h2", "B", "C"], ["logits"], alpha=2.0, beta=0.5)],
                  [c("s", [3, 8], np.int64), c("B", np.eye(8)[:, :5]), c("C", np.arange(5) + 10.0)], out_shape=(3, 5))
    ours, ref = _both(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("clamp", [20.0, 5.0])
def test_clamped_relu_is_not_fused_into_relu(tmp_path, clamp):
    path = _model(tmp_path, [helper.make_node("Mul", ["h", "k"], ["big"]),
                             helper.make_node("Relu", ["big"], ["r"]),
                             helper.make_node("Min", ["r", "hi"], ["logits"])],
                  [c("k", 10.0), c("hi", clamp)])
    ours, ref = _both(path, fuse=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert ref.max() == clamp


def test_pow_with_integer_exponent(tmp_path):
    path = _model(tmp_path, [helper.make_node("Pow", ["h", "e"], ["logits"])], [c("e", 3, np.int64)])
    ours, ref = _both(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_constant_folding_edge_cases(tmp_path):
    """ScatterND add, Cast to uint8 (wraps), ReduceMin over empty axes: folded values reach the output."""
    nodes = [
        helper.make_node("ScatterND", ["z", "idx", "upd"], ["sc"], reduction="add"),
        helper.make_node("Cast", ["big"], ["wrapped"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["wrapped"], ["w64"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["sc", "noaxes"], ["mn"], keepdims=1),
        helper.make_node("Concat", ["sc", "w64", "mn", "one"], ["v"], axis=0),  # 4 + 2 + 1 + 1 = 8
        helper.make_node("Cast", ["v"], ["vf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["h", "vf"], ["logits"]),
    ]
    inits = [c("z", [0, 0, 7, 0], np.int64), c("idx", [[1], [1], [2]], np.int64), c("upd", [1, 2, 5], np.int64),
             c("big", [300, 255], np.int64), c("noaxes", np.zeros(0), np.int64), c("one", [1], np.int64)]
    path = _model(tmp_path, nodes, inits)
    ours, ref = _both(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    np.testing.assert_allclose(ref[0, 0] - ROWS[1], [0, 3, 12, 0, 44, 255, 0, 1], atol=1e-5)


def test_concat_of_empty_parts_keeps_its_shape(tmp_path):
    path = _model(tmp_path, [helper.make_node("Slice", ["h", "s0", "s0", "ax"], ["e1"]),
                             helper.make_node("Concat", ["e1", "e1"], ["ee"], axis=2),
                             helper.make_node("Shape", ["ee"], ["sh"]),
                             helper.make_node("Cast", ["sh"], ["shf"], to=TensorProto.FLOAT),
                             helper.make_node("ReduceSum", ["shf"], ["tot"], keepdims=0),
                             helper.make_node("Add", ["h", "tot"], ["logits"])],
                  [c("s0", [0], np.int64), c("ax", [1], np.int64)])
    ours, ref = _both(path)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)  # shape [1, 0, 16]: 17 added


def test_rope_lookalike_with_broadcasting_tables_is_left_alone(tmp_path):
    nodes = [helper.make_node("Slice", ["h", "a0", "a1", "axl"], ["x1"]),
             helper.make_node("Slice", ["h", "a1", "a2", "axl"], ["x2"]),
             helper.make_node("Neg", ["x2"], ["nx2"]),
             helper.make_node("Concat", ["nx2", "x1"], ["rot"], axis=-1),
             helper.make_node("Mul", ["h", "cos"], ["hc"]),
             helper.make_node("Mul", ["rot", "sin"], ["rs"]),
             helper.make_node("Add", ["hc", "rs"], ["logits"])]
    tab = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    path = _model(tmp_path, nodes, [c("a0", [0], np.int64), c("a1", [4], np.int64), c("a2", [8], np.int64),
                                    c("axl", [-1], np.int64), c("cos", tab), c("sin", tab[::-1].copy())])
    ours, ref = _both(path, fuse=True)
    assert ours.shape == ref.shape == (2, 3, 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_constant_with_external_data_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"API_KEY=0123456789abcdef0123456789abcdef")
    t = onnx.TensorProto(name="v", data_type=TensorProto.FLOAT, dims=[8])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "secret.txt"), ("offset", "0"), ("length", "32")):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = _model(tmp_path, [helper.make_node("Constant", [], ["cst"], value=t, name="leak"),
                             helper.make_node("Add", ["h", "cst"], ["logits"])])
    with pytest.raises(ModelError, match=r"^.*m\.onnx: node 'leak' attribute 'value' keeps its tensor in external "
                                         r"data, which llmfab reads only for initializers$"):
        import_onnx(path)


def test_huge_dims_do_not_wrap_around(tmp_path):
    t = onnx.TensorProto(name="T2", data_type=TensorProto.FLOAT, dims=[2 ** 62 + 1, 128])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", "512")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "w.bin").write_bytes(bytes(512))
    path = _model(tmp_path, [helper.make_node("Gather", ["T2", "input_ids"], ["logits"])], [t])
    with pytest.raises(ModelError, match=r"initializer 'T2' has \d+ elements, over the limit of 1099511627776$"):
        import_onnx(path)


def test_interpret_output_gets_the_usual_file_mode(tmp_path):
    from conftest import FIXTURES
    from llmfab.cli import main
    out = tmp_path / "l.npy"
    assert main(["interpret", str(FIXTURES / "llama_ts_op14.onnx"), "--tokens", "1 2", "--out", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
