"""Every fixture, imported and fused, computes what onnxruntime computes on the same file."""
import collections
import math

import numpy as np
import pytest

from conftest import FIXTURES, fixture_entry, fixture_ids, ort_feeds, ort_run, rel_err, tolerance
from llmfab.flow import interpret, leftover_primitives, load_model
from llmfab.frontend.config import load_config
from llmfab.ir import InputRole, LinearRole, OpKind, print_graph, run, verify
from llmfab.passes.summary import summarize

TOL = 1e-4  # max |diff| / max |ref| on logits (the bound) for float32 exports


def _path(file):
    return FIXTURES / file


def _seq_lens(entry):
    if not entry["dynamic_seq"]:
        return [entry["static_seq"]]
    return [1, 6, 13]


CASES = [(f, s) for f in fixture_ids() for s in _seq_lens(fixture_entry(f))]


@pytest.mark.parametrize("file,seq", CASES)
def test_logits_match_onnxruntime(file, seq):
    g = load_model(str(_path(file)), seq_len=seq)
    verify(g, fused=True)
    vocab = fixture_entry(file)["config"]["vocab"]
    ids = np.random.default_rng(seq).integers(0, vocab, (1, seq))
    ours = interpret(g, ids)["logits"]
    past = None
    if fixture_entry(file)["has_kv_cache"]:
        past = {n.name: np.zeros(n.type.shape, np.float32) for n in g.inputs()
                if n.attrs.role in (InputRole.PAST_KEY, InputRole.PAST_VALUE)}
    ref = ort_run(_path(file), ort_feeds(_path(file), ids, past))["logits"]
    assert ours.shape == ref.shape == (1, seq, vocab)
    assert rel_err(ours, ref) < tolerance(fixture_entry(file))


EXPECTED = {  # per decoder layer, plus the ops outside the layers
    "llama": dict(layer={"rms_norm": 2, "linear": 7, "rope": 2, "attention": 1, "silu": 1, "mul": 1, "add": 2},
                  extra={"rms_norm": 1, "embedding": 1, "lm_head": 1}),
    "gpt2": dict(layer={"layer_norm": 2, "linear": 4, "attention": 1, "gelu": 1, "add": 2},
                 extra={"layer_norm": 1, "embedding": 2, "lm_head": 1, "add": 1}),
    "opt": dict(layer={"layer_norm": 2, "linear": 6, "attention": 1, "relu": 1, "add": 2},
                extra={"layer_norm": 1, "embedding": 2, "lm_head": 1, "add": 1}),
}
EXPECTED["qwen2"] = EXPECTED["mistral"] = EXPECTED["mistral_kv1"] = EXPECTED["llama"]
# attention and MLP in parallel off one shared norm; Falcon: fused qkv split by three slices;
# Phi-2: partial rotary, q and k each sliced in two and joined again
EXPECTED["falcon"] = dict(layer={"layer_norm": 1, "linear": 4, "slice": 3, "rope": 2, "attention": 1, "gelu": 1,
                                 "add": 2},
                          extra={"layer_norm": 1, "embedding": 1, "lm_head": 1})
EXPECTED["phi"] = dict(layer={"layer_norm": 1, "linear": 6, "slice": 4, "concat": 2, "rope": 2, "attention": 1,
                              "gelu": 1, "add": 2},
                       extra={"layer_norm": 1, "embedding": 1, "lm_head": 1})
# Phi-3: fused qkv_proj and gate_up_proj, each split by slices; Qwen3: an RMSNorm over each q and k head
EXPECTED["phi3"] = dict(layer={"rms_norm": 2, "linear": 4, "slice": 5, "rope": 2, "attention": 1, "silu": 1,
                               "mul": 1, "add": 2},
                        extra={"rms_norm": 1, "embedding": 1, "lm_head": 1})
EXPECTED["phi3_longrope"] = EXPECTED["phi3"]   # longrope changes only the folded tables
EXPECTED["qwen3"] = dict(layer={**EXPECTED["llama"]["layer"], "rms_norm": 4}, extra=EXPECTED["llama"]["extra"])
# Llama-3.2 (llama3 RoPE scaling folded into the tables, tied head) and SmolLM (hidden 96, FFN 160): LLaMA's
EXPECTED["llama32"] = EXPECTED["smollm"] = EXPECTED["llama"]
# GPT-NeoX: parallel attention + MLP off two norms, qkv fused per head (3 slices), partial rotary (2 + 2)
EXPECTED["gpt_neox"] = dict(layer={"layer_norm": 2, "linear": 4, "slice": 7, "concat": 2, "rope": 2, "attention": 1,
                                   "gelu": 1, "add": 2},
                            extra={"layer_norm": 1, "embedding": 1, "lm_head": 1})
