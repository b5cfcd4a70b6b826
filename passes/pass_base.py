"""Passes: frozen dataclasses with a `name`, typed fields as options, and `apply(graph)`.

A pipeline is written like `fuse-linear,fuse-norm,quantize{bits=4,group=128}`; the registry in
`passes/__init__.py` maps names to pass classes. The pipeline verifies the graph after each pass.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import ClassVar

from llmfab.ir import Graph, print_graph, verify


class PassError(ValueError):
    pass


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""

    def apply(self, graph: Graph) -> None:  # rewrites `graph` in place
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: dict[str, str]) -> "Pass":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in options.items():
            if k not in fields:
                raise PassError(f"pass {cls.name!r} has no option {k!r}; options: {sorted(fields) or 'none'}")
            typ = fields[k].type if not isinstance(fields[k].type, str) else eval_type(fields[k].type)
            try:
                kwargs[k] = _parse_bool(v) if typ is bool else typ(v)
            except ValueError:
                raise PassError(f"pass {cls.name!r}: option {k}={v!r} must be {typ.__name__}") from None
        return cls(**kwargs)


def _parse_bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise ValueError(v)


def eval_type(name: str) -> type:
    # Field annotations are strings under `from __future__ import annotations`; only plain
    # scalar option types are allowed, looked up in a fixed table (never eval'd).
    table = {"int": int, "float": float, "str": str, "bool": bool}
    if name not in table:
        raise PassError(f"pass option type {name!r} is not a plain scalar")
    return table[name]


_SPEC = re.compile(r"\s*([a-z0-9-]+)(?:\{([^}]*)\})?\s*(?:,|$)")


def parse_pipeline(spec: str, registry: dict[str, type[Pass]]) -> list[Pass]:
    passes, pos = [], 0
    spec = spec.strip()
    while pos < len(spec):
        m = _SPEC.match(spec, pos)
        if not m or m.end() == pos:
            raise PassError(f"cannot parse pass pipeline at {spec[pos:]!r}")
        name, opts = m.group(1), m.group(2)
        if name not in registry:
            raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(registry))}")
        options = {}
        for kv in filter(None, (o.strip() for o in (opts or "").split(","))):
            if "=" not in kv:
                raise PassError(f"pass {name!r}: option {kv!r} must be key=value")
            k, v = kv.split("=", 1)
            options[k.strip()] = v.strip()
        passes.append(registry[name].from_options(options))
        pos = m.end()
    return passes


@dataclass
class PipelineReport:
    seconds: dict[str, float] = field(default_factory=dict)
    printed: list[str] = field(default_factory=list)


def run_pipeline(graph: Graph, passes: list[Pass], *, verify_each: bool = True,
                 print_between: bool = False, report: PipelineReport | None = None) -> PipelineReport:
    """Apply `passes` in order; times and printed graphs go into `report` (a new one by default)."""
    report = PipelineReport() if report is None else report
    for p in passes:
        t0 = time.perf_counter()
        p.apply(graph)
        report.seconds[p.name] = report.seconds.get(p.name, 0.0) + time.perf_counter() - t0
        if verify_each:
            verify(graph)
        if print_between:
            report.printed.append(f"// after {p.name}\n" + print_graph(graph, skip_consts=True))
    return report
