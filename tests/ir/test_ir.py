"""ir/: dtypes and tensor types, Graph editing, the verifier, the printer, the reference
interpreter (checked against plain numpy/python written here) and lazy tensor data."""
from __future__ import annotations

import math
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.ir import (AbsentData, ArrayData, AttentionAttrs, AxisAttrs, DType, GeluApprox, GeluAttrs,
                       Graph, InputAttrs, InputRole, InterpreterError, IRVerifyError, LazyData,
                       LinearAttrs, LinearRole, Node, NormAttrs, OpKind, PermAttrs, ReduceAttrs,
                       RopeAttrs, ShapeAttrs, TensorType, TransposedData, WeightDataMissing, print_graph, run,
                       verify)
from llmfab.ir import interpret
from llmfab.ir.interpret import evaluate
from llmfab.ir.ops import NoAttrs, TypeInferenceError

F32, I64 = DType.FP32, DType.INT64


def f32(shape) -> TensorType:
    return TensorType(F32, tuple(shape))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


# =============================================================================================
# dtypes and tensor types


@pytest.mark.parametrize("dtype, short, bits, is_int, numpy, nbytes", [
    (DType.INT2, "int2", 2, True, np.int8, 0.25),
    (DType.INT3, "int3", 3, True, np.int8, 0.375),
    (DType.INT4, "int4", 4, True, np.int8, 0.5),
    (DType.INT8, "int8", 8, True, np.int8, 1.0),
    (DType.INT32, "int32", 32, True, np.int32, 4.0),
    (DType.INT64, "int64", 64, True, np.int64, 8.0),
    (DType.BOOL, "bool", 8, True, np.bool_, 1.0),
    (DType.FP16, "fp16", 16, False, np.float16, 2.0),
    (DType.BF16, "bf16", 16, False, np.float32, 2.0),  # no numpy bf16: computed in fp32
    (DType.FP32, "fp32", 32, False, np.float32, 4.0),
])
def test_dtype_properties(dtype, short, bits, is_int, numpy, nbytes):
    assert str(dtype) == short and dtype.bits == bits
    assert dtype.is_int is is_int and dtype.is_float is (not is_int)
    assert dtype.numpy == np.dtype(numpy)
    assert dtype.storage_bytes == nbytes
    assert DType.from_short(short) is dtype


@pytest.mark.parametrize("np_dtype, dtype", [
    (np.float32, DType.FP32), (np.float16, DType.FP16), (np.int64, DType.INT64),
    (np.int32, DType.INT32), (np.int8, DType.INT8), (np.bool_, DType.BOOL),
])
def test_dtype_from_numpy(np_dtype, dtype):
    assert DType.from_numpy(np_dtype) is dtype


def test_dtype_errors():
    with pytest.raises(ValueError, match=r"^unknown dtype 'fp64'; expected one of \['int2', 'int3', 'int4', "
                                         r"'int8', 'int32', 'int64', 'bool', 'fp16', 'bf16', 'fp32'\]$"):
        DType.from_short("fp64")
    with pytest.raises(ValueError, match=r"^numpy dtype float64 has no IR dtype$"):
        DType.from_numpy(np.float64)


@pytest.mark.parametrize("dtype, shape, text, numel, nbytes", [
    (DType.FP32, (2, 3), "fp32[2,3]", 6, 24.0),
    (DType.FP16, (), "fp16[]", 1, 2.0),
    (DType.INT4, (3, 4), "int4[3,4]", 12, 6.0),
    (DType.BF16, (1, 0, 5), "bf16[1,0,5]", 0, 0.0),
])
def test_tensor_type_str_and_sizes(dtype, shape, text, numel, nbytes):
    t = TensorType(dtype, shape)
    assert str(t) == text
    assert (t.rank, t.numel, t.nbytes) == (len(shape), numel, nbytes)


def test_tensor_type_normalises_shape_and_hashes():
    t = TensorType(DType.FP32, [2, 3])
    assert t.shape == (2, 3) and isinstance(t.shape, tuple)
    assert t == TensorType(DType.FP32, (2, 3)) and hash(t) == hash(TensorType(DType.FP32, (2, 3)))
    assert t.with_shape(np.array([3, 2])) == TensorType(DType.FP32, (3, 2))
    assert type(t.with_shape(np.array([3, 2])).shape[0]) is int


@pytest.mark.parametrize("shape, shown", [
    ((-1, 4), r"\(-1, 4\)"),
    ((2.0, 4), r"\(2\.0, 4\)"),
    ((True, 4), r"\(True, 4\)"),
    (("3",), r"\('3',\)"),
    ((None, 8), r"\(None, 8\)"),
])
def test_tensor_type_rejects_bad_shapes(shape, shown):
    with pytest.raises(ValueError, match=rf"^shape must be static non-negative ints, not {shown}$"):
        TensorType(DType.FP32, shape)


def test_tensor_type_rejects_non_dtype():
    with pytest.raises(TypeError, match=r"^dtype must be a DType, not 'fp32'$"):
        TensorType("fp32", (2,))


def test_node_rejects_wrong_attrs_type():
    with pytest.raises(TypeError, match=r"^node 'y': linear takes LinearAttrs attributes, not NormAttrs$"):
        Node("y", OpKind.LINEAR, ("x", "w"), NormAttrs(1e-5), f32((2, 4)))


# =============================================================================================
# Graph


def chain_graph() -> Graph:
    """x -> relu -> neg -> out, plus an unused input `u`."""
    g = Graph("g")
    g.add_input("x", f32((2, 3)))
    g.add_input("u", f32((1,)))
    g.add_op("a", OpKind.RELU, ["x"])
    g.add_op("b", OpKind.NEG, ["a"])
    g.add_output("out", "b")
    return g


