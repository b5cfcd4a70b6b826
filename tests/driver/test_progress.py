"""Progress on stderr: shown while compile runs when stderr is a terminal, nothing when it is a pipe
or with --quiet (so --json output stays clean)."""
from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import TINY


def _compile(tmp_path, *extra, tty: bool) -> tuple[int, bytes, bytes]:
    """`llmfab compile` of the tiny LLaMA with stderr a pseudo-terminal (tty) or a pipe."""
    argv = [sys.executable, "-m", "llmfab.cli", *extra, "compile", str(TINY), "--target", "u280", "--max-len", "32",
            "-o", str(tmp_path / "b")]
    if not tty:
        p = subprocess.run(argv, capture_output=True, timeout=300, cwd=tmp_path)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path, env=os.environ | {"COLUMNS": "100"})
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:    # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read()
    p.wait(timeout=300)
    os.close(master)
    return p.returncode, out, err


def test_progress_on_a_terminal(tmp_path):
    code, out, err = _compile(tmp_path, tty=True)
    assert code == 0 and b"wrote " in out
    text = err.decode(errors="replace")
    for stage in ("compile: load", "compile: quantize", "compile: layout", "compile: lower", "compile: package"):
        assert f"{stage}: " in text and " s" in text.split(f"{stage}: ", 1)[1][:20]   # each stage with its time
    assert b"compile: " not in out                                                    # stdout untouched


def test_no_progress_on_a_pipe_or_quiet(tmp_path):
    code, out, err = _compile(tmp_path, tty=False)
    assert code == 0 and err == b""
    code, _, err = _compile(tmp_path, "--quiet", tty=True)
    assert code == 0 and err == b""