# StableLM: LayerNorm, SwiGLU, partial rotary on separate q and k
EXPECTED["stablelm"] = dict(layer={"layer_norm": 2, "linear": 7, "slice": 4, "concat": 2, "rope": 2, "attention": 1,
                                   "silu": 1, "mul": 1, "add": 2},
                            extra={"layer_norm": 1, "embedding": 1, "lm_head": 1})
# stablelm-2-12b's: attention and MLP in parallel off one shared norm, and a LayerNorm of each q and k head
# (weights of its own: one norm with a row per head each)
EXPECTED["stablelm_qkln"] = dict(layer={**EXPECTED["stablelm"]["layer"], "layer_norm": 3},
                                 extra=EXPECTED["stablelm"]["extra"])
# GeGLU (tanh GELU), RMSNorm with 1 + w folded into its weight, sqrt(hidden) folded into the
# embedding table (no mul outside the layers); Gemma2: post-attention and post-MLP norms too, and
# the final logits' soft-cap, its 1 / cap folded into the LM head
EXPECTED["gemma"] = dict(layer={"rms_norm": 2, "linear": 7, "rope": 2, "attention": 1, "gelu": 1, "mul": 1, "add": 2},
                         extra={"rms_norm": 1, "embedding": 1, "lm_head": 1, "softcap": 0})
EXPECTED["gemma2"] = dict(layer={**EXPECTED["gemma"]["layer"], "rms_norm": 4},
                          extra={"rms_norm": 1, "embedding": 1, "lm_head": 1, "softcap": 1})
CONFIG_FAMILIES = ("llama", "qwen2", "mistral", "mistral_kv1", "gpt2", "opt",   # what load_config builds too
                   "phi3", "phi3_longrope", "qwen3", "llama32", "smollm", "gemma", "gemma2", "gpt_neox", "stablelm",
                   "stablelm_qkln")


@pytest.mark.parametrize("file", fixture_ids())
def test_fused_graph_has_llm_ops(file):
    entry = fixture_entry(file)
    g = load_model(str(_path(file)), seq_len=entry["static_seq"] or 8)
    assert leftover_primitives(g) == []
    counts = collections.Counter(n.op.value for n in g.nodes())
    L = entry["config"]["num_layers"]
    exp = EXPECTED[entry["family"]]
    for op in set(exp["layer"]) | set(exp["extra"]):
        assert counts[op] == L * exp["layer"].get(op, 0) + exp["extra"].get(op, 0), op
    for op in ("softmax", "matmul", "pow", "sigmoid", "reduce_mean", "sub", "div", "where", "expand", "tanh"):
        assert counts[op] == 0, op
    cfg = entry["config"]
    cap = cfg.get("attn_logit_softcapping")   # Gemma2: the scores' 1 / cap joins the scale
    for a in (n for n in g.nodes() if n.op is OpKind.ATTENTION):
        assert a.attrs.causal
        assert (a.attrs.num_heads, a.attrs.num_kv_heads) == (cfg["heads"], cfg["kv_heads"] or cfg["heads"])
        scale = cfg.get("query_pre_attn_scalar", cfg["head_dim"]) ** -0.5 / (cap or 1)
        rope = cfg.get("rope_scaling") or {}
        if rope.get("rope_type") == "longrope":   # q and k times attention_factor^2 (the tables' magnitude)
            scale *= 1 + math.log(cfg["max_position_embeddings"] / rope["original_max_position_embeddings"]) \
                / math.log(rope["original_max_position_embeddings"])
        assert a.attrs.scale == pytest.approx(scale, rel=1e-6)
        assert a.attrs.softcap == (pytest.approx(cap, rel=1e-6) if cap else None)
    for n in (n for n in g.nodes() if n.op is OpKind.SOFTCAP):
        assert g.node(n.inputs[0]).op is OpKind.LMHEAD
        assert n.attrs.cap == pytest.approx(cfg["final_logit_softcapping"], rel=1e-6)
        assert len(a.inputs) == 3  # the causal mask became an attribute
    roles = collections.Counter(n.attrs.role for n in g.nodes() if n.op in (OpKind.LINEAR, OpKind.LMHEAD))
    assert roles[LinearRole.UNKNOWN] == 0
    assert roles[LinearRole.LM_HEAD] == 1
    layers = sorted({n.attrs.layer for n in g.nodes() if n.op is OpKind.LINEAR})
    assert layers == list(range(L))


