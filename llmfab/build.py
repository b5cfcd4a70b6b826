"""A compiled build folder as an object: `Build.open(dir)`, what `llmfab compile` wrote.

Reading build folders is the driver's work: the simulator and the RTL flow take a `Build` (its
manifest, target, programs and weight images) and never read paths themselves.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from llmfab.ir.isa import Program
from llmfab.ir.target import Target, load_target


class BuildError(ValueError):
    pass


@dataclass(frozen=True)
class Build:
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> Build:
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise BuildError(f"{path}: not a build folder with a manifest.json ({e})") from None
        return cls(path, manifest)

    @cached_property
    def target(self) -> Target:
        """The target compiled for: the build's own copy of its file (a bundled name for builds
        made before builds kept one)."""
        t = self.manifest["target"]
        if "file" not in t:
            return load_target(t["name"])
        path = self.path / t["file"]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BuildError(f"{path}: the build's target file cannot be read ({e.strerror})") from None
        if hashlib.sha256(data).hexdigest() != t.get("sha256"):
            raise BuildError(f"{path}: the target file differs from the one the build was compiled for "
                             f"(sha256 mismatch with manifest.json)")
        target = load_target(path)
        if target.name != t["name"]:
            raise BuildError(f"{path}: names target {target.name!r}, the manifest {t['name']!r}")
        return target

    @property
    def max_len(self) -> int:
        return self.manifest["max_len"]

    def entry(self, stage: str, length: int) -> dict:
        """The manifest entry of the program that serves `length` in `stage` (its bucket)."""
        for e in self.manifest["programs"]:
            if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
                return e
        raise BuildError(f"{self.path}: no {stage} program for length {length} (max_len {self.max_len})")

    def program_for(self, stage: str, length: int) -> Program:
        return Program.from_bytes((self.path / self.entry(stage, length)["file"]).read_bytes())

    def sections(self, stage: str, length: int) -> list:
        """(first instruction, label) of each section of that program (layers, embedding, head)."""
        return self.entry(stage, length).get("sections", [])

    def programs(self) -> list[Program]:
        return [Program.from_bytes((self.path / e["file"]).read_bytes()) for e in self.manifest["programs"]]

    def images(self) -> list[bytes]:
        """The weight image of every HBM channel (none for a config-only build)."""
        return [(self.path / w["file"]).read_bytes() for w in self.manifest["weights"]]
