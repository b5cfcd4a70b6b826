"""The `llmfab` command as a user runs it (a real subprocess, real files)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, fixture_entry, fixture_ids, ort_feeds, ort_run, rel_err, tolerance
from llmfab.frontend.config import PRESETS, PRESET_DIR


def llmfab(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_inspect_llama2_7b_preset_json():
    out = json.loads(llmfab("inspect", "llama2-7b", "--json").stdout)
    assert abs(out["parameters"] - 6.74e9) / 6.74e9 < 0.005
    assert out["parameters"] == 6_738_415_616
    assert out["layers"] == 32
    assert out["ops"]["attention"] == 32 and out["ops"]["linear"] == 224 and out["ops"]["lm_head"] == 1
    assert out["weight_bytes"] == 2 * 6_738_415_616  # fp16
    assert out["unfused"] == []


def test_inspect_text_summary():
    text = llmfab("inspect", "mistral-7b").stdout
    assert "7.24 B" in text and "attention" in text and "warning" not in text


def test_inspect_config_json_path(tmp_path):
    cfg = tmp_path / "config.json"
    shutil.copy(PRESET_DIR / PRESETS["qwen2-7b"], cfg)
    out = json.loads(llmfab("inspect", cfg, "--json", "--seq-len", "4").stdout)
    assert out["parameters"] == 7_615_616_512 and out["seq_len"] == 4


@pytest.mark.parametrize("file", fixture_ids(lambda f: f["family"] in ("llama", "gpt2") and not f["has_kv_cache"]
                                             and f["dynamic_seq"])[:2])
def test_inspect_onnx_json(file):
    out = json.loads(llmfab("inspect", FIXTURES / file, "--json", "--seq-len", "5").stdout)
    cfg = fixture_entry(file)["config"]
    assert out["layers"] == cfg["num_layers"] and out["ops"]["attention"] == cfg["num_layers"]
    assert out["unfused"] == [] and out["weight_bytes"] == 4 * out["parameters"]


@pytest.mark.parametrize("file", fixture_ids(lambda f: not f["has_kv_cache"] and f["dynamic_seq"]))
def test_interpret_writes_logits_matching_onnxruntime(tmp_path, file):
    tokens = [3, 1, 4, 1, 5, 9, 2]
    out = tmp_path / "logits.npy"
    p = llmfab("interpret", FIXTURES / file, "--tokens", " ".join(map(str, tokens)), "--out", out)
    assert "wrote" in p.stdout
    logits = np.load(out)
    vocab = fixture_entry(file)["config"]["vocab"]
    assert logits.shape == (1, len(tokens), vocab) and logits.dtype == np.float32
    ids = np.array([tokens])
    ref = ort_run(FIXTURES / file, ort_feeds(FIXTURES / file, ids))["logits"]
    assert rel_err(logits, ref) < tolerance(fixture_entry(file))


def test_failed_interpret_keeps_previous_output(tmp_path):
    file = FIXTURES / fixture_ids(lambda f: f["family"] == "llama" and f["dynamic_seq"])[0]
    out = tmp_path / "logits.npy"
    llmfab("interpret", file, "--tokens", "1 2", "--out", out)
    before = out.read_bytes()
    p = llmfab("interpret", file, "--tokens", "1 100000", "--out", out, check=False)
    assert p.returncode == 2 and out.read_bytes() == before
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_disasm_round_trips_a_program_file(tmp_path):
    from llmfab.ir.isa import BufferId, MiscFunc, ProgramBuilder, Queue
    b = ProgramBuilder("tiny")
    b.ld(channel=0, channels=2, buf=BufferId.ACT, hbm_addr=64, buf_addr=0, rows=1, row_bytes=32,
         release=Queue.SFU)
    b.misc(MiscFunc.RELU, wait=Queue.LOAD, rows=1, cols=16, src_buf=BufferId.ACT, dst_buf=BufferId.ACT,
           src_addr=0, dst_addr=64)
    b.end()
    f = tmp_path / "p.bin"
    f.write_bytes(b.build().to_bytes())
    out = llmfab("disasm", f).stdout.splitlines()
    assert out[0] == f"; program 'tiny': 3 instructions, {b.build().storage_bytes} bytes"
    assert out[1].split()[:2] == ["0", "LD"] and "release=F" in out[1] and "row_bytes=32" in out[1]
    assert out[2].split()[:2] == ["1", "MISC"] and "func=RELU" in out[2] and "wait=L" in out[2]
    assert out[3].split()[:2] == ["2", "SYS"] and "func=END" in out[3]
    f.write_bytes(b"junk" * 10)
    bad = llmfab("disasm", f, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith(f"llmfab: error: {f}: not an llmfab program")


def test_inspect_runs_a_chosen_pipeline_and_prints_and_times_it():
    """`--passes` replaces the fusion pipeline (xdsl-opt style), `--print-between-passes` prints the
    graph after each pass, `--time-passes` times each on stderr; an unknown pass lists the registry."""
    f = FIXTURES / "llama_ts_op14.onnx"
    partial = json.loads(llmfab("inspect", f, "--json", "--seq-len", "4", "--passes", "fuse-linear,cleanup").stdout)
    assert partial["unfused"] and partial["ops"].get("attention", 0) == 0     # fusion stopped early
    p = llmfab("inspect", f, "--seq-len", "4", "--passes", "fuse-linear,fuse-norm", "--print-between-passes",
               "--time-passes")
    assert p.stdout.index("// after fuse-linear\n") < p.stdout.index("// after fuse-norm\n")
    assert "rms_norm(" not in p.stdout.split("// after fuse-norm")[0] and "rms_norm(" in p.stdout
    names = [line.split()[0] for line in p.stderr.splitlines() if line.endswith(" ms")]
    assert names == ["fuse-linear", "fuse-norm", "total"]
    bad = llmfab("inspect", f, "--passes", "fuse-everything", check=False)
    assert bad.returncode != 0 and "unknown pass 'fuse-everything'; known passes: annotate," in bad.stderr
