"""`-o FOLDER` never destroys what llmfab did not write (ir/folders.py): a user's folder, the
model's own folder, a file, a symbolic link or a device node is refused with one line and left
as it was; only a BUILD (or RTL folder) llmfab wrote is replaced, whole or not at all."""
import os
import re
import shutil
import stat

import pytest

from conftest import FIXTURES
from llmfab.cli import main
from llmfab.ir.folders import MARKER, FolderError, check_output, write_folder

MODEL = FIXTURES / "llama_ts_op14.onnx"


def _run(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _compile(capsys, out, model=MODEL):
    return _run(capsys, "compile", model, "--target", "sim-small", "--max-len", "8", "-o", out)


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _device(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))   # a /dev/null of our own, never the real one
    except PermissionError:
        pytest.skip("mknod is not permitted here")


def test_a_users_folder_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    rc, err = _compile(capsys, tmp_path / "out")
    assert rc == 2 and re.fullmatch(r"llmfab: error: \S+/out: exists and is not a BUILD folder llmfab wrote "
                                    r"\(no \.llmfab and manifest\.json\); empty it or choose another output folder\n", err)
    assert _tree(tmp_path / "out") == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # nothing half-written beside it


def test_a_folder_holding_the_input_is_refused(tmp_path, capsys):
    """`-o` the model's own folder, or a BUILD the model was copied into: the model stays."""
    shutil.copy(MODEL, tmp_path / "m.onnx")
    rc, err = _compile(capsys, tmp_path, tmp_path / "m.onnx")
    assert rc == 2 and err.startswith(f"llmfab: error: {tmp_path}: holds the input {tmp_path}/m.onnx, which "
                                      f"writing it would delete; choose another output folder")
    assert _compile(capsys, tmp_path / "b")[0] == 0
    shutil.copy(MODEL, tmp_path / "b" / "m.onnx")
    rc, err = _compile(capsys, tmp_path / "b", tmp_path / "b" / "m.onnx")
    assert rc == 2 and "holds the input" in err and (tmp_path / "b" / "m.onnx").read_bytes() == MODEL.read_bytes()


@pytest.mark.parametrize("kind", ["file", "symlink", "device"])
def test_a_non_folder_is_refused_and_kept(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("data")
    elif kind == "symlink":   # even to a BUILD llmfab wrote: replacing would drop the link, not the folder
        assert _compile(capsys, tmp_path / "b")[0] == 0
        out.symlink_to(tmp_path / "b")
    else:
        _device(out)
    before = os.lstat(out)
    what = {"file": "a file", "symlink": "a symbolic link", "device": "a character device"}[kind]
    rc, err = _compile(capsys, out)
    assert rc == 2 and err == f"llmfab: error: {out}: exists and is {what}, not a folder; choose another output folder\n"
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out"} | ({"b"} if kind == "symlink" else set()))


def test_a_build_llmfab_wrote_is_replaced_and_a_failed_compile_keeps_it(tmp_path, capsys):
    out = tmp_path / "b"
    assert _compile(capsys, out)[0] == 0
    assert (out / MARKER).read_bytes() == b"llmfab build\n"
    first = _tree(out)
    assert _compile(capsys, out)[0] == 0 and _tree(out) == first   # replaced, byte-identical
    rc, err = _run(capsys, "compile", "llama2-7b", "--target", "ecp5-85k", "--max-len", "8", "-o", out)
    assert rc == 2 and "too much" in err and _tree(out) == first
    (out / MARKER).unlink()                  # a manifest alone does not make a folder llmfab's
    assert _compile(capsys, out)[0] == 2 and _tree(out) == {k: v for k, v in first.items() if k != MARKER}


def test_an_rtl_folder_is_not_a_build_and_the_other_way(tmp_path):
    write_folder(tmp_path / "r", "rtl", {"rtl.json": b"{}"})
    with pytest.raises(FolderError, match=r"r: exists and is not a BUILD folder llmfab wrote"):
        check_output(tmp_path / "r", "build")
    write_folder(tmp_path / "r", "rtl", {"rtl.json": b"{}\n"})
    assert (tmp_path / "r" / "rtl.json").read_bytes() == b"{}\n"


def test_rtl_and_output_files_follow_the_same_rule(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.v").write_text("keep")
    rc, err = _run(capsys, "rtl", "--target", "sim-small", "--part", "engine", "-o", tmp_path / "mine")
    assert rc == 2 and err.endswith("mine: exists and is not an RTL folder llmfab wrote (no .llmfab and rtl.json); "
                                    "empty it or choose another output folder\n")
    _device(tmp_path / "null")
    rc, err = _run(capsys, "interpret", MODEL, "--tokens", "1 2", "--out", tmp_path / "null")
    assert rc == 2 and err.endswith("null: exists and is a character device, not a file; choose another output file\n")
    assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    shutil.copy(MODEL, tmp_path / "m.onnx")
    rc, err = _run(capsys, "interpret", tmp_path / "m.onnx", "--tokens", "1 2", "--out", tmp_path / "m.onnx")
    assert rc == 2 and "m.onnx: is the input" in err and (tmp_path / "m.onnx").read_bytes() == MODEL.read_bytes()
    assert _compile(capsys, tmp_path / "b")[0] == 0
    rc, err = _run(capsys, "execute", tmp_path / "b", "--tokens", "1 2", "--out", tmp_path / "b" / "manifest.json")
    assert rc == 2 and "manifest.json: is inside the input" in err


def test_a_folder_swapped_in_after_the_check_is_put_back(tmp_path, monkeypatch):
    """The last check and the move aside are two steps: what was moved is checked again."""
    import llmfab.ir.folders as folders
    out = write_folder(tmp_path / "r", "rtl", {"rtl.json": b"{}"})
    real_check, calls = folders.check_output, []

    def check_then_swap(path, kind, inputs=()):
        got = real_check(path, kind, inputs)
        calls.append(path)
        if len(calls) < 2:   # the first check, before the files are written
            return got
        shutil.rmtree(out)
        out.mkdir()
        (out / "mine.txt").write_text("keep me")   # a user's folder lands between check and rename
        return got

    monkeypatch.setattr(folders, "check_output", check_then_swap)
    with pytest.raises(FolderError, match=r"r: changed while llmfab was writing it; nothing was written$"):
        write_folder(out, "rtl", {"rtl.json": b"{}\n"})
    assert _tree(out) == {"mine.txt": b"keep me"} and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