@pytest.mark.parametrize("op, attrs, in_types, out", [
    (OpKind.LINEAR, LinearAttrs(), [f32((2, 3, 8)), f32((16, 8))], f32((2, 3, 16))),
    (OpKind.LINEAR, LinearAttrs(), [f32((2, 8)), f32((16, 8)), f32((16,))], f32((2, 16))),
    (OpKind.MATMUL, NoAttrs(), [f32((2, 1, 4, 8)), f32((3, 8, 5))], f32((2, 3, 4, 5))),
    (OpKind.ADD, NoAttrs(), [f32((2, 1, 4)), f32((3, 1))], f32((2, 3, 4))),
    (OpKind.EMBEDDING, NoAttrs(), [TensorType(DType.FP16, (10, 4)), TensorType(I64, (2, 3))], f32((2, 3, 4))),
    (OpKind.RESHAPE, ShapeAttrs((6, 4)), [f32((2, 3, 4))], f32((6, 4))),
    (OpKind.TRANSPOSE, PermAttrs((2, 0, 1)), [f32((2, 3, 4))], f32((4, 2, 3))),
    (OpKind.ATTENTION, AttentionAttrs(8, 2, 0.5, True), [f32((1, 8, 3, 4)), f32((1, 2, 5, 4)),
                                                         f32((1, 2, 5, 6))], f32((1, 8, 3, 6))),
    (OpKind.REDUCE_MEAN, ReduceAttrs((1,), False), [f32((2, 3, 4))], f32((2, 4))),
    (OpKind.REDUCE_MEAN, ReduceAttrs((-1,), True), [f32((2, 3, 4))], f32((2, 3, 1))),
])
def test_add_op_infers_type(op, attrs, in_types, out):
    g = Graph()
    names = []
    for i, t in enumerate(in_types):
        names.append(g.add_input(f"i{i}", t).name)
    n = g.add_op("y", op, names, attrs)
    assert n.type == out and g.node("y") is n
    assert [u.name for u in g.users(names[0])] == ["y"]


def test_add_op_rejects_ill_typed():
    g = Graph()
    g.add_input("x", f32((2, 8)))
    g.add_input("w", f32((8, 16)))
    with pytest.raises(TypeInferenceError,
                       match=r"^x fp32\[2,8\] does not match weight fp32\[8,16\] \(weights are \[N, K\]\)$"):
        g.add_op("y", OpKind.LINEAR, ["x", "w"], LinearAttrs())
    assert "y" not in g


def test_duplicate_name_rejected():
    g = chain_graph()
    with pytest.raises(ValueError, match=r"^graph 'g' already has a node named 'a'$"):
        g.add_op("a", OpKind.SILU, ["x"])
    with pytest.raises(ValueError, match=r"^graph 'g' already has a node named 'x'$"):
        g.add_input("x", f32((2, 3)))
    assert g.node("a").op is OpKind.RELU and len(g) == 4


def test_unknown_input_rejected():
    g = chain_graph()
    with pytest.raises(ValueError, match=r"^node 'y' \(relu\) uses unknown value 'nope'$"):
        g.add(Node("y", OpKind.RELU, ("nope",), NoAttrs(), f32((2, 3))))
    with pytest.raises(KeyError, match=r"graph 'g' has no node 'nope'"):
        g.add_op("y", OpKind.RELU, ["nope"])
    with pytest.raises(KeyError, match=r"graph 'g' has no node 'nope'"):
        g.add_output("o", "nope")
    assert "y" not in g and g.outputs == [("out", "b")]


def test_unique_name():
    g = chain_graph()
    assert g.unique_name("fresh") == "fresh"
    assert g.unique_name("a") == "a_1"
    g.add_op("a_1", OpKind.SILU, ["x"])
    assert g.unique_name("a") == "a_2"


def test_replace_all_uses_moves_users_and_outputs():
    g = Graph("g")
    g.add_input("x", f32((2, 3)))
    g.add_op("a", OpKind.RELU, ["x"])
    g.add_op("b", OpKind.ADD, ["a", "a"])
    g.add_op("c", OpKind.MUL, ["x", "a"])
    g.add_op("s", OpKind.SILU, ["x"])
    g.add_output("first", "a")
    g.add_output("second", "b")
    g.add_output("third", "c")
    g.replace_all_uses("a", "s")
    assert g.node("b").inputs == ("s", "s")
    assert g.node("c").inputs == ("x", "s")
    assert g.outputs == [("first", "s"), ("second", "b"), ("third", "c")]
    assert g.users("a") == []
    assert [u.name for u in g.users("s")] == ["b", "c"]
    g.remove("a")  # no longer used by anything
    verify(g)
    g.replace_all_uses("s", "s")  # a no-op
    assert g.outputs[0] == ("first", "s")


def test_set_node_rewires_edges():
    g = chain_graph()
    g.add_op("s", OpKind.SILU, ["x"])
    g.set_node(Node("b", OpKind.NEG, ("s",), NoAttrs(), f32((2, 3))))
    assert g.node("b").inputs == ("s",)
    assert g.users("a") == [] and [u.name for u in g.users("s")] == ["b"]
    assert g.eliminate_dead_code() == 1 and "a" not in g
    with pytest.raises(ValueError, match=r"^node 'b' uses unknown value 'nope'$"):
        g.set_node(Node("b", OpKind.NEG, ("nope",), NoAttrs(), f32((2, 3))))


def test_rejected_set_node_leaves_graph_unchanged():
    g = chain_graph()
    with pytest.raises(ValueError, match=r"^node 'b' uses unknown value 'nope'$"):
        g.set_node(Node("b", OpKind.NEG, ("a", "nope"), NoAttrs(), f32((2, 3))))
    assert g.node("b").inputs == ("a",)
    assert [u.name for u in g.users("a")] == ["b"]  # the edge a -> b survives the failed edit
    with pytest.raises(ValueError, match="still used"):
        g.remove("a")


