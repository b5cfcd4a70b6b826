"""A max length that does not fit fails at once naming the longest that does (issue 14: defaults
that blow up), and programs do not grow with the max length (chunked prefill)."""
import re
import subprocess
import sys

import pytest

from conftest import FIXTURES, ROOT
from llmfab.compile import CompileError, compile_model

TINY = str(FIXTURES / "llama_ts_op14.onnx")
LONGEST = re.compile(r"; the longest max length that fits is (\d+) \(--max-len \1\)$")


def _longest(message: str) -> int:
    m = LONGEST.search(message)
    assert m, message
    return int(m.group(1))


def test_the_default_max_length_on_sim_small_fails_naming_the_longest_that_fits(tmp_path):
    """The tiny LLaMA's score rows of 2,048 keys overflow sim-small's scratch by 64 bytes: one line
    naming the buffer and the longest max length that fits, which compiles; one more does not."""
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "compile", TINY, "--target", "sim-small",
                        "-o", str(tmp_path / "b")], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("llmfab: error: scratch buffer (16384 bytes) is too small: attention scores of ")
    n = _longest(p.stderr.strip())
    assert 1000 < n < 2048
    assert compile_model(TINY, "sim-small", max_len=n).manifest["max_len"] == n
    with pytest.raises(CompileError) as e:
        compile_model(TINY, "sim-small", max_len=n + 1)
    assert _longest(str(e.value)) == n


def test_memory_that_holds_a_shorter_cache_names_its_length(tmp_path):
    """A DDR of 300 kB holds the tiny LLaMA with a KV cache of a few hundred tokens, not 1,024."""
    spec = tmp_path / "small-ddr.yaml"
    text = (ROOT / "llmfab" / "targets" / "sim-small.yaml").read_text()
    spec.write_text(text.replace("name: sim-small", "name: small-ddr").replace("capacity_gb: 0.25", "capacity_gb: 0.0003"))
    with pytest.raises(CompileError, match=r"^weights, parameters and a KV cache of 1024 tokens need .* too much\); ") as e:
        compile_model(TINY, str(spec), max_len=1024)
    n = _longest(str(e.value))
    assert 8 < n < 1024
    compile_model(TINY, str(spec), max_len=n)
    with pytest.raises(CompileError, match=rf"KV cache of {n + 1} tokens .* fits is {n} "):
        compile_model(TINY, str(spec), max_len=n + 1)


def test_a_prefill_program_is_one_chunk_whatever_the_max_length():
    """A prefill bucket's program has the same size at max length 32 and 240; a longer bucket adds
    the same instructions per KV tile (of 16 keys here), nothing per chunk before it."""
    small = compile_model(TINY, "sim-small", max_len=32, prefill_step=8, decode_step=16)
    large = compile_model(TINY, "sim-small", max_len=240, prefill_step=8, decode_step=16)
    count = [[e["instructions"] for e in c.manifest["programs"] if e["stage"] == "prefill"] for c in (small, large)]
    assert count[0] == count[1][:2] and len(count[1]) == 15   # KV tiles 1 .. 15
    assert len({b - a for a, b in zip(count[1], count[1][1:])}) == 1
