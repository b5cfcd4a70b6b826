"""The hardware target: the single source of every hardware number.

A `Target` is read from a YAML file (`yaml.safe_load` only) or by the name of a bundled one
(`llmfab/targets/<name>.yaml`) and validated field by field; errors name the file, the field path
and what was expected: `u280.yaml: engine.chain_len must be a positive power of two, not 12`.
The passes tile by it, the RTL takes its parameters from it, the simulator times with it and the
cost model prices with it; nothing else holds a hardware number.

Units are in the field names: `_mhz`, `_gbps` (GB/s, 1e9 bytes), `_gb` (1e9 bytes), `_kb` (KiB),
`_bits`, `_cycles`, `_w`, `_mw_per_mhz`, `_pj_per_bit`; `bytes` are bytes. Memory bandwidth is the
lower of each channel and the port that reads it, times a sustained efficiency (docs/targets.md).
"""
from __future__ import annotations

import importlib.resources
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .isa import BufferId
from .quant import BITS, NM, PATTERNS

BRAM36_KB = 4.5      # KiB in one Xilinx BRAM36 (36 Kbit)
URAM_KB = 36.0       # KiB in one Xilinx UltraRAM (288 Kbit)
EBR_KB = 2.25        # KiB in one Lattice ECP5 EBR (18 Kbit)
ACT_BITS = 8         # activations are int8 (docs/integer.md)


class TargetError(ValueError):
    pass


class DeviceFamily(Enum):
    XILINX_ULTRASCALE_PLUS = "xilinx-ultrascale+"
    XILINX_VERSAL = "xilinx-versal"
    LATTICE_ECP5 = "lattice-ecp5"
    GENERIC = "generic"


class DSPPrimitive(Enum):
    DSP48E2 = "DSP48E2"          # UltraScale+: 27x18 multiplier, 48-bit PCOUT->PCIN cascade
    DSP58 = "DSP58"              # Versal: 27x24 multiplier, 58-bit cascade
    MULT18X18D = "MULT18X18D"    # ECP5: 18x18 multiplier, the adder chain is in fabric
    BEHAVIOURAL = "behavioural"  # a plain `*` that synthesis maps; any device


# The primitives each family has; `behavioural` is always allowed.
FAMILY_PRIMITIVES = {
    DeviceFamily.XILINX_ULTRASCALE_PLUS: (DSPPrimitive.DSP48E2,),
    DeviceFamily.XILINX_VERSAL: (DSPPrimitive.DSP58,),
    DeviceFamily.LATTICE_ECP5: (DSPPrimitive.MULT18X18D,),
    DeviceFamily.GENERIC: (),
}
# Two int8 activations share one multiplier only where its wide port holds both with guard bits.
PACKING_PRIMITIVES = (DSPPrimitive.DSP48E2, DSPPrimitive.DSP58, DSPPrimitive.BEHAVIOURAL)


class MemoryKind(Enum):
    HBM = "hbm"
    DDR = "ddr"


class BufferName(Enum):
    WEIGHT = "weight"    # streamed weight tiles (double-buffered)
    ACT = "act"          # activations: a decode token's stay on chip
    KV = "kv"            # K/V tiles read from the KV cache in memory
    SCRATCH = "scratch"  # partial sums, attention scores, special-function temporaries
    INST = "inst"        # the instruction window fetched by the controller


class BufferKind(Enum):
    BRAM = "bram"
    URAM = "uram"
    LUTRAM = "lutram"


class EngineMode(Enum):
    MV = "mv"  # decode: each chain reduces one weight row against the activation vector
    MM = "mm"  # prefill: weights reused across token rows, with operand packing


@dataclass(frozen=True)
class Device:
    family: DeviceFamily
    part: str
    dsp: int                   # DSP blocks (DSP48E2 / DSP58 / ECP5 18x18 multipliers)
    lut: int                   # LUTs (LUT6 on Xilinx, LUT4 on ECP5)
    ff: int                    # flip-flops
    bram_kb: float             # total block RAM, KiB
    uram: int = 0              # UltraRAM blocks, URAM_KB each
    bram36: int | None = None  # Xilinx BRAM36 count (bram_kb = bram36 * 4.5)
    ebr: int | None = None     # ECP5 EBR count (bram_kb = ebr * 2.25)

    @property
    def uram_kb(self) -> float:
        return self.uram * URAM_KB

    @property
    def on_chip_kb(self) -> float:
        """Block RAM plus UltraRAM, KiB: the budget the buffers must fit in."""
        return self.bram_kb + self.uram_kb