def test_rename_updates_users_and_outputs():
    g = chain_graph()
    g.add_op("c", OpKind.ADD, ["a", "a"])
    g.add_output("sum", "c")
    g.add_output("act", "a")
    g.rename("a", "relu0")
    assert "a" not in g and g.node("relu0").name == "relu0" and g.node("relu0").inputs == ("x",)
    assert g.node("b").inputs == ("relu0",) and g.node("c").inputs == ("relu0", "relu0")
    assert [u.name for u in g.users("relu0")] == ["b", "c"]
    assert g.outputs == [("out", "b"), ("sum", "c"), ("act", "relu0")]
    assert [n.name for n in g.nodes()] == ["x", "u", "relu0", "b", "c"]  # keeps its place
    verify(g)
    with pytest.raises(ValueError, match=r"^graph 'g' already has a node named 'b'$"):
        g.rename("relu0", "b")
    g.rename("b", "b")
    assert g.node("b").inputs == ("relu0",)


def test_set_node_can_create_a_cycle_that_verify_reports():
    g = chain_graph()
    g.set_node(Node("a", OpKind.RELU, ("b",), NoAttrs(), f32((2, 3))))
    with pytest.raises(IRVerifyError, match=r"^graph 'g' has a cycle$"):
        verify(g)


def test_remove_refuses_used_nodes_and_outputs():
    g = chain_graph()
    with pytest.raises(ValueError, match=r"^cannot remove 'a': it is still used$"):
        g.remove("a")
    with pytest.raises(ValueError, match=r"^cannot remove 'b': it is still used$"):
        g.remove("b")  # a graph output
    g.remove("u")  # an unused input may be removed explicitly
    assert "u" not in g and "a" in g and "b" in g


def test_eliminate_dead_code_keeps_inputs():
    g = chain_graph()
    g.add_const("c", ArrayData(np.ones(3, np.float32)))
    g.add_op("dead1", OpKind.EXP, ["x"])
    g.add_op("dead2", OpKind.ADD, ["dead1", "c"])
    assert g.eliminate_dead_code() == 3
    assert [n.name for n in g.nodes()] == ["x", "u", "a", "b"]
    assert g.eliminate_dead_code() == 0


def test_nodes_order_is_insertion_order_among_ready_nodes():
    def build(order_of_leaves):
        g = Graph()
        for name in order_of_leaves:
            g.add_input(name, f32((4,)))
        g.add_op("p", OpKind.ADD, ["k2", "k1"])
        g.add_op("q", OpKind.RELU, ["k0"])
        g.add_op("r", OpKind.MUL, ["p", "q"])
        g.add_output("r", "r")
        return g
    g = build(["k2", "k0", "k1"])
    names = [n.name for n in g.nodes()]
    assert names == ["k2", "k0", "k1", "p", "q", "r"]
    # the same construction always gives the same order
    assert all([n.name for n in build(["k2", "k0", "k1"]).nodes()] == names for _ in range(5))
    # a node redirected to a later one moves after it (topological first, insertion second)
    g.set_node(Node("p", OpKind.ADD, ("k2", "q"), NoAttrs(), f32((4,))))
    assert [n.name for n in g.nodes()] == ["k2", "k0", "k1", "q", "p", "r"]
    assert [n.name for n in g.inputs()] == ["k2", "k0", "k1"]


def test_copy_is_independent():
    g = chain_graph()
    g.meta["family"] = "llama"
    h = g.copy()
    h.add_op("s", OpKind.SILU, ["x"])
    h.replace_all_uses("b", "s")
    h.set_node(Node("b", OpKind.NEG, ("x",), NoAttrs(), f32((2, 3))))
    h.meta["family"] = "opt"
    h.add_output("extra", "a")
    assert h.eliminate_dead_code() == 1  # b is dead; a is now an output of h
    # the original is untouched
    assert [n.name for n in g.nodes()] == ["x", "u", "a", "b"]
    assert g.node("b").inputs == ("a",) and [u.name for u in g.users("a")] == ["b"]
    assert g.outputs == [("out", "b")] and g.meta == {"family": "llama"}
    verify(g)
    # nodes added to the copy sort after the copied ones
    h.add_input("late", f32((1,)))
    assert [n.name for n in h.nodes()] == ["x", "u", "a", "s", "late"]
    assert [n.name for n in h.inputs()] == ["x", "u", "late"]


def test_const_value():
    g = Graph()
    g.add_const("c", ArrayData(np.arange(3, dtype=np.float32)))
    g.add_const("w", AbsentData((3, 2), DType.FP16, "w"), weight=True)
    g.add_input("x", f32((3,)))
    np.testing.assert_array_equal(g.const_value("c"), [0, 1, 2])
    assert g.const_value("w") is None and g.const_value("x") is None
    assert g.node("w").type == TensorType(DType.FP16, (3, 2))
    with pytest.raises(TypeError, match=r"^node 'x' is input, not const$"):
        g.node("x").data


# =============================================================================================
# verifier


def linear_graph(declared: TensorType, w_shape=(8, 16), origin: str = "") -> Graph:
    g = Graph("g")
    g.add_input("x", f32((2, 8)))
    g.add_const("w", ArrayData(np.zeros(w_shape, np.float32)), weight=True)
    g.add(Node("y", OpKind.LINEAR, ("x", "w"), LinearAttrs(), declared, origin))
    g.add_output("y", "y")
    return g


def test_verify_ill_typed_node():
    g = linear_graph(f32((2, 16)))
    with pytest.raises(IRVerifyError, match=r"^node 'y' \(linear\) is ill-typed with inputs "
                                            r"\(%x: fp32\[2,8\], %w: fp32\[8,16\]\): x fp32\[2,8\] does not "
                                            r"match weight fp32\[8,16\] \(weights are \[N, K\]\)$"):
        verify(g)


