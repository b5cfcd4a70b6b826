"""Any K (issue 15) end to end: tiny decoders with hidden 64 / FFN 160 and hidden 96 / FFN 250
(widths no group of 64 or 128 divides, 250 not even whole 2:4 blocks), every bundled policy:
quantize, compile for sim-small, execute on the functional simulator bit for bit with the integer
model, and int8 logits within cosine 0.99 of onnxruntime. Fast tier: the models are tiny."""

import numpy as np
import pytest

from conftest import FIXTURES, integer_logits, ort_feeds, ort_run
from llmfab.compile import compile_model
from llmfab.flow import load_model
from llmfab.ir.isa import MiscFunc, Opcode, Program
from llmfab.ir.target import load_target
from llmfab.simulator.execute import run_prompt
from llmfab.simulator.functional import Machine
from wide_models import widen

VOCAB = 128
SHAPES = {"llama_h64_f160": ("llama_ts_op14", 64, 160), "llama_h96_f250": ("llama_ts_op14", 96, 250),
          "qwen2_h64_f160": ("qwen2_ts_op14", 64, 160)}
POLICIES = ("int8", "int4-g128", "int4-g128-gptq", "int4-g32", "int3-g64", "w4-2of4", "mixed-3.5")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    # int4 g64 on the embedding too: hidden 96 = 64 + 32 makes its rows two EMBEDs (docs/integer.md)
    (root / "int4-g64.yaml").write_text("name: int4-g64\ndefault: {bits: 4, group: 64, method: rtn}\n")
    return {name: widen(FIXTURES / f"{src}.onnx", root / f"{name}.onnx", h, f, seed=i)
            for i, (name, (src, h, f)) in enumerate(SHAPES.items())} | {"int4-g64": root / "int4-g64.yaml"}


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def _cosine(a, b) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.mark.parametrize("model,policy", [(m, p) for m in ("llama_h64_f160", "llama_h96_f250") for p in POLICIES]
                         + [("qwen2_h64_f160", "int8"), ("qwen2_h64_f160", "w4-2of4"), ("llama_h96_f250", "int4-g64")])
def test_every_policy_compiles_and_executes_bit_exact(models, model, policy):
    path = models[model]
    c = compile_model(str(path), "sim-small", max_len=16, policy=str(models.get(policy, policy)))
    ffn = SHAPES[model][2]
    downs = {p["k_engine"] for p in c.manifest["padded_k"] if p["layer"].endswith("down_proj")}
    ks = {i["k"] for _, p in c.programs for i in Program.from_bytes(p).instructions if i.op in (Opcode.MV, Opcode.MM)}
    if policy != "mixed-3.5":     # mixed picks bits per layer; its groups are the default's 128
        g = {"int4-g32": 32, "int3-g64": 64, "int4-g64": 64}.get(policy, 128)
        want = -(-ffn // g) * g
        assert downs == ({want} if want != ffn else set())
        assert want in ks and (want == ffn or ffn not in ks)    # the engine runs the padded K only
    length = 9
    ids = np.random.default_rng(length).integers(0, VOCAB, length)
    m = Machine.for_target(load_target("sim-small"), [d for _, d in c.images], max(c.layout.used))
    run_prompt(m, ids, c.manifest["prefill_step"], lambda end: _program(c, "prefill", end))
    got = np.array([np.frombuffer(m.read_row(c.layout.output, r), "<i4")[:VOCAB] for r in range(length)])
    assert np.array_equal(got, integer_logits(c, path, ids))
    ref = ort_run(path, ort_feeds(path, ids[None]))["logits"][0]
    cos = _cosine(got / 65536.0, ref)
    assert cos >= {"int8": 0.99, "w4-2of4": 0.75}.get(policy, 0.9), cos
    embeds = [i for _, p in c.programs for i in Program.from_bytes(p).instructions
              if i.op is Opcode.MISC and i["func"] is MiscFunc.EMBED]
    assert {i["cols"] for i in embeds} == ({64, 32} if policy == "int4-g64" else {SHAPES[model][1]})


def test_quantize_report_shows_the_partial_groups(models):
    from llmfab.passes.policy import load_policy
    from llmfab.passes.quant_report import quantize_model
    g = load_model(str(models["llama_h96_f250"]), seq_len=8)
    _, r = quantize_model(g, load_policy("int3-g64"))
    rows = {x.name: x for x in r.layers}
    assert (rows["layers.0.down_proj"].groups, rows["layers.0.down_proj"].last_group) == (4, 58)   # 250 = 3 * 64 + 58
    assert (rows["layers.0.q_proj"].groups, rows["layers.0.q_proj"].last_group) == (2, 32)        # 96 = 64 + 32
    assert (rows["embed_tokens"].groups, rows["embed_tokens"].scheme) == (1, "int8-ch")
    assert r.logit_cosine > 0.9
