"""Compiled programs, executed instruction by instruction (simulator/functional.py), compute
exactly what the integer interpreter (the specification) computes: logits bit for bit."""

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, integer_logits
from llmfab.compile import compile_model
from llmfab.ir.isa import BufferId, Program
from llmfab.ir.target import load_target
from llmfab.simulator.execute import run_prompt
from llmfab.simulator.functional import ExecutionError, Machine

pytestmark = pytest.mark.sim
MAX_LEN = 16


def _machine(c, target="sim-small"):
    return Machine.for_target(load_target(target), [d for _, d in c.images], max(c.layout.used))  # the bytes the layout uses


def _program(c, stage, length):
    e = next(e for e in c.manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])
    return Program.from_bytes(dict(c.programs)[e["file"]])


def _prefill(m, c, ids):
    """The host runs the prompt in chunks of the build's prefill step (simulator/execute.py)."""
    run_prompt(m, ids, c.manifest["prefill_step"], lambda end: _program(c, "prefill", end))


def _reference(c, fixture, ids):
    """run_integer_raw on the model at len(ids) tokens with the compiled graph's quantized weights."""
    return integer_logits(c, FIXTURES / f"{fixture}.onnx", ids)


def _logits(m, c, rows, vocab):
    return np.array([np.frombuffer(m.read_row(c.layout.output, r), "<i4")[:vocab] for r in range(rows)])


@pytest.mark.parametrize("fixture,policy,length", [
    ("llama_ts_op14", "int8", 5), ("llama_ts_op14", "int4-g128", 13),     # one and two prefill tiles
    ("qwen2_ts_op14", "int4-g128", 11), ("mistral_dynamo_op18", "int8", 9),
    ("gpt2_ts_op14", "int4-g128", 12), ("opt_ts_op14", "int8", 14),
    ("llama_dynamo_op18_kvcache", "int8", 10), ("gpt2_dynamo_op18_fp16", "int8", 7),
    ("llama_ts_op14", "w4-2of4", 9), ("opt_ts_op14", "mixed-3.5", 13),
])
def test_prefill_then_decode_match_the_integer_interpreter(fixture, policy, length):
    c = compile_model(str(FIXTURES / f"{fixture}.onnx"), "sim-small", max_len=MAX_LEN, policy=policy)
    vocab = 128
    ids = np.random.default_rng(length).integers(0, vocab, length)
    m = _machine(c)
    _prefill(m, c, ids)
    got = _logits(m, c, length, vocab)
    want = _reference(c, fixture, ids)
    assert np.array_equal(got, want)
    # one decode step: the next token attends over the KV cache the prefill left in HBM
    nxt = int(np.random.default_rng(length + 1).integers(0, vocab))
    m.write(BufferId.ACT, 0, np.array([nxt], "<i4").tobytes())
    m.run(_program(c, "decode", length + 1), length + 1)
    got = _logits(m, c, 1, vocab)[0]
    want = _reference(c, fixture, np.append(ids, nxt))[length]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("fixture", ["llama_ts_op14", "opt_ts_op14"])
def test_a_prompt_in_many_chunks_over_many_kv_tiles(fixture):
    """Chunks of 4 tokens and KV tiles of 3 keys: a prompt of 14 runs 4 chunk programs (the last
    padded to LEN 16) of 2, 3, 4 and 6 KV tiles, then a decode step of 5 tiles; bit for bit."""
    c = compile_model(str(FIXTURES / f"{fixture}.onnx"), "sim-small", max_len=16, prefill_step=4, decode_step=3)
    pre = [e["bucket"] for e in c.manifest["programs"] if e["stage"] == "prefill"]
    assert pre == [[4, 4], [8, 8], [12, 12], [16, 16]]
    ids = np.random.default_rng(7).integers(0, 128, 14)
    m = _machine(c)
    _prefill(m, c, ids)
    assert np.array_equal(_logits(m, c, 14, 128), _reference(c, fixture, ids))
    m.write(BufferId.ACT, 0, np.array([9], "<i4").tobytes())
    m.run(_program(c, "decode", 15), 15)
    assert np.array_equal(_logits(m, c, 1, 128)[0], _reference(c, fixture, np.append(ids, 9))[14])


def test_several_decode_steps_in_a_row():
    fixture = "gpt2_dynamo_op18"
    c = compile_model(str(FIXTURES / f"{fixture}.onnx"), "sim-small", max_len=MAX_LEN, policy="int8")
    ids = np.array([5, 17, 99])
    m = _machine(c)
    _prefill(m, c, ids)
    for step in range(4):  # greedy generation: feed back the argmax
        nxt = int(np.argmax(_logits(m, c, len(ids), 128)[-1])) if step == 0 else int(np.argmax(_logits(m, c, 1, 128)[0]))
        ids = np.append(ids, nxt)
        m.write(BufferId.ACT, 0, np.array([nxt], "<i4").tobytes())
        m.run(_program(c, "decode", len(ids)), len(ids))
    assert np.array_equal(_logits(m, c, 1, 128)[0], _reference(c, fixture, ids)[-1])


def test_execution_errors_name_the_instruction():
    c = compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", max_len=MAX_LEN)
    m = _machine(c)
    m.buffers[BufferId.ACT] = bytearray(64)  # far too small
    with pytest.raises(ExecutionError, match=r"^program 'prefill_000\d\d_000\d\d' instruction \d+ \(\w+\): "):
        _prefill(m, c, np.array([1, 2, 3]))