def test_verify_names_onnx_origin():
    g = linear_graph(f32((2, 16)), origin="/model/MatMul_3")
    with pytest.raises(IRVerifyError, match=r"^node 'y' \(linear, from ONNX /model/MatMul_3\) is ill-typed "
                                            r"with inputs \(%x: fp32\[2,8\], %w: fp32\[8,16\]\): .*$"):
        verify(g)


def test_verify_arity():
    g = Graph("g")
    g.add_input("x", f32((2, 8)))
    g.add(Node("y", OpKind.RELU, ("x", "x"), NoAttrs(), f32((2, 8))))
    g.add_output("y", "y")
    with pytest.raises(IRVerifyError, match=r"^node 'y' \(relu\) is ill-typed with inputs "
                                            r"\(%x: fp32\[2,8\], %x: fp32\[2,8\]\): takes 1\.\.1 inputs, got 2$"):
        verify(g)


def test_verify_declared_type_mismatch():
    g = linear_graph(f32((2, 17)), w_shape=(16, 8))
    with pytest.raises(IRVerifyError, match=r"^node 'y' \(linear\) declares type fp32\[2,17\] but its "
                                            r"inputs give fp32\[2,16\]$"):
        verify(g)
    verify(linear_graph(f32((2, 16)), w_shape=(16, 8)))  # the well-typed graph passes


def test_verify_fused_rejects_primitives():
    g = Graph("g")
    g.add_input("x", f32((2, 8)))
    g.add_const("two", ArrayData(np.float32(2.0)))
    g.add_op("p", OpKind.POW, ["x", "two"])
    g.add_op("r", OpKind.RELU, ["p"])
    g.add_output("r", "r")
    verify(g)
    with pytest.raises(IRVerifyError, match=r"^node 'p' \(pow\) is a primitive op left after fusion$"):
        verify(g, fused=True)


def test_verify_fused_accepts_llm_ops():
    g = printer_graph()
    verify(g, fused=True)


def test_verify_no_outputs():
    g = Graph("empty")
    g.add_input("x", f32((2,)))
    with pytest.raises(IRVerifyError, match=r"^graph 'empty' has no outputs$"):
        verify(g)


# =============================================================================================
# printer


def printer_graph(name: str = "tiny") -> Graph:
    """Embedding -> RMSNorm -> Linear -> SiLU -> LMHead, with a scalar-constant scale."""
    g = Graph(name)
    g.add_input("ids", TensorType(I64, (1, 3)), InputAttrs(InputRole.TOKENS))
    g.add_const("emb.w", ArrayData(randn(10, 4, seed=1)), weight=True)
    g.add_op("emb", OpKind.EMBEDDING, ["emb.w", "ids"])
    g.add_const("norm.w", ArrayData(np.ones(4, np.float32)), weight=True)
    g.add_op("norm", OpKind.RMSNORM, ["emb", "norm.w"], NormAttrs(1e-5, layer=0))
    g.add_const("fc.w", ArrayData(randn(6, 4, seed=2)), weight=True)
    g.add_const("fc.b", AbsentData((6,), F32, "fc.b"), weight=True)
    g.add_op("fc", OpKind.LINEAR, ["norm", "fc.w", "fc.b"], LinearAttrs(LinearRole.GATE, 0))
    g.add_op("act", OpKind.SILU, ["fc"])
    g.add_const("half", ArrayData(np.array([0.5], np.float32)))
    g.add_op("scaled", OpKind.MUL, ["act", "half"])
    g.add_const("head.w", ArrayData(randn(10, 6, seed=3)), weight=True)
    g.add_op("head", OpKind.LMHEAD, ["scaled", "head.w"], LinearAttrs(LinearRole.LM_HEAD))
    g.add_output("logits", "head")
    return g


PRINTED = """\
graph tiny {
  %ids = input() {role=tokens} : int64[1,3]
  %emb.w = const() {weight} : fp32[10,4]
  %emb = embedding(%emb.w, %ids) : fp32[1,3,4]
  %norm.w = const() {weight} : fp32[4]
  %norm = rms_norm(%emb, %norm.w) {eps=1e-05, layer=0} : fp32[1,3,4]
  %fc.w = const() {weight} : fp32[6,4]
  %fc.b = const() {weight} : fp32[6]
  %fc = linear(%norm, %fc.w, %fc.b) {role=gate_proj, layer=0} : fp32[1,3,6]
  %act = silu(%fc) : fp32[1,3,6]
  %half = const() {value=[0.5]} : fp32[1]
  %scaled = mul(%act, %half) : fp32[1,3,6]
  %head.w = const() {weight} : fp32[10,6]
  %head = lm_head(%scaled, %head.w) {role=lm_head} : fp32[1,3,10]
  return logits=%head
}
"""


def test_print_graph_exact_text():
    assert print_graph(printer_graph()) == PRINTED


def test_print_graph_skip_consts():
    text = print_graph(printer_graph(), skip_consts=True)
    assert text == "".join(line + "\n" for line in PRINTED.splitlines() if " = const()" not in line)


def test_print_graph_is_deterministic():
    assert print_graph(printer_graph()) == print_graph(printer_graph())
    assert print_graph(printer_graph()) == print_graph(printer_graph().copy())


