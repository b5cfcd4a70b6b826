"""Issue 14: every error one line naming the file, node or field, and what to do."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from llmfab.cli import main


def _unfused_onnx(path):
    """input_ids -> Gather(table) -> Unsqueeze -> Expand -> Reshape -> MatMul(w): the Expand is a
    repeat_kv with no attention around it, so fusion leaves it (like a GQA export llmfab does not know)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array([1, 3, 2, 16], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 3, 32], np.int64), "flat")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
             helper.make_node("Unsqueeze", ["h", "axis"], ["u"], name="unsqueeze_1"),
             helper.make_node("Expand", ["u", "shape"], ["e"], name="expand_2"),
             helper.make_node("Reshape", ["e", "flat"], ["r"], name="reshape_3"),
             helper.make_node("MatMul", ["r", "w"], ["logits"], name="lm_head")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, str(path))
    return str(path)


UNFUSED = ("1 op left unfused: 'e' (expand from ONNX 'expand_2'; expected in fuse-attention (the repeat_kv of "
           "grouped-query heads)); {what} covers fused graphs only, so this model's pattern of expand is not "
           "supported yet (`llmfab inspect MODEL --print-ir` shows where the ops sit)\n")


def test_unfused_op_names_node_op_expected_fusion_and_model(tmp_path, capsys):
    """Was `'expand_2' has no integer kernel` / `no lowering for expand`, found only after quantizing."""
    model = _unfused_onnx(tmp_path / "m.onnx")
    assert main(["quantize", model, "--policy", "int8", "--seq-len", "3"]) == 2
    assert capsys.readouterr().err == f"llmfab: error: {model}: " + UNFUSED.format(
        what="the integer contract (docs/integer.md)")
    assert main(["compile", model, "--target", "sim-small", "--max-len", "3", "-o", str(tmp_path / "B")]) == 2
    assert capsys.readouterr().err == f"llmfab: error: {model}: " + UNFUSED.format(what="lowering to programs")
    assert not (tmp_path / "B").exists()
    assert main(["inspect", model, "--seq-len", "3"]) == 0
    assert capsys.readouterr().out.endswith("warning: " + UNFUSED.format(
        what="`llmfab compile` (and quantize with integer activations)"))
    # float activations need no integer kernel: the weights still quantize and report
    assert main(["quantize", model, "--policy", "int8", "--seq-len", "3", "--float-activations"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["inspect", "llama2-7b", "--seq-len", "0"], "llmfab inspect: error: argument --seq-len: must be at least 1, not 0"),
    (["inspect", "llama2-7b", "--past-len", "-1"], "llmfab inspect: error: argument --past-len: must be at least 0, not -1"),
    (["quantize", "llama2-7b", "--policy", "int8", "--seq-len", "x"],
     "llmfab quantize: error: argument --seq-len: must be an integer, not 'x'"),
    (["report", "llama2-7b", "--target", "u280", "--prefill", "0"],
     "llmfab report: error: argument --prefill: must be at least 1, not 0"),
    (["report", "llama2-7b", "--target", "u280", "--decode", "-5"],
     "llmfab report: error: argument --decode: must be at least 0, not -5"),
])
def test_counts_out_of_range_are_refused(capsys, argv, message):
    """`--seq-len 0` silently bound the default 16; `report --prefill 0 --decode -5` printed figures."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message
