"""The target YAML schema: the fields of each section with what they must be, and `parse`, which
checks a parsed file field by field (errors name the file, the field path and what was expected)
and builds the `Target` (target.py holds the types, `load_target` and `parse_target`)."""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import Enum
from typing import Any

from .quant import BITS, PATTERNS
from .target import (ACT_BITS, BRAM36_KB, EBR_KB, FAMILY_PRIMITIVES, PACKING_PRIMITIVES, SFU, Buffer, BufferKind,
                     BufferName, Controller, Device, DeviceFamily, DSPPrimitive, Engine, Memory, MemoryKind, Power,
                     Target, TargetError, _is_int, _join, _kib, _num, _pattern)


# --- schema --------------------------------------------------------------------------------------
# Each section's fields and what each must be; the text appears in "is missing" and "must be" errors.

TOP_FIELDS = {
    "name": "a name of lowercase letters, digits, '-' and '_'",
    "description": "a string",
    "clock_mhz": "a positive number (kernel clock, MHz)",
    "device": "a mapping", "engine": "a mapping", "sfu": "a mapping",
    "buffers": f"a list of the {len(BufferName)} on-chip buffers",
    "memory": "a mapping", "power": "a mapping", "controller": "a mapping (optional)",
}
CONTROLLER_FIELDS = {
    "queue_depth": "a positive int (instructions per queue FIFO)",
    "token_counter_bits": "an int in 2..16 (bits per dependency-token counter)",
}
DEVICE_FIELDS = {
    "family": f"one of {', '.join(f.value for f in DeviceFamily)}",
    "part": "a part name string",
    "dsp": "a positive int (DSP blocks)",
    "lut": "a positive int (LUTs)",
    "ff": "a positive int (flip-flops)",
    "bram_kb": "a positive number (block RAM, KiB)",
    "bram36": "a positive int (BRAM36 blocks)",
    "ebr": "a positive int (EBR blocks)",
    "uram": "an int >= 0 (UltraRAM blocks)",
}
ENGINE_FIELDS = {
    "n_chains": "a positive int",
    "chain_len": "a positive power of two",
    "mac_bits": f"{ACT_BITS} (int8 activations)",
    "weight_bits": f"a non-empty list of weight widths from {', '.join(map(str, BITS))}",
    "sparsity": f"a list of quoted N:M patterns from {', '.join(str(p) for p in PATTERNS)}",
    "operand_packing": "1 or 2",
    "pipeline_depth": "a positive int (cycles)",
    "dsp_per_mac": "a positive int",
    "dsp_primitive": f"one of {', '.join(p.value for p in DSPPrimitive)}",
    "attn_bytes": "a power of two >= 4 (K/V bytes ATTN takes a cycle; optional, chain_len rounded up)",
}
SFU_FIELDS = {
    "lanes": "a positive int (elements per cycle)",
    "latency_cycles": "a positive int (cycles)",
}
BUFFER_FIELDS = {
    "name": f"one of {', '.join(b.value for b in BufferName)}",
    "bytes": "a positive int",
    "banks": "a positive int",
    "width_bits": "a positive multiple of 8",
    "kind": f"one of {', '.join(k.value for k in BufferKind)}",
}
MEMORY_FIELDS = {
    "kind": f"one of {', '.join(k.value for k in MemoryKind)}",
    "channels": "a positive int",
    "channel_gbps": "a positive number (GB/s per channel, peak)",
    "efficiency": "a number in (0, 1]",
    "capacity_gb": "a positive number (GB)",
    "port_width_bits": "a power of two >= 8",
    "port_clock_mhz": "a positive number (MHz)",
    "burst_setup_ns": "a number >= 0 (ns per AXI burst; optional, 20)",
    "dma_issue_cycles": "an int >= 0 (cycles per DMA descriptor; optional, 4)",
}
POWER_FIELDS = {
    "static_w": "a number >= 0 (W)",
    "dsp_mw_per_mhz": "a number >= 0 (mW/MHz per DSP)",
    "bram_mw_per_mhz": "a number >= 0 (mW/MHz per KiB)",
    "lut_mw_per_mhz": "a number >= 0 (mW/MHz per LUT)",
    "hbm_pj_per_bit": "a number >= 0 (pJ/bit)",
}


