"""A compiled build folder as an object: `Build.open(dir)`, what `llmfab compile` wrote.

Reading build folders is the driver's work: the simulator and the RTL flow take a `Build` (its
manifest, target, programs and weight images) and never read paths themselves. `open` validates
the whole folder before anything runs: the manifest's schema (errors name the field), every file
it names inside the folder (relative, no `..`, no symbolic link out), present with the size and
sha256 the manifest records, program headers whole, and the build's own target file. A later
read checks the hash again, so what runs is what was compiled.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from llmfab.ir.folders import FolderError, inside
from llmfab.ir.isa import IsaError, Program, program_header
from llmfab.ir.target import Target, TargetError, target_from_text


class BuildError(ValueError):
    pass


_FILE = {"file": str, "bytes": int, "sha256": "sha256"}
# what `manifest.json` must hold for simulate and execute (more fields are allowed and ignored)
SCHEMA = {
    "llmfab_manifest": int, "max_len": int,
    "target": {"name": str, "file": str, "sha256": "sha256"},
    "programs": [{**_FILE, "stage": ("prefill", "decode"), "bucket": "bucket", "instructions": int,
                  "sections": [[int, str]]}],
    "weights": [_FILE],
    "hbm": {"bytes_per_channel": int},
    "output": {"addr": int, "channel": int, "channels": int, "row_bytes": int, "rows": int, "vocab": int},
}


def _check(v, spec, where: str) -> None:
    """`v` matches `spec` (a type, a tuple of choices, a dict of required keys, a one-element list
    of the item spec, or "sha256" / "bucket"); else BuildError naming the field `where`."""
    if isinstance(spec, dict):
        if not isinstance(v, dict):
            raise BuildError(f"{where or 'the manifest'} must be an object, not {type(v).__name__}")
        for k, s in spec.items():
            if k not in v:
                raise BuildError(f"{where + '.' if where else ''}{k} is missing")
            _check(v[k], s, f"{where + '.' if where else ''}{k}")
    elif isinstance(spec, list):
        if not isinstance(v, list) or (len(spec) > 1 and len(v) != len(spec)):
            raise BuildError(f"{where} must be a list{f' of {len(spec)}' if len(spec) > 1 else ''}, not {v!r:.60}")
        for i, x in enumerate(v):
            _check(x, spec[min(i, len(spec) - 1)], f"{where}[{i}]")
    elif spec == "sha256":
        if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            raise BuildError(f"{where} must be 64 lowercase hex digits, not {v!r:.80}")
    elif spec == "bucket":
        _check(v, [int, int], where)
        if not 1 <= v[0] <= v[1]:
            raise BuildError(f"{where} must be [lo, hi] with 1 <= lo <= hi, not {v}")
    elif isinstance(spec, tuple):
        if v not in spec:
            raise BuildError(f"{where} must be one of {', '.join(spec)}, not {v!r:.60}")
    elif spec is int:
        if type(v) is not int or v < 0:
            raise BuildError(f"{where} must be a non-negative integer, not {v!r:.60}")
    elif not isinstance(v, spec):
        raise BuildError(f"{where} must be a {spec.__name__}, not {type(v).__name__}")


def _read(root: Path, rel, what: str, sha256: str, size: int | None = None) -> bytes:
    """The bytes of the file `rel` of the build `root`: inside it, of the recorded size and hash."""
    try:
        real = inside(root, rel, what)
        have = real.stat().st_size
        data = real.read_bytes() if size is None or have == size else None   # never read a wrong-size file
    except (FolderError, OSError) as e:
        raise BuildError(str(e)) from None
    if data is None or (size is not None and len(data) != size):
        raise BuildError(f"{root / rel}: the {what} has {have} bytes, the manifest says {size} "
                         f"(truncated or replaced: compile again)")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BuildError(f"{root / rel}: the {what} differs from the one compiled (sha256 mismatch with manifest.json)")
    return data


def _target(root: Path, t: dict) -> Target:
    """The build's own copy of its target file, as hashed; never a bundled target by name."""
    data = _read(root, t["file"], "target file", t["sha256"])
    try:   # the bytes just hashed, not a second read of the file
        target = target_from_text(data.decode(), str(root / t["file"]))
    except UnicodeDecodeError as e:
        raise BuildError(f"{root / t['file']}: cannot read: {e}") from None
    except TargetError as e:
        raise BuildError(str(e)) from None
    if target.name != t["name"]:
        raise BuildError(f"{root / t['file']}: names target {target.name!r}, the manifest {t['name']!r}")
    return target