def _hf_config(entry) -> dict:
    c = entry["config"]
    fam = c["model_type"]
    if fam == "gpt2":
        return dict(model_type="gpt2", n_layer=c["num_layers"], n_embd=c["hidden"], n_head=c["heads"],
                    vocab_size=c["vocab"], n_positions=c["max_position_embeddings"], n_inner=c["intermediate"],
                    layer_norm_epsilon=c["layer_norm_eps"], activation_function=c["activation"])
    if fam == "opt":
        return dict(model_type="opt", num_hidden_layers=c["num_layers"], hidden_size=c["hidden"],
                    num_attention_heads=c["heads"], vocab_size=c["vocab"], ffn_dim=c["intermediate"],
                    max_position_embeddings=c["max_position_embeddings"], word_embed_proj_dim=c["hidden"],
                    activation_function=c["activation"])
    if fam in ("gpt_neox", "stablelm"):   # as transformers 4 wrote them (rotary_pct, rope_theta at the top level)
        rotary = {"rotary_pct": c["partial_rotary_factor"], "rotary_emb_base": c["rope_theta"]} if fam == "gpt_neox" \
            else {"partial_rotary_factor": c["partial_rotary_factor"], "rope_theta": c["rope_theta"],
                  "num_key_value_heads": c["kv_heads"], "qk_layernorm": c.get("qk_layernorm", False),
                  "use_qkv_bias": c.get("use_qkv_bias", False)}
        rotary["use_parallel_residual"] = c["parallel_attn"]
        return dict(model_type=fam, num_hidden_layers=c["num_layers"], hidden_size=c["hidden"],
                    num_attention_heads=c["heads"], vocab_size=c["vocab"], intermediate_size=c["intermediate"],
                    layer_norm_eps=c["layer_norm_eps"], hidden_act=c["activation"],
                    max_position_embeddings=c["max_position_embeddings"],
                    tie_word_embeddings=c["tie_word_embeddings"], **rotary)
    extra = {}
    if fam.startswith("gemma"):
        extra = dict(hidden_activation=c["activation"])
    if fam == "gemma2":
        extra.update({k: c[k] for k in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping")})
    return dict(model_type=fam, num_hidden_layers=c["num_layers"], hidden_size=c["hidden"],
                num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], head_dim=c["head_dim"],
                vocab_size=c["vocab"], intermediate_size=c["intermediate"], rms_norm_eps=c["rms_norm_eps"],
                rope_theta=c["rope_theta"], rope_scaling=c.get("rope_scaling"),
                tie_word_embeddings=c["tie_word_embeddings"], max_position_embeddings=c["max_position_embeddings"],
                **extra)


@pytest.mark.parametrize("file", fixture_ids(lambda f: not f["has_kv_cache"] and f["family"] in CONFIG_FAMILIES))
def test_same_graph_as_config_only_import(file):
    """ONNX import + fusion and the config-only builder give one canonical graph shape."""
    entry = fixture_entry(file)
    seq = entry["static_seq"] or 7
    a = load_model(str(_path(file)), seq_len=seq)
    b = load_config(_hf_config(entry), seq_len=seq)
    count = lambda g: collections.Counter((n.op, n.type.shape) for n in g.nodes() if n.op is not OpKind.CONST)
    assert count(a) == count(b)
    sa, sb = summarize(a), summarize(b)
    assert sa.parameters == sb.parameters  # tied LM heads are shared, not counted twice
    assert sa.ops == sb.ops
    for table in ("rope.cos", "rope.sin"):   # what the export computes (llama3 scaling too) is what rope.py does
        if table in b and entry["dtype"] == "float32":   # (fp16 exports round the tables)
            np.testing.assert_allclose(a.const_value(table).reshape(seq, -1), b.const_value(table).reshape(seq, -1),
                                       atol=2e-6)


def test_llama3_rope_scaling_is_folded_into_the_tables():
    """Llama-3.2's llama3 scaling changes the tables (not the graph): the smoothed and divided bands differ
    from unscaled RoPE; the highest frequency does not."""
    from llmfab.frontend.config import rope_cos_sin
    g = load_model(str(_path("llama32_dynamo_op18.onnx")), seq_len=40)
    sin = g.const_value("rope.sin").reshape(40, 8)
    _, plain = rope_cos_sin(8, 10000.0, 0, 40)
    np.testing.assert_allclose(sin[:, 0], plain[:, 0], atol=1e-6)   # wavelength 6.3 < 64 / 4: kept
    for band in (1, 2, 3):                                          # smoothed (63) and divided by 8 (628, 6283)
        assert np.abs(sin[:, band] - plain[:, band]).max() > 1e-2, band
    assert g.node("lm_head").inputs[1] == "embed_tokens.weight"   # the tied head shares the table


@pytest.mark.parametrize("seq", [6, 16, 17, 24])
def test_phi3_longrope_takes_the_long_factors_past_the_original_length(seq):
    """Phi-3-128k's longrope (original length 16 here): the export picks short or long factors by the
    sequence's last position (an If on positions, folded at import); interpret matches onnxruntime on
    either side, and the config-only tables are the ones the export computes."""
    file = "phi3_longrope_dynamo_op18.onnx"
    g = load_model(str(_path(file)), seq_len=seq)
    ids = np.random.default_rng(seq).integers(0, 128, (1, seq))
    assert rel_err(interpret(g, ids)["logits"], ort_run(_path(file), ort_feeds(_path(file), ids))["logits"]) < TOL
    b = load_config(_hf_config(fixture_entry(file)), seq_len=seq)
    for table in ("rope.cos", "rope.sin"):
        np.testing.assert_allclose(g.const_value(table).reshape(seq, -1), b.const_value(table).reshape(seq, -1),
                                   atol=2e-6)
    short = load_config({**_hf_config(fixture_entry(file)), "rope_scaling": None}, seq_len=seq)
    assert not np.allclose(b.const_value("rope.sin"), short.const_value("rope.sin"), atol=1e-2)
    # the export's tables are times attention_factor sqrt(1 + ln 8 / ln 16): its square is attention's
    gain2 = 1 + math.log(8) / math.log(16)
    assert all(a.attrs.scale == pytest.approx(gain2 / math.sqrt(8), rel=1e-6) for a in g.nodes()
               if a.op is OpKind.ATTENTION)


@pytest.mark.parametrize("file", fixture_ids(lambda f: f["has_kv_cache"]))
@pytest.mark.parametrize("seq,past", [(3, 4), (1, 9)])
def test_kv_cache_exports(file, seq, past):
    g = load_model(str(_path(file)), seq_len=seq, past_len=past)
    roles = collections.Counter(n.attrs.role for n in g.inputs())
    L = fixture_entry(file)["config"]["num_layers"]
    assert roles == {InputRole.TOKENS: 1, InputRole.PAST_KEY: L, InputRole.PAST_VALUE: L}
    rng = np.random.default_rng(seq * 100 + past)
    vocab = fixture_entry(file)["config"]["vocab"]
    feeds = {"input_ids": rng.integers(0, vocab, (1, seq))}
    for n in g.inputs():
        if n.attrs.role is not InputRole.TOKENS:
            feeds[n.name] = rng.standard_normal(n.type.shape).astype(np.float32)
    ours = run(g, feeds)
    ref = ort_run(_path(file), ort_feeds(_path(file), feeds["input_ids"],
                                         {k: v for k, v in feeds.items() if k != "input_ids"}, past))
    assert set(ours) == set(ref)  # logits and every present.N.key/value
    for k in ref:
        assert ours[k].shape == ref[k].shape
        assert rel_err(ours[k], ref[k]) < TOL, k
    for a in (n for n in g.nodes() if n.op is OpKind.ATTENTION):
        assert a.attrs.causal and g.node(a.inputs[1]).type.shape[2] == past + seq


def test_external_data_is_memory_mapped():
    g = load_model(str(FIXTURES / "llama_dynamo_extdata" / "model.onnx"), seq_len=4)
    big = [n for n in g.nodes() if n.op is OpKind.CONST and n.attrs.weight and n.type.numel > 512]
    assert big
    a = big[0].data.numpy()
    base = a
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)