def _device(s: _Section) -> Device:
    family = s.enum("family", DeviceFamily)
    d = Device(family=family, part=s.text("part"), dsp=s.int("dsp"), lut=s.int("lut"), ff=s.int("ff"),
               bram_kb=s.number("bram_kb"), uram=s.int("uram", ok=lambda v: v >= 0, default=0),
               bram36=s.int("bram36", default=None), ebr=s.int("ebr", default=None))
    for count, per, what in ((d.bram36, BRAM36_KB, "bram36"), (d.ebr, EBR_KB, "ebr")):
        if count is not None and d.bram_kb != count * per:
            raise TargetError(f"{s.src}: device.bram_kb must be {what} x {_num(per)} = "
                              f"{_kib(count * per)} KiB, not {_num(d.bram_kb)}")
    return d


def _engine(s: _Section, device: Device) -> Engine:
    chain_len = s.int("chain_len", ok=lambda v: v > 0 and v & (v - 1) == 0)
    mac_bits = s.int("mac_bits", ok=lambda v: v == ACT_BITS)
    bits = s.items("weight_bits", nonempty=True)
    for i, b in enumerate(bits):
        if not _is_int(b) or b not in BITS:
            raise TargetError(f"{s.src}: engine.weight_bits[{i}] must be one of "
                              f"{', '.join(map(str, BITS))}, not {b!r}")
    patterns = []
    for i, p in enumerate(s.items("sparsity")):
        nm = _pattern(p) if isinstance(p, str) and re.fullmatch(r"\d+:\d+", p) else None
        if nm not in PATTERNS:
            hint = (" (YAML reads an unquoted N:M as a base-60 number: write \"2:4\")"
                    if _is_int(p) else "")
            raise TargetError(f"{s.src}: engine.sparsity[{i}] must be one of "
                              f"{', '.join(str(q) for q in PATTERNS)}, not {p!r}{hint}")
        patterns.append(nm)
    for what, seq in (("weight_bits", bits), ("sparsity", patterns)):
        if len(set(seq)) != len(seq):
            raise TargetError(f"{s.src}: engine.{what} lists a value twice")
    primitive = s.enum("dsp_primitive", DSPPrimitive)
    allowed = FAMILY_PRIMITIVES[device.family] + (DSPPrimitive.BEHAVIOURAL,)
    if primitive not in allowed:
        raise TargetError(f"{s.src}: engine.dsp_primitive must be one of {_join(p.value for p in allowed)} "
                          f"on a {device.family.value} device, not {primitive.value!r}")
    packing = s.int("operand_packing", ok=lambda v: v in (1, 2))
    if packing == 2 and primitive not in PACKING_PRIMITIVES:
        raise TargetError(f"{s.src}: engine.operand_packing must be 1 with {primitive.value} (its 18-bit "
                          f"ports cannot hold two int8 activations), not 2")
    depth = s.int("pipeline_depth")
    if depth < chain_len:
        raise TargetError(f"{s.src}: engine.pipeline_depth must be at least chain_len ({chain_len}) "
                          f"cycles, one per cascaded stage, not {depth}")
    return Engine(n_chains=s.int("n_chains"), chain_len=chain_len, mac_bits=mac_bits,
                  weight_bits=tuple(sorted(bits)), sparsity=tuple(patterns), operand_packing=packing,
                  pipeline_depth=depth, dsp_per_mac=s.int("dsp_per_mac"), dsp_primitive=primitive,
                  attn_bytes=s.int("attn_bytes", ok=lambda v: v >= 4 and v & (v - 1) == 0, default=None) or 0)


def _buffers(top: _Section) -> tuple[Buffer, ...]:
    found: dict[BufferName, int] = {}
    out = []
    for i, raw in enumerate(top.items("buffers")):
        s = _Section(raw, top.src, f"buffers[{i}]", BUFFER_FIELDS)
        name = s.enum("name", BufferName)
        if name in found:
            raise TargetError(f"{s.src}: buffers[{i}].name {name.value!r} repeats buffers[{found[name]}]; "
                              f"each buffer appears once")
        found[name] = i
        banks, width = s.int("banks"), s.int("width_bits", ok=lambda v: v > 0 and v % 8 == 0)
        row = banks * width // 8
        size = s.int("bytes")
        if size % row:
            raise TargetError(f"{s.src}: buffers[{i}].bytes must be a multiple of banks x width_bits / 8 "
                              f"= {row} (one row across all banks), not {size}")
        out.append(Buffer(name=name, bytes=size, banks=banks, width_bits=width, kind=s.enum("kind", BufferKind)))
    missing = [n.value for n in BufferName if n not in found]
    if missing:
        raise TargetError(f"{top.src}: buffers has no {_join(missing)} buffer; expected one each of "
                          f"{_join(n.value for n in BufferName)}")
    order = list(BufferName)
    return tuple(sorted(out, key=lambda b: order.index(b.name)))


