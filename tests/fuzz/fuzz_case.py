"""The fuzz suite's harness: run one `llmfab` command in-process on generated inputs and hold the
outcome to issue 14's bar.

Each case runs in a world of its own (a temporary folder): `model/` holds the inputs, `work/` is
the working directory and the only place anything may be written, and `outside/` holds planted
files with the same bytes as real inputs (a weight image, external data), so following a path
out of its folder would *succeed* and show. A Python audit hook records every file opened during
the case; opening anything in `outside/`, `/etc` or `/proc/self/mem` fails the case, as does any
change outside `work/`. A case has `TIMEOUT` seconds (SIGALRM) and an address-space limit, and
`LLMFAB_MEMORY_LIMIT` makes llmfab's own up-front checks refuse above the same 2 GiB.

Size: `LLMFAB_FUZZ_EXAMPLES` examples per strategy (default 60: the suite then takes under a
minute in `make test`); `make fuzz` runs many more. Seeds: hypothesis' `--hypothesis-seed`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import resource
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings

from llmfab.cli import main

EXAMPLES = int(os.environ.get("LLMFAB_FUZZ_EXAMPLES", "60"))
TIMEOUT = int(os.environ.get("LLMFAB_FUZZ_TIMEOUT", "30"))   # seconds a case may take
HEADROOM = 3 * 2**30                                          # address space a case may add
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize="LLMFAB_FUZZ_SEED" not in os.environ,
                suppress_health_check=list(HealthCheck), print_blob=True)
ERROR_LINE = re.compile(r"^llmfab( [a-z]+)?: error: \S.*$")
FORBIDDEN = ("/etc/", "/proc/self/mem")

_opened: list[str] | None = None


def _audit(event: str, args) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)   # cannot be removed; records only while a case runs


class Hang(BaseException):
    """A case ran past TIMEOUT (BaseException: the CLI's own `except Exception` must not catch it)."""


def _alarm(signum, frame):
    raise Hang()


@dataclass
class Outcome:
    argv: list[str]
    rc: int
    out: str
    err: str
    opened: list[str]


class World:
    """A temporary folder for one case: model/ (inputs), work/ (cwd, outputs), outside/ (sentinels)."""

    def __init__(self, root: Path):
        self.root = Path(tempfile.mkdtemp(dir=root))
        self.model, self.work, self.outside = (self.root / n for n in ("model", "work", "outside"))
        for d in (self.model, self.work, self.outside):
            d.mkdir()

    def plant(self, name: str, data: bytes) -> Path:
        """A file outside every input folder: a case that reads it has escaped."""
        p = self.outside / name
        p.write_bytes(data)
        return p

    def snapshot(self) -> dict[str, str]:
        """Everything but work/: names, and the hash of each file or link target."""
        snap = {}
        for p in sorted(self.root.rglob("*")):
            if self.work in p.parents or p == self.work:
                continue
            snap[str(p)] = (f"-> {os.readlink(p)}" if p.is_symlink() else
                            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        return snap


def run(world: World, *argv) -> Outcome:
    """`llmfab ARGV` in world.work, with the timeout, the memory cap and the open() record."""
    global _opened
    argv = [str(a) for a in argv]
    before = world.snapshot()
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    env = os.environ.get("LLMFAB_MEMORY_LIMIT")
    old = signal.signal(signal.SIGALRM, _alarm)
    opened: list[str] = []
    try:
        os.chdir(world.work)
        os.environ["LLMFAB_MEMORY_LIMIT"] = str(2 * 2**30)
        cap = in_use + HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        _opened = opened
        signal.alarm(TIMEOUT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:   # argparse: usage errors and --help
                rc = e.code if isinstance(e.code, int) else 2
    except Hang:
        raise AssertionError(f"llmfab {' '.join(argv)}: no answer after {TIMEOUT} s") from None
    finally:
        signal.alarm(0)
        _opened = None
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
        if env is None:
            os.environ.pop("LLMFAB_MEMORY_LIMIT", None)
        else:
            os.environ["LLMFAB_MEMORY_LIMIT"] = env
    o = Outcome(argv, rc, out.getvalue(), err.getvalue(), opened)
    check(world, o, before)
    return o


def check(world: World, o: Outcome, before: dict[str, str]) -> None:
    """Issue 14's bar for one case: success, or one `llmfab: error:` line with exit 2 that names
    a file, node, field or argument; no traceback; nothing outside read or changed."""
    cmd = "llmfab " + " ".join(o.argv)
    assert "Traceback" not in o.err + o.out and "internal error" not in o.err, f"{cmd}\n{o.err}"
    escaped = [p for p in o.opened if str(world.outside) in os.path.realpath(p) or p.startswith(FORBIDDEN)]
    assert not escaped, f"{cmd}: opened {escaped}"
    assert world.snapshot() == before, f"{cmd}: changed files outside the working folder"
    if o.rc == 0 or (o.rc == 1 and o.argv[0] == "report" and ("does not fit" in o.out or '"fits": false' in o.out)):
        return
    assert o.rc == 2, f"{cmd}: exit {o.rc}\n{o.err}"
    lines = o.err.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"{cmd}: not one error line:\n{o.err}"
    assert names_something(lines[0], o.argv), f"{cmd}: the error names no file, node, field or argument:\n{o.err}"


_NAMING = re.compile(r"field|node|argument|--[a-z]|manifest|policy|target|model|program|weight|"
                     r"token|LLMFAB_|\.(json|yaml|onnx|bin|npy)\b|\b[a-z_]+\.[a-z_.]+\b")


def names_something(line: str, argv: list[str]) -> bool:
    """The error names an input given (a path, its file name), an argument or a field/node."""
    named = any(a and not a.startswith(("--", "-o")) and (a in line or Path(a).name in line) for a in argv[1:])
    return named or bool(_NAMING.search(line.split(": error: ", 1)[1]))
