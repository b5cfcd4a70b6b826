"""compile runs what it wrote against the integer model (llmfab/compile_check.py): a miscompile is
an error naming the first value that differs, and no BUILD; a property test over random decoders
of the supported block layouts holds compile + execute equal to the integer model."""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_decoder import BLOCKS, Spec, build

from conftest import FIXTURES
from llmfab import cli
from llmfab.compile import CompileError, compile_model
from llmfab.compile_check import prompt_lengths
from llmfab.ir import ConstAttrs, OpKind, TensorType
from llmfab.ir.integer import run_integer_raw
from llmfab.ir.isa import BufferId, Program
from llmfab.ir.quant import QuantizedWeight
from llmfab.passes import lower
from llmfab.simulator.execute import run_prompt
from llmfab.simulator.functional import Machine

PHI = str(FIXTURES / "phi_dynamo_op18.onnx")


def _alias_every_concat(lw, node):
    """The lowering of concat before issue 15: every concat taken for the KV cache."""
    lw.alias(node.name, node.inputs[-1])


def test_prompt_lengths_cross_a_chunk_and_leave_room_to_decode():
    assert prompt_lengths(16, 4) == [3, 5]
    assert prompt_lengths(16, 16) == [3, 15]
    assert prompt_lengths(3, 1) == [2]
    assert prompt_lengths(1, 1) == [1]


def test_a_miscompile_names_the_first_differing_value(monkeypatch):
    monkeypatch.setitem(lower.LOWER, OpKind.CONCAT, _alias_every_concat)
    with pytest.raises(CompileError, match=r"^.*phi_dynamo_op18\.onnx: compile check: program prefill_\d+_\d+ "
                                           r"\(prefill chunk \[0, \d+\) of a 3-token prompt\) computes "
                                           r"'layers\.0\.attention' \(attention, layer 0\) other than the integer "
                                           r"model: \d+ of \d+ values differ, first at \[0, 0, \d+, \d+\]: -?\d+ "
                                           r"instead of -?\d+ \(raw Q\.16\); no BUILD was written "
                                           r"\(--no-check skips this check\)$"):
        compile_model(PHI, "sim-small", max_len=8)
    assert compile_model(PHI, "sim-small", max_len=8, check=False).checked == ()


def test_cli_keeps_the_earlier_build_when_the_check_fails(monkeypatch, tmp_path, capsys):
    out = tmp_path / "BUILD"
    assert cli.main(["compile", PHI, "--target", "sim-small", "--max-len", "8", "-o", str(out)]) == 0
    assert "checked      bit-exact with the integer model: prompts of 3 and 7 tokens" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setitem(lower.LOWER, OpKind.CONCAT, _alias_every_concat)
    assert cli.main(["compile", PHI, "--target", "sim-small", "--max-len", "8", "-o", str(out)]) == 2
    assert "compile check: program prefill_" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name != "BUILD"]     # no temporary folder left
    assert cli.main(["compile", PHI, "--target", "sim-small", "--max-len", "8", "--no-check", "-o",
                     str(tmp_path / "unchecked")]) == 0                  # the miscompile, written unchecked


def _spec(draw) -> Spec:
    heads = draw(st.sampled_from([2, 4]))
    head_dim = draw(st.sampled_from([4, 8]))
    return Spec(layers=draw(st.integers(1, 2)), heads=heads,
                kv_heads=draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0])), head_dim=head_dim,
                ffn=draw(st.sampled_from([16, 32])), vocab=draw(st.sampled_from([32, 48])),
                block=draw(st.sampled_from(BLOCKS)), tied=draw(st.booleans()), fused_qkv=draw(st.booleans()),
                rotary=draw(st.sampled_from([head_dim, head_dim // 2])), swiglu=draw(st.booleans()),
                layer_norm=draw(st.booleans()), bias=draw(st.booleans()), embed_scale=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)), qk_norm=draw(st.booleans()), gate_up=draw(st.booleans()),
                head_ln=draw(st.sampled_from([None, "seq-major", "head-major"])))


def _integer_logits(c, spec: Spec, ids: np.ndarray) -> np.ndarray:
    g = build(spec, len(ids))
    for n in g.nodes():
        if n.op is OpKind.CONST and isinstance(getattr(c.graph.node(n.name), "data", None), QuantizedWeight):
            qw = c.graph.node(n.name).data
            g.set_node(dataclasses.replace(n, attrs=ConstAttrs(qw, True), type=TensorType(qw.dtype, qw.shape)))
    return run_integer_raw(g, {"input_ids": ids[None]})["logits"][0]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_decoders_execute_as_the_integer_model(data):
    """compile (with its check) + the functional simulator, run here independently of the check:
    a prompt over two prefill chunks and a decode step give the integer model's logits exactly."""
    _execute_as_the_integer_model(_spec(data.draw))


@pytest.mark.parametrize("layout,kv_heads", [("seq-major", 2), ("head-major", 1), ("head-major", 4)])
def test_per_head_layer_norms_execute_as_the_integer_model(layout, kv_heads):
    """A LayerNorm of each q and k head with parameters of its own (StableLM's q/k_layernorm), before
    the heads' transpose (strided rows) or after it (a block of rows per head)."""
    _execute_as_the_integer_model(Spec(layers=2, heads=4, kv_heads=kv_heads, head_dim=8, ffn=32, vocab=48,
                                       block="parallel-shared-norm", tied=False, fused_qkv=False, rotary=4,
                                       swiglu=True, layer_norm=True, bias=True, embed_scale=False, seed=7,
                                       head_ln=layout))


def _execute_as_the_integer_model(spec: Spec) -> None:
    c = compile_model(f"random-{spec.seed}", "sim-small", max_len=12, prefill_step=4, check=True,
                      graph_at=lambda n: build(spec, n))
    assert c.checked == (3, 5)
    ids = np.random.default_rng(spec.seed).integers(0, spec.vocab, 7)
    m = Machine.for_target(c.target, [d for _, d in c.images], max(c.layout.used))

    def program(stage, length):
        e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
        return Program.from_bytes(dict(c.programs)[e["file"]])

    def logits(rows):
        return np.array([np.frombuffer(m.read_row(c.layout.output, r), "<i4")[:spec.vocab] for r in range(rows)])

    run_prompt(m, ids[:6], 4, lambda end: program("prefill", end))
    want = _integer_logits(c, spec, ids)
    assert np.array_equal(logits(6), want[:6])
    m.write(BufferId.ACT, 0, np.array([ids[6]], "<i4").tobytes())
    m.run(program("decode", 7), 7)
    assert np.array_equal(logits(1)[0], want[6])
