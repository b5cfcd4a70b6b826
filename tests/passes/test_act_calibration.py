"""The activation side of a policy (passes/act_calibration.py): SmoothQuant-style smoothing folded
into the norms (compiles and executes bit-exact like any policy) and static per-tensor activation
scales (a what-if of the integer model that compile refuses)."""
import json
import math
import re

import numpy as np
import pytest

from conftest import FIXTURES, TINY
from llmfab.cli import main
from llmfab.compile import CompileError, compile_model
from llmfab.flow import load_model
from llmfab.ir import OpKind, run
from llmfab.ir.fixed_point import quantize_rows, quantize_rows_static
from llmfab.ir.integer import int_linear, run_integer
from llmfab.ir.quant import QuantScheme
from llmfab.passes.act_calibration import calibrate, migrate, smoothable
from llmfab.passes.policy import parse_policy
from llmfab.passes.quant_report import quantize_model
from llmfab.passes.quantize import feeds_for, layer_inputs, token_streams, weight_sites
from llmfab.passes.quant_methods import rtn

TRAINED = FIXTURES / "trained_llama.onnx"
TRAINED_EVAL = FIXTURES / "trained_llama_eval.npy"
CAL = {"samples": 2, "seq_len": 16, "seed": 0}


def _policy(**extra):
    return parse_policy({"name": "p", "default": {"bits": 8, "group": 128}, "calibration": CAL, **extra}, "p.yaml")


def test_static_rows_clamp_to_the_given_scale_and_equal_dynamic_at_the_row_max():
    rng = np.random.default_rng(0)
    x = rng.integers(-(1 << 20), 1 << 20, (3, 40))
    x[1] *= 4                                       # one row past the static range
    a = int(np.abs(x[0]).max())
    codes, amax = quantize_rows_static(x, a)
    assert amax.tolist() == [a] * 3
    assert np.array_equal(codes[0], quantize_rows(x[:1])[0][0])  # the row whose max it is: as dynamic
    assert np.abs(codes).max() == 127 and np.sum(np.abs(codes[1]) == 127) > 5   # row 1 saturates
    assert not np.array_equal(codes[2], quantize_rows(x[2:])[0][0])             # a smaller row: coarser codes
    big = np.full((1, 4), (1 << 31) - 1)            # int32 extremes against a tiny scale: no int64 overflow
    assert quantize_rows_static(big, 1)[0].tolist() == [[127] * 4]
    assert quantize_rows_static(big, 0)[0].tolist() == [[0] * 4]


def test_int_linear_static_scale_is_the_dynamic_one_when_every_row_has_that_max():
    rng = np.random.default_rng(1)
    w = rtn(rng.standard_normal((8, 32)), QuantScheme(8, 32))
    x = rng.integers(-(1 << 18), 1 << 18, (4, 32))
    x[:, 3] = 1 << 18                               # every row's max |x|
    assert np.array_equal(int_linear(x, w, act_amax=1 << 18), int_linear(x, w))
    assert not np.array_equal(int_linear(x, w, act_amax=1 << 20), int_linear(x, w))


def test_smoothing_keeps_the_float_model_and_balances_each_channel():
    """alpha = 0.5 leaves max|X_j| = max|W_:,j| on every smoothed channel (both sqrt of their
    product), and the float logits unchanged."""
    g = load_model(str(TRAINED), seq_len=16)
    groups = smoothable(g)
    assert {n for n, _ in groups} >= {f"layers.{i}.{k}" for i in range(4) for k in ("attn_norm", "mlp_norm")}
    p = _policy(smoothing={})
    s = g.copy()
    inputs = calibrate(s, p)
    ids = token_streams(g, 1, 7)[0]
    before, after = run(g, feeds_for(g, ids))["logits"], run(s, feeds_for(s, ids))["logits"]
    assert np.allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    spread_before = spread_after = 0.0
    orig = layer_inputs(g, weight_sites(g), token_streams(g, CAL["samples"], CAL["seed"]))
    for norm, linears in groups:
        x_max = np.abs(inputs[linears[0]]).max(0)
        w_max = np.max([np.abs(s.node(s.node(u).inputs[1]).data.numpy()).max(0) for u in linears], axis=0)
        assert np.allclose(x_max, w_max, rtol=1e-3), norm
        x0 = np.abs(orig[linears[0]]).max(0)
        spread_before, spread_after = max(spread_before, x0.max() / x0.min()), max(spread_after, x_max.max() / x_max.min())
    assert spread_after < spread_before             # channel outliers of the norm outputs shrink


