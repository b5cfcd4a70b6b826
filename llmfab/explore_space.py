"""`llmfab explore`'s space file: the axes a sweep may vary, their values, its points, and the one
function that derives a point's Target from the base target (`derive_target`).

A space file is YAML, read with `yaml.safe_load` only (docs/explore.md):

    prefill: 128                 # prompt tokens timed for TTFT (optional, 128)
    decode: 512                  # decode steps timed for tokens/s (optional, 512)
    axes:                        # each axis: one value, a list, or a range
      engine.n_chains: [128, 192]
      engine.chain_len: {from: 16, to: 64, times: 2}
      clock_mhz: {from: 150, to: 300, step: 50}
      policy: [int4-g128, w4-2of4]

The points are every combination. A file with an unknown key, an empty range, or a value the
device cannot hold even with the smallest value of every other axis is refused with one line
naming the file and the key; a combination that does not fit is a point recorded as such.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmfab.ir.target import BufferName, Target, TargetError, _is_int, target_from_text
from llmfab.ir.yaml_file import read_yaml

MAX_POINTS = 10_000   # a typo in a range (step 1 instead of 100) should not start a week-long sweep
TOP_KEYS = {"prefill": "a positive int (prompt tokens timed; default 128)",
            "decode": "a positive int (decode steps timed; default 512)",
            "axes": "a mapping of axis -> values"}


class SpaceError(ValueError):
    pass


def _positive(v) -> bool:
    return v > 0


def _power_of_two(v) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class Axis:
    key: str
    what: str                                  # what each value must be, for messages
    kind: type = int                           # int, float (any number) or str
    ok: Callable[[Any], bool] = _positive
    target: bool = True                        # a Target field (else a compile option)


AXES = {a.key: a for a in (
    Axis("engine.n_chains", "a positive int (DSP chains; the weight buffer keeps one bank per chain)"),
    Axis("engine.chain_len", "a positive power of two (stages per chain; pipeline_depth follows)", ok=_power_of_two),
    Axis("clock_mhz", "a positive number (kernel clock, MHz)", float),
    *(Axis(f"buffers.{b.value}.bytes", "a positive int (bytes; a multiple of one row across the banks)")
      for b in BufferName),
    Axis("memory.channels", "a positive int (memory channels used, at most the device's; capacity follows)"),
    Axis("policy", "a bundled policy name or a policy YAML file", str, ok=bool, target=False),
    Axis("max_len", "a positive int (longest prompt + generation, --max-len)", target=False),
    Axis("prefill_step", "a positive int (prompt tokens per chunk, --prefill-step)", target=False),
    Axis("decode_step", "a positive int (contexts per decode bucket, --decode-step)", target=False),
)}


@dataclass(frozen=True)
class Space:
    source: str
    prefill: int
    decode: int
    axes: dict[str, tuple]    # in AXES order; values as listed or generated

    def points(self) -> list[dict]:
        """Every combination, sorted by its values in AXES order (deterministic whatever the
        order of the file's lists)."""
        keys = list(self.axes)
        pts = [dict(zip(keys, vals)) for vals in itertools.product(*(self.axes[k] for k in keys))]
        return sorted(pts, key=lambda p: tuple(p[k] for k in keys))


def point_id(params: dict) -> str:
    """A point's name: a hash of its values, stable when the space around it grows."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def load_space(path: str | Path, base: Target) -> Space:
    """The space in the YAML file at `path`, every value checked against `base` (SpaceError)."""
    src = str(path)
    _, data = read_yaml(path, "space file", SpaceError, src)
    if not isinstance(data, dict):
        raise SpaceError(f"{src}: a space file must be a mapping with {', '.join(TOP_KEYS)}, not {data!r}")
    for k in data:
        if k not in TOP_KEYS:
            raise SpaceError(f"{src}: {k} is not a key of a space file; expected one of {', '.join(TOP_KEYS)}")
    timed = {}
    for k, default in (("prefill", 128), ("decode", 512)):
        v = data.get(k, default)
        if not _is_int(v) or v < 1:
            raise SpaceError(f"{src}: {k} must be {TOP_KEYS[k]}, not {v!r}")
        timed[k] = v
    raw = data.get("axes")
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{src}: axes must be a non-empty mapping of axis -> values (axes: {', '.join(AXES)}), "
                         f"not {raw!r}")
    for k in raw:
        if k not in AXES:
            raise SpaceError(f"{src}: axes.{k} is not an axis; expected one of {', '.join(AXES)}")
    axes = {k: _values(src, AXES[k], raw[k], Path(path).parent) for k in AXES if k in raw}
    space = Space(src, timed["prefill"], timed["decode"], axes)
    n = math.prod(len(v) for v in axes.values())
    if n > MAX_POINTS:
        raise SpaceError(f"{src}: {n:,} points; at most {MAX_POINTS:,} (narrow a range or raise its step)")
    _check_device(space, base)
    return space


def _values(src: str, axis: Axis, raw: Any, folder: Path) -> tuple:
    where = f"{src}: axes.{axis.key}"
    if isinstance(raw, dict):
        vals = _range(where, axis, raw)
    else:
        vals = list(raw) if isinstance(raw, list) else [raw]
        if not vals:
            raise SpaceError(f"{where}: the list is empty; give at least one value")
    out = []
    for v in vals:
        good = (isinstance(v, str) and v.strip() if axis.kind is str else
                _is_int(v) or axis.kind is float and isinstance(v, float) and math.isfinite(v))
        if not good or not axis.ok(v):
            raise SpaceError(f"{where}: each value must be {axis.what}, not {v!r}")
        if v in out:
            raise SpaceError(f"{where}: lists {v!r} twice")
        out.append(v)
    if axis.key == "policy":   # a policy file is found beside the space file, as a user reads it
        from llmfab.passes.policy import PolicyError, load_policy
        out = [str(folder / v) if not Path(v).is_file() and (folder / v).is_file() else v for v in out]
        for v in out:
            try:
                load_policy(v)
            except PolicyError as e:
                raise SpaceError(f"{where}: {e}") from None
    return tuple(out)


def _range(where: str, axis: Axis, raw: dict) -> list:
    """{from, to, step} (arithmetic) or {from, to, times} (geometric), both ends included."""
    if axis.kind is str:
        raise SpaceError(f"{where}: a range needs a numeric axis; list the values instead")
    keys = set(raw)
    if keys not in ({"from", "to", "step"}, {"from", "to", "times"}):
        raise SpaceError(f"{where}: a range is {{from, to, step}} or {{from, to, times}}, not {{{', '.join(map(str, raw))}}}")
    lo, hi = raw["from"], raw["to"]
    by = raw.get("step", raw.get("times"))
    for name, v in (("from", lo), ("to", hi), ("step" if "step" in raw else "times", by)):
        if not (_is_int(v) or isinstance(v, float) and math.isfinite(v)):
            raise SpaceError(f"{where}: {name} must be a number, not {v!r}")
    if lo > hi:
        raise SpaceError(f"{where}: the range from {lo} to {hi} is empty")
    if "step" in raw and by <= 0 or "times" in raw and by <= 1:
        raise SpaceError(f"{where}: {'step must be positive' if 'step' in raw else 'times must be above 1'}, not {by}")
    out, v = [], lo
    limit = MAX_POINTS + 1
    while v <= hi * (1 + 1e-12) and len(out) < limit:
        out.append(v)
        v = lo + len(out) * by if "step" in raw else v * by
    if axis.kind is int and not all(_is_int(x) for x in out):
        raise SpaceError(f"{where}: the range gives {next(x for x in out if not _is_int(x))!r}; this axis needs integers")
    return [round(x, 9) if isinstance(x, float) else x for x in out]


def _check_device(space: Space, base: Target) -> None:
    """Each target value on its own, with every other target axis at its smallest value (the
    fewest resources): if even that is no valid target, no point with the value can be."""
    target_keys = [k for k in space.axes if AXES[k].target]
    smallest = {k: min(space.axes[k]) for k in target_keys}
    for k in target_keys:
        for v in space.axes[k]:
            try:
                derive_target(base, smallest | {k: v}, "check")
            except TargetError as e:
                why = str(e).removeprefix("check.yaml: ")
                raise SpaceError(f"{space.source}: axes.{k}: {v!r} cannot be held by {base.name} even with the "
                                 f"smallest value of every other axis: {why}") from None


def derive_target(base: Target, params: dict, name: str) -> Target:
    """The point's Target: `base` with the point's target axes set, as a YAML text parsed and
    validated exactly like a user's target file (`target.text` is that file, ready for `llmfab
    compile --target`). What follows from an axis follows here, once: pipeline_depth keeps its
    margin over chain_len; the weight buffer keeps one bank per chain (if the base has), a word per
    stage as wide as the base's and its depth when its size is not an axis; fewer memory channels
    bring their share of the capacity."""
    data = yaml.safe_load(base.text)
    e, b0 = data["engine"], base.engine
    n_chains, chain_len = params.get("engine.n_chains", b0.n_chains), params.get("engine.chain_len", b0.chain_len)
    e["n_chains"], e["chain_len"] = n_chains, chain_len
    e["pipeline_depth"] = b0.pipeline_depth - b0.chain_len + chain_len
    bufs = {b["name"]: b for b in data["buffers"]}
    w, w0 = bufs[BufferName.WEIGHT.value], base.buffer(BufferName.WEIGHT)
    if w0.banks == b0.n_chains:
        w["banks"] = n_chains
    w["width_bits"] = w0.width_bits * chain_len // b0.chain_len
    w["bytes"] = w0.depth * w["banks"] * w["width_bits"] // 8
    for buf in BufferName:
        if f"buffers.{buf.value}.bytes" in params:
            bufs[buf.value]["bytes"] = params[f"buffers.{buf.value}.bytes"]
    if "clock_mhz" in params:
        data["clock_mhz"] = params["clock_mhz"]
    if "memory.channels" in params:
        ch, m0 = params["memory.channels"], base.memory
        if ch > m0.channels:
            raise TargetError(f"{name}.yaml: memory.channels {ch} is more than the {m0.channels} channels "
                              f"{base.name} has")
        data["memory"]["channels"] = ch
        data["memory"]["capacity_gb"] = round(m0.capacity_gb * ch / m0.channels, 9)
    data["name"] = name
    changed = ", ".join(f"{k} {v}" for k, v in params.items() if AXES[k].target) or "no change"
    data["description"] = f"{base.name} with {changed} (llmfab explore)"
    text = (f"# Written by `llmfab explore` from {base.source}: {changed}.\n"
            f"# Comments of the base file are not kept; docs/targets.md has the schema.\n"
            + yaml.safe_dump(data, sort_keys=False, width=100))
    return target_from_text(text, f"{name}.yaml")