def test_print_const_forms_and_attrs():
    g = Graph("c")
    g.add_const("ints", ArrayData(np.array([3, -1], np.int64)))
    g.add_const("nan", ArrayData(np.array([np.nan, -np.inf], np.float32)))
    g.add_const("big", ArrayData(np.zeros(9, np.float32)))
    g.add_const("none", AbsentData((2,), F32, "none"))
    g.add_input("q", f32((1, 4, 2, 8)))
    g.add_input("k", f32((1, 2, 2, 8)), InputAttrs(InputRole.PAST_KEY, layer=3))
    g.add_op("a", OpKind.ATTENTION, ["q", "k", "k"], AttentionAttrs(4, 2, 0.1, True))
    g.add_op("t", OpKind.TRANSPOSE, ["a"], PermAttrs((0, 2, 1, 3)))
    g.add_op("gl", OpKind.GELU, ["t"], GeluAttrs(GeluApprox.TANH))
    g.add_output("y", "gl")
    assert print_graph(g).splitlines()[1:-1] == [
        "  %ints = const() {value=[3,-1]} : int64[2]",
        "  %nan = const() {value=[nan,-inf]} : fp32[2]",
        "  %big = const() {} : fp32[9]",
        "  %none = const() {no-data} : fp32[2]",
        "  %q = input() {role=other} : fp32[1,4,2,8]",
        "  %k = input() {role=past_key, layer=3} : fp32[1,2,2,8]",
        "  %a = attention(%q, %k, %k) {num_heads=4, num_kv_heads=2, scale=0.1, causal=True} "
        ": fp32[1,4,2,8]",
        "  %t = transpose(%a) {perm=[0,2,1,3]} : fp32[1,2,4,8]",
        "  %gl = gelu(%t) {approx=tanh} : fp32[1,2,4,8]",
        "  return y=%gl",
    ]


# =============================================================================================
# interpreter: each LLM op against a plain reference written here


def one_op(op: OpKind, attrs, inputs: list[np.ndarray], consts: tuple[int, ...] = ()) -> np.ndarray:
    """Run a one-op graph through `run` (inputs listed in `consts` become CONST nodes)."""
    g = Graph("one")
    names, feeds = [], {}
    for i, x in enumerate(inputs):
        x = np.asarray(x)
        name = f"in{i}"
        if i in consts:
            g.add_const(name, ArrayData(x), weight=True)
        else:
            g.add_input(name, TensorType(DType.from_numpy(x.dtype), x.shape))
            feeds[name] = x
        names.append(name)
    g.add_op("y", op, names, attrs)
    g.add_output("y", "y")
    verify(g)
    return run(g, feeds)["y"]


def ref_rms_norm(x, w, eps):
    x = x.astype(np.float64)
    out = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    for r, row in enumerate(rows):
        ms = sum(float(v) * float(v) for v in row) / len(row)
        out.reshape(-1, x.shape[-1])[r] = [float(v) / math.sqrt(ms + eps) * float(wi) for v, wi in zip(row, w)]
    return out


def ref_layer_norm(x, w, b, eps):
    x = x.astype(np.float64)
    out = np.empty_like(x)
    for r, row in enumerate(x.reshape(-1, x.shape[-1])):
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out.reshape(-1, x.shape[-1])[r] = [(v - mu) / math.sqrt(var + eps) * wi + bi for v, wi, bi in zip(row, w, b)]
    return out


def ref_rope(x, cos, sin):
    """out[i] = x[i] cos[i] - x[i+h] sin[i];  out[i+h] = x[i+h] cos[i+h] + x[i] sin[i+h]."""
    x = x.astype(np.float64)
    cos, sin = (np.broadcast_to(c, x.shape).astype(np.float64) for c in (cos, sin))
    h = x.shape[-1] // 2
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        for i in range(h):
            out[idx + (i,)] = x[idx + (i,)] * cos[idx + (i,)] - x[idx + (i + h,)] * sin[idx + (i,)]
            out[idx + (i + h,)] = x[idx + (i + h,)] * cos[idx + (i + h,)] + x[idx + (i,)] * sin[idx + (i + h,)]
    return out


def ref_attention(q, k, v, num_heads, num_kv_heads, scale, causal, mask=None):
    """Loops over batch, head and query; head h reads kv head h // (num_heads // num_kv_heads);
    with a cache of T - S past keys, query s sees keys t <= s + (T - S)."""
    B, H, S, D = q.shape
    T = k.shape[2]
    group = num_heads // num_kv_heads
    mask = None if mask is None else np.broadcast_to(mask, (B, H, S, T)).astype(np.float64)
    out = np.zeros((B, H, S, v.shape[3]))
    for b in range(B):
        for h in range(H):
            kv = h // group
            for s in range(S):
                scores = []
                for t in range(T):
                    sc = scale * sum(float(q[b, h, s, d]) * float(k[b, kv, t, d]) for d in range(D))
                    if mask is not None:
                        sc += mask[b, h, s, t]
                    if causal and t > s + (T - S):
                        sc = -math.inf
                    scores.append(sc)
                m = max(scores)
                e = [math.exp(sc - m) if sc != -math.inf else 0.0 for sc in scores]
                z = sum(e)
                for t in range(T):
                    out[b, h, s] += e[t] / z * v[b, kv, t].astype(np.float64)
    return out


@pytest.mark.parametrize("shape", [(5,), (2, 3, 8), (1, 4, 16)])
def test_rms_norm(shape):
    x, w = randn(*shape, seed=1, scale=3.0), randn(shape[-1], seed=2)
    y = one_op(OpKind.RMSNORM, NormAttrs(1e-5), [x, w], consts=(1,))
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_allclose(y, ref_rms_norm(x, w, np.float32(1e-5)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 8)])
def test_layer_norm(shape):
    x = randn(*shape, seed=3, scale=2.0) + 5.0
    w, b = randn(shape[-1], seed=4), randn(shape[-1], seed=5)
    y = one_op(OpKind.LAYERNORM, NormAttrs(1e-5), [x, w, b], consts=(1, 2))
    np.testing.assert_allclose(y, ref_layer_norm(x, w, b, np.float32(1e-5)), rtol=1e-5, atol=1e-5)


