"""`Build.open` validates a BUILD folder before anything runs: its manifest's schema, every file
inside the folder with the size and hash recorded, whole program headers, and its own target."""
import hashlib
import json
import re
import shutil

import pytest

from conftest import FIXTURES, ROOT
from llmfab.build import Build, BuildError
from llmfab.cli import main
from llmfab.compile import compile_model, write_build


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "b"
    write_build(compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", max_len=8), out)
    return out


@pytest.fixture
def build(good, tmp_path):
    shutil.copytree(good, tmp_path / "b", symlinks=True)
    return tmp_path / "b"


def _edit(b, change):
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _outside(b, name="planted.bin"):
    p = b.parent / name
    p.write_bytes((b / "weights" / "ch00.bin").read_bytes())   # same size and hash: only the place is wrong
    return p


def _set_file(path):
    return lambda m: m["weights"][0].update(file=str(path))


def _symlink_out(b):
    planted = _outside(b)
    (b / "weights" / "ch00.bin").unlink()
    (b / "weights" / "ch00.bin").symlink_to(planted)


CASES = {
    "absolute path": (lambda b: _edit(b, _set_file(_outside(b))),
                      r"weight image '/\S+/planted\.bin' must be a path inside the folder \(relative, no '\.\.'\)$"),
    "dot-dot path": (lambda b: (_outside(b), _edit(b, _set_file("../planted.bin"))),
                     r"weight image '\.\./planted\.bin' must be a path inside the folder \(relative, no '\.\.'\)$"),
    "symlink out": (_symlink_out,
                    r"weight image 'weights/ch00\.bin' leads outside the folder \(to /\S+/planted\.bin\)$"),
    "missing image": (lambda b: (b / "weights" / "ch00.bin").unlink(),
                      r"/b/weights/ch00\.bin: weight image is missing$"),
    "truncated program": (lambda b: (b / "programs" / "decode_00001_00008.bin").write_bytes(
                              (b / "programs" / "decode_00001_00008.bin").read_bytes()[:-32]),
                          r"/b/programs/decode_00001_00008\.bin: the program has \d+ bytes, the manifest says \d+ "
                          r"\(truncated or replaced: compile again\)$"),
    "tampered image": (lambda b: (b / "weights" / "ch00.bin").write_bytes(
                           b"\x55" + (b / "weights" / "ch00.bin").read_bytes()[1:]),
                       r"/b/weights/ch00\.bin: the weight image differs from the one compiled \(sha256 mismatch "
                       r"with manifest\.json\)$"),
    "missing field": (lambda b: _edit(b, lambda m: m["output"].pop("vocab")),
                      r"/b/manifest\.json: output\.vocab is missing$"),
    "wrong type": (lambda b: _edit(b, lambda m: m["programs"][1].update(bucket=[3, "8"])),
                   r"/b/manifest\.json: programs\[1\]\.bucket\[1\] must be a non-negative integer, not '8'$"),
    "bad stage": (lambda b: _edit(b, lambda m: m["programs"][0].update(stage="warmup")),
                  r"/b/manifest\.json: programs\[0\]\.stage must be one of prefill, decode, not 'warmup'$"),
    "not json": (lambda b: (b / "manifest.json").write_text("{"),
                 r"/b: not a build folder with a readable manifest\.json \(Expecting"),
    "no target file": (lambda b: _edit(b, lambda m: m["target"].pop("file")),
                       r"/b/manifest\.json: written before builds kept their target file \(no target\.file\): "
                       r"compile again$"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_build_is_refused_naming_the_file_or_field(build, case):
    change, message = CASES[case]
    Build.open(build)   # the copy is good before the change
    change(build)
    with pytest.raises(BuildError, match=message):
        Build.open(build)


def test_a_program_with_a_bad_header_is_refused_even_with_a_matching_hash(build):
    """The hash only says the file is the one recorded; the header must also hold the count."""
    p = build / "programs" / "decode_00001_00008.bin"
    data = bytearray(p.read_bytes())
    data[0:4] = b"XXXX"
    p.write_bytes(bytes(data))
    _edit(build, lambda m: m["programs"][1].update(sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(BuildError, match=r"decode_00001_00008\.bin: not an llmfab program: magic b'XXXX'"):
        Build.open(build)


def test_execute_on_a_tampered_build_prints_one_line_and_no_logits(build, tmp_path, capsys):
    (build / "weights" / "ch00.bin").unlink()
    rc = main(["execute", str(build), "--tokens", "1 2", "--out", str(tmp_path / "logits.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and re.fullmatch(r"llmfab: error: \S+/b/weights/ch00\.bin: weight image is missing\n", err)
    assert not (tmp_path / "logits.npy").exists()


def test_a_custom_target_named_u280_is_the_one_simulated(tmp_path, capsys):
    """A copy of u280 with half the chains, still named `u280`: simulate reports the build's own
    target, not the bundled u280 looked up by name."""
    text = (ROOT / "llmfab" / "targets" / "u280.yaml").read_text()
    assert "  n_chains: 192\n" in text
    (tmp_path / "u280.yaml").write_text(text.replace("  n_chains: 192\n", "  n_chains: 96\n"))
    model = str(FIXTURES / "llama_ts_op14.onnx")
    reports = {}
    for name, target in (("bundled", "u280"), ("mine", str(tmp_path / "u280.yaml"))):
        write_build(compile_model(model, target, max_len=32), tmp_path / name)
        assert main(["simulate", str(tmp_path / name), "--prefill", "8", "--decode", "8", "--json",
                     "--model", "design"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    (tmp_path / "u280.yaml").unlink()   # the build needs nothing but itself
    assert Build.open(tmp_path / "mine").target.engine.n_chains == 96
    assert reports["mine"]["target"] == reports["bundled"]["target"] == "u280"
    # the same work on half the DSPs: twice their utilisation (in the design's timing: the RTL's is not linear)
    assert reports["mine"]["dsp_utilization"] == pytest.approx(2 * reports["bundled"]["dsp_utilization"], rel=0.01)
