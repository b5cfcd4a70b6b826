"""Policies: parsing, resolution order, bundled files, errors that name the file and field."""

import pytest

from llmfab.ir.quant import QuantScheme
from llmfab.passes.policy import PolicyError, bundled_policies, load_policy, parse_policy


def test_bundled_policies_exist_and_parse():
    assert {"int8", "int4-g128", "int4-g128-gptq", "w4-2of4", "mixed-3.5"} <= set(bundled_policies())
    for name in bundled_policies():
        p = load_policy(name)
        assert p.name == name
    assert load_policy("w4-2of4").plan("down_proj", 3).scheme == QuantScheme(4, 128, (2, 4))
    assert load_policy("w4-2of4").plan("down_proj", 3).sparsity_method == "sparsegpt"
    assert load_policy("int4-g128-gptq").plan("q_proj", 0).method == "gptq"
    assert load_policy("mixed-3.5").auto.target_bits == 3.5


def test_activation_settings():
    p = parse_policy({}, "p.yaml")
    assert (p.activations, p.smoothing) == ("per-token", None)
    assert parse_policy({"smoothing": {}}, "p.yaml").smoothing == 0.5                      # the default alpha
    p = parse_policy({"smoothing": {"alpha": 0.8}, "activations": "static-per-tensor"}, "p.yaml")
    assert (p.activations, p.smoothing) == ("static-per-tensor", 0.8)
    assert parse_policy({"smoothing": None}, "p.yaml").smoothing is None


def test_resolution_order():
    p = parse_policy({"default": {"bits": 4, "group": 64},
                      "roles": {"lm_head": {"bits": 8}, "down_proj": {"bits": 3}},
                      "layers": {0: {"bits": 8, "group": 128}, "1.down_proj": {"bits": 2, "method": "gptq"}}}, "p.yaml")
    assert p.plan("q_proj", 5).scheme == QuantScheme(4, 64)
    assert p.plan("down_proj", 5).scheme == QuantScheme(3, 64)
    assert p.plan("down_proj", 0).scheme == QuantScheme(8, 128)      # layer beats role
    assert p.plan("down_proj", 1).scheme == QuantScheme(2, 64)       # layer.role beats all
    assert p.plan("down_proj", 1).method == "gptq" and p.plan("q_proj", 1).method == "rtn"
    assert p.plan("lm_head", None).scheme == QuantScheme(8, 64)


@pytest.mark.parametrize("data,message", [
    ({"default": {"bits": 5}}, r"p\.yaml: settings for embedding: bits must be one of \(2, 3, 4, 8\), not 5"),
    ({"default": {"bits": "4"}}, r"p\.yaml: default: bits must be an integer, not '4'"),
    ({"default": {"group": 96}}, r"p\.yaml: settings for embedding: group must be one of \(0, 32, 64, 128\) \(0 = per output channel\), not 96"),
    ({"default": {"method": "awq"}}, r"p\.yaml: default: method must be one of rtn, gptq, not 'awq'"),
    ({"default": {"sparsity": "3:4"}}, r"p\.yaml: settings for embedding: sparsity must be one of \['2:4', '1:4', '4:8', '2:8'\], not \(3, 4\)"),
    ({"default": {"sparsity": "half"}}, r"p\.yaml: default: sparsity must be null or a pattern like \"2:4\", not 'half'"),
    ({"default": {"bitz": 4}}, r"p\.yaml: default: unknown key 'bitz'; expected one of bits, group, method, sparsity, sparsity_method"),
    ({"roles": {"mlp": {"bits": 4}}}, r"p\.yaml: roles: unknown role 'mlp'; expected one of embedding, q_proj, .*"),
    ({"layers": {"x": {"bits": 4}}}, r"p\.yaml: layers: key 'x' must be a layer index or \"<index>\.<role>\""),
    ({"quantise": {}}, r"p\.yaml: unknown key 'quantise'; expected one of name, description, default, roles, layers, auto, calibration, activations, smoothing"),
    ({"activations": "per-channel"}, r"p\.yaml: activations must be one of per-token, static-per-tensor, not 'per-channel'"),
    ({"smoothing": 0.5}, r"p\.yaml: smoothing must be a mapping with alpha \(0 to 1, default 0\.5\) or null, not 0\.5"),
    ({"smoothing": {"beta": 1}}, r"p\.yaml: smoothing must be a mapping with alpha .*, not \{'beta': 1\}"),
    ({"smoothing": {"alpha": 1.5}}, r"p\.yaml: smoothing\.alpha must be a number from 0 to 1, not 1\.5"),
    ({"smoothing": {"alpha": True}}, r"p\.yaml: smoothing\.alpha must be a number from 0 to 1, not True"),
    ({"auto": {"bits": 3}}, r"p\.yaml: auto must give target_bits \(average bits per weight, with scales\)"),
    ({"auto": {"target_bits": 3, "candidates": [5]}}, r"p\.yaml: auto\.candidates must be bit widths from 2, 3, 4, 8, not \[5\]"),
    ({"calibration": {"samples": "many"}}, r"p\.yaml: calibration values must be integers"),
    ({"calibration": {"text": "x"}}, r"p\.yaml: calibration takes samples, seq_len, seed and tokens"),
    ({"calibration": {"samples": 0}}, r"p\.yaml: calibration\.samples must be positive, not 0"),
    ({"calibration": {"seq_len": -4}}, r"p\.yaml: calibration\.seq_len must be positive, not -4"),
    ({"calibration": {"seed": -1}}, r"p\.yaml: calibration\.seed must be >= 0, not -1"),
    ([1, 2], r"p\.yaml: a policy must be a YAML mapping"),
])
def test_bad_policies(data, message):
    with pytest.raises(PolicyError, match="^" + message + "$"):
        parse_policy(data, "p.yaml")


def test_policy_file_errors(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("default: {bits: 4\n")
    with pytest.raises(PolicyError, match=r"^.*bad\.yaml: line 2: not valid YAML: "):
        load_policy(str(f))
    f.write_text("!!python/object/apply:os.system ['echo pwned']\n")  # safe_load refuses tags
    with pytest.raises(PolicyError, match=r"not valid YAML"):
        load_policy(str(f))
    with pytest.raises(PolicyError, match=r"^nope: no such policy file or bundled policy \(bundled: .*int8.*\)$"):
        load_policy("nope")


def test_token_file_errors_name_the_policy_field(tmp_path, capsys):
    """Issue 14: quantize errors named neither the policy file nor its field."""
    from conftest import FIXTURES
    from llmfab.cli import main
    model = str(FIXTURES / "llama_ts_op14.onnx")
    policy = tmp_path / "p.yaml"
    policy.write_text("default: {method: gptq}\ncalibration: {tokens: missing.txt}\n")
    assert main(["quantize", model, "--policy", str(policy)]) == 2
    assert capsys.readouterr().err == (f"llmfab: error: {policy}: calibration.tokens: {tmp_path / 'missing.txt'}: "
                                       "cannot read the calibration token file (No such file or directory)\n")
    (tmp_path / "few.txt").write_text("1 2 3\n")
    assert main(["quantize", model, "--policy", "int8", "--calibration", str(tmp_path / "few.txt")]) == 2
    assert capsys.readouterr().err == (f"llmfab: error: --calibration: {tmp_path / 'few.txt'}: 3 tokens, fewer than "
                                       "one stream of 32\n")
