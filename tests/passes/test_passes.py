"""passes/: the pipeline parser and each fusion/clean-up pass on small hand-built graphs.

Every rewrite test builds the primitive form by hand, runs the pass through `parse_pipeline` +
`run_pipeline` (which verifies the graph after each pass), and checks three things: the
interpreter computes the same before and after, the expected LLM-level op is there, and the
primitives it replaced are gone.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

import networkx as nx
import numpy as np
import pytest

from llmfab.frontend.config import load_config
from llmfab.ir import (ArrayData, AttentionAttrs, AxisAttrs, DType, GeluApprox, GeluAttrs, Graph, InputAttrs,
                       InputRole, IRVerifyError, LinearAttrs, LinearRole, Node, NormAttrs, OpKind, PermAttrs,
                       ShapeAttrs, SliceAttrs, TensorType, TransposedData, run, verify)
from llmfab.ir.ops import ReduceAttrs
from llmfab.passes import FUSION_PIPELINE, PASSES, Pass, PassError, parse_pipeline, run_pipeline

F32 = DType.FP32


# ---------------------------------------------------------------------------------------------
# helpers


class G:
    """A terse builder over Graph.add_op for primitive graphs."""

    def __init__(self, name: str = "g", seed: int = 0):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.feeds: dict[str, np.ndarray] = {}
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def input(self, name: str, shape, dtype=F32, role=InputRole.OTHER) -> str:
        self.g.add_input(name, TensorType(dtype, tuple(shape)), InputAttrs(role))
        if dtype is F32:
            self.feeds[name] = self.rng.standard_normal(shape).astype(np.float32)
        else:
            self.feeds[name] = self.rng.integers(0, 10, shape).astype(dtype.numpy)
        return name

    def const(self, value, name: str | None = None, weight: bool = False) -> str:
        name = name or self._name("c")
        a = np.asarray(value)
        a = a.astype(np.float32) if a.dtype.kind == "f" else a
        self.g.add_const(name, ArrayData(a), weight=weight)
        return name

    def weight(self, *shape, name: str | None = None, scale: float = 0.3) -> str:
        return self.const(self.rng.standard_normal(shape) * scale, name or self._name("w"), weight=True)

    def op(self, op: OpKind, *inputs, attrs=None, name: str | None = None) -> str:
        ins = [i if isinstance(i, str) else self.const(i) for i in inputs]  # numbers become constants
        return self.g.add_op(name or self._name(op.value), op, ins, attrs).name

    def out(self, name: str, out: str = "y") -> Graph:
        self.g.add_output(out, name)
        return self.g


def live_names(g: Graph) -> set[str]:
    """The nodes that matter: those some graph output depends on."""
    live = set(g.output_names())
    for o in list(live):
        live |= nx.ancestors(g._g, o)
    return live


def ops(g: Graph) -> Counter:
    return Counter(g.node(n).op for n in live_names(g))


def all_ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes())


def apply(g: Graph, spec: str, feeds: dict, rtol: float = 1e-5, atol: float = 1e-6) -> Graph:
    """Run the pipeline `spec` on `g` in place; check the outputs did not change."""
    before = run(g, feeds)
    run_pipeline(g, parse_pipeline(spec, PASSES))
    after = run(g, feeds)
    assert set(after) == set(before)
    for k in before:
        assert after[k].shape == before[k].shape, k
        np.testing.assert_allclose(after[k], before[k], rtol=rtol, atol=atol, err_msg=k)
    return g


def only(g: Graph, op: OpKind) -> Node:
    live = live_names(g)
    found = [n for n in g.nodes() if n.op is op and n.name in live]
    assert len(found) == 1, f"expected one {op}, found {[n.name for n in found]}"
    return found[0]


# =============================================================================================
# parse_pipeline


@dataclass(frozen=True)
class Toy(Pass):
    name: ClassVar[str] = "toy"
    bits: int = 4
    ratio: float = 0.5
    tag: str = ""
    strict: bool = False

    def apply(self, graph: Graph) -> None:
        graph.meta["toy"] = (self.bits, self.ratio, self.tag, self.strict)


REGISTRY = {**PASSES, "toy": Toy}


def test_registry_names_match():
    assert all(name == cls.name for name, cls in PASSES.items())
    assert {"fuse-linear", "cleanup", "fuse-norm", "fuse-activation", "fuse-rope", "fuse-attention",
            "annotate"} <= set(PASSES)
    assert [p.name for p in parse_pipeline(FUSION_PIPELINE, PASSES)] == FUSION_PIPELINE.split(",")


def test_parse_options_into_typed_fields():
    (p,) = parse_pipeline("toy{bits=3, ratio=0.25,tag=abc , strict=true}", REGISTRY)
    assert p == Toy(bits=3, ratio=0.25, tag="abc", strict=True)
    assert type(p.bits) is int and type(p.ratio) is float
    (p,) = parse_pipeline("toy", REGISTRY)
    assert p == Toy()
    (p,) = parse_pipeline("toy{}", REGISTRY)
    assert p == Toy()
    for text, value in (("1", True), ("yes", True), ("True", True), ("false", False), ("0", False), ("no", False)):
        assert parse_pipeline(f"toy{{strict={text}}}", REGISTRY)[0].strict is value


def test_parse_several_passes():
    ps = parse_pipeline(" fuse-linear , toy{bits=8},cleanup", REGISTRY)
    assert [type(p) for p in ps] == [PASSES["fuse-linear"], Toy, PASSES["cleanup"]]
    assert ps[1].bits == 8
    g = Graph()
    g.add_input("x", TensorType(F32, (1,)))
    g.add_output("x", "x")
    report = run_pipeline(g, ps[1:2], print_between=True)
    assert g.meta["toy"] == (8, 0.5, "", False)
    assert set(report.seconds) == {"toy"} and report.printed[0].startswith("// after toy\ngraph graph {")


def test_parse_unknown_pass_lists_known_passes():
    known = ", ".join(sorted(PASSES))
    with pytest.raises(PassError, match=rf"^unknown pass 'fuse-everything'; known passes: {known}$"):
        parse_pipeline("fuse-linear,fuse-everything", PASSES)


@pytest.mark.parametrize("spec, rest", [
    ("fuse-linear{", "fuse-linear{"),
    ("cleanup,,annotate", ",annotate"),
    ("Cleanup", "Cleanup"),
    ("cleanup annotate", "cleanup annotate"),
    ("toy{bits=3", "toy{bits=3"),
])
def test_parse_malformed_spec(spec, rest):
    with pytest.raises(PassError, match=rf"^cannot parse pass pipeline at '{rest}'$"):
        parse_pipeline(spec, REGISTRY)


def test_parse_unknown_option():
    with pytest.raises(PassError, match=r"^pass 'toy' has no option 'width'; options: "
                                        r"\['bits', 'ratio', 'strict', 'tag'\]$"):
        parse_pipeline("toy{width=3}", REGISTRY)
    with pytest.raises(PassError, match=r"^pass 'cleanup' has no option 'x'; options: none$"):
        parse_pipeline("cleanup{x=1}", REGISTRY)


def test_parse_bad_option_values():
    with pytest.raises(PassError, match=r"^pass 'toy': option bits='four' must be int$"):
        parse_pipeline("toy{bits=four}", REGISTRY)
    with pytest.raises(PassError, match=r"^pass 'toy': option ratio='1/2' must be float$"):
        parse_pipeline("toy{ratio=1/2}", REGISTRY)
    with pytest.raises(PassError, match=r"^pass 'toy': option 'bits' must be key=value$"):
        parse_pipeline("toy{bits}", REGISTRY)


def test_parse_rejects_bad_bool():
    with pytest.raises(PassError, match=r"^pass 'toy': option strict='ture' must be bool$"):
        parse_pipeline("toy{strict=ture}", REGISTRY)


def test_run_pipeline_verifies_after_each_pass():
    @dataclass(frozen=True)
    class Breaker(Pass):
        name: ClassVar[str] = "breaker"

        def apply(self, graph: Graph) -> None:
            n = graph.node("y")
            graph.set_node(replace(n, type=TensorType(F32, (3,))))

    b = G()
    g = b.out(b.op(OpKind.RELU, b.input("x", (2,)), name="y"))
    with pytest.raises(IRVerifyError, match=r"^node 'y' \(relu\) declares type fp32\[3\] but its inputs give "
                                            r"fp32\[2\]$"):
        run_pipeline(g, [Breaker()])
    report = run_pipeline(g, [Breaker()], verify_each=False)  # unchecked: the broken graph goes through
    assert g.node("y").type == TensorType(F32, (3,)) and set(report.seconds) == {"breaker"}


# =============================================================================================
# fuse-activation


def silu_a(b: G, x: str) -> str:
    return b.op(OpKind.MUL, x, b.op(OpKind.SIGMOID, x))


def silu_b(b: G, x: str) -> str:
    return b.op(OpKind.MUL, b.op(OpKind.SIGMOID, x), x)


def gelu_erf_a(b: G, x: str) -> str:  # 0.5 * x * (1 + erf(x / sqrt 2))
    e = b.op(OpKind.ERF, b.op(OpKind.DIV, x, np.float32(math.sqrt(2))))
    return b.op(OpKind.MUL, b.op(OpKind.MUL, np.float32(0.5), x), b.op(OpKind.ADD, np.float32(1.0), e))


def gelu_erf_b(b: G, x: str) -> str:  # x * (erf(x * 0.7071067811865476) + 1) * 0.5
    e = b.op(OpKind.ERF, b.op(OpKind.MUL, x, np.float32(0.7071067811865476)))
    return b.op(OpKind.MUL, b.op(OpKind.MUL, x, b.op(OpKind.ADD, e, np.float32(1.0))), np.float32(0.5))


def _gelu_tanh(b: G, x: str, cube: str) -> str:
    inner = b.op(OpKind.ADD, x, b.op(OpKind.MUL, np.float32(0.044715), cube))
    t = b.op(OpKind.TANH, b.op(OpKind.MUL, np.float32(math.sqrt(2 / math.pi)), inner))
    return b.op(OpKind.MUL, b.op(OpKind.MUL, np.float32(0.5), x), b.op(OpKind.ADD, np.float32(1.0), t))


def gelu_tanh_pow(b: G, x: str) -> str:  # GPT-2 gelu_new
    return _gelu_tanh(b, x, b.op(OpKind.POW, x, np.float32(3.0)))


def gelu_tanh_mul(b: G, x: str) -> str:
    return _gelu_tanh(b, x, b.op(OpKind.MUL, b.op(OpKind.MUL, x, x), x))


def relu_neg_min(b: G, x: str) -> str:  # -min(-x, 0)
    return b.op(OpKind.NEG, b.op(OpKind.MIN, b.op(OpKind.NEG, x), np.float32(0.0)))


def relu_max(b: G, x: str) -> str:
    return b.op(OpKind.MAX, x, np.float32(0.0))


@pytest.mark.parametrize("build, op, attrs", [
    (silu_a, OpKind.SILU, None),
    (silu_b, OpKind.SILU, None),
    (gelu_erf_a, OpKind.GELU, GeluAttrs(GeluApprox.NONE)),
    (gelu_erf_b, OpKind.GELU, GeluAttrs(GeluApprox.NONE)),
    (gelu_tanh_pow, OpKind.GELU, GeluAttrs(GeluApprox.TANH)),
    (gelu_tanh_mul, OpKind.GELU, GeluAttrs(GeluApprox.TANH)),
    (relu_neg_min, OpKind.RELU, None),
    (relu_max, OpKind.RELU, None),
])
def test_fuse_activation(build, op, attrs):
    b = G()
    x = b.op(OpKind.LINEAR, b.input("x", (2, 3, 16)), b.weight(24, 16), attrs=LinearAttrs())
    b.feeds["x"] *= 3  # probe well into the tails
    g = b.out(b.op(OpKind.ADD, build(b, x), b.weight(24)))
    apply(g, "fuse-activation", b.feeds)
    act = only(g, op)
    assert act.inputs == (x,)
    if attrs is not None:
        assert act.attrs == attrs
    assert ops(g) == Counter({OpKind.INPUT: 1, OpKind.CONST: 2, OpKind.LINEAR: 1, op: 1, OpKind.ADD: 1})
    assert all_ops(g) == ops(g)  # the cone and its scalar constants are gone


def test_fuse_activation_then_scalar_op():
    b = G()  # 0.5 * silu(x): the outer cone is no activation, the inner one is
    x = b.input("x", (4, 8))
    g = b.out(b.op(OpKind.MUL, gelu_erf_b(b, x), np.float32(0.5), name="half"))
    apply(g, "fuse-activation", b.feeds)
    act = only(g, OpKind.GELU)
    assert act.inputs == (x,) and g.node("half").inputs[0] == act.name
    assert all_ops(g) == Counter({OpKind.INPUT: 1, OpKind.GELU: 1, OpKind.MUL: 1, OpKind.CONST: 1})


def test_non_activation_cone_stays():
    b = G()
    x = b.input("x", (4, 8))
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.MUL, x, np.float32(0.5)), np.float32(1.0)))
    text = [(n.name, n.op, n.inputs) for n in g.nodes()]
    apply(g, "fuse-activation", b.feeds)
    assert [(n.name, n.op, n.inputs) for n in g.nodes()] == text


def test_near_activation_cone_stays():
    b = G()  # x * sigmoid(1.01 x) is close to SiLU, but not it
    x = b.input("x", (4, 8))
    g = b.out(b.op(OpKind.MUL, x, b.op(OpKind.SIGMOID, b.op(OpKind.MUL, x, np.float32(1.01)))))
    apply(g, "fuse-activation", b.feeds)
    assert OpKind.SILU not in all_ops(g) and all_ops(g)[OpKind.SIGMOID] == 1


def test_cone_with_escaping_interior_value_is_not_fused():
    b = G()
    x = b.input("x", (4, 8))
    s = b.op(OpKind.SIGMOID, x)
    y = b.op(OpKind.MUL, x, s)
    g = b.out(y)
    g.add_output("gate", s)  # the sigmoid is needed on its own
    apply(g, "fuse-activation", b.feeds)
    assert OpKind.SILU not in all_ops(g)
    assert g.node(y).inputs == (x, s) and g.outputs == [("y", y), ("gate", s)]

    b = G()  # the same when the interior value feeds another node
    x = b.input("x", (4, 8))
    s = b.op(OpKind.SIGMOID, x)
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.MUL, x, s), b.op(OpKind.EXP, s)))
    apply(g, "fuse-activation", b.feeds)
    assert OpKind.SILU not in all_ops(g) and all_ops(g)[OpKind.SIGMOID] == 1


def test_cone_of_two_values_is_not_fused():
    b = G()  # x * sigmoid(z): a gate of two values, not SiLU
    x, z = b.input("x", (4, 8)), b.input("z", (4, 8))
    g = b.out(b.op(OpKind.MUL, x, b.op(OpKind.SIGMOID, z)))
    apply(g, "fuse-activation", b.feeds)
    assert OpKind.SILU not in all_ops(g)


# =============================================================================================
# fuse-norm


def rms_graph(form: str, weight: bool, square: str = "pow", eps: float = 1e-6):
    b = G()
    x = b.input("x", (2, 3, 16))
    sq = b.op(OpKind.POW, x, np.float32(2.0)) if square == "pow" else b.op(OpKind.MUL, x, x)
    var = b.op(OpKind.REDUCE_MEAN, sq, attrs=ReduceAttrs((2,), True))
    s = b.op(OpKind.SQRT, b.op(OpKind.ADD, var, np.float32(eps)))
    if form == "div1":
        y = b.op(OpKind.MUL, x, b.op(OpKind.DIV, np.float32(1.0), s))
    elif form == "reciprocal":
        y = b.op(OpKind.MUL, b.op(OpKind.RECIPROCAL, s), x)
    else:
        y = b.op(OpKind.DIV, x, s)
    w = None
    if weight:
        w = b.weight(16, name="norm.weight")
        y = b.op(OpKind.MUL, w, y)
    return b, x, w, b.out(y)


@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("form", ["div1", "reciprocal", "div"])
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_fuse_rms_norm(form, weight, square):
    b, x, w, g = rms_graph(form, weight, square, eps=1e-6)
    apply(g, "fuse-norm", b.feeds)
    n = only(g, OpKind.RMSNORM)
    assert n.inputs[0] == x and n.attrs == NormAttrs(float(np.float32(1e-6)))
    assert n.attrs.eps == 9.999999974752427e-07  # the float32 constant, exactly
    wn = g.node(n.inputs[1])
    if weight:
        assert wn.name == w  # the model's own parameter, not a copy
    else:
        np.testing.assert_array_equal(wn.data.numpy(), np.ones(16))
    assert wn.attrs.weight and wn.type == TensorType(F32, (16,))
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.CONST, OpKind.RMSNORM}
    assert len(g) == 3


def test_fuse_rms_norm_keeps_shared_input():
    b, x, w, g = rms_graph("reciprocal", True)
    y = g.outputs[0][1]
    r = b.op(OpKind.ADD, y, x)  # residual: x is used outside the norm too
    g.outputs = [("y", r)]
    apply(g, "fuse-norm", b.feeds)
    n = only(g, OpKind.RMSNORM)
    assert g.node(r).inputs == (n.name, x)


def test_rms_norm_with_escaping_value_is_not_fused():
    b, x, w, g = rms_graph("div", False)
    var = next(n.name for n in g.nodes() if n.op is OpKind.REDUCE_MEAN)
    g.add_output("var", var)
    apply(g, "fuse-norm", b.feeds)
    assert OpKind.RMSNORM not in all_ops(g)


@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_fuse_layer_norm(affine, square):
    b = G()
    x = b.input("x", (2, 3, 16))
    b.feeds["x"] = b.feeds["x"] * 2 + 3  # a mean far from zero
    mean = b.op(OpKind.REDUCE_MEAN, x, attrs=ReduceAttrs((2,), True))
    d = b.op(OpKind.SUB, x, mean)
    sq = b.op(OpKind.POW, d, np.float32(2.0)) if square == "pow" else b.op(OpKind.MUL, d, d)
    var = b.op(OpKind.REDUCE_MEAN, sq, attrs=ReduceAttrs((2,), True))
    y = b.op(OpKind.DIV, d, b.op(OpKind.SQRT, b.op(OpKind.ADD, var, np.float32(1e-5))))
    w = bias = None
    if affine != "none":
        w = b.weight(16, name="ln.weight")
        y = b.op(OpKind.MUL, y, w)
    if affine == "weight+bias":
        bias = b.weight(16, name="ln.bias")
        y = b.op(OpKind.ADD, y, bias)
    g = b.out(y)
    apply(g, "fuse-norm", b.feeds, atol=1e-5)
    n = only(g, OpKind.LAYERNORM)
    assert n.inputs[0] == x and n.attrs.eps == float(np.float32(1e-5))
    wv, bv = (g.node(i).data.numpy() for i in n.inputs[1:])
    if w is not None:
        assert n.inputs[1] == w
    else:
        np.testing.assert_array_equal(wv, np.ones(16))
    if bias is not None:
        assert n.inputs[2] == bias
    else:
        np.testing.assert_array_equal(bv, np.zeros(16))
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.CONST, OpKind.LAYERNORM}


def test_fuse_norm_broadcast_weight_is_reshaped():
    b, x, _, g = rms_graph("div", False)
    y = g.outputs[0][1]
    w = b.const(np.linspace(0.5, 2, 16).reshape(1, 1, 16), name="w3d", weight=True)
    g.outputs = [("y", b.op(OpKind.MUL, y, w))]
    apply(g, "fuse-norm", b.feeds)
    n = only(g, OpKind.RMSNORM)
    assert g.node(n.inputs[1]).type == TensorType(F32, (16,))
    np.testing.assert_array_equal(g.node(n.inputs[1]).data.numpy(), np.linspace(0.5, 2, 16).astype(np.float32))


def test_fuse_norm_keeps_broadcast_rank():
    b = G()
    x = b.input("x", (3, 16))
    var = b.op(OpKind.REDUCE_MEAN, b.op(OpKind.MUL, x, x), attrs=ReduceAttrs((1,), True))
    y = b.op(OpKind.DIV, x, b.op(OpKind.SQRT, b.op(OpKind.ADD, var, np.float32(1e-6))))
    g = b.out(b.op(OpKind.MUL, y, b.const(np.ones((1, 1, 16)), weight=True)))
    apply(g, "fuse-norm", b.feeds)  # fails: the output shape changed


def _per_head_norms(b: G, x: str, op: OpKind, order, same: bool = False, widths=None) -> str:
    """StableLM's q_layernorm: x [1, 4, 3, 8] split into heads on axis 1 (pieces of `widths`), a norm of
    each (weights of its own unless `same`), the pieces joined in `order`."""
    widths = widths or [1, 1, 1, 1]
    outs, at = [], 0
    shared = b.weight(8)
    for w in widths:
        piece = b.op(OpKind.SLICE, x, attrs=SliceAttrs((at,), (at + w,), (1,), (1,)))
        params = [shared if same else b.weight(8)] + ([b.weight(8)] if op is OpKind.LAYERNORM else [])
        outs.append(b.op(op, piece, *params, attrs=NormAttrs(1e-5)))
        at += w
    return b.op(OpKind.CONCAT, *[outs[i] for i in order], attrs=AxisAttrs(1))


@pytest.mark.parametrize("op", [OpKind.LAYERNORM, OpKind.RMSNORM])
@pytest.mark.parametrize("widths", [[1, 1, 1, 1], [1, 3], [2, 2]])
def test_per_head_norms_become_one_norm_with_a_row_per_head(op, widths):
    b = G()
    x = b.input("x", (1, 4, 3, 8))
    g = b.out(_per_head_norms(b, x, op, range(len(widths)), widths=widths))
    apply(g, "fuse-norm", b.feeds)
    n = only(g, op)
    assert n.inputs[0] == x and n.attrs == NormAttrs(1e-5)
    assert all(g.node(p).type.shape == (4, 1, 8) for p in n.inputs[1:])
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.CONST, op}


def test_per_head_norms_with_one_weight_keep_a_row():
    b = G()
    x = b.input("x", (1, 4, 3, 8))
    g = b.out(_per_head_norms(b, x, OpKind.RMSNORM, range(4), same=True))
    apply(g, "fuse-norm", b.feeds)
    assert g.node(only(g, OpKind.RMSNORM).inputs[1]).type.shape == (8,)


def test_per_head_norms_out_of_order_stay_apart():
    b = G()
    x = b.input("x", (1, 4, 3, 8))
    g = b.out(_per_head_norms(b, x, OpKind.LAYERNORM, [1, 0, 2, 3]))
    apply(g, "fuse-norm", b.feeds)
    assert all_ops(g)[OpKind.LAYERNORM] == 4 and all_ops(g)[OpKind.CONCAT] == 1


def test_per_head_parameters_must_match_the_heads():
    from llmfab.ir.ops import TypeInferenceError
    b = G()
    x = b.input("x", (1, 4, 3, 8))
    with pytest.raises(TypeInferenceError, match=r"must be \[8\] \(or one row per head, \[H, 1\.\., 8\]\)"):
        b.op(OpKind.LAYERNORM, x, b.weight(3, 1, 8), b.weight(8), attrs=NormAttrs(1e-5))


# =============================================================================================
# fuse-linear


@pytest.mark.parametrize("bias_shape", [(24,), (1, 1, 24), None])
@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_linear(bias_shape, bias_first):
    b = G()
    x = b.input("x", (2, 3, 16))
    wv = b.rng.standard_normal((16, 24)).astype(np.float32)
    w = b.const(wv, name="W", weight=True)
    y = b.op(OpKind.MATMUL, x, w)
    bias_value = None
    if bias_shape is not None:
        bias_value = b.rng.standard_normal(bias_shape)
        bias = b.const(bias_value, name="B", weight=True)
        y = b.op(OpKind.ADD, *((bias, y) if bias_first else (y, bias)))
    g = b.out(b.op(OpKind.RELU, y))
    w_data = g.node(w).data
    apply(g, "fuse-linear", b.feeds)
    lin = only(g, OpKind.LINEAR)
    assert lin.inputs[0] == x and lin.attrs == LinearAttrs()
    wt = g.node(lin.inputs[1])
    assert wt.attrs.weight and wt.type == TensorType(F32, (24, 16))
    assert isinstance(wt.data, TransposedData) and wt.data.base is w_data  # a view, no copy
    np.testing.assert_array_equal(wt.data.numpy(), wv.T)
    if bias_shape is not None:
        assert len(lin.inputs) == 3
        bn = g.node(lin.inputs[2])
        assert bn.type == TensorType(F32, (24,)) and bn.attrs.weight
        np.testing.assert_array_equal(bn.data.numpy(), np.asarray(bias_value, np.float32).reshape(24))
    else:
        assert len(lin.inputs) == 2
    assert ops(g) == Counter({OpKind.INPUT: 1, OpKind.CONST: len(lin.inputs) - 1, OpKind.LINEAR: 1,
                              OpKind.RELU: 1})


def test_fuse_linear_of_transposed_weight():
    """A weight already stored as a transposed view [K,N] of an [N,K] tensor is used directly."""
    b = G()
    x = b.input("x", (3, 8))
    base = ArrayData(b.rng.standard_normal((12, 8)).astype(np.float32))
    b.g.add_const("W.T", TransposedData(base), weight=True)
    g = b.out(b.op(OpKind.MATMUL, x, "W.T"))
    apply(g, "fuse-linear", b.feeds)
    lin = only(g, OpKind.LINEAR)
    wn = g.node(lin.inputs[1])
    assert wn.name == "W" and wn.data is base


def test_fuse_linear_leaves_activation_matmuls():
    b = G()  # attention's q @ k^T multiplies two activations: not a Linear
    q, k = b.input("q", (2, 4, 8)), b.input("k", (2, 8, 4))
    g = b.out(b.op(OpKind.MATMUL, q, k))
    apply(g, "fuse-linear", b.feeds)
    assert OpKind.LINEAR not in all_ops(g) and all_ops(g)[OpKind.MATMUL] == 1


def test_bias_not_absorbed_when_linear_has_other_users():
    b = G()
    x = b.input("x", (3, 8))
    y = b.op(OpKind.MATMUL, x, b.weight(8, 4))
    s = b.op(OpKind.ADD, y, b.weight(4))
    g = b.out(b.op(OpKind.MUL, s, y))  # the un-biased product is needed too
    apply(g, "fuse-linear", b.feeds)
    lin = only(g, OpKind.LINEAR)
    assert len(lin.inputs) == 2 and ops(g)[OpKind.ADD] == 1


def test_fuse_embedding():
    b = G()
    ids = b.input("ids", (2, 5), dtype=DType.INT64, role=InputRole.TOKENS)
    table = b.weight(10, 16, name="embed.weight")
    g = b.out(b.op(OpKind.GATHER, table, ids, attrs=AxisAttrs(0)))
    apply(g, "fuse-linear,cleanup", b.feeds)
    e = only(g, OpKind.EMBEDDING)
    assert e.inputs == (table, ids) and e.type == TensorType(F32, (2, 5, 16))
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.CONST, OpKind.EMBEDDING}


def test_gather_of_activations_is_not_embedding():
    b = G()
    x, idx = b.input("x", (10, 4)), b.input("i", (3,), dtype=DType.INT64)
    g = b.out(b.op(OpKind.GATHER, x, idx, attrs=AxisAttrs(0)))
    apply(g, "fuse-linear", b.feeds)
    assert OpKind.EMBEDDING not in all_ops(g)


def test_fuse_linear_leaves_no_dead_nodes():
    b = G()
    x = b.input("x", (2, 8))
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.MATMUL, x, b.weight(8, 4)), b.weight(4)))
    apply(g, "fuse-linear", b.feeds)
    assert all_ops(g) == Counter({OpKind.INPUT: 1, OpKind.CONST: 2, OpKind.LINEAR: 1})


def test_fuse_linear_keeps_broadcast_rank():
    b = G()
    x = b.input("x", (3, 8))
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.MATMUL, x, b.weight(8, 4)), b.weight(1, 1, 4)))
    apply(g, "fuse-linear", b.feeds)  # fails: the output shape changed


# =============================================================================================
# fuse-rope


def rope_graph(mul_order: str = "x-first", add_order: str = "cos-first", S: int = 5, D: int = 8):
    b = G()
    x = b.op(OpKind.TRANSPOSE, b.input("x", (1, S, 2, D)), attrs=PermAttrs((0, 2, 1, 3)))
    inv = 1.0 / 10000 ** (np.arange(D // 2) / (D // 2))
    ang = np.arange(S)[:, None] * inv
    ang = np.concatenate([ang, ang], -1).reshape(1, 1, S, D)
    cos, sin = b.const(np.cos(ang), "rope.cos"), b.const(np.sin(ang), "rope.sin")
    lo = b.op(OpKind.SLICE, x, attrs=SliceAttrs((0,), (D // 2,), (3,), (1,)))
    hi = b.op(OpKind.SLICE, x, attrs=SliceAttrs((D // 2,), (D,), (3,), (1,)))
    rot = b.op(OpKind.CONCAT, b.op(OpKind.NEG, hi), lo, attrs=AxisAttrs(3))
    xc = b.op(OpKind.MUL, x, cos) if mul_order == "x-first" else b.op(OpKind.MUL, cos, x)
    rs = b.op(OpKind.MUL, rot, sin) if mul_order == "x-first" else b.op(OpKind.MUL, sin, rot)
    y = b.op(OpKind.ADD, xc, rs) if add_order == "cos-first" else b.op(OpKind.ADD, rs, xc)
    return b, x, b.out(y)


@pytest.mark.parametrize("mul_order", ["x-first", "table-first"])
@pytest.mark.parametrize("add_order", ["cos-first", "sin-first"])
def test_fuse_rope(mul_order, add_order):
    b, x, g = rope_graph(mul_order, add_order)
    apply(g, "fuse-rope", b.feeds)
    r = only(g, OpKind.ROPE)
    assert r.inputs == (x, "rope.cos", "rope.sin")
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.TRANSPOSE, OpKind.CONST, OpKind.ROPE}


def test_rope_needs_matching_halves():
    b = G()  # concat(-x[..., 4:], x[..., :3]) is not rotate_half: must stay
    x = b.input("x", (1, 2, 3, 8))
    cos, sin = b.const(np.ones((3, 7))), b.const(np.zeros((3, 7)))
    lo = b.op(OpKind.SLICE, x, attrs=SliceAttrs((0,), (3,), (3,), (1,)))
    hi = b.op(OpKind.SLICE, x, attrs=SliceAttrs((4,), (8,), (3,), (1,)))
    rot = b.op(OpKind.CONCAT, b.op(OpKind.NEG, hi), lo, attrs=AxisAttrs(3))
    x7 = b.op(OpKind.SLICE, x, attrs=SliceAttrs((1,), (8,), (3,), (1,)))
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.MUL, x7, cos), b.op(OpKind.MUL, rot, sin)))
    apply(g, "fuse-rope", b.feeds)
    assert OpKind.ROPE not in all_ops(g)


def test_rope_with_activation_tables_is_not_fused():
    b, x, g = rope_graph()
    # make sin a runtime value: fuse-rope only takes constant tables
    sin_in = b.input("sin_in", (1, 1, 5, 8))
    for n in g.nodes():
        if "rope.sin" in n.inputs:
            g.set_node(replace(n, inputs=tuple(sin_in if i == "rope.sin" else i for i in n.inputs)))
    apply(g, "fuse-rope", b.feeds)
    assert OpKind.ROPE not in all_ops(g)


# =============================================================================================
# fuse-attention


def causal_mask(S: int, T: int, fill=np.finfo(np.float32).min) -> np.ndarray:
    m = np.zeros((S, T), np.float32)
    for s in range(S):
        m[s, s + (T - S) + 1:] = fill
    return m.reshape(1, 1, S, T)


def attention_graph(B=1, H=4, Hkv=4, S=3, past=0, D=8, mask="causal", scale_form="mul",
                    repeat_kv=False):
    """softmax(q @ k^T * scale + mask) @ v, with k and v holding `past` extra positions."""
    b = G()
    T = S + past
    q = b.input("q", (B, H, S, D))
    k = b.input("k", (B, Hkv, T, D))
    v = b.input("v", (B, Hkv, T, D))
    if repeat_kv:  # HF repeat_kv: [B,Hkv,T,D] -> [B,Hkv,1,T,D] -> [B,Hkv,r,T,D] -> [B,H,T,D]
        r = H // Hkv

        def rep(t):
            u = b.op(OpKind.RESHAPE, t, attrs=ShapeAttrs((B, Hkv, 1, T, D)))
            e = b.op(OpKind.EXPAND, u, attrs=ShapeAttrs((B, Hkv, r, T, D)))
            return b.op(OpKind.RESHAPE, e, attrs=ShapeAttrs((B, H, T, D)))
        kk, vv = rep(k), rep(v)
    else:
        kk, vv = k, v
    qq = q
    if scale_form == "sqrt-both":
        root = np.float32(D ** -0.25)
        qq = b.op(OpKind.MUL, q, root)
        kk = b.op(OpKind.MUL, kk, root)
    s = b.op(OpKind.MATMUL, qq, b.op(OpKind.TRANSPOSE, kk, attrs=PermAttrs((0, 1, 3, 2))))
    if scale_form == "mul":
        s = b.op(OpKind.MUL, s, np.float32(1 / math.sqrt(D)))
    elif scale_form == "div":
        s = b.op(OpKind.DIV, s, np.float32(math.sqrt(D)))
    if mask == "causal":
        s = b.op(OpKind.ADD, s, b.const(causal_mask(S, T), "mask"))
    elif mask == "causal-first":
        s = b.op(OpKind.ADD, b.const(causal_mask(S, T, -np.inf), "mask"), s)
    elif mask == "where":
        cond = b.const(causal_mask(S, T) == 0, "cond")
        s = b.op(OpKind.WHERE, cond, s, np.float32(-np.inf))
    elif mask == "padding":  # keys 0..past-1 padded out in batch 0, and only there
        pad = np.zeros((B, 1, 1, T), np.float32)
        pad[0, ..., :1] = -np.inf
        s = b.op(OpKind.ADD, s, b.const(pad, "mask"))
    elif mask == "zeros":
        s = b.op(OpKind.ADD, s, b.const(np.zeros((1, 1, S, T)), "mask"))
    p = b.op(OpKind.SOFTMAX, s, attrs=AxisAttrs(3))
    return b, (q, k, v), b.out(b.op(OpKind.MATMUL, p, vv))


PRIMITIVES = {OpKind.SOFTMAX, OpKind.MATMUL, OpKind.TRANSPOSE, OpKind.MUL, OpKind.DIV, OpKind.ADD,
              OpKind.WHERE, OpKind.EXPAND, OpKind.RESHAPE}


def check_attention(g, qkv, H, Hkv, causal, D=8, extra=()):
    a = only(g, OpKind.ATTENTION)
    assert a.inputs[:3] == qkv
    assert a.attrs == AttentionAttrs(num_heads=H, num_kv_heads=Hkv, scale=a.attrs.scale, causal=causal)
    assert a.attrs.scale == pytest.approx(D ** -0.5, rel=1e-6)
    assert not PRIMITIVES & set(ops(g))
    assert set(all_ops(g)) == {OpKind.INPUT, OpKind.ATTENTION, *extra}
    return a


@pytest.mark.parametrize("scale_form", ["mul", "div", "sqrt-both"])
@pytest.mark.parametrize("mask", ["causal", "causal-first", "where"])
@pytest.mark.parametrize("S, past", [(3, 0), (2, 3), (1, 4)])
def test_fuse_causal_attention(scale_form, mask, S, past):
    b, qkv, g = attention_graph(S=S, past=past, mask=mask, scale_form=scale_form)
    apply(g, "fuse-attention", b.feeds)
    a = check_attention(g, qkv, 4, 4, causal=True)
    assert len(a.inputs) == 3
    if scale_form == "sqrt-both":  # two float32 fourth roots multiply back to 1/sqrt(D)
        assert a.attrs.scale == 8 ** -0.5


def test_fuse_attention_without_mask():
    b, qkv, g = attention_graph(S=3, past=2, mask="none")
    apply(g, "fuse-attention", b.feeds)
    check_attention(g, qkv, 4, 4, causal=False)


def test_fuse_attention_drops_all_zero_mask():
    b, qkv, g = attention_graph(S=3, mask="zeros")
    apply(g, "fuse-attention", b.feeds)
    a = check_attention(g, qkv, 4, 4, causal=False)
    assert len(a.inputs) == 3


def test_fuse_attention_keeps_general_mask():
    b, qkv, g = attention_graph(B=2, S=3, past=1, mask="padding")
    apply(g, "fuse-attention", b.feeds)
    a = check_attention(g, qkv, 4, 4, causal=False, extra={OpKind.CONST})
    assert len(a.inputs) == 4
    m = g.node(a.inputs[3])
    assert m.op is OpKind.CONST and not m.attrs.weight
    expect = np.zeros((2, 1, 1, 4), np.float32)
    expect[0, ..., 0] = -np.inf
    np.testing.assert_array_equal(m.data.numpy(), expect)


@pytest.mark.parametrize("H, Hkv", [(8, 2), (4, 1), (6, 3)])
def test_fuse_attention_strips_repeat_kv(H, Hkv):
    b, qkv, g = attention_graph(H=H, Hkv=Hkv, S=3, past=2, repeat_kv=True)
    apply(g, "fuse-attention", b.feeds)
    a = check_attention(g, qkv, H, Hkv, causal=True)
    assert g.node(a.inputs[1]).type.shape[1] == Hkv


def test_fuse_attention_gqa_with_sqrt_scales():
    b, qkv, g = attention_graph(H=8, Hkv=2, S=2, past=2, repeat_kv=True, scale_form="sqrt-both", mask="where")
    apply(g, "fuse-attention", b.feeds)
    check_attention(g, qkv, 8, 2, causal=True)


def test_attention_with_runtime_mask_is_not_fused():
    b, qkv, g = attention_graph(S=3, mask="none")
    sm = next(n for n in g.nodes() if n.op is OpKind.SOFTMAX)
    m = b.input("m", (1, 1, 3, 3))
    s = b.op(OpKind.ADD, sm.inputs[0], m)
    g.set_node(replace(sm, inputs=(s,)))
    apply(g, "fuse-attention", b.feeds)
    assert OpKind.ATTENTION not in all_ops(g) and OpKind.SOFTMAX in all_ops(g)


def test_attention_probs_used_elsewhere_stay_computed():
    b, qkv, g = attention_graph(S=3)
    sm = next(n for n in g.nodes() if n.op is OpKind.SOFTMAX)
    g.add_output("probs", sm.name)  # output_attentions=True
    apply(g, "fuse-attention", b.feeds)  # both outputs still equal
    assert dict(g.outputs)["probs"] == sm.name and g.node(sm.name).op is OpKind.SOFTMAX


# =============================================================================================
# cleanup


def test_reshape_of_reshape_collapses():
    b = G()
    x = b.input("x", (2, 3, 4))
    r = b.op(OpKind.RESHAPE, b.op(OpKind.RESHAPE, x, attrs=ShapeAttrs((6, 4))), attrs=ShapeAttrs((4, 6)))
    g = b.out(b.op(OpKind.RELU, r))
    apply(g, "cleanup", b.feeds)
    rs = only(g, OpKind.RESHAPE)
    assert rs.inputs == (x,) and rs.attrs.shape == (4, 6)
    assert len(g) == 3


def test_reshape_round_trip_vanishes():
    b = G()
    x = b.input("x", (2, 3, 4))
    r = b.op(OpKind.RESHAPE, b.op(OpKind.RESHAPE, x, attrs=ShapeAttrs((24,))), attrs=ShapeAttrs((2, 3, 4)))
    g = b.out(b.op(OpKind.RELU, r))
    apply(g, "cleanup", b.feeds)
    assert [(n.op, n.inputs) for n in g.nodes()] == [(OpKind.INPUT, ()), (OpKind.RELU, (x,))]


def test_identity_reshape_of_output_vanishes():
    b = G()
    x = b.input("x", (2, 3))
    r = b.op(OpKind.RELU, x)
    g = b.out(b.op(OpKind.RESHAPE, r, attrs=ShapeAttrs((2, 3))))
    apply(g, "cleanup", b.feeds)
    assert g.outputs == [("y", r)] and len(g) == 2


@pytest.mark.parametrize("p1, p2, composed", [
    ((0, 2, 1), (0, 2, 1), None),
    ((1, 2, 0), (2, 0, 1), None),
    ((1, 2, 0), (1, 2, 0), (2, 0, 1)),
    ((0, 2, 1, 3), (0, 1, 3, 2), (0, 2, 3, 1)),
])
def test_transpose_of_transpose(p1, p2, composed):
    b = G()
    x = b.input("x", (2, 3, 4, 5)[:len(p1)])
    t = b.op(OpKind.TRANSPOSE, b.op(OpKind.TRANSPOSE, x, attrs=PermAttrs(p1)), attrs=PermAttrs(p2))
    g = b.out(b.op(OpKind.EXP, t))
    apply(g, "cleanup", b.feeds)
    if composed is None:
        assert OpKind.TRANSPOSE not in all_ops(g) and only(g, OpKind.EXP).inputs == (x,)
    else:
        t = only(g, OpKind.TRANSPOSE)
        assert t.inputs == (x,) and t.attrs.perm == composed
        assert all_ops(g)[OpKind.TRANSPOSE] == 1


def test_reshape_linear_reshape_sandwich():
    b = G()
    x = b.input("x", (2, 3, 16))
    flat = b.op(OpKind.RESHAPE, x, attrs=ShapeAttrs((6, 16)))
    lin = b.op(OpKind.LINEAR, flat, b.weight(24, 16), b.weight(24), attrs=LinearAttrs(LinearRole.UP, 1))
    g = b.out(b.op(OpKind.RESHAPE, lin, attrs=ShapeAttrs((2, 3, 24))))
    apply(g, "cleanup", b.feeds)
    n = only(g, OpKind.LINEAR)
    assert n.inputs[0] == x and n.type.shape == (2, 3, 24) and n.attrs == LinearAttrs(LinearRole.UP, 1)
    assert OpKind.RESHAPE not in all_ops(g)


def test_opt_style_flattening_is_sunk_away():
    """OPT runs its MLP on [B*S, D]: layer_norm, fc1, relu, fc2 and the residual add all see the
    flattened rows, and the result is reshaped back. Clean-up moves the reshapes down until they
    meet and vanish."""
    b = G()
    x = b.input("x", (2, 3, 16))
    flat = b.op(OpKind.RESHAPE, x, attrs=ShapeAttrs((6, 16)))
    ln = b.op(OpKind.LAYERNORM, flat, b.weight(16), b.weight(16), attrs=NormAttrs(1e-5))
    h = b.op(OpKind.LINEAR, ln, b.weight(32, 16), b.weight(32), attrs=LinearAttrs())
    h = b.op(OpKind.RELU, h)
    h = b.op(OpKind.LINEAR, h, b.weight(16, 32), b.weight(16), attrs=LinearAttrs())
    h = b.op(OpKind.ADD, flat, h)
    g = b.out(b.op(OpKind.RESHAPE, h, attrs=ShapeAttrs((2, 3, 16))))
    apply(g, "cleanup", b.feeds)
    assert OpKind.RESHAPE not in all_ops(g)
    assert ops(g) == Counter({OpKind.INPUT: 1, OpKind.CONST: 6, OpKind.LAYERNORM: 1, OpKind.LINEAR: 2,
                              OpKind.RELU: 1, OpKind.ADD: 1})
    assert all(n.type.shape[:2] == (2, 3) for n in g.nodes() if n.op not in (OpKind.CONST,))
    add = only(g, OpKind.ADD)
    assert add.inputs[0] == x and g.outputs == [("y", add.name)]


def test_batched_transpose_reshape():
    b = G()  # reshape(transpose(reshape(x, [B*H, S, D])), [B, H, D, S]) == transpose(x)
    x = b.input("x", (2, 3, 4, 5))
    r = b.op(OpKind.RESHAPE, x, attrs=ShapeAttrs((6, 4, 5)))
    t = b.op(OpKind.TRANSPOSE, r, attrs=PermAttrs((0, 2, 1)))
    g = b.out(b.op(OpKind.RESHAPE, t, attrs=ShapeAttrs((2, 3, 5, 4))))
    apply(g, "cleanup", b.feeds)
    t = only(g, OpKind.TRANSPOSE)
    assert t.inputs == (x,) and t.attrs.perm == (0, 1, 3, 2)
    assert OpKind.RESHAPE not in all_ops(g)


def test_scalar_scale_sinks_through_layout_ops():
    b = G()
    x = b.input("x", (2, 3, 8))
    s = b.op(OpKind.MUL, x, np.float32(0.25))
    r = b.op(OpKind.RESHAPE, s, attrs=ShapeAttrs((2, 3, 2, 4)))
    g = b.out(b.op(OpKind.TRANSPOSE, r, attrs=PermAttrs((0, 2, 1, 3))))
    apply(g, "cleanup", b.feeds)
    out = g.node(g.outputs[0][1])
    assert out.op is OpKind.MUL  # the scale is now last, next to where attention looks for it
    assert g.const_value(out.inputs[1]) == np.float32(0.25)


def test_scale_sinking_keeps_rank():
    b = G()
    x = b.input("x", (1, 2, 3, 4))
    s = b.op(OpKind.MUL, x, np.full((1, 1, 1, 1), 0.5, np.float32))
    g = b.out(b.op(OpKind.RESHAPE, s, attrs=ShapeAttrs((1, 6, 4))))
    apply(g, "cleanup", b.feeds)  # fails: the output shape changed


# =============================================================================================
# annotate


TINY = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=128),
    "qwen2": dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=128),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128,
                 vocab_size=128, activation_function="gelu_new"),
    "opt": dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, max_position_embeddings=128, vocab_size=128, do_layer_norm_before=True),
}
ANNOTATED = {OpKind.LINEAR, OpKind.LMHEAD, OpKind.RMSNORM, OpKind.LAYERNORM, OpKind.ATTENTION}


def forget_annotations(g: Graph) -> dict[str, tuple[OpKind, object]]:
    """Reset every role to UNKNOWN, every layer to None and the LM head to a plain Linear;
    returns what the config importer had set."""
    truth = {n.name: (n.op, n.attrs, n.inputs) for n in g.nodes() if n.op in ANNOTATED}
    for n in g.nodes():
        if n.op in (OpKind.LINEAR, OpKind.LMHEAD):
            g.set_node(Node(n.name, OpKind.LINEAR, n.inputs, LinearAttrs(), n.type))
        elif n.op in ANNOTATED:
            g.set_node(replace(n, attrs=replace(n.attrs, layer=None)))
    assert not any(n.attrs.role is not LinearRole.UNKNOWN for n in g.nodes() if n.op is OpKind.LINEAR)
    return truth


def test_annotate_tiny_llama_roles_and_layers():
    g = load_config(TINY["llama"], seq_len=4)
    forget_annotations(g)
    assert OpKind.LMHEAD not in all_ops(g)
    run_pipeline(g, parse_pipeline("annotate", PASSES))
    expect = {"attn.q": LinearRole.Q, "attn.k": LinearRole.K, "attn.v": LinearRole.V, "attn.o": LinearRole.O,
              "mlp.gate": LinearRole.GATE, "mlp.up": LinearRole.UP, "mlp.down": LinearRole.DOWN}
    for i in range(2):
        for suffix, role in expect.items():
            assert g.node(f"layers.{i}.{suffix}").attrs == LinearAttrs(role, i), (i, suffix)
        assert g.node(f"layers.{i}.attn.core").attrs.layer == i
        assert g.node(f"layers.{i}.input_norm").attrs.layer == i
        assert g.node(f"layers.{i}.post_norm").attrs.layer == i
    assert g.node("final_norm").attrs.layer is None
    head = g.node(g.outputs[0][1])
    assert g.outputs[0][0] == "logits"
    assert head.op is OpKind.LMHEAD and head.attrs == LinearAttrs(LinearRole.LM_HEAD)
    assert head.inputs == ("final_norm", "lm_head.weight")
    assert Counter(n.attrs.role for n in g.nodes() if n.op is OpKind.LINEAR) == \
        Counter({r: 2 for r in expect.values()})
    assert g.meta["num_layers"] == 2
    verify(g, fused=True)


@pytest.mark.parametrize("family", sorted(TINY))
def test_annotate_recovers_config_annotations(family):
    g = load_config(TINY[family], seq_len=4)
    truth = forget_annotations(g)
    run_pipeline(g, parse_pipeline("annotate", PASSES))
    head = g.node(g.outputs[0][1])
    for name, (op, attrs, inputs) in truth.items():
        n = head if op is OpKind.LMHEAD else g.node(name)  # the head is re-created under a new name
        assert (n.op, n.attrs, n.inputs) == (op, attrs, inputs), name
    roles = Counter(n.attrs.role for n in g.nodes() if n.op is OpKind.LINEAR)
    assert LinearRole.UNKNOWN not in roles and sum(roles.values()) == sum(
        1 for op, _, _ in truth.values() if op is OpKind.LINEAR)


# =============================================================================================
# the whole fusion pipeline on a hand-built primitive decoder


def primitive_llama(S=3, D=16, H=4, Hkv=2, F=32, V=20, eps=1e-6):
    """One LLaMA decoder layer plus embedding and head, as an ONNX export spells it."""
    b = G("prim", seed=3)
    hd = D // H
    ids = b.input("input_ids", (1, S), dtype=DType.INT64, role=InputRole.TOKENS)
    b.feeds[ids] = np.array([[1, 7, 19]])
    x = b.op(OpKind.GATHER, b.weight(V, D, name="embed"), ids, attrs=AxisAttrs(0))

    def rms(t, w):
        var = b.op(OpKind.REDUCE_MEAN, b.op(OpKind.POW, t, np.float32(2)), attrs=ReduceAttrs((2,), True))
        r = b.op(OpKind.RECIPROCAL, b.op(OpKind.SQRT, b.op(OpKind.ADD, var, np.float32(eps))))
        return b.op(OpKind.MUL, b.weight(D, name=w) if isinstance(w, str) else w, b.op(OpKind.MUL, t, r))

    def heads(t, n):
        return b.op(OpKind.TRANSPOSE, b.op(OpKind.RESHAPE, t, attrs=ShapeAttrs((1, S, n, hd))),
                    attrs=PermAttrs((0, 2, 1, 3)))

    inv = 1.0 / 10000 ** (np.arange(hd // 2) / (hd // 2))
    ang = np.arange(S)[:, None] * inv
    ang = np.concatenate([ang, ang], -1).reshape(1, 1, S, hd)
    cos, sin = b.const(np.cos(ang), "cos"), b.const(np.sin(ang), "sin")

    def rope(t):
        lo = b.op(OpKind.SLICE, t, attrs=SliceAttrs((0,), (hd // 2,), (3,), (1,)))
        hi = b.op(OpKind.SLICE, t, attrs=SliceAttrs((hd // 2,), (hd,), (3,), (1,)))
        rot = b.op(OpKind.CONCAT, b.op(OpKind.NEG, hi), lo, attrs=AxisAttrs(3))
        return b.op(OpKind.ADD, b.op(OpKind.MUL, t, cos), b.op(OpKind.MUL, rot, sin))

    def rep(t):
        u = b.op(OpKind.RESHAPE, t, attrs=ShapeAttrs((1, Hkv, 1, S, hd)))
        e = b.op(OpKind.EXPAND, u, attrs=ShapeAttrs((1, Hkv, H // Hkv, S, hd)))
        return b.op(OpKind.RESHAPE, e, attrs=ShapeAttrs((1, H, S, hd)))

    h = rms(x, "ln1")
    q = rope(heads(b.op(OpKind.MATMUL, h, b.weight(D, H * hd)), H))
    k = rep(rope(heads(b.op(OpKind.MATMUL, h, b.weight(D, Hkv * hd)), Hkv)))
    v = rep(heads(b.op(OpKind.MATMUL, h, b.weight(D, Hkv * hd)), Hkv))
    s = b.op(OpKind.MATMUL, q, b.op(OpKind.TRANSPOSE, k, attrs=PermAttrs((0, 1, 3, 2))))
    s = b.op(OpKind.ADD, b.op(OpKind.DIV, s, np.float32(math.sqrt(hd))), b.const(causal_mask(S, S), "mask"))
    o = b.op(OpKind.MATMUL, b.op(OpKind.SOFTMAX, s, attrs=AxisAttrs(3)), v)
    o = b.op(OpKind.RESHAPE, b.op(OpKind.TRANSPOSE, o, attrs=PermAttrs((0, 2, 1, 3))), attrs=ShapeAttrs((1, S, D)))
    x = b.op(OpKind.ADD, x, b.op(OpKind.MATMUL, o, b.weight(H * hd, D)))
    h = rms(x, "ln2")
    gate = b.op(OpKind.MATMUL, h, b.weight(D, F))
    up = b.op(OpKind.MATMUL, h, b.weight(D, F))
    act = b.op(OpKind.MUL, gate, b.op(OpKind.SIGMOID, gate))
    x = b.op(OpKind.ADD, x, b.op(OpKind.MATMUL, b.op(OpKind.MUL, act, up), b.weight(F, D)))
    logits = b.op(OpKind.MATMUL, rms(x, "ln_f"), b.weight(D, V))
    return b, b.out(logits, "logits")


def test_fusion_pipeline_on_primitive_llama():
    b, g = primitive_llama()
    apply(g, FUSION_PIPELINE, b.feeds, rtol=1e-5, atol=1e-6)
    verify(g, fused=True)
    counts = Counter(n.op for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT))
    assert counts == Counter({OpKind.EMBEDDING: 1, OpKind.RMSNORM: 3, OpKind.LINEAR: 7, OpKind.ROPE: 2,
                              OpKind.ATTENTION: 1, OpKind.ADD: 2, OpKind.SILU: 1, OpKind.MUL: 1,
                              OpKind.LMHEAD: 1, OpKind.RESHAPE: 4, OpKind.TRANSPOSE: 4})
    a = only(g, OpKind.ATTENTION)
    assert a.attrs == AttentionAttrs(num_heads=4, num_kv_heads=2, scale=0.5, causal=True, layer=0)
    roles = sorted(n.attrs.role.value for n in g.nodes() if n.op is OpKind.LINEAR)
    assert roles == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert {n.attrs.layer for n in g.nodes() if n.op is OpKind.LINEAR} == {0}
    norms = sorted((n.attrs.layer is None, n.attrs.layer) for n in g.nodes() if n.op is OpKind.RMSNORM)
    assert norms == [(False, 0), (False, 0), (True, None)]
    assert all(n.attrs.eps == float(np.float32(1e-6)) for n in g.nodes() if n.op is OpKind.RMSNORM)
    head = g.node(g.outputs[0][1])
    assert head.op is OpKind.LMHEAD and head.attrs.role is LinearRole.LM_HEAD


# =============================================================================================
# fold-scales (Gemma's embedding scale, Gemma2's logit soft-cap)


@pytest.mark.parametrize("inverse", [False, True])
def test_fold_scales_softcap_into_the_linear(inverse):
    """tanh(Linear(x) / 30) * 30 (or * (1/30) inside) -> Softcap{30}(Linear with weight and bias / 30)."""
    b = G()
    y = b.op(OpKind.LINEAR, b.input("x", (2, 5, 16)), b.weight(24, 16, scale=8.0), b.weight(24, scale=8.0),
             attrs=LinearAttrs())
    inner = b.op(OpKind.MUL, y, np.float32(1 / 30)) if inverse else b.op(OpKind.DIV, y, np.float32(30.0))
    g = b.out(b.op(OpKind.MUL, np.float32(30.0), b.op(OpKind.TANH, inner)))
    apply(g, "fold-scales", b.feeds, rtol=1e-5, atol=1e-4)
    cap = only(g, OpKind.SOFTCAP)
    assert cap.attrs.cap == pytest.approx(30.0) and g.node(cap.inputs[0]).op is OpKind.LINEAR
    assert ops(g)[OpKind.TANH] == ops(g)[OpKind.DIV] == ops(g)[OpKind.MUL] == 0


def test_fold_scales_leaves_what_it_cannot_fold():
    """A Linear whose output is also read elsewhere keeps its weights (the soft-cap stays
    primitive); an embedding read twice keeps its table; a mismatched cap is no soft-cap."""
    b = G()
    x = b.input("x", (2, 5, 16))
    y = b.op(OpKind.LINEAR, x, b.weight(24, 16), attrs=LinearAttrs())
    capped = b.op(OpKind.MUL, b.op(OpKind.TANH, b.op(OpKind.DIV, y, np.float32(30.0))), np.float32(30.0))
    z = b.op(OpKind.LINEAR, x, b.weight(24, 16), attrs=LinearAttrs())
    odd = b.op(OpKind.MUL, b.op(OpKind.TANH, b.op(OpKind.DIV, z, np.float32(30.0))), np.float32(20.0))
    ids = b.input("ids", (2, 5), DType.INT64)
    e = b.op(OpKind.EMBEDDING, b.weight(10, 24), ids)
    scaled = b.op(OpKind.MUL, e, np.float32(4.0))
    g = b.out(b.op(OpKind.ADD, b.op(OpKind.ADD, b.op(OpKind.ADD, capped, y), odd), b.op(OpKind.ADD, scaled, e)))
    before = Counter(n.op for n in g.nodes())
    apply(g, "fold-scales", b.feeds)
    assert Counter(n.op for n in g.nodes()) == before
