"""`llmfab report` checks capacity as `compile` does (positions, memory, buffers) and prints no
figure for a configuration that does not fit; `--json` carries `fits`."""
import json

import pytest

from llmfab.cli import main
from llmfab.compile import CompileError, compile_model
from llmfab.frontend.config import PRESET_DIR


def _report(capsys, *args) -> tuple[int, str]:
    rc = main(["report", *map(str, args)])
    return rc, capsys.readouterr().out


def _llama_70b(tmp_path):
    c = json.loads((PRESET_DIR / "llama2-7b.json").read_text())
    c.update(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
             intermediate_size=28672)
    (tmp_path / "config.json").write_text(json.dumps(c))
    return tmp_path / "config.json"


def test_a_context_past_the_models_positions_does_not_fit(capsys):
    rc, out = _report(capsys, "llama2-7b", "--target", "u280", "--prefill", 8000, "--decode", 8000)
    assert (rc, out) == (1, "llama2-7b on u280 (int8, prefill 8000, context 16000): does not fit: llama2-7b: a "
                            "context of 16000 tokens exceeds the model's 4096 positions (max_position_embeddings)\n")
    with pytest.raises(CompileError, match=r"^llama2-7b: a context of 4097 tokens exceeds the model's 4096 positions"):
        compile_model("llama2-7b", "u280", max_len=4097)


def test_a_70b_model_at_int4_does_not_fit_the_u280(tmp_path, capsys):
    rc, out = _report(capsys, _llama_70b(tmp_path), "--target", "u280", "--policy", "int4-g128", "--json")
    j = json.loads(out)
    assert rc == 1 and j["fits"] is False and "roofline" not in j and "power" not in j
    assert j["reason"].startswith("weights, parameters and a KV cache of 640 tokens need 36.")
    assert j["reason"].endswith("GB of HBM (u280), which holds 8.00 GB: the fullest channel needs 1127.6 MB of its "
                                "250.0 MB (877.6 MB too much)")


def test_a_context_past_memory_does_not_fit_and_one_that_fits_says_so(capsys):
    rc, out = _report(capsys, "llama2-7b", "--target", "u280", "--prefill", 2000, "--decode", 2000)
    assert rc == 1 and "does not fit: weights, parameters and a KV cache of 4000 tokens need 8.66 GB" in out
    assert "GOPs" not in out and "power" not in out
    rc, out = _report(capsys, "llama2-7b", "--target", "u280", "--prefill", 2000, "--decode", 2000,
                      "--policy", "int4-g128", "--json")
    j = json.loads(out)
    assert rc == 0 and j["fits"] is True and j["roofline"]
    assert j["hbm"]["bytes_per_channel"] <= j["hbm"]["capacity_per_channel"] == 250_000_000


def test_power_follows_the_policy_and_the_simulated_step(capsys):
    """Issue 14: power was taken at the roofline bound, where HBM watts are the same for every
    policy; now at the decode step the design timing model runs (its time, bytes, MAC activity)."""
    got = {}
    for policy in ("int4-g128", "w4-2of4"):
        rc, out = _report(capsys, "llama2-7b", "--target", "u280", "--policy", policy, "--prefill", 64,
                          "--decode", 64, "--json")
        assert rc == 0
        got[policy] = p = json.loads(out)["power"]
        assert 0 < p["dsp_activity"] <= 1 and p["decode_step_s"] > 0
        assert p["joules_per_token"] == pytest.approx((p["static_w"] + p["dynamic_w"]) * p["decode_step_s"])
    a, b = got["int4-g128"], got["w4-2of4"]
    assert a["dynamic_w"] != pytest.approx(b["dynamic_w"], rel=1e-3)
    assert b["decode_step_s"] < a["decode_step_s"] and b["joules_per_token"] < a["joules_per_token"]
