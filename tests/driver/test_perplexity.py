"""Issue 15, item 5: perplexity on an evaluation set of token ids, from `quantize --eval` (the float
graph and the integer model) and `execute --eval` (the compiled programs on the functional
simulator, bit-exact with the integer model: the same perplexity to the last digit)."""
import json
import math
import re

import numpy as np
import pytest

from conftest import FIXTURES, TINY
from llmfab.cli import main

TRAINED = FIXTURES / "trained_llama.onnx"
TRAINED_EVAL = FIXTURES / "trained_llama_eval.npy"


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_perplexity_of_logits_is_exp_mean_nll():
    from llmfab.passes.perplexity import EvalSet, perplexity
    ids = np.array([[0, 1, 2], [2, 2, 0]])
    uniform = perplexity(EvalSet("x", ids), lambda seq: np.zeros((3, 3)))
    assert math.isclose(uniform, 3.0, rel_tol=1e-12)
    sure = perplexity(EvalSet("x", ids), lambda seq: np.eye(3)[np.roll(seq[0], -1)] * 50.0)
    assert 1.0 <= sure < 1.0 + 1e-12     # each position predicts the next token with certainty


BAD = [
    ("floats", lambda p: np.save(p, np.zeros((2, 8), np.float32)),
     r"token ids must be integers, not float32 \(an array \[sequences, length\]\)"),
    ("1-d", lambda p: np.save(p, np.zeros(8, np.int64)),
     r"token ids must be \[sequences, length\] with length >= 2, not shape \[8\]"),
    ("one token", lambda p: np.save(p, np.zeros((3, 1), np.int32)),
     r"token ids must be \[sequences, length\] with length >= 2, not shape \[3, 1\]"),
    ("objects", lambda p: np.save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True),
     r"not a \.npy array of token ids \(it holds Python objects\)"),
    ("text", lambda p: p.write_text("1 2 3\n"),
     r"not a \.npy file; --eval takes one \.npy array of token ids \[sequences, length\]"),
    ("npz", lambda p: np.savez(open(p, "wb"), a=np.zeros((2, 2), np.int64)),
     r"an \.npz archive; --eval takes one \.npy array of token ids \[sequences, length\]"),
    ("vocab", lambda p: np.save(p, np.array([[1, 2, 3], [4, 128, 5]])),
     r"token id 128 at \[1, 1\] is outside the model's vocabulary \[0, 128\)"),
    ("negative", lambda p: np.save(p, np.array([[1, -2, 3]])),
     r"token id -2 at \[0, 1\] is outside the model's vocabulary \[0, 128\)"),
]


@pytest.mark.parametrize("make, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_eval_file_is_one_line_naming_it(tmp_path, capsys, make, message):
    path = tmp_path / "eval.npy"
    make(path)
    err = _error(capsys, ["quantize", str(TINY), "--policy", "int8", "--eval", str(path)])
    assert re.fullmatch(rf"llmfab: error: {re.escape(str(path))}: {message}\n", err), err


def test_missing_eval_file(tmp_path, capsys):
    path = tmp_path / "none.npy"
    err = _error(capsys, ["quantize", str(TINY), "--policy", "int8", "--eval", str(path)])
    assert re.fullmatch(rf"llmfab: error: {re.escape(str(path))}: cannot read the evaluation set "
                        r"\(No such file or directory\)\n", err), err


def test_eval_longer_than_the_build_and_config_only_model(tmp_path, capsys):
    ids = np.random.default_rng(0).integers(0, 128, (2, 12))
    np.save(tmp_path / "e.npy", ids)
    build = tmp_path / "B"
    assert main(["compile", str(TINY), "--target", "sim-small", "--max-len", "8", "--no-check", "-o", str(build)]) == 0
    capsys.readouterr()
    err = _error(capsys, ["execute", str(build), "--eval", str(tmp_path / "e.npy")])
    assert re.fullmatch(rf"llmfab: error: {re.escape(str(tmp_path / 'e.npy'))}: sequences of 12 tokens are longer "
                        r"than the build's max length \(compile --max-len\) \(8\)\n", err), err
    err = _error(capsys, ["quantize", "llama2-7b", "--policy", "int8", "--eval", str(tmp_path / "e.npy")])
    assert err == ("llmfab: error: llama2-7b: --eval needs a model with weights (an .onnx file), "
                   "not a config-only model\n")
    err = _error(capsys, ["execute", str(build), "--eval", str(tmp_path / "e.npy"), "--tokens", "1 2"])
    assert err == "llmfab: error: --eval measures perplexity on its own: give it without --tokens, --out and --generate\n"


@pytest.mark.parametrize("model, positions", [("gpt2_ts_op14", 128), ("opt_ts_op14", 128)])
def test_eval_longer_than_a_learned_position_table(tmp_path, capsys, model, positions):
    np.save(tmp_path / "e.npy", np.ones((1, positions + 1), np.int64))
    err = _error(capsys, ["quantize", str(FIXTURES / f"{model}.onnx"), "--policy", "int8", "--eval", str(tmp_path / "e.npy")])
    assert err == (f"llmfab: error: {tmp_path / 'e.npy'}: sequences of {positions + 1} tokens are longer than the "
                   f"model's positions ({positions})\n")


def test_execute_eval_equals_quantize_eval_on_the_tiny_model(tmp_path, capsys):
    ids = np.random.default_rng(1).integers(0, 128, (2, 10))
    np.save(tmp_path / "e.npy", ids.astype(np.int32))
    q = _json(capsys, ["quantize", str(TINY), "--policy", "int4-g32", "--eval", str(tmp_path / "e.npy"), "--json"])
    assert q["eval_set"] == {"file": str(tmp_path / "e.npy"), "sequences": 2, "length": 10}
    assert main(["compile", str(TINY), "--target", "sim-small", "--policy", "int4-g32", "--max-len", "16",
                 "-o", str(tmp_path / "B")]) == 0
    capsys.readouterr()
    x = _json(capsys, ["execute", str(tmp_path / "B"), "--eval", str(tmp_path / "e.npy"), "--json"])
    assert x["perplexity"] == q["perplexity"]
    assert math.isfinite(q["float_perplexity"]) and q["perplexity"] != q["float_perplexity"]


def test_trained_model_int8_perplexity_near_float_and_execute_equal(tmp_path, capsys):
    """On trained weights: finite perplexities, int8 within 2% of float, and the compiled programs on
    the functional simulator give quantize's integer perplexity exactly (2 held-out sequences of 64
    tokens, to keep the test fast; benchmarks/bench_accuracy.py measures the whole set)."""
    ids = np.load(TRAINED_EVAL, allow_pickle=False)
    assert ids.shape == (16, 128) and ids.dtype == np.int64
    np.save(tmp_path / "e.npy", ids[:2, :64])
    q = _json(capsys, ["quantize", str(TRAINED), "--policy", "int8", "--eval", str(tmp_path / "e.npy"), "--json"])
    fp, qp = q["float_perplexity"], q["perplexity"]
    assert 1.0 < fp < 20.0 and math.isfinite(qp)      # trained: far below the 256 of a uniform guess
    assert abs(qp / fp - 1) < 0.02, (fp, qp)
    assert main(["compile", str(TRAINED), "--target", "sim-small", "--policy", "int8", "--max-len", "64",
                 "-o", str(tmp_path / "B")]) == 0
    capsys.readouterr()
    x = _json(capsys, ["execute", str(tmp_path / "B"), "--eval", str(tmp_path / "e.npy"), "--json"])
    assert x["perplexity"] == qp