@dataclass(frozen=True)
class Engine:
    """The matrix engine: n_chains DSP chains of chain_len multiply-accumulate stages."""
    n_chains: int
    chain_len: int                          # a power of two
    mac_bits: int                           # activation bits (int8)
    weight_bits: tuple[int, ...]            # supported weight widths, ascending
    sparsity: tuple[tuple[int, int], ...]   # supported N:M patterns as (n, m)
    operand_packing: int                    # int8 activations per multiplier in MM mode (1 or 2)
    pipeline_depth: int                     # cycles from operands in to a chain's result out
    dsp_per_mac: int                        # DSPs per chain stage
    dsp_primitive: DSPPrimitive

    @property
    def macs(self) -> int:
        """Multiply-accumulate stages, all chains."""
        return self.n_chains * self.chain_len

    @property
    def dsp_used(self) -> int:
        return self.macs * self.dsp_per_mac


@dataclass(frozen=True)
class SFU:
    """The special-function unit (softmax, norms, activations, RoPE, elementwise)."""
    lanes: int            # elements per cycle
    latency_cycles: int   # cycles from an element in to its result out


@dataclass(frozen=True)
class Buffer:
    name: BufferName
    bytes: int
    banks: int         # independently addressed banks, each width_bits wide
    width_bits: int    # bits one bank reads per cycle
    kind: BufferKind

    @property
    def depth(self) -> int:
        """Rows per bank."""
        return self.bytes * 8 // (self.banks * self.width_bits)

    @property
    def kb(self) -> float:
        return self.bytes / 1024

    @property
    def id(self) -> BufferId:
        """The ISA's number for this buffer (instruction fields `buf`, `src_buf`, ...)."""
        return BufferId[self.name.name]

    @property
    def word_bytes(self) -> int:
        """Bytes one bank reads or writes per cycle."""
        return self.width_bits // 8


@dataclass(frozen=True)
class Memory:
    """Off-chip memory: channels (HBM pseudo-channels or DDR channels), each read by one port."""
    kind: MemoryKind
    channels: int
    channel_gbps: float     # peak GB/s of one channel
    efficiency: float       # sustained fraction of min(channel, port), in (0, 1]
    capacity_gb: float      # total, GB
    port_width_bits: int    # AXI data width of each port
    port_clock_mhz: float   # memory-side clock of each port
    burst_setup_ns: float = 20.0   # per AXI burst: address phase and turnaround (design model)
    dma_issue_cycles: int = 4      # a DMA descriptor's issue time, kernel cycles (design model)

    @property
    def beat_bytes(self) -> int:
        """Bytes of one AXI data beat on a port."""
        return self.port_width_bits // 8

    @property
    def port_gbps(self) -> float:
        """What one AXI port can carry, GB/s."""
        return self.port_width_bits / 8 * self.port_clock_mhz * 1e6 / 1e9

    @property
    def effective_channel_gbps(self) -> float:
        """Sustained GB/s of one channel: the lower of memory and port, times efficiency."""
        return min(self.channel_gbps, self.port_gbps) * self.efficiency

    @property
    def peak_gbps(self) -> float:
        """The memory's own peak, GB/s (ports and efficiency ignored)."""
        return self.channels * self.channel_gbps

    @property
    def bandwidth_gbps(self) -> float:
        """Sustained GB/s, all channels: what every model uses."""
        return self.channels * self.effective_channel_gbps


@dataclass(frozen=True)
class Controller:
    """The instruction controller: queue FIFOs between dispatch and issue, dependency-token
    counters (the compiler keeps every count at most `token_counter_max`)."""
    queue_depth: int = 4           # instructions each queue's FIFO holds between dispatch and issue
    token_counter_bits: int = 5    # width of each (source, destination) token counter

    @property
    def token_counter_max(self) -> int:
        return (1 << self.token_counter_bits) - 1


