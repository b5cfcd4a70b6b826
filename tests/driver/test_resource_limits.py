"""Resource limits up front (issue 14, item 6): configs and lengths whose declared sizes need more
memory than the machine allows fail in seconds with one line saying how much, never MemoryError,
signal 6 or minutes of work; every config field is checked with the file and field named."""
import json
import os
import re
import shutil
import time

import pytest

from conftest import FIXTURES, ROOT
from llmfab.cli import main
from llmfab.frontend.config import ConfigError, load_config
from llmfab.ir.host import ResourceError, memory_budget, require

LLAMA = json.loads((ROOT / "llmfab" / "presets" / "llama2-7b.json").read_text())
GiB = 2**30


def _config(tmp_path, **fields):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**LLAMA, **fields}))
    return p


def _cli(capsys, *argv):
    t0 = time.perf_counter()
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err
    return rc, err, time.perf_counter() - t0


@pytest.fixture(autouse=True)
def budget(monkeypatch):
    monkeypatch.setenv("LLMFAB_MEMORY_LIMIT", str(2 * GiB))   # the same verdicts on any machine


def test_the_budget_is_the_smallest_limit(monkeypatch):
    assert memory_budget() == 2 * GiB
    monkeypatch.setenv("LLMFAB_MEMORY_LIMIT", "lots")
    with pytest.raises(ResourceError, match="LLMFAB_MEMORY_LIMIT must be a number of bytes, not 'lots'"):
        memory_budget()
    monkeypatch.delenv("LLMFAB_MEMORY_LIMIT")
    assert 0 < memory_budget() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with pytest.raises(ResourceError, match=r"^the thing needs at least 1024\.00 GiB of memory; this machine allows "):
        require(1024 * GiB, "the thing")


@pytest.mark.parametrize("fields, message", [
    ({"max_position_embeddings": -64}, r"field 'max_position_embeddings' must be a positive int of at most 2,147,483,647, not -64"),
    ({"num_key_value_heads": 64}, r"field 'num_key_value_heads' must be a positive int dividing num_attention_heads=32, not 64"),
    ({"num_key_value_heads": 5}, r"field 'num_key_value_heads' must be a positive int dividing num_attention_heads=32, not 5"),
    ({"hidden_size": 0}, r"field 'hidden_size' must be a positive int of at most 2,147,483,647, not 0"),
    ({"intermediate_size": -1}, r"field 'intermediate_size' must be a positive int"),
    ({"vocab_size": 2**40}, r"field 'vocab_size' must be a positive int of at most 2,147,483,647, not 1099511627776"),
    ({"num_hidden_layers": 100000}, r"field 'num_hidden_layers' must be a positive int of at most 1,024, not 100000"),
    ({"num_attention_heads": 7}, r"field 'num_attention_heads' must be a positive int dividing hidden_size=4096, not 7"),
    ({"rms_norm_eps": float("nan")}, None),     # NaN is not JSON: the file's parse error names it
])
def test_every_field_is_checked_naming_file_and_field(tmp_path, fields, message):
    p = _config(tmp_path, **fields)
    if message is None:
        p.write_text(p.read_text().replace("NaN", "nan"))
        message = r"not valid JSON"
    with pytest.raises(ConfigError, match=rf"^{p}: {message}"):
        load_config(p)


def test_unparseable_numbers_and_nesting_are_a_json_error_naming_the_file(tmp_path):
    p = tmp_path / "config.json"
    for text in ('{"vocab_size": ' + "9" * 5000 + "}", "[" * 100000 + "]" * 100000):
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{p}: not valid JSON \((ValueError|RecursionError): "):
            load_config(p)


@pytest.mark.parametrize("fields, message", [
    # 2048 x 312,500 RoPE tables: was MemoryError after 10 s
    ({"hidden_size": 10_000_000}, r"config\.json: the graph of 32 layers at seq_len 2048 \+ past_len 0 needs at "
                                  r"least 14\.31 GiB of memory; this machine allows 2\.00 GiB"),
    # millions of weight tiles: was 36 s (vocab) and a 60 s timeout (FFN) before the HBM verdict
    ({"vocab_size": 1_000_000_000}, r"need 16552\.40 GB of HBM \(u280\), which holds 8\.00 GB"),
    ({"intermediate_size": 1_000_000_000}, r"need 403587\.49 GB of HBM \(u280\), which holds 8\.00 GB"),
])
def test_huge_configs_fail_in_seconds_with_one_line(tmp_path, capsys, fields, message):
    rc, err, seconds = _cli(capsys, "compile", _config(tmp_path, **fields), "--target", "u280", "-o", tmp_path / "B")
    assert rc == 2 and err.count("\n") == 1 and seconds < 20, (err, seconds)
    assert re.search(message, err), err
    assert not (tmp_path / "B").exists()


@pytest.fixture(scope="module")
def good_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "B"
    assert main(["compile", str(FIXTURES / "llama_ts_op14.onnx"), "--target", "sim-small", "--max-len", "8",
                 "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("model, max_len, message", [
    ("llama2-7b", 10**9, r"llama2-7b: a context of 1000000000 tokens exceeds the model's 4096 positions"),
    (FIXTURES / "llama_ts_op14.onnx", 10**9, r"llama_ts_op14\.onnx: binding batch 1, sequence 1000000000 and "
                                             r"past 0 needs at least 14\.90 GiB of memory"),
    (FIXTURES / "gpt2_dynamo_op18.onnx", 10**5, r"gpt2_dynamo_op18\.onnx: node 'node_le_2' \(LessOrEqual, opset 18\): "
                                                r"its constant of 10,000,000,000 elements needs at least 149\.01 GiB"),
    ("positions", 10**9, r"the graph of 32 layers at seq_len 1000000000 \+ past_len 0 needs at least 2861\.02 GiB"),
])
def test_an_absurd_max_len_fails_in_seconds_and_leaves_the_build(tmp_path, capsys, good_build, model, max_len, message):
    if model == "positions":
        model = _config(tmp_path, max_position_embeddings=10**9)
    out = tmp_path / "B"
    shutil.copytree(good_build, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, err, seconds = _cli(capsys, "compile", model, "--target", "sim-small", "--max-len", max_len, "-o", out)
    assert rc == 2 and err.count("\n") == 1 and seconds < 20, (err, seconds)
    assert re.search(message, err), err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_execute_refuses_hbm_the_target_does_not_have(tmp_path, capsys, good_build):
    out = tmp_path / "B"
    shutil.copytree(good_build, out)
    m = json.loads((out / "manifest.json").read_text())
    m["hbm"]["bytes_per_channel"] = 10**15
    (out / "manifest.json").write_text(json.dumps(m))
    rc, err, _ = _cli(capsys, "execute", out, "--tokens", "1 2", "--out", tmp_path / "l.npy")
    assert rc == 2 and err.count("\n") == 1
    assert "manifest.json: 1 weight images of hbm.bytes_per_channel 1,000,000,000,000,000 do not match the " \
           "target's 1 channels of 0.25 GB" in err
    assert not (tmp_path / "l.npy").exists()
