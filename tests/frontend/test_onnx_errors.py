"""Bad input gets one clear error naming the file, node or field: never a traceback."""
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from llmfab.frontend import ImportOptions, ModelError, import_onnx
from llmfab.frontend.onnx_ops import SUPPORTED_OPS


def _save(model, path):
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _tiny(tmp_path, op="Relu", opset=17, name="bad_node", extra_inputs=(), attrs=None, fname="m.onnx"):
    """input_ids -> Gather(table) -> <op> -> logits."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
             helper.make_node(op, ["h", *extra_inputs], ["logits"], name=name, **(attrs or {}))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), tmp_path / fname)


def test_supported_tiny_model_imports(tmp_path):
    g = import_onnx(_tiny(tmp_path), ImportOptions(seq_len=3))
    assert [n.op.value for n in g.nodes() if n.op.value not in ("input", "const")] == ["gather", "relu"]


def test_unsupported_op_names_op_node_opset_and_supported_list(tmp_path):
    path = _tiny(tmp_path, op="HardSwish", name="/model/act/HardSwish")
    with pytest.raises(ModelError) as e:
        import_onnx(path)
    msg = str(e.value)
    assert re.fullmatch(re.escape(f"{path}: node '/model/act/HardSwish' (HardSwish, opset 17): operator HardSwish "
                                  "is not supported; supported ops: ") + r"Abs, Add, .*, Xor", msg)
    assert ", ".join(SUPPORTED_OPS) in msg


def test_other_domain_rejected(tmp_path):
    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
                           helper.make_node("FusedMatMul", ["h", "h"], ["logits"], name="ms", domain="com.microsoft")],
                          "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = _save(m, tmp_path / "ms.onnx")
    with pytest.raises(ModelError, match=r"^.*ms\.onnx: node 'ms' \(FusedMatMul, opset 17\): operator domain "
                                         r"'com\.microsoft' is not supported; supported ops \(default domain\): Abs, "):
        import_onnx(path)


@pytest.mark.parametrize("opset", [11, 21])
def test_opset_out_of_range(tmp_path, opset):
    path = _tiny(tmp_path, opset=opset)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: opset {opset} is not supported "
                                         r"\(supported: 14\.\.20\); re-export with opset_version in that range$"):
        import_onnx(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07this is not protobuf" * 10)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: (not a readable ONNX model|the ONNX checker rejects)"):
        import_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"^.*nope\.onnx: no such model file$"):
        import_onnx(tmp_path / "nope.onnx")


def test_checker_rejects_dangling_input(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["logits"], name="r")], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "d.onnx")
    with pytest.raises(ModelError, match=r"^.*d\.onnx: the ONNX checker rejects the model: "):
        import_onnx(path)


def _external_model(tmp_path, location: str, data_file=None, nbytes=160):
    """A model whose table lives in external data at `location` (relative to the model's folder)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[10, 4])
    table.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        e = table.external_data.add()
        e.key, e.value = k, v
    if data_file is not None:
        data_file.write_bytes(np.arange(40, dtype=np.float32).tobytes())
    g = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["logits"], name="embed")], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    path = folder / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_folder_is_read(tmp_path):
    (tmp_path / "model").mkdir()
    path = _external_model(tmp_path, "weights.bin", tmp_path / "model" / "weights.bin")
    g = import_onnx(path, ImportOptions(seq_len=3))
    table = g.node("table")
    assert np.array_equal(table.data.numpy(), np.arange(40, dtype=np.float32).reshape(10, 4))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_folder_rejected(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 160)
    path = _external_model(tmp_path, location)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: initializer 'table' points to external data "
                                         rf"{re.escape(repr(location))} outside the model's folder "):
        import_onnx(path)