@dataclass(frozen=True)
class Power:
    """Power coefficients; each bundled YAML says where its numbers come from."""
    static_w: float          # device + board static power, W
    dsp_mw_per_mhz: float    # dynamic, per active DSP
    bram_mw_per_mhz: float   # dynamic, per KiB of active block RAM
    lut_mw_per_mhz: float    # dynamic, per active LUT (with its routing and flip-flop)
    hbm_pj_per_bit: float    # energy per bit moved to or from off-chip memory (HBM or DDR)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    clock_mhz: float           # kernel clock
    device: Device
    engine: Engine
    sfu: SFU
    buffers: tuple[Buffer, ...]   # one of each BufferName, in BufferName order
    memory: Memory
    power: Power
    controller: Controller = Controller()
    source: str = field(default="<target>", compare=False)  # the file, for messages
    text: str = field(default="", compare=False, repr=False)  # the YAML it was read from (builds keep a copy)

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    def buffer(self, name: BufferName | str) -> Buffer:
        name = BufferName(name)
        return next(b for b in self.buffers if b.name is name)

    @property
    def buffer_bytes(self) -> dict[BufferId, int]:
        """Each buffer's size, keyed by the ISA's buffer number."""
        return {b.id: b.bytes for b in self.buffers}

    @property
    def word_bytes(self) -> dict[BufferId, int]:
        """Each buffer's word (bytes per bank access), keyed by the ISA's buffer number."""
        return {b.id: b.word_bytes for b in self.buffers}

    @property
    def dsp_used(self) -> int:
        return self.engine.dsp_used

    @property
    def peak_macs_per_s(self) -> float:
        """MV-mode multiply-accumulates per second (one per chain stage per cycle)."""
        return self.peak_macs(EngineMode.MV)

    def peak_macs(self, mode: EngineMode | str) -> float:
        """Multiply-accumulates per second; MM mode packs operand_packing activations per DSP."""
        packing = self.engine.operand_packing if EngineMode(mode) is EngineMode.MM else 1
        return self.engine.macs * self.clock_hz * packing

    def check_weights(self, bits: int, sparsity: tuple[int, int] | str | None = None) -> None:
        """Raise TargetError unless the engine runs `bits`-bit weights with this N:M pattern."""
        if bits not in self.engine.weight_bits:
            raise TargetError(f"{self.source}: the engine does not run int{bits} weights "
                              f"(engine.weight_bits: {_join(self.engine.weight_bits)})")
        nm = _pattern(sparsity)
        if nm is not None and nm not in self.engine.sparsity:
            have = _join(str(NM(*p)) for p in self.engine.sparsity) or "none"
            raise TargetError(f"{self.source}: the engine does not run {NM(*nm)} sparsity "
                              f"(engine.sparsity: {have})")

    def weights_per_cycle(self, bits: int, sparsity: tuple[int, int] | str | None = None) -> float:
        """MV mode: dense-equivalent weights consumed per cycle (each stage takes one stored weight,
        which stands for M/N dense weights under N:M sparsity)."""
        self.check_weights(bits, sparsity)
        nm = _pattern(sparsity)
        return float(self.engine.macs * (Fraction(nm[1], nm[0]) if nm else 1))

    def mv_weight_gbps(self, bits: int, sparsity: tuple[int, int] | str | None = None) -> float:
        """MV mode: GB/s of stored weights the engine can consume (kept codes plus their N:M
        indices, log2(M) bits each; group scales not included). Above `memory.bandwidth_gbps`
        means decode is memory-bound."""
        self.check_weights(bits, sparsity)
        nm = _pattern(sparsity)
        index_bits = math.ceil(math.log2(nm[1])) if nm else 0
        return self.engine.macs * (bits + index_bits) / 8 * self.clock_hz / 1e9

    def check_fits(self) -> None:
        """Raise TargetError unless the engine's DSPs and the buffers fit the device: all buffers
        within block RAM + UltraRAM (lutram ones counted there too, conservatively), and the uram and
        bram buffers each within their own kind."""
        e, d = self.engine, self.device
        if e.dsp_used > d.dsp:
            raise TargetError(f"{self.source}: engine needs {e.dsp_used} DSPs, device has {d.dsp} "
                              f"({e.n_chains} chains x {e.chain_len} stages x {e.dsp_per_mac} DSP)")
        need = sum(b.kb for b in self.buffers)
        if need > d.on_chip_kb:
            raise TargetError(f"{self.source}: buffers need {_kib(need)} KiB of on-chip memory, device has "
                              f"{_kib(d.on_chip_kb)} KiB (block RAM {_kib(d.bram_kb)} + UltraRAM "
                              f"{_kib(d.uram_kb)}); {_kib(need - d.on_chip_kb)} KiB too much")
        for kind, have, what in ((BufferKind.URAM, d.uram_kb, "UltraRAM"), (BufferKind.BRAM, d.bram_kb, "block RAM")):
            bufs = [b for b in self.buffers if b.kind is kind]
            need = sum(b.kb for b in bufs)
            if need > have:
                raise TargetError(f"{self.source}: {kind.value} buffers ({_join(b.name.value for b in bufs)}) "
                                  f"need {_kib(need)} KiB, device has {_kib(have)} KiB of {what}; "
                                  f"{_kib(need - have)} KiB too much")


