"""Power at a decode context is timed on the program of the bucket holding that context (a build
with several decode buckets: the last one runs the KV tiles of the longest context)."""
import pytest

from conftest import FIXTURES
from llmfab.compile import check_fit, step_lower
from llmfab.report import decode_program


def test_decode_program_is_the_bucket_holding_the_context():
    f = check_fit(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", length=64, decode_step=16)
    step_lower(f)
    assert len(f.decode) == 4
    for ctx in (1, 16, 17, 40, 64):
        b = next(lo.bucket for lo in f.decode if lo.program is decode_program(f, ctx))
        assert b.lo <= ctx <= b.hi
    assert decode_program(f, 20) is not f.decode[-1].program
    with pytest.raises(ValueError, match=r"^no decode bucket holds context 65 \(buckets up to 64\)$"):
        decode_program(f, 65)