def test_external_data_missing_or_short(tmp_path):
    path = _external_model(tmp_path, "gone.bin")
    with pytest.raises(ModelError, match=r"^.*: initializer 'table': external data file 'gone\.bin' is missing$"):
        import_onnx(path)
    (tmp_path / "model" / "short.bin").write_bytes(b"\0" * 8)
    path = _external_model(tmp_path, "short.bin")
    with pytest.raises(ModelError, match=r"external data range \[0, 160\) does not fit 'short\.bin'"):
        import_onnx(path)


def test_fixed_sequence_length_conflict(tmp_path):
    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["logits"], name="embed")], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    assert import_onnx(path).meta["seq_len"] == 8  # the model's own length by default
    with pytest.raises(ModelError, match=r"^.*s\.onnx: input 'input_ids' has a fixed sequence length 8; "
                                         r"a sequence length of 5 cannot be bound$"):
        import_onnx(path, ImportOptions(seq_len=5))


def test_unknown_graph_input(tmp_path):
    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
                           helper.make_node("Add", ["h", "pixel_values"], ["logits"], name="add")], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3]),
                           helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "u.onnx")
    with pytest.raises(ModelError, match=r"^.*u\.onnx: graph input 'pixel_values': unknown model input; llmfab binds "
                                         r"input_ids, attention_mask, position_ids, cache_position and past key/value inputs$"):
        import_onnx(path)


def test_shape_only_op_on_activation(tmp_path):
    path = _tiny(tmp_path, op="Floor", name="fl")
    with pytest.raises(ModelError, match=r"^.*: node 'fl' \(Floor, opset 17\): input #0 \('h'\) must be known at import"):
        import_onnx(path)


def test_past_len_without_cache_inputs(tmp_path):
    with pytest.raises(ModelError, match=r"past length 4 given, but the model has no past key/value inputs$"):
        import_onnx(_tiny(tmp_path), ImportOptions(past_len=4))


@pytest.mark.parametrize("argv,pattern", [
    (["inspect", "{bad}"], r"llmfab: error: .*bad\.onnx: node 'bad_node' \(HardSwish, opset 17\): operator HardSwish is not supported; .*"),
    (["inspect", "no-such-preset"], r"llmfab: error: no-such-preset: not an \.onnx file, a config\.json or a preset \(presets: .*llama2-7b.*\)"),
    (["inspect", "{garbage}"], r"llmfab: error: .*garbage\.onnx: .*"),
    (["interpret", "{good}", "--tokens", "1 x 3", "--out", "{out}"], r"llmfab: error: --tokens must be integers separated by spaces, not '1 x 3'"),
    (["interpret", "{good}", "--tokens", "1 99 3", "--out", "{out}"], r"llmfab: error: token ids must be in \[0, 10\), got 1\.\.99"),
])
def test_cli_prints_one_line_no_traceback(tmp_path, argv, pattern):
    bad = _tiny(tmp_path, op="HardSwish", fname="bad.onnx")
    good = _tiny(tmp_path, fname="good.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02nonsense")
    out = tmp_path / "o.npy"
    args = [a.format(bad=bad, good=good, garbage=garbage, out=out) for a in argv]
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", *args], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("name,role,layer", [
    ("input_ids", "tokens", None), ("attention_mask", "attention_mask", None),
    ("position_ids", "positions", None), ("cache_position", "positions", None),
    ("past_key_values.0.key", "past_key", 0), ("past_key_values.11.value", "past_value", 11),
    ("past.3.key", "past_key", 3), ("past_key_5", "past_key", 5), ("past_value.7", "past_value", 7),
    ("pixel_values", "other", None),
])
def test_input_roles(name, role, layer):
    from llmfab.frontend import input_role
    r, l = input_role(name)
    assert (r.value, l) == (role, layer)


def test_logits_to_keep_scalar_input_is_bound_to_all_positions(tmp_path):
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["logits"], name="embed")], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"]),
                           helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", "d"])], [table])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "k.onnx")
    graph = import_onnx(path, ImportOptions(seq_len=2))
    assert [n.name for n in graph.inputs()] == ["input_ids"]
