"""Families beyond the claimed five, end to end on their tiny exports: Falcon and Phi-2 (attention
and MLP in parallel off one shared norm; Falcon's fused qkv and single KV head, Phi-2's partial
rotary), Mistral with one KV head, Phi-3 (fused qkv_proj and gate_up_proj; also longrope scaling), Qwen3 (per-head q/k
RMSNorm), Llama-3.2 (llama3 RoPE scaling, tied head), GPT-NeoX (parallel residual, per-head fused
qkv, partial rotary), StableLM (LayerNorm, partial rotary; stablelm-2-12b's per-head q/k LayerNorms with
weights of their own and a shared norm), a SmolLM-shaped LLaMA (hidden 96, FFN
160: no width a multiple of the 128-group), and Gemma and Gemma2 from both exporters (GeGLU, 1 + w
norms, scaled tied embeddings; Gemma2's post-norms and soft-capped scores and logits, MISC SOFTCAP).
Interpret against onnxruntime is test_onnx_import's."""
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

NEW = ["phi3_dynamo_op18", "phi3_longrope_dynamo_op18", "qwen3_dynamo_op18", "qwen3_ts_op14", "llama32_dynamo_op18", "llama32_ts_op14",
       "gpt_neox_dynamo_op18", "stablelm_dynamo_op18", "stablelm_qkln_dynamo_op18", "smollm_dynamo_op18",
       "phi3_ts_op14", "gpt_neox_ts_op14", "stablelm_ts_op14", "stablelm_qkln_ts_op14", "smollm_ts_op14"]
GEMMA = ["gemma_dynamo_op18", "gemma_ts_op14", "gemma2_dynamo_op18", "gemma2_ts_op14"]
FAMILIES = ["falcon_dynamo_op18", "phi_dynamo_op18", "mistral_kv1_dynamo_op18", *NEW, *GEMMA]
# SmolLM's prefill rows of FFN 160 do not fit sim-small's 16 KB act buffer at 8 rows a chunk
PREFILL_STEP = {"smollm_dynamo_op18": 4, "smollm_ts_op14": 4}


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


def test_phi3_longrope_past_the_original_length_executes_close_to_onnxruntime(tmp_path):
    """A max length past longrope's original length (16) folds the long factors into the tables; a
    24-token prompt (long factors in onnxruntime too) keeps logit cosine >= 0.99."""
    path = FIXTURES / "phi3_longrope_dynamo_op18.onnx"
    c = compile_model(str(path), "sim-small", max_len=32, prefill_step=8, check=True)
    write_build(c, tmp_path / "BUILD")
    ids = np.random.default_rng(6).integers(0, 128, 24)
    logits, _ = execute(Build.open(tmp_path / "BUILD"), ids)
    ref = ort_run(path, ort_feeds(path, ids[None]))["logits"]
    assert min(_cosine(logits[0, r], ref[0, r]) for r in range(24)) >= 0.99


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
    """A soft-cap tanh(x / c) * c whose 1 / c has nowhere to go (x a graph input, not attention scores
    or a Linear's output) stays unfused: the error says so, first."""
    from llmfab.ir import ArrayData, DType, Graph, InputAttrs, InputRole, OpKind, TensorType
    from llmfab.ir.verify import unfused_message, unfused_nodes
    from llmfab.passes.fold_scales import FoldScales
    g = Graph("softcap")
    g.add_input("x", TensorType(DType.FP32, (1, 4, 8)), InputAttrs(InputRole.OTHER))
    g.add_const("c", ArrayData(np.array(30.0, np.float32)))
    g.add_op("scaled", OpKind.DIV, ["x", "c"])
    g.add_op("capped", OpKind.TANH, ["scaled"])
    g.add_op("logits", OpKind.MUL, ["capped", "c"])
    g.add_output("logits", "logits")
    FoldScales().apply(g)
    assert unfused_message(unfused_nodes(g), "lowering to programs", graph=g).startswith(
        "2 ops left unfused: 'capped' (tanh; the soft-cap tanh(x / 30) * 30, as Gemma2 caps its attention scores and "
        "logits: fused only where x is attention scores or a Linear's output used only here, whose scale or weights "
        "take the 1 / c), 'scaled' (div; expected in ")


def test_soft_capped_logits_wider_than_a_misc_row_check_bit_exact():
    """Gemma2's soft-cap over 40,000 logits (MISC `cols` is 16 bits: two pieces, rows 4 x 40,000
    bytes apart) and over the attention scores: compile's check runs the programs on the
    functional simulator against the integer model bit for bit (random weights from a config)."""
    from llmfab.frontend.config import load_config, with_random_weights
    from llmfab.ir.isa import MiscFunc, Opcode, Program
    cfg = dict(model_type="gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, vocab_size=40000, max_position_embeddings=64,
               query_pre_attn_scalar=16, attn_logit_softcapping=2.0, final_logit_softcapping=1.0,
               torch_dtype="float32")
    c = compile_model("wide-gemma2", "u280", max_len=8, prefill_step=4, check=True,
                      graph_at=lambda n: with_random_weights(load_config(cfg, seq_len=n), seed=3, std=0.2))
    assert c.checked == (3, 5)
    for name, data in c.programs:
        caps = [i.fields["cols"] for i in Program.from_bytes(data).instructions
                if i.op is Opcode.MISC and i.fields["func"] == MiscFunc.SOFTCAP and i.fields["imm"] == 1 << 16]
        assert caps == [1 << 15, 40000 - (1 << 15)], name