def _memory(s: _Section) -> Memory:
    return Memory(kind=s.enum("kind", MemoryKind), channels=s.int("channels"),
                  channel_gbps=s.number("channel_gbps"), efficiency=s.number("efficiency", ok=lambda v: 0 < v <= 1),
                  capacity_gb=s.number("capacity_gb"),
                  port_width_bits=s.int("port_width_bits", ok=lambda v: v >= 8 and v & (v - 1) == 0),
                  port_clock_mhz=s.number("port_clock_mhz"),
                  burst_setup_ns=s.number("burst_setup_ns", ok=lambda v: v >= 0, default=Memory.burst_setup_ns),
                  dma_issue_cycles=s.int("dma_issue_cycles", ok=lambda v: v >= 0, default=Memory.dma_issue_cycles))


def _controller(s: _Section) -> Controller:
    return Controller(queue_depth=s.int("queue_depth", default=Controller.queue_depth),
                      token_counter_bits=s.int("token_counter_bits", ok=lambda v: 2 <= v <= 16,
                                               default=Controller.token_counter_bits))


def _power(s: _Section) -> Power:
    return Power(**{k: s.number(k, ok=lambda v: v >= 0) for k in POWER_FIELDS})


# --- field access with paths ---------------------------------------------------------------------

_MISSING = object()


class _Section:
    """One YAML mapping and its path, for messages like `u280.yaml: engine.chain_len must be ...`."""

    def __init__(self, data: Any, src: str, path: str, fields: dict[str, str]):
        self.src, self.path, self.fields = src, path, fields
        if not isinstance(data, dict):
            what = path or "the file"
            raise TargetError(f"{src}: {what} must be a mapping with {', '.join(fields)}, not {data!r}")
        for k in data:
            if k not in fields:
                where = f"{path}.{k}" if path else str(k)
                raise TargetError(f"{src}: {where} is not a field of {path or 'a target'}; "
                                  f"expected one of {', '.join(fields)}")
        self.data = data

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, value: Any) -> TargetError:
        return TargetError(f"{self.src}: {self.where(key)} must be {self.fields[key]}, not {value!r}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise TargetError(f"{self.src}: {self.where(key)} is missing; expected {self.fields[key]}")
        return default

    def int(self, key: str, ok: Callable[[int], bool] = lambda v: v > 0, default: Any = _MISSING):
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not _is_int(v) or not ok(v):
            raise self.fail(key, v)
        return v

    def number(self, key: str, ok: Callable[[float], bool] = lambda v: v > 0, default: Any = _MISSING) -> float:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v) or not ok(v):
            raise self.fail(key, v)
        return float(v)

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, v)
        return v

    def enum(self, key: str, cls: type[Enum]):
        v = self.get(key)
        try:
            return cls(v)
        except ValueError:
            raise self.fail(key, v) from None

    def items(self, key: str, nonempty: bool = False) -> list:
        v = self.get(key)
        if not isinstance(v, list) or (nonempty and not v):
            raise self.fail(key, v)
        return v

    def section(self, key: str, fields: dict[str, str], optional: bool = False) -> _Section:
        return _Section(self.get(key, {} if optional else _MISSING), self.src, self.where(key), fields)


def parse(data: Any, source: str) -> Target:
    """A target from the mapping a YAML file holds; `source` names the file in messages."""
    top = _Section(data, source, "", TOP_FIELDS)
    device = _device(top.section("device", DEVICE_FIELDS))
    engine = _engine(top.section("engine", ENGINE_FIELDS), device)
    s = top.section("sfu", SFU_FIELDS)
    sfu = SFU(lanes=s.int("lanes"), latency_cycles=s.int("latency_cycles"))
    name = top.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise top.fail("name", name)
    description = top.get("description")
    if not isinstance(description, str):
        raise top.fail("description", description)
    t = Target(name=name, description=description.strip(), clock_mhz=top.number("clock_mhz"),
               device=device, engine=engine, sfu=sfu, buffers=_buffers(top),
               memory=_memory(top.section("memory", MEMORY_FIELDS)),
               power=_power(top.section("power", POWER_FIELDS)),
               controller=_controller(top.section("controller", CONTROLLER_FIELDS, optional=True)), source=source)
    t.check_fits()
    return t