def test_execute_cli_matches_the_integer_model(tmp_path):
    import subprocess
    import sys

    from llmfab.compile import write_build
    from llmfab.ir.fixed_point import from_fixed
    fixture = "qwen2_ts_op14"
    c = compile_model(str(FIXTURES / f"{fixture}.onnx"), "sim-small", max_len=MAX_LEN, policy="int4-g128")
    write_build(c, tmp_path / "build")
    ids = np.array([3, 1, 4, 1, 5, 9])
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "execute", str(tmp_path / "build"), "--tokens",
                        " ".join(map(str, ids)), "--out", str(tmp_path / "l.npy"), "--generate", "3"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = np.load(tmp_path / "l.npy")
    want = from_fixed(_reference(c, fixture, ids)).astype(np.float32)
    assert got.shape == (1, 6, 128) and np.array_equal(got[0], want)
    generated = [int(x) for x in p.stdout.split("generated")[1].split()]
    seq = list(ids)
    for tok in generated:  # greedy decoding of the integer model itself
        assert tok == int(np.argmax(_reference(c, fixture, np.array(seq))[-1]))
        seq.append(tok)


def test_execute_needs_weights(tmp_path):
    from llmfab.compile import write_build
    from llmfab.flow import execute_build
    from llmfab.simulator.execute import ExecuteError
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, '
                   '"num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 64}')
    write_build(compile_model(str(cfg), "sim-small", max_len=8), tmp_path / "build")
    with pytest.raises(ExecuteError, match=r"a config-only build has no weight images to execute$"):
        execute_build(tmp_path / "build", np.array([1, 2]))


def test_kv_rows_padded_over_many_channels(tmp_path, monkeypatch):
    """KV rows spread over more channels than divide them (padded per channel, ATTN's src2_pad):
    still bit for bit. 12-byte rows (head_dim 8) over 8 channels of 2 bytes: 16-byte rows."""
    from llmfab.passes import hbm_layout
    text = (load_target.__globals__["_bundled_dir"]() / "sim-small.yaml").read_text()
    spec = tmp_path / "eight-channels.yaml"
    spec.write_text(text.replace("name: sim-small", "name: eight-channels").replace("  channels: 1\n", "  channels: 8\n"))
    monkeypatch.setattr(hbm_layout, "MAX_ROW_PADDING", 1.5)
    monkeypatch.setattr(hbm_layout, "KV_STRIPED", True)
    c = compile_model(str(FIXTURES / "llama_ts_op14.onnx"), str(spec), max_len=MAX_LEN, policy="int8")
    kv = c.layout.kv[0][0].k
    assert (kv.channels, kv.row_bytes) == (8, 16)
    attn = [i for p in c.programs for i in Program.from_bytes(p[1]).instructions if i.op.name == "ATTN"]
    assert attn and all(i["src2_pad"] == 4 for i in attn)
    ids = np.array([3, 77, 12, 5, 90, 41])
    m = _machine(c, str(spec))
    _prefill(m, c, ids)
    assert np.array_equal(_logits(m, c, len(ids), 128), _reference(c, "llama_ts_op14", ids))
    m.write(BufferId.ACT, 0, np.array([7], "<i4").tobytes())
    m.run(_program(c, "decode", len(ids) + 1), len(ids) + 1)
    assert np.array_equal(_logits(m, c, 1, 128)[0], _reference(c, "llama_ts_op14", np.append(ids, 7))[len(ids)])


def test_a_build_for_a_target_file_carries_it(tmp_path):
    """A build compiled for the user's own target file is simulated and executed with that file's
    numbers (kept in BUILD/target.yaml), not a bundled target looked up by name; a changed copy is
    refused."""
    from llmfab.build import Build, BuildError
    from llmfab.flow import execute_build
    from llmfab.timing import simulate_build
    from llmfab.compile import write_build
    text = (ROOT / "llmfab" / "targets" / "sim-small.yaml").read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text(text.replace("name: sim-small", "name: my-board").replace("\nclock_mhz: 100", "\nclock_mhz: 50"))
    write_build(compile_model(str(FIXTURES / "llama_ts_op14.onnx"), str(mine), max_len=16), tmp_path / "b")
    mine.unlink()                                       # the build needs nothing but itself
    b = Build.open(tmp_path / "b")
    assert b.target.name == "my-board" and b.target.clock_mhz == 50
    slow = simulate_build(tmp_path / "b", 4, 4)
    write_build(compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", max_len=16), tmp_path / "s")
    fast = simulate_build(tmp_path / "s", 4, 4)
    assert slow.target == "my-board" and slow.ttft_s > 1.9 * fast.ttft_s     # half the clock
    logits, _ = execute_build(tmp_path / "b", np.array([1, 2, 3]))
    assert logits.shape[1] == 3
    (tmp_path / "b" / "target.yaml").write_text(text.replace("name: sim-small", "name: my-board"))
    with pytest.raises(BuildError, match=r"target.yaml: the target file differs from the one compiled "
                                         r"\(sha256 mismatch with manifest.json\)$"):
        Build.open(tmp_path / "b").target
