"""Any K (issue 15), config-only: SmolLM-135M (hidden 576, FFN 1536) and SmolLM-360M (hidden 960,
FFN 2560) shapes compile for u280 and for a sim-small with buffers wide enough for their rows; the
manifest names every layer whose K the packer padded, and the programs run that K."""
import json

import pytest

from conftest import ROOT
from llmfab.compile import compile_model
from llmfab.ir.isa import Opcode, Program

SMOLLM = {"smollm-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                              num_hidden_layers=30),
          "smollm-360m": dict(hidden_size=960, intermediate_size=2560, num_attention_heads=15, num_key_value_heads=5,
                              num_hidden_layers=32)}


def _config(tmp_path, name, **over) -> str:
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": True,
         "torch_dtype": "bfloat16", "attention_bias": False, **SMOLLM[name], **over}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(c))
    return str(path)


def _wide_sim_small(tmp_path) -> str:
    """sim-small with 16 KiB weight and 64 KiB act and scratch buffers: rows of 2560 fit."""
    text = (ROOT / "llmfab" / "targets" / "sim-small.yaml").read_text()
    for name, size in (("weight", 16384), ("act", 65536), ("scratch", 65536)):
        old = next(line for line in text.splitlines(True) if line.strip().startswith(f"- name: {name}"))
        at = text.index(old) + len(old)
        nxt = text.index("bytes:", at)
        end = text.index("\n", nxt)
        text = text[:nxt] + f"bytes: {size}" + text[end:]
    path = tmp_path / "sim-wide.yaml"
    path.write_text(text.replace("name: sim-small", "name: sim-wide"))
    return str(path)


def _engine_ks(c) -> set[int]:
    return {i["k"] for _, p in c.programs for i in Program.from_bytes(p).instructions if i.op in (Opcode.MV, Opcode.MM)}


@pytest.mark.parametrize("name,hidden_hw", [("smollm-135m", 640), ("smollm-360m", 1024)])
def test_smollm_widths_compile_for_u280(tmp_path, name, hidden_hw):
    c = compile_model(_config(tmp_path, name), "u280", max_len=256, policy="int4-g128")
    hidden, ffn = SMOLLM[name]["hidden_size"], SMOLLM[name]["intermediate_size"]
    padded = {(p["k"], p["k_engine"]) for p in c.manifest["padded_k"]}
    assert padded == {(hidden, hidden_hw)}                   # FFN 1536 and 2560 are whole groups of 128
    assert _engine_ks(c) == {hidden_hw, ffn}
    # every linear with K = hidden (heads x head_dim is the hidden size too): q, k, v, o, gate, up, LM head
    assert len(c.manifest["padded_k"]) == 6 * SMOLLM[name]["num_hidden_layers"] + 1


@pytest.mark.parametrize("name,policy,ks", [("smollm-135m", "int8", {640, 1536}), ("smollm-360m", "int3-g64", {960, 2560}),
                                             ("smollm-135m", "w4-2of4", {640, 1536})])
def test_smollm_widths_compile_for_sim_small_buffers(tmp_path, name, policy, ks):
    c = compile_model(_config(tmp_path, name, num_hidden_layers=2, vocab_size=256), _wide_sim_small(tmp_path),
                      max_len=32, policy=policy)
    assert _engine_ks(c) == ks