@dataclass(frozen=True)
class Build:
    path: Path
    manifest: dict
    target: Target       # the build's own copy of its target file, never a bundled one by name

    @classmethod
    def open(cls, path: str | Path) -> Build:
        path = Path(path)
        if not path.is_dir():
            raise BuildError(f"{path}: not a build folder (no such folder)")
        where = path / "manifest.json"
        try:
            manifest = json.loads(inside(path, "manifest.json", "manifest").read_bytes())
        except (FolderError, OSError, ValueError) as e:
            raise BuildError(f"{path}: not a build folder with a readable manifest.json ({e})") from None
        if isinstance(manifest, dict) and isinstance(manifest.get("target"), dict) and "file" not in manifest["target"]:
            raise BuildError(f"{where}: written before builds kept their target file (no target.file): compile again")
        try:
            _check(manifest, SCHEMA, "")
        except BuildError as e:
            raise BuildError(f"{where}: {e}") from None
        if manifest["llmfab_manifest"] != 1 or manifest["max_len"] < 1:
            raise BuildError(f"{where}: llmfab_manifest must be 1 and max_len positive")
        for e in manifest["programs"]:
            try:
                _, _, count = program_header(_read(path, e["file"], "program", e["sha256"], e["bytes"]))
            except IsaError as err:
                raise BuildError(f"{path / e['file']}: {err}") from None
            if count != e["instructions"]:
                raise BuildError(f"{path / e['file']}: holds {count} instructions, the manifest says {e['instructions']}")
        for w in manifest["weights"]:
            _read(path, w["file"], "weight image", w["sha256"], w["bytes"])
        target = _target(path, manifest["target"])
        mem, hbm = target.memory, manifest["hbm"]["bytes_per_channel"]
        if len(manifest["weights"]) not in (0, mem.channels) or hbm > mem.capacity_gb * 1e9 / mem.channels:
            raise BuildError(f"{where}: {len(manifest['weights'])} weight images of hbm.bytes_per_channel {hbm:,} "
                             f"do not match the target's {mem.channels} channels of {mem.capacity_gb} GB")
        return cls(path, manifest, target)

    @property
    def max_len(self) -> int:
        return self.manifest["max_len"]

    def entry(self, stage: str, length: int) -> dict:
        """The manifest entry of the program that serves `length` in `stage` (its bucket)."""
        for e in self.manifest["programs"]:
            if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
                return e
        raise BuildError(f"{self.path}: no {stage} program for length {length} (max_len {self.max_len})")

    def program_file(self, e: dict) -> bytes:
        """The bytes of the program file of manifest entry `e`, as hashed."""
        return _read(self.path, e["file"], "program", e["sha256"], e["bytes"])

    def _program(self, e: dict) -> Program:
        try:
            return Program.from_bytes(self.program_file(e))
        except IsaError as err:
            raise BuildError(f"{self.path / e['file']}: {err}") from None

    def program_for(self, stage: str, length: int) -> Program:
        return self._program(self.entry(stage, length))

    def sections(self, stage: str, length: int) -> list:
        """(first instruction, label) of each section of that program (layers, embedding, head)."""
        return self.entry(stage, length)["sections"]

    def programs(self) -> list[Program]:
        return [self._program(e) for e in self.manifest["programs"]]

    def images(self) -> list[bytes]:
        """The weight image of every HBM channel (none for a config-only build)."""
        return [_read(self.path, w["file"], "weight image", w["sha256"], w["bytes"]) for w in self.manifest["weights"]]
