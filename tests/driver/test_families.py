"""Families beyond the claimed five, end to end on their tiny exports: Falcon and Phi-2 (attention
and MLP in parallel off one shared norm; Falcon's fused qkv and single KV head, Phi-2's partial
rotary), Mistral with one KV head, Phi-3 (fused qkv_proj and gate_up_proj), Qwen3 (per-head q/k
RMSNorm), Llama-3.2 (llama3 RoPE scaling, tied head), GPT-NeoX (parallel residual, per-head fused
qkv, partial rotary), StableLM (LayerNorm, partial rotary) and a SmolLM-shaped LLaMA (hidden 96, FFN
160: no width a multiple of the 128-group). Interpret against onnxruntime is test_onnx_import's."""
import numpy as np
import pytest

from conftest import FIXTURES, ort_feeds, ort_run
from llmfab.build import Build
from llmfab.compile import compile_model, write_build
from llmfab.flow import load_model
from llmfab.ir import OpKind
from llmfab.ir.quant import QuantizedWeight
from llmfab.passes.policy import load_policy
from llmfab.passes.quant_report import quantize_model
from llmfab.simulator.execute import execute

NEW = ["phi3_dynamo_op18", "qwen3_dynamo_op18", "qwen3_ts_op14", "llama32_dynamo_op18", "llama32_ts_op14",
       "gpt_neox_dynamo_op18", "stablelm_dynamo_op18", "smollm_dynamo_op18"]
FAMILIES = ["falcon_dynamo_op18", "phi_dynamo_op18", "mistral_kv1_dynamo_op18", *NEW]
# SmolLM's prefill rows of FFN 160 do not fit sim-small's 16 KB act buffer at 8 rows a chunk
PREFILL_STEP = {"smollm_dynamo_op18": 4}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("fixture", FAMILIES)
def test_int8_build_executes_close_to_onnxruntime(fixture, tmp_path):
    """compile's check holds the programs bit-exact with the integer model (prompts of 3 and 9 tokens
    over two prefill chunks, a decode step after each); the BUILD, executed from its files, keeps
    logit cosine >= 0.99 against onnxruntime on the float export."""
    path = FIXTURES / f"{fixture}.onnx"
    step = PREFILL_STEP.get(fixture, 8)
    c = compile_model(str(path), "sim-small", max_len=16, prefill_step=step, check=True)
    assert c.checked == (3, step + 1)
    write_build(c, tmp_path / "BUILD")
    ids = np.random.default_rng(5).integers(0, 128, 11)
    logits, generated = execute(Build.open(tmp_path / "BUILD"), ids, generate=2)
    ref = ort_run(path, ort_feeds(path, ids[None]))["logits"]
    assert logits.shape == ref.shape == (1, 11, 128)
    assert min(_cosine(logits[0, r], ref[0, r]) for r in range(11)) >= 0.99
    assert len(generated) == 2


@pytest.mark.parametrize("fixture", NEW)
@pytest.mark.parametrize("policy,bound", [("int8", 0.999), ("int4-g128", 0.98)])
def test_quantize(fixture, policy, bound):
    """`llmfab quantize`'s integer model on the new families: every Linear quantized, logits close to the
    float graph's (measured: int8 >= 0.99993, int4-g128 0.987..0.992 on these random weights)."""
    g = load_model(str(FIXTURES / f"{fixture}.onnx"), seq_len=16)
    q, r = quantize_model(g, load_policy(policy))
    assert r.integer_activations and r.logit_cosine >= bound
    linears = [n for n in q.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD)]
    assert linears and all(isinstance(q.node(n.inputs[1]).data, QuantizedWeight) for n in linears)


def test_soft_capping_is_named_as_what_stops_fusion():
    """Gemma2's tanh(x / c) * c has no special-function op yet: the error says so, first."""
    from llmfab.ir import ArrayData, DType, Graph, InputAttrs, InputRole, OpKind, TensorType
    from llmfab.ir.verify import unfused_message, unfused_nodes
    g = Graph("softcap")
    g.add_input("x", TensorType(DType.FP32, (1, 4, 8)), InputAttrs(InputRole.OTHER))
    g.add_const("c", ArrayData(np.array(30.0, np.float32)))
    g.add_op("scaled", OpKind.DIV, ["x", "c"])
    g.add_op("capped", OpKind.TANH, ["scaled"])
    g.add_op("logits", OpKind.MUL, ["capped", "c"])
    g.add_output("logits", "logits")
    assert unfused_message(unfused_nodes(g), "lowering to programs", graph=g).startswith(
        "2 ops left unfused: 'capped' (tanh; the soft-cap tanh(x / 30) * 30, as Gemma2 caps its attention scores and "
        "logits, which has no special-function op yet), 'scaled' (div; expected in ")