def test_rope_fixed_example():
    # one head, d=4: pairs (0,2) and (1,3) rotate by the angles in cos/sin
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    ang = np.array([[0.5, 1.0, 0.5, 1.0]], np.float32)
    y = one_op(OpKind.ROPE, RopeAttrs(), [x, np.cos(ang), np.sin(ang)], consts=(1, 2))
    c, s = math.cos, math.sin
    expect = [1 * c(0.5) - 3 * s(0.5), 2 * c(1.0) - 4 * s(1.0), 3 * c(0.5) + 1 * s(0.5), 4 * c(1.0) + 2 * s(1.0)]
    np.testing.assert_allclose(y[0], expect, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), S=st.integers(1, 5), half=st.integers(1, 4),
       seed=st.integers(0, 2**16), per_head=st.booleans())
def test_rope_property(B, H, S, half, seed, per_head):
    D = 2 * half
    r = rng(seed)
    x = r.standard_normal((B, H, S, D)).astype(np.float32)
    inv = 1.0 / 10000 ** (np.arange(half) / half)
    ang = np.arange(S)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    if per_head:  # any table that broadcasts works, not just [S, D]
        ang = ang[None, None] + r.standard_normal((1, H, 1, D))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    y = one_op(OpKind.ROPE, RopeAttrs(), [x, cos, sin], consts=(1, 2))
    np.testing.assert_allclose(y, ref_rope(x, cos, sin), rtol=1e-5, atol=1e-6)
    if not per_head:  # a rotation: the norm of every (i, i + d/2) pair is kept
        pairs = lambda a: np.hypot(a[..., :half], a[..., half:])  # noqa: E731
        np.testing.assert_allclose(pairs(y), pairs(x), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2, 4]), S=st.integers(1, 4),
       past=st.integers(0, 3), D=st.integers(1, 6), causal=st.booleans(), with_mask=st.booleans(),
       seed=st.integers(0, 2**16))
def test_attention_property(B, Hkv, group, S, past, D, causal, with_mask, seed):
    H, T = Hkv * group, S + past
    r = rng(seed)
    q = r.standard_normal((B, H, S, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, T, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, T, D + 1)).astype(np.float32)
    scale = 1 / math.sqrt(D)
    ins, consts, mask = [q, k, v], (), None
    if with_mask:  # an additive padding mask over keys: one hidden key (never key 0)
        mask = np.zeros((B, 1, 1, T), np.float32)
        if T > 1:
            mask[..., r.integers(1, T)] = -np.inf
        ins.append(mask)
        consts = (3,)
    attrs = AttentionAttrs(H, Hkv, scale, causal)
    y = one_op(OpKind.ATTENTION, attrs, ins, consts=consts)
    assert y.shape == (B, H, S, D + 1)
    np.testing.assert_allclose(y, ref_attention(q, k, v, H, Hkv, np.float32(scale), causal, mask),
                               rtol=1e-5, atol=1e-5)


def test_attention_causal_with_past_keys():
    # T = 5 keys (3 past), S = 2 queries; v is the key position, scores all equal (q = 0):
    # query 0 sees keys 0..3 -> mean 1.5, query 1 sees keys 0..4 -> mean 2
    q = np.zeros((1, 1, 2, 4), np.float32)
    k = randn(1, 1, 5, 4, seed=7)
    v = np.arange(5, dtype=np.float32).reshape(1, 1, 5, 1)
    y = one_op(OpKind.ATTENTION, AttentionAttrs(1, 1, 1.0, True), [q, k, v])
    np.testing.assert_allclose(y.ravel(), [1.5, 2.0], rtol=1e-6)
    y = one_op(OpKind.ATTENTION, AttentionAttrs(1, 1, 1.0, False), [q, k, v])
    np.testing.assert_allclose(y.ravel(), [2.0, 2.0], rtol=1e-6)


def test_attention_grouped_query_heads():
    # 8 query heads on 2 kv heads: head h must read kv head h // 4.
    B, S, T, D = 1, 3, 3, 4
    q = randn(B, 8, S, D, seed=8)
    k = randn(B, 2, T, D, seed=9)
    v = np.stack([np.full((T, D), 10.0 * (j + 1), np.float32) for j in range(2)])[None]
    y = one_op(OpKind.ATTENTION, AttentionAttrs(8, 2, 0.5, True), [q, k, v])
    for h in range(8):
        np.testing.assert_allclose(y[0, h], 10.0 * (h // 4 + 1), rtol=1e-6)
    v = randn(B, 2, T, D, seed=10)
    y = one_op(OpKind.ATTENTION, AttentionAttrs(8, 2, 0.5, True), [q, k, v])
    np.testing.assert_allclose(y, ref_attention(q, k, v, 8, 2, 0.5, True), rtol=1e-5, atol=1e-6)


def test_attention_additive_mask_input():
    B, H, S, T, D = 2, 2, 3, 3, 4
    q, k, v = randn(B, H, S, D, seed=11), randn(B, H, T, D, seed=12), randn(B, H, T, D, seed=13)
    mask = np.zeros((B, 1, S, T), np.float32)
    mask[1, :, :, 2] = np.finfo(np.float32).min  # batch 1 pads its last key
    mask[0, :, :, 0] = -1.5  # and a soft bias in batch 0
    y = one_op(OpKind.ATTENTION, AttentionAttrs(H, H, 0.5, False), [q, k, v, mask])
    np.testing.assert_allclose(y, ref_attention(q, k, v, H, H, 0.5, False, mask), rtol=1e-5, atol=1e-6)
    # the padded key has no influence on batch 1
    v2 = v.copy()
    v2[1, :, 2] = 1e3
    y2 = one_op(OpKind.ATTENTION, AttentionAttrs(H, H, 0.5, False), [q, k, v2, mask])
    np.testing.assert_allclose(y2[1], y[1], rtol=1e-6)


def test_softmax_is_stable_for_large_values():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1e30, 0.0, -np.inf], [3e38, 3e38, -3e38]], np.float32)
    with np.errstate(over="ignore", invalid="raise"):  # -3e38 - 3e38 may round to -inf; no inf - inf, 0/0
        y = evaluate(OpKind.SOFTMAX, AxisAttrs(1), [x])
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(y[1], [0.0, 1.0, 0.0], atol=0)
    np.testing.assert_allclose(y[2], [0.5, 0.5, 0.0], atol=0)
    # the same through attention: huge scores stay finite
    q = np.full((1, 1, 2, 2), 1e4, np.float32)
    k = randn(1, 1, 2, 2, seed=14) * 100
    v = randn(1, 1, 2, 3, seed=15)
    y = one_op(OpKind.ATTENTION, AttentionAttrs(1, 1, 1.0, False), [q, k, v])
    assert np.isfinite(y).all()


