"""The hardware target: the single source of every hardware number.

A `Target` is read from a YAML file (`yaml.safe_load` only) or by the name of a bundled one
(`llmfab/targets/<name>.yaml`) and validated field by field; errors name the file, the field path
and what was expected: `u280.yaml: engine.chain_len must be a positive power of two, not 12`.
The passes tile by it, the RTL takes its parameters from it, the simulator times with it and the
cost model prices with it; nothing else holds a hardware number.

Units are in the field names: `_mhz`, `_gbps` (GB/s, 1e9 bytes), `_gb` (1e9 bytes), `_kb` (KiB),
`_bits`, `_cycles`, `_w`, `_mw_per_mhz`, `_pj_per_bit`; `bytes` are bytes. Memory bandwidth is the
lower of each channel and the port that reads it, times a sustained efficiency (docs/targets.md).
The YAML schema and its field-by-field checks are in target_schema.py.
"""
from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

from .isa import BufferId
from .packing import ChainLayout
from .quant import NM
from .yaml_file import parse_yaml, read_yaml

BRAM36_KB = 4.5      # KiB in one Xilinx BRAM36 (36 Kbit)
URAM_KB = 36.0       # KiB in one Xilinx UltraRAM (288 Kbit)
EBR_KB = 2.25        # KiB in one Lattice ECP5 EBR (18 Kbit)
TARGET_FILE = "target.yaml"   # the copy of its target a build or RTL folder keeps (`Target.text`)
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
    attn_bytes: int = 0                     # K/V record bytes ATTN takes a cycle (0: from chain_len)

    def __post_init__(self):
        if not self.attn_bytes:             # chain_len rounded up to a power of two, at least 4
            object.__setattr__(self, "attn_bytes", max(4, 1 << (self.chain_len - 1).bit_length()))

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
    port_clock_mhz: float   # clock of each port's data (u280: the kernel clock of its 512-bit ports)
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
    def chain_layout(self) -> ChainLayout:
        """How weight tiles sit in the weight buffer: interleaved over the chains, a word each."""
        return ChainLayout(self.engine.n_chains, self.buffer("weight").word_bytes, self.engine.chain_len)

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
    text, data = read_yaml(path, "target", TargetError, source)
    return replace(parse_target(data, source), text=text)


def target_from_text(text: str, source: str) -> Target:
    """The target a YAML text holds (`load_target` of text already read); `source` names it."""
    return replace(parse_target(parse_yaml(text, source, TargetError), source), text=text)


def parse_target(data: Any, source: str) -> Target:
    """A target from the mapping a YAML file holds; `source` names the file in messages (the
    schema and its checks: target_schema.py)."""
    from .target_schema import parse
    return parse(data, source)


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


def _bundled_dir():
    return importlib.resources.files("llmfab.targets")