@pytest.mark.parametrize("model, fed", [
    ("gpt2_ts_op14", {"qkv_proj", "fc1"}),                   # tied head: final_norm left alone
    ("falcon_dynamo_op18", {"qkv_proj+fc1"}),                 # one norm, attention and MLP in parallel
    ("phi_dynamo_op18", {"q_proj+k_proj+v_proj+fc1", "lm_head"})])
def test_smoothing_layer_norms_and_shared_norms_keeps_the_float_model(model, fed):
    """LayerNorm (its bias divided too) and one norm feeding attention and MLP in parallel (one scale
    per channel over every linear it feeds): the float logits stay, the weights move."""
    g = load_model(str(FIXTURES / f"{model}.onnx"), seq_len=8)
    groups = smoothable(g)
    assert {"+".join(g.node(u).attrs.role.value for u in ls) for _, ls in groups} == fed
    assert all(g.node(n).op is OpKind.LAYERNORM for n, _ in groups)
    s = g.copy()
    calibrate(s, parse_policy({"smoothing": {"alpha": 0.5}, "calibration": {"samples": 2, "seq_len": 8}}, "p"))
    for c in g.node(groups[0][0]).inputs[1:]:          # weight and bias
        assert not np.allclose(s.node(c).data.numpy(), g.node(c).data.numpy())
    ids = token_streams(g, 1, 5)[0]
    before, after = run(g, feeds_for(g, ids))["logits"], run(s, feeds_for(s, ids))["logits"]
    assert np.allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_pass_form_smooths_like_the_quantize_flow(tmp_path):
    from llmfab.passes.quantize import Quantize
    pol = tmp_path / "s.yaml"
    pol.write_text("default: {bits: 8, group: 128}\nsmoothing: {alpha: 0.7}\ncalibration: {samples: 2, seq_len: 16}\n")
    g = load_model(str(TRAINED), seq_len=16)
    q, _ = quantize_model(g, parse_policy({"default": {"bits": 8, "group": 128}, "smoothing": {"alpha": 0.7},
                                           "calibration": {"samples": 2, "seq_len": 16}}, str(pol)))
    Quantize(str(pol)).apply(g)
    ids = token_streams(g, 1, 9)[0]
    assert np.array_equal(run_integer(g, feeds_for(g, ids))["logits"], run_integer(q, feeds_for(q, ids))["logits"])


def test_smoothing_undoes_a_planted_outlier_channel():
    """A channel of a norm output made 30x larger (weights 30x smaller: the same float model) is an
    activation outlier; smoothing's scales are equivariant to it, so it smooths to the same model."""
    g = load_model(str(TRAINED), seq_len=16)
    h = g.copy()
    for norm, linears in smoothable(h):
        s = np.ones(h.node(norm).type.shape[-1])
        s[5] = 1 / 30
        migrate(h, norm, linears, s)
    p = _policy(smoothing={})
    hx = layer_inputs(h, weight_sites(h), token_streams(h, CAL["samples"], CAL["seed"]))
    norm, linears = smoothable(h)[0]
    x = np.abs(hx[linears[0]]).max(0)
    assert x[5] > 10 * np.median(x)                  # planted: an outlier channel
    gs, hs = g.copy(), h.copy()
    calibrate(gs, p)
    calibrate(hs, p)
    for norm, linears in smoothable(g):
        for c in list(g.node(norm).inputs[1:]) + [g.node(u).inputs[1] for u in linears]:
            assert np.allclose(hs.node(c).data.numpy(), gs.node(c).data.numpy(), rtol=1e-4, atol=1e-6), c


