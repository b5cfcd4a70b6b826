"""Power at a decode context is timed on the program of the bucket holding that context (a build
with several decode buckets: the last one runs the KV tiles of the longest context)."""
import pytest

from conftest import FIXTURES
from llmfab.compile import check_fit, step_lower, step_package
from llmfab.report import _FlowBuild


def test_decode_program_is_the_bucket_holding_the_context():
    f = check_fit(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", length=64, decode_step=16)
    step_lower(f)
    step_package(f)
    build = _FlowBuild(f)
    assert len(f.decode) == 4
    for ctx in (1, 16, 17, 40, 64):
        b = next(lo.bucket for lo in f.decode if lo.program is build.program_for("decode", ctx))
        assert b.lo <= ctx <= b.hi
    assert build.program_for("decode", 20) is not f.decode[-1].program
    with pytest.raises(ValueError, match=r"^.* \(in memory\): no decode program for length 65 \(max_len 64\)$"):
        build.program_for("decode", 65)