# --- loading -------------------------------------------------------------------------------------

def bundled_targets() -> list[str]:
    return sorted(p.name[:-len(".yaml")] for p in _bundled_dir().iterdir() if p.name.endswith(".yaml"))


def load_target(spec: str | Path) -> Target:
    """A YAML file, or the name of a bundled target (`bundled_targets()`)."""
    s = str(spec)
    if s in bundled_targets():
        path, source = _bundled_dir() / f"{s}.yaml", f"{s}.yaml"
    else:
        path, source = Path(s), s
        if not path.is_file():
            raise TargetError(f"{s}: not a target file nor a bundled target "
                              f"(bundled: {', '.join(bundled_targets())})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"{source}: cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}:" if mark is not None else ""
        raise TargetError(f"{source}:{at} not valid YAML: {getattr(e, 'problem', None) or e}") from None
    return replace(parse_target(data, source), text=text)


def parse_target(data: Any, source: str) -> Target:
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


def format_targets(targets: list[Target]) -> str:
    """The table `llmfab targets` prints."""
    head = ("target", "device", "clock", "chains x len", "DSPs used/avail", "memory GB/s eff (peak)",
            "capacity", "weights; N:M")
    rows = [head]
    for t in targets:
        e, d, m = t.engine, t.device, t.memory
        nm = " ".join(str(NM(*p)) for p in e.sparsity) or "dense"
        rows.append((t.name, d.part, f"{_num(t.clock_mhz)} MHz", f"{e.n_chains} x {e.chain_len}",
                     f"{t.dsp_used}/{d.dsp} ({100 * t.dsp_used / d.dsp:.0f}%)",
                     f"{m.kind.value} {_num(round(m.bandwidth_gbps, 2))} ({_num(round(m.peak_gbps, 2))})",
                     f"{_num(m.capacity_gb)} GB", f"{' '.join(f'int{b}' for b in e.weight_bits)}; {nm}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --- small helpers ----------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pattern(p: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """None, (n, m) or "n:m" -> None or (n, m); anything else -> TargetError."""
    if p is None:
        return None
    if isinstance(p, str):
        nm = NM.parse(p)
        if nm:
            return tuple(nm)
    elif isinstance(p, tuple) and len(p) == 2 and all(_is_int(x) for x in p):
        return p
    raise TargetError(f"a sparsity pattern must be None, (n, m) or \"n:m\", not {p!r}")


def _join(items) -> str:
    return ", ".join(str(i) for i in items)


def _num(x: float) -> str:
    """A number without a needless '.0' (14.375 -> '14.375', 225.0 -> '225')."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _kib(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


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
                  pipeline_depth=depth, dsp_per_mac=s.int("dsp_per_mac"), dsp_primitive=primitive)


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


def _bundled_dir():
    return importlib.resources.files("llmfab.targets")