def test_static_policy_sets_a_scale_on_every_linear_and_changes_the_integer_model():
    g = load_model(str(TINY), seq_len=16)
    q_tok, r_tok = quantize_model(g, _policy())
    q_st, r_st = quantize_model(g, _policy(activations="static-per-tensor"))
    lin = [n for n in q_st.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD)]
    assert lin and all(isinstance(n.attrs.act_amax, int) and n.attrs.act_amax > 0 for n in lin)
    assert all(n.attrs.act_amax is None for n in q_tok.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD))
    ids = token_streams(g, 1, 3)[0]
    assert not np.array_equal(run_integer(q_st, feeds_for(q_st, ids))["logits"],
                              run_integer(q_tok, feeds_for(q_tok, ids))["logits"])
    assert (r_st.activations, r_tok.activations) == ("static-per-tensor", "per-token")
    assert 0.9 < r_st.logit_cosine <= 1.0


def test_compile_refuses_static_activations_naming_the_field(tmp_path, capsys):
    pol = tmp_path / "static.yaml"
    pol.write_text("default: {bits: 8, group: 128}\nactivations: static-per-tensor\n")
    with pytest.raises(CompileError, match=rf"^{re.escape(str(pol))}: activations: static-per-tensor is a what-if "
                                           r"of the integer model \(`llmfab quantize`\) that the accelerator cannot "
                                           r"run: .* compile needs activations: per-token$"):
        compile_model(str(TINY), "sim-small", policy=str(pol), max_len=8)
    assert main(["quantize", str(TINY), "--policy", str(pol)]) == 0      # the what-if itself runs
    out = capsys.readouterr().out
    assert "activations  int8, one static scale per tensor (a what-if: compile refuses it)" in out


def test_smoothed_policy_compiles_bit_exact_and_execute_eval_equals_quantize_eval(tmp_path, capsys):
    """Smoothing changes norm and linear weights only: compile's self-check holds the programs
    bit-exact with the integer model, and `execute --eval` gives quantize's perplexity exactly."""
    pol = tmp_path / "smooth.yaml"
    pol.write_text("default: {bits: 4, group: 32, method: rtn}\nsmoothing: {alpha: 0.6}\n"
                   "calibration: {samples: 2, seq_len: 16}\n")
    np.save(tmp_path / "e.npy", np.load(TRAINED_EVAL, allow_pickle=False)[:2, :12])
    assert main(["quantize", str(TRAINED), "--policy", str(pol), "--eval", str(tmp_path / "e.npy")]) == 0
    out = capsys.readouterr().out
    assert "activations  int8, one scale per token row; smoothed, alpha 0.6" in out
    ppl = float(re.search(r"perplexity   (\S+)", out).group(1))
    q = main(["quantize", str(TRAINED), "--policy", str(pol), "--eval", str(tmp_path / "e.npy"), "--json"])
    assert q == 0
    qp = json.loads(capsys.readouterr().out)["perplexity"]
    assert math.isclose(qp, ppl, rel_tol=1e-4)
    plain = tmp_path / "plain.yaml"
    plain.write_text(pol.read_text().replace("smoothing: {alpha: 0.6}\n", ""))
    assert main(["quantize", str(TRAINED), "--policy", str(plain), "--eval", str(tmp_path / "e.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] != qp    # smoothing changed the integer model
    assert main(["compile", str(TRAINED), "--target", "sim-small", "--policy", str(pol), "--max-len", "12",
                 "-o", str(tmp_path / "B")]) == 0
    assert "checked      bit-exact with the integer model" in capsys.readouterr().out
    assert main(["execute", str(tmp_path / "B"), "--eval", str(tmp_path / "e.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] == qp


def test_smoothed_shared_norm_compiles_bit_exact(tmp_path):
    """Falcon's one norm feeding attention and MLP, smoothed over both: compile's self-check runs
    the programs against the integer model (a miscompile would raise) on the prompts it lists."""
    pol = tmp_path / "smooth.yaml"
    pol.write_text("default: {bits: 4, group: 32, method: gptq}\nsmoothing: {}\ncalibration: {samples: 2, seq_len: 8}\n")
    c = compile_model(str(FIXTURES / "falcon_dynamo_op18.onnx"), "sim-small", policy=str(pol), max_len=8)
    assert c.checked
    norm = next(n for n in c.graph.nodes() if n.op is OpKind.LAYERNORM)
    plain = load_model(str(FIXTURES / "falcon_dynamo_op18.onnx"), seq_len=8)
    assert not np.array_equal(c.graph.node(norm.inputs[1]).data.numpy(), plain.node(norm.inputs[1]).data.numpy())
