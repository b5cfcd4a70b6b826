"""The package rules of docs/architecture.md: one direction of imports between the stages, and a
backend_hw whose sub-packages say what they export."""
import ast
import importlib
from pathlib import Path

import pytest

from conftest import ROOT

STAGES = ("ir", "frontend", "passes", "simulator", "backend_hw")
# the llmfab packages each stage may import (besides itself); the driver (`llmfab`) is never one
ALLOWED = {"ir": set(), "frontend": {"ir"}, "passes": {"ir"}, "simulator": {"ir"}, "backend_hw": {"ir"}}


def _imports(path: Path) -> set[str]:
    """Every `llmfab.X` module a file imports, at any depth (lazy imports inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("llmfab")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llmfab"):
            out.add(node.module)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_only_what_they_may(stage):
    bad = []
    for f in sorted((ROOT / stage).rglob("*.py")):
        for mod in _imports(f):
            parts = mod.split(".")
            other = parts[1] if len(parts) > 1 else ""
            if other != stage and other not in ALLOWED[stage]:
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_backend_hw_is_sub_packages_with_exports():
    hw = ROOT / "backend_hw"
    top = sorted(p.name for p in hw.glob("*.py"))
    assert len(top) <= 10, top
    subs = sorted(p.parent.name for p in hw.glob("*/__init__.py"))
    assert len(subs) >= 3, subs
    for name in subs:
        mod = importlib.import_module(f"llmfab.backend_hw.{name}")
        assert mod.__doc__ and mod.__all__, name
        for export in mod.__all__:
            assert hasattr(mod, export), f"llmfab.backend_hw.{name}.__all__ names {export!r}, which it lacks"
    pkg = importlib.import_module("llmfab.backend_hw")
    for export in pkg.__all__:
        assert getattr(pkg, export) is not None


def test_protocol_signatures_compare_by_value():
    from llmfab.backend_hw.protocol import AxiSignature, BufferPortSignature, Valid
    assert BufferPortSignature(64) == BufferPortSignature(64) != BufferPortSignature(32)
    assert AxiSignature(32, 256) == AxiSignature(32, 256) != AxiSignature(32, 128)
    assert Valid(8) == Valid(8) != Valid(16)
    assert repr(BufferPortSignature(64)) == "BufferPortSignature(64, 24)"


def test_state_names_the_cycle_formulas_count_are_the_sequencers_states():
    """matrix/cycles.py counts FSM states by the names the sequencers declare; each name must be
    a state their `elaborate` defines, so renaming or removing one fails here."""
    import inspect
    import re

    from llmfab.backend_hw.matrix.attn import AttnSequencer
    from llmfab.backend_hw.matrix.mm import MatmulSequencer
    for cls in (MatmulSequencer, AttnSequencer):
        defined = set(re.findall(r'm\.State\("(\w+)"\)', inspect.getsource(cls.elaborate)))
        named = {s for k, v in vars(cls).items() if k.endswith("_STATES") for s in v}
        assert named and named <= defined, (cls.__name__, named - defined)


def test_long_files_are_few_and_say_why():
    """Small files with names that explain themselves: at most two product modules over 450
    lines, each saying in its docstring why it stays whole."""
    long = []
    for stage in STAGES + ("llmfab",):
        for f in sorted((ROOT / stage).rglob("*.py")):
            if len(f.read_text().splitlines()) > 450:
                long.append(f)
    assert len(long) <= 2, long
    for f in long:
        doc = ast.get_docstring(ast.parse(f.read_text())) or ""
        assert "over the ~450 lines" in doc, f"{f.relative_to(ROOT)} is long and does not say why"