def test_softmax_axis():
    x = randn(2, 3, 4, seed=16)
    y = evaluate(OpKind.SOFTMAX, AxisAttrs(1), [x])
    ref = np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_gelu_erf_against_math_erf():
    x = np.linspace(-6, 6, 4801).astype(np.float32)
    y = one_op(OpKind.GELU, GeluAttrs(GeluApprox.NONE), [x])
    ref = np.array([0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2))) for v in x])
    assert np.abs(y - ref).max() < 1e-6


def test_gelu_tanh_form():
    x = np.linspace(-8, 8, 1601).astype(np.float32)
    y = one_op(OpKind.GELU, GeluAttrs(GeluApprox.TANH), [x])
    c = math.sqrt(2 / math.pi)
    ref = np.array([0.5 * float(v) * (1 + math.tanh(c * (float(v) + 0.044715 * float(v) ** 3))) for v in x])
    assert np.abs(y - ref).max() < 2e-6
    # the two forms are different functions (differ by ~1e-3 near |x| = 2)
    y_erf = one_op(OpKind.GELU, GeluAttrs(GeluApprox.NONE), [x])
    assert 1e-4 < np.abs(y - y_erf).max() < 1e-2


def test_silu():
    x = np.concatenate([np.linspace(-20, 20, 801), [-1000.0, 1000.0]]).astype(np.float32)
    with np.errstate(over="raise", invalid="raise"):
        y = one_op(OpKind.SILU, NoAttrs(), [x])
    ref = np.array([float(v) / (1 + math.exp(-float(v))) if v > -700 else 0.0 for v in x])
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)


def test_relu():
    x = np.array([-2.0, -0.0, 0.0, 3.5], np.float32)
    np.testing.assert_array_equal(one_op(OpKind.RELU, NoAttrs(), [x]), [0.0, 0.0, 0.0, 3.5])


def test_embedding():
    table = randn(10, 4, seed=17)
    ids = np.array([[3, 0, 9], [9, 9, 1]], np.int64)
    y = one_op(OpKind.EMBEDDING, NoAttrs(), [table, ids], consts=(0,))
    assert y.shape == (2, 3, 4)
    for b in range(2):
        for s in range(3):
            np.testing.assert_array_equal(y[b, s], table[ids[b, s]])


def test_embedding_fp16_table_widens():
    table = randn(6, 3, seed=18).astype(np.float16)
    y = one_op(OpKind.EMBEDDING, NoAttrs(), [table, np.array([[5, 0]], np.int64)], consts=(0,))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[0], table[[5, 0]].astype(np.float32))


@pytest.mark.parametrize("bias", [False, True])
def test_linear(bias):
    x, w, b = randn(2, 3, 5, seed=19), randn(4, 5, seed=20), randn(4, seed=21)
    ins, consts = ([x, w, b], (1, 2)) if bias else ([x, w], (1,))
    y = one_op(OpKind.LINEAR, LinearAttrs(), ins, consts=consts)
    ref = np.zeros((2, 3, 4))
    for i, j, n in np.ndindex(2, 3, 4):
        ref[i, j, n] = sum(float(x[i, j, kk]) * float(w[n, kk]) for kk in range(5)) + (float(b[n]) if bias else 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_integer_div_truncates_like_onnx():
    # ONNX Div (and onnxruntime) truncates toward zero, where numpy's // floors
    y = evaluate(OpKind.DIV, NoAttrs(), [np.array([-7, 7, -8], np.int64), np.array([2, -2, 3], np.int64)])
    np.testing.assert_array_equal(y, [-3, -3, -2])


def test_integer_div_positive():
    y = evaluate(OpKind.DIV, NoAttrs(), [np.array([7, 8], np.int64), np.array([2, 3], np.int64)])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [3, 2])


def test_run_missing_input():
    g = chain_graph()
    with pytest.raises(InterpreterError, match=r"^missing value for graph input 'u' \(fp32\[1\]\)$"):
        run(g, {"x": np.zeros((2, 3), np.float32)})


def test_run_wrong_input_shape():
    g = chain_graph()
    with pytest.raises(InterpreterError, match=r"^graph input 'x' expects shape \[2, 3\], got \[3, 2\]$"):
        run(g, {"x": np.zeros((3, 2), np.float32), "u": np.zeros(1, np.float32)})


def test_run_reports_failing_node():
    g = Graph("g")
    g.add_const("table", ArrayData(randn(4, 2)), weight=True)
    g.add_input("ids", TensorType(I64, (2,)))
    g.add_op("e", OpKind.EMBEDDING, ["table", "ids"])
    g.add_output("e", "e")
    with pytest.raises(InterpreterError, match=r"^node 'e' \(embedding\) failed: index 7 is out of bounds"):
        run(g, {"ids": np.array([1, 7])})


def test_run_casts_feeds_and_absent_weights_raise():
    g = chain_graph()
    out = run(g, {"x": np.full((2, 3), -2.0), "u": np.zeros(1)})["out"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.zeros((2, 3)))
    g.add_const("w", AbsentData((3,), F32, "model.w"), weight=True)
    g.add_op("c", OpKind.ADD, ["b", "w"])
    g.add_output("c", "c")
    with pytest.raises(WeightDataMissing, match=r"^tensor model\.w fp32\[3\] has no values"):
        run(g, {"x": np.zeros((2, 3)), "u": np.zeros(1)})


