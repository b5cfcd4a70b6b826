"""The folders llmfab writes (BUILD, RTL) and the paths it reads back from them.

One rule for every `-o FOLDER`: a folder is written whole into a temporary folder beside it and
renamed into place, and an existing path is replaced only when it is a folder of the same kind
that llmfab wrote (its `MARKER` file and its manifest) or an empty folder. A file, device node,
symbolic link, a user's non-empty folder, or a folder holding one of the command's inputs is
refused with one line, before any work and again just before the swap. Reading back, every path a
manifest names must stay inside its folder once symbolic links are resolved (`inside`).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

MARKER = ".llmfab"                                     # "llmfab <kind>\n" in every folder llmfab writes
MANIFESTS = {"build": "manifest.json", "rtl": "rtl.json", "explore": "points.json"}   # kind -> its manifest
KIND_NAMES = {"build": "a BUILD", "rtl": "an RTL", "explore": "an explore"}


class FolderError(ValueError):
    pass


def marker(kind: str) -> bytes:
    return f"llmfab {kind}\n".encode()


def _what(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a file"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a folder"


def _is_ours(out: Path, kind: str) -> bool:
    m, man = out / MARKER, out / MANIFESTS[kind]
    return (m.is_file() and not m.is_symlink() and m.read_bytes() == marker(kind)
            and man.is_file() and not man.is_symlink())


def _replaceable(path: Path, kind: str) -> bool:
    """A real folder (not a link to one) that is empty or a `kind` folder llmfab wrote."""
    return not path.is_symlink() and path.is_dir() and (not any(path.iterdir()) or _is_ours(path, kind))


def check_output(out: str | Path, kind: str, inputs=()) -> Path:
    """`out` as a Path if llmfab may write a `kind` folder there; else FolderError naming it."""
    out = Path(out)
    real = out.resolve()
    for p in map(Path, inputs):   # replacing the folder would delete the command's own input
        if p.exists() and (p.resolve() == real or real in p.resolve().parents):
            raise FolderError(f"{out}: holds the input {p}, which writing it would delete; choose another "
                              f"output folder")
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return out
    if not stat.S_ISDIR(mode):
        raise FolderError(f"{out}: exists and is {_what(mode)}, not a folder; choose another output folder")
    if not _replaceable(out, kind):
        raise FolderError(f"{out}: exists and is not {KIND_NAMES[kind]} folder llmfab "
                          f"wrote (no {MARKER} and {MANIFESTS[kind]}); empty it or choose another output folder")
    return out


def check_output_file(out: str | Path, inputs=()) -> Path:
    """`out` as a Path if a command may replace it with a file: absent or a regular file, and not
    one of `inputs` nor inside an input folder (a BUILD); else FolderError naming it."""
    out = Path(out)
    real = out.resolve()
    for p in map(Path, inputs):
        if p.exists() and (p.resolve() == real or p.resolve() in real.parents):
            raise FolderError(f"{out}: is {'inside ' if p.is_dir() else ''}the input {p}, which writing it "
                              f"would change; choose another output file")
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return out
    if not stat.S_ISREG(mode):
        raise FolderError(f"{out}: exists and is {_what(mode) if not stat.S_ISDIR(mode) else 'a folder'}, not a "
                          f"file; choose another output file")
    return out


def write_folder(out: str | Path, kind: str, files: dict[str, bytes], inputs=()) -> Path:
    """Write `files` (relative path -> bytes) and the marker as the folder `out`, all or nothing:
    on any failure `out` stays as it was and no temporary folder is left."""
    out = check_output(out, kind, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes 0700; give the folder the usual mode
        for rel, data in sorted({**files, MARKER: marker(kind)}.items()):
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        check_output(out, kind, inputs)   # again: the path may have changed while we worked
        if os.path.lexists(out):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")    # move the previous output aside (same file system: atomic)
            x = old / "x"
            if not _replaceable(x, kind):
                os.replace(x, out)        # swapped for something else after the check: put it back
                raise FolderError(f"{out}: changed while llmfab was writing it; nothing was written")
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / "x", out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / "x").exists():
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def inside(root: str | Path, rel, what: str) -> Path:
    """The file `rel` names in the folder `root`: a relative path that stays inside `root` once
    symbolic links are resolved, and a regular file; else FolderError naming `what` (the field)."""
    root = Path(root)
    if not isinstance(rel, str) or not rel:
        raise FolderError(f"{root}: {what} must be a relative file name, not {rel!r}")
    if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise FolderError(f"{root}: {what} {rel!r} must be a path inside the folder (relative, no '..')")
    real, base = (root / rel).resolve(), root.resolve()
    if base not in real.parents:
        raise FolderError(f"{root}: {what} {rel!r} leads outside the folder (to {real})")
    if not real.is_file():
        raise FolderError(f"{root / rel}: {what} is missing" if not real.exists() else
                          f"{root / rel}: {what} is not a regular file")
    return real