def test_import_is_deterministic():
    f = str(_path(fixture_ids(lambda f: f["family"] == "gpt2")[0]))
    assert print_graph(load_model(f, seq_len=5)) == print_graph(load_model(f, seq_len=5))


@pytest.mark.parametrize("file", fixture_ids(lambda f: f["family"] in CONFIG_FAMILIES))
def test_same_text_as_config_only_import(file):
    """Apart from constants, the fused ONNX graph prints exactly like the config-only graph."""
    from llmfab.passes import PASSES, parse_pipeline, run_pipeline
    entry = fixture_entry(file)
    past = 3 if entry["has_kv_cache"] else 0
    a = load_model(str(_path(file)), seq_len=5, past_len=past)
    b = load_config(_hf_config(entry), seq_len=5, past_len=past)
    run_pipeline(b, parse_pipeline("canonical-names", PASSES))
    lines = lambda g: sorted(l for l in print_graph(g, skip_consts=True).splitlines()[1:-2])
    assert lines(a) == lines(b)


@pytest.mark.parametrize("file", fixture_ids(lambda f: f["dtype"] == "float16"))
def test_fp16_exports_keep_fp16_weights_and_fp32_activations(file):
    from llmfab.ir import DType
    g = load_model(str(_path(file)), seq_len=4)
    s = summarize(g)
    # weights stay half precision (the TorchScript exporter itself writes the o_proj weights as fp32)
    assert s.weight_bytes_by_dtype.get("fp16", 0) > 0.8 * s.weight_bytes
    acts = {n.type.dtype for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT)}
    assert acts == {DType.FP32}