def test_run_frees_intermediates(monkeypatch):
    """Each value is dropped once its last user ran; graph outputs and final results stay correct."""
    g = Graph("g")
    g.add_input("x", f32((64,)))
    g.add_op("a", OpKind.EXP, ["x"])
    g.add_op("b", OpKind.NEG, ["a"])
    g.add_op("c", OpKind.ADD, ["b", "b"])  # b used twice by one node
    g.add_op("d", OpKind.TANH, ["c"])
    g.add_op("e", OpKind.SIGMOID, ["d"])
    g.add_op("f", OpKind.MUL, ["e", "c"])
    g.add_output("c_out", "c")
    g.add_output("f_out", "f")
    refs: dict[str, weakref.ref] = {}
    alive_at: dict[str, set[str]] = {}
    real = interpret.evaluate
    order = iter(n.name for n in g.nodes() if n.op is not OpKind.INPUT)

    def spy(op, attrs, inputs):
        name = next(order)
        alive_at[name] = {k for k, r in refs.items() if r() is not None}
        out = real(op, attrs, inputs)
        refs[name] = weakref.ref(out)
        return out

    monkeypatch.setattr(interpret, "evaluate", spy)
    x = np.linspace(-1, 1, 64).astype(np.float32)
    res = run(g, {"x": x})
    assert alive_at["b"] == {"a"}
    assert alive_at["c"] == {"b"}  # a was freed once b was computed
    assert alive_at["d"] == {"c"}
    assert alive_at["f"] == {"c", "e"}  # c is still needed by f (and is an output)
    c = -2 * np.exp(x.astype(np.float64))
    f = 1 / (1 + np.exp(-np.tanh(c))) * c
    np.testing.assert_allclose(res["c_out"], c, rtol=1e-6)
    np.testing.assert_allclose(res["f_out"], f, rtol=1e-6)
    assert set(res) == {"c_out", "f_out"}


# =============================================================================================
# lazy tensor data


def test_lazy_data_is_read_only_on_demand():
    calls = []

    def load():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    d = LazyData((3, 2), F32, load)
    g = Graph("g")
    g.add_const("w", d, weight=True)
    g.add_input("x", f32((4, 2)))
    g.add_op("y", OpKind.LINEAR, ["x", "w"], LinearAttrs())
    g.add_output("y", "y")
    verify(g)
    print_graph(g)
    h = g.copy()
    assert g.node("w").type == f32((3, 2)) and d.has_values
    assert calls == []
    np.testing.assert_array_equal(d.numpy(), np.arange(6).reshape(3, 2))
    assert len(calls) == 1
    d.numpy()
    assert len(calls) == 2  # never cached
    run(h, {"x": np.ones((4, 2), np.float32)})
    assert len(calls) == 3


def test_lazy_data_checks_loaded_shape():
    d = LazyData((3, 2), F32, lambda: np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"^lazy tensor loaded shape \(2, 3\), expected \(3, 2\)$"):
        d.numpy()


def test_transposed_memmap_is_a_view(tmp_path):
    path = tmp_path / "w.bin"
    values = np.arange(15, dtype=np.float32).reshape(3, 5)
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(3, 5))
    mm[:] = values
    mm.flush()
    del mm
    maps = []

    def load():
        maps.append(np.memmap(path, dtype=np.float32, mode="r", shape=(3, 5)))
        return maps[-1]

    t = TransposedData(LazyData((3, 5), F32, load))
    assert t.shape == (5, 3) and t.dtype is F32 and maps == []
    a = t.numpy()
    assert a.shape == (5, 3)
    np.testing.assert_array_equal(a, values.T)
    assert np.shares_memory(a, maps[0]) and not a.flags.owndata  # no copy of the file's data
    assert a.flags.f_contiguous and not a.flags.writeable
    # and the interpreter computes with it as a [N, K] weight
    g = Graph()
    g.add_input("x", f32((2, 3)))
    g.add_const("w", t, weight=True)
    g.add_op("y", OpKind.LINEAR, ["x", "w"], LinearAttrs())
    g.add_output("y", "y")
    x = randn(2, 3, seed=22)
    np.testing.assert_allclose(run(g, {"x": x})["y"], x @ values, rtol=1e-6)


def test_transposed_data_requires_2d():
    with pytest.raises(ValueError, match=r"^TransposedData needs a 2-D tensor, not shape \(2, 3, 4\)$"):
        TransposedData(ArrayData(np.zeros((2, 3, 4), np.float32)))


def test_absent_data_names_the_tensor():
    d = AbsentData((4, 8), DType.FP16, "model.layers.0.mlp.up_proj.weight")
    assert not d.has_values and d.shape == (4, 8)
    with pytest.raises(WeightDataMissing, match=r"^tensor model\.layers\.0\.mlp\.up_proj\.weight fp16\[4, 8\] has "
                                                 r"no values \(config-only model\): load the ONNX model to "
                                                 r"compute with it$"):
        d.numpy()
    t = TransposedData(d)
    assert not t.has_values and t.shape == (8, 4)
    with pytest.raises(WeightDataMissing, match=r"up_proj\.weight"):
        t.numpy()
    with pytest.raises(WeightDataMissing, match=r"^tensor <unnamed> int4\[2\] has no values"):
        AbsentData((2,), DType.INT4).numpy()


def test_array_data_digest_depends_on_values():
    a = ArrayData(np.arange(4, dtype=np.float32))
    b = ArrayData(np.arange(4, dtype=np.float32))
    c = ArrayData(np.arange(4, dtype=np.float32)[::-1])
    assert a.digest() == b.digest() != c.digest()
    assert len(a.digest()) == 12
    assert ArrayData(np.zeros(2, np.int64)).dtype is I64
    assert ArrayData(np.zeros(2, np.int8), DType.INT4).dtype is DType.INT4
