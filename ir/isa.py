"""The llmfab ISA: what `passes` emit, `simulator` executes and times, and `backend_hw` decodes.

Every instruction is 256 bits (32 bytes), little-endian: a 16-bit header (`op`, `wait`, `release`,
`len_reg`, 4 reserved bits) and then the fields of its opcode, laid out in the order of its table
in `FIELDS` (with a few reserved gaps that align 32-bit fields to words and addresses to bytes);
unused bits are reserved and must be zero. The tables are the whole encoding: `encode`, `decode`,
the disassembler and docs/isa.md's tables are all driven by them.
docs/isa.md says what each field means, how dependency tokens and the length register work, and
the binary program format.

One file, over the ~450 lines we aim for, on purpose: it is the contract between the compiler, the
simulator and the RTL (field tables, encoding, program files, the builder and the token-deadlock
check all read the same tables), and a reader checking one against another wants them together.
"""
from __future__ import annotations

import operator
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from enum import IntEnum, IntFlag
from types import MappingProxyType

from .quant import QuantScheme

ISA_VERSION = 1
INST_BYTES = 32
INST_BITS = 8 * INST_BYTES
HEADER_BITS = 16                     # op 3 + wait 4 + release 4 + len_reg 1 + 4 reserved
MAGIC = b"LLMF"
HBM_CHANNELS = 64                    # what `channel`/`channels` can name (a Target may have fewer)


class IsaError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# enumerations (their values are the encodings)


class Opcode(IntEnum):
    SYS = 0        # an all-zero word is `SYS NOP`
    LD = 1
    ST = 2
    MM = 3
    MV = 4
    MISC = 5
    ATTN = 6       # attention products on the matrix engine: the KV rows are its matrix operand


class Queue(IntFlag):
    """Execution queues, as their bits in a wait/release mask: `wait=Queue.LOAD | Queue.SFU`."""
    LOAD = 1
    MATRIX = 2
    SFU = 4
    STORE = 8

    @property
    def letter(self) -> str:
        return "LMFS"[self.bit_length() - 1]


class BufferId(IntEnum):
    """On-chip buffers (the names of `llmfab.ir.target.BufferName`)."""
    WEIGHT = 0
    ACT = 1
    KV = 2
    SCRATCH = 3
    INST = 4


class WeightBits(IntEnum):
    INT2 = 0
    INT3 = 1
    INT4 = 2
    INT8 = 3

    @property
    def bits(self) -> int:
        return (2, 3, 4, 8)[self]


class Sparsity(IntEnum):
    DENSE = 0
    S2_4 = 1
    S1_4 = 2
    S4_8 = 3
    S2_8 = 4

    @property
    def pattern(self) -> tuple[int, int] | None:
        return (None, (2, 4), (1, 4), (4, 8), (2, 8))[self]


class Group(IntEnum):
    CHANNEL = 0    # one group per output row
    G32 = 1
    G64 = 2
    G128 = 3

    @property
    def size(self) -> int:
        """Group size along K; 0 for per channel (the group is the whole row)."""
        return (0, 32, 64, 128)[self]


class MiscFunc(IntEnum):
    COPY = 0
    ADD = 1
    MUL = 2
    RELU = 3
    SILU = 4
    GELU = 5
    GELU_TANH = 6
    RMSNORM = 7
    LAYERNORM = 8
    SOFTMAX = 9
    ROPE = 10
    QUANT_ROWS = 11
    ATTN_QK = 12
    ATTN_PV = 13
    EMBED = 14
    SOFTCAP = 15   # imm tanh(x), imm a Q.16 cap (Gemma2's soft-cap, its 1 / cap folded into x)


class SysFunc(IntEnum):
    NOP = 0
    SYNC = 1
    SET_LEN = 2
    END = 3


ROW_SCALE_BYTES = 4   # a quantized int8 row (QUANT_ROWS' output, MV/MM activations, K/V cache rows)
                      # is its int32 scale then its codes


def quant_row_bytes(cols: int) -> int:
    """Bytes of one quantized row of `cols` int8 codes: the scale record, then the codes."""
    return ROW_SCALE_BYTES + cols


BROADCAST = 1   # MISC flag of ADD, MUL: src2 is one row, combined with every row of src
CAUSAL = 1      # MISC flag of SOFTMAX: key t takes part in row r iff t <= (r mod period) + imm
CONTINUE = 1    # ATTN flag of ATTN_PV: start from the engine's held sums instead of zero
HOLD = 2        # ATTN flag of ATTN_PV: keep the sums in the engine, write nothing
MISC_FLAGS = {MiscFunc.ADD: BROADCAST, MiscFunc.MUL: BROADCAST, MiscFunc.SOFTMAX: CAUSAL,
              MiscFunc.ATTN_PV: CONTINUE | HOLD}
BARRIERS = (SysFunc.SYNC, SysFunc.SET_LEN, SysFunc.END)   # SYS functions that drain every queue

QUEUE_OF = {Opcode.LD: Queue.LOAD, Opcode.ST: Queue.STORE, Opcode.MM: Queue.MATRIX,
            Opcode.MV: Queue.MATRIX, Opcode.MISC: Queue.SFU, Opcode.ATTN: Queue.MATRIX, Opcode.SYS: None}
ATTN_FUNCS = (MiscFunc.ATTN_QK, MiscFunc.ATTN_PV)   # the functions of ATTN; MISC runs every other one


# ---------------------------------------------------------------------------------------------
# the field tables


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    signed: bool = False
    enum: type[IntEnum] | None = None   # the values are this enum's members
    doc: str = ""
    offset: int = -1                     # first bit in the 256-bit word (set by _layout)

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def wrap(self, value: int) -> int:
        """`value` modulo 2^bits, in this field's range (e.g. a negative length offset)."""
        v = value & ((1 << self.bits) - 1)
        return v - (1 << self.bits) if self.signed and v > self.hi else v

    def check(self, op: Opcode, value) -> int:
        """The field value as stored in an `Instruction` (an enum member for enum fields)."""
        try:
            v = operator.index(value)
        except TypeError:
            raise IsaError(f"{op.name} field {self.name} must be an integer, not {value!r}") from None
        if self.enum is not None and isinstance(value, IntEnum) and not isinstance(value, self.enum):
            raise IsaError(f"{op.name} field {self.name} takes a {self.enum.__name__}, not {value!r}")
        if not self.lo <= v <= self.hi:
            kind = "signed" if self.signed else "unsigned"
            raise IsaError(f"{op.name} field {self.name}={v} is out of range [{self.lo}, {self.hi}] "
                           f"({self.bits}-bit {kind})")
        if self.enum is not None:
            try:
                return self.enum(v)
            except ValueError:
                names = ", ".join(f"{m.value}={m.name}" for m in self.enum)
                raise IsaError(f"{op.name} field {self.name}={v} is not a {self.enum.__name__} ({names})") from None
        return v


def _layout(*items: Field | int, start: int = HEADER_BITS) -> tuple[Field, ...]:
    """Offsets for fields in order; an int is that many reserved bits (to byte/word-align what follows)."""
    out, at = [], start
    for f in items:
        if isinstance(f, int):
            at += f
            continue
        out.append(replace(f, offset=at))
        at += f.bits
    if at > INST_BITS:
        raise AssertionError(f"fields take {at} bits, more than {INST_BITS}")
    return tuple(out)


HEADER = _layout(
    Field("op", 3, enum=Opcode, doc="opcode"),
    Field("wait", 4, doc="queue mask: before issue, take one token from each named queue"),
    Field("release", 4, doc="queue mask: after completion, give one token to each named queue"),
    Field("len_reg", 1, doc="length-parametric: the length register LEN adjusts one field (docs/isa.md)"),
    start=0)

# Fields are ordered so that 32-bit fields sit on 32-bit words and addresses on bytes (readable
# hex dumps); the reserved gaps are listed as ints.
_DMA = (   # LD: HBM -> buffer, ST: buffer -> HBM
    Field("channel", 6, doc="first HBM pseudo-channel"),
    Field("channels", 7, doc="pseudo-channels each row is striped over (1..64): slice c of a row is in "
                             "pseudo-channel `channel + c`"),
    Field("buf", 3, enum=BufferId, doc="on-chip buffer"),
    Field("hbm_addr", 32, doc="byte address of row 0's slice within each pseudo-channel"),
    Field("hbm_stride", 32, doc="bytes between consecutive rows' slices within a pseudo-channel"),
    Field("buf_addr", 24, doc="byte address of row 0 in the buffer"),
    Field("buf_stride", 24, doc="bytes between consecutive rows in the buffer"),
    Field("rows", 16, doc="rows to move"),
    Field("row_bytes", 20, doc="bytes of a row's slice in each pseudo-channel (a row is channels * row_bytes)"),
    Field("len_pos", 1, doc="with len_reg: 0 adds LEN to `rows`, 1 adds LEN * hbm_stride to `hbm_addr`"),
    Field("indirect", 1, doc="row r is at HBM row ids[r] (a gather for LD, a scatter for ST) instead of r"),
    Field("ids_buf", 3, enum=BufferId, doc="buffer of the row ids (indirect only)"),
    7,
    Field("ids_addr", 24, doc="ids[r]: uint32 at ids_addr + 4r (indirect only, else 0)"),
)
_MATRIX = (   # y = x W^T (+ b); x: quantized rows in abuf; W: a packed weight tile in the weight buffer
    Field("n", 16, doc="output features (weight rows)"),
    Field("k", 16, doc="reduction length (weight columns): the whole K of the weight, padded to whole groups and beats"),
    Field("bits", 2, enum=WeightBits, doc="weight code width"),
    Field("sparsity", 3, enum=Sparsity, doc="N:M pattern of the weight tile"),
    Field("group", 2, enum=Group, doc="scale group along K"),
    Field("has_bias", 1, doc="add the bias at bias_addr"),
    Field("accumulate", 1, doc="add into the output: o = sat(o + y, 32) (fused residual add)"),
    Field("abuf", 3, enum=BufferId, doc="buffer of the activation rows"),
    Field("obuf", 3, enum=BufferId, doc="buffer of the output rows"),
    1,
    Field("wbuf_addr", 24, doc="weight buffer: the chain-interleaved `values` stream (word-aligned)"),
    Field("idx_addr", 24, doc="weight buffer: the chain-interleaved `indices` stream (sparse only, else 0)"),
    Field("scale_addr", 24, doc="weight buffer: the n row shifts, then from the next word the interleaved `mant` stream"),
    Field("bias_addr", 24, doc="weight buffer: n int32 Q.16 biases (has_bias only, else 0)"),
    Field("a_addr", 24, doc="activation rows: each a 4-byte scale record then k int8 codes"),
    Field("o_addr", 24, doc="output rows: n int32 Q.16 each"),
)
_MM = _MATRIX + (
    Field("m", 16, doc="token rows (activation rows, output rows)"),
    Field("o_stride", 20, doc="bytes between output rows (0: 4n)"),
)
_MISC = (
    Field("func", 5, enum=MiscFunc, doc="the special function"),
    Field("flags", 4, doc="per-function options: BROADCAST (ADD, MUL), CAUSAL (SOFTMAX), CONTINUE/HOLD (ATTN_PV)"),
    Field("len_pos", 1, doc="with len_reg: 0 adds LEN to `cols`, 1 adds LEN to `imm`"),
    Field("src_buf", 3, enum=BufferId, doc="buffer of the first operand"),
    Field("src2_buf", 3, enum=BufferId, doc="buffer of the second operand or the parameters"),
    Field("imm", 32, signed=True, doc="immediate: eps, scale, position, key or row offset, code bits"),
    Field("rows", 16, doc="rows of src"),
    Field("cols", 16, doc="elements per row of src (keys for ATTN_QK, SOFTMAX, ATTN_PV)"),
    Field("depth", 16, doc="head dimension (ATTN_QK, ATTN_PV, ROPE) or group size (EMBED), else 0"),
    Field("period", 16, doc="positions per block of rows (ROPE, SOFTMAX): row r is at r mod period (0: r)"),
    Field("dst_buf", 3, enum=BufferId, doc="buffer of the result"),
    5,
    Field("src_addr", 24, doc="first operand"),
    Field("src2_addr", 24, doc="second operand, norm weights, RoPE table, K or V rows"),
    Field("dst_addr", 24, doc="result"),
    Field("src_stride", 20, doc="bytes between rows of src (0: natural pitch)"),
    Field("dst_stride", 20, doc="bytes between rows of dst (0: natural pitch)"),
    Field("src2_pad", 8, doc="bytes after each src2 row beyond its natural pitch (ATTN: K/V rows padded "
                             "to whole bytes per HBM channel)"),
)
_SYS = (
    Field("func", 4, enum=SysFunc, doc="NOP, SYNC (barrier), SET_LEN (LEN = imm; barrier), END (barrier, halt)"),
    12,
    Field("imm", 32, doc="SET_LEN: the new length"),
)

FIELDS: dict[Opcode, tuple[Field, ...]] = {
    Opcode.SYS: _layout(*_SYS),
    Opcode.LD: _layout(*_DMA),
    Opcode.ST: _layout(*_DMA),
    Opcode.MM: _layout(*_MM),
    Opcode.MV: _layout(*_MATRIX),
    Opcode.MISC: _layout(*_MISC),
    Opcode.ATTN: _layout(*_MISC),     # MISC's fields: same operands, run by the matrix engine
}
_BY_NAME = {op: {f.name: f for f in fs} for op, fs in FIELDS.items()}
_USED = {op: sum(((1 << f.bits) - 1) << f.offset for f in HEADER + fs) for op, fs in FIELDS.items()}


def lookup_field(op: Opcode, name: str) -> Field:
    try:
        return _BY_NAME[op][name]
    except KeyError:
        raise IsaError(f"{op.name} has no field {name!r}; its fields: {', '.join(_BY_NAME[op])}") from None


# Rules between fields, beyond each field's range: (opcodes, holds(instruction), message(instruction)).
Rule = tuple[tuple[Opcode, ...], Callable[["Instruction"], bool], Callable[["Instruction"], str]]
_QUEUED = (Opcode.LD, Opcode.ST, Opcode.MM, Opcode.MV, Opcode.MISC, Opcode.ATTN)
RULES: tuple[Rule, ...] = (
    (_QUEUED, lambda i: not i.wait & QUEUE_OF[i.op],
     lambda i: f"may not wait on its own queue {QUEUE_OF[i.op].name}"),
    (_QUEUED, lambda i: not i.release & QUEUE_OF[i.op],
     lambda i: f"may not release to its own queue {QUEUE_OF[i.op].name}"),
    ((Opcode.SYS,), lambda i: i.wait == 0 and i.release == 0,
     lambda i: f"takes no tokens (it is executed by the controller), not wait={i.wait} release={i.release}"),
    ((Opcode.SYS, Opcode.MV), lambda i: not i.len_reg, lambda i: "has no length-parametric field: len_reg must be 0"),
    ((Opcode.LD, Opcode.ST, Opcode.MISC, Opcode.ATTN), lambda i: i.len_reg or not i["len_pos"],
     lambda i: "len_pos=1 needs len_reg=1"),
    ((Opcode.LD, Opcode.ST), lambda i: i["channels"] >= 1, lambda i: "channels must be at least 1, not 0"),
    ((Opcode.LD, Opcode.ST), lambda i: i["channel"] + i["channels"] <= HBM_CHANNELS,
     lambda i: f"channel + channels must be at most {HBM_CHANNELS}, not {i['channel']} + {i['channels']}"),
    ((Opcode.LD, Opcode.ST), lambda i: i["indirect"] or not (i["ids_buf"] or i["ids_addr"]),
     lambda i: f"ids_buf and ids_addr must be 0 without indirect, not {i['ids_buf'].name} and {i['ids_addr']}"),
    ((Opcode.MM, Opcode.MV), lambda i: i["sparsity"] or not i["idx_addr"],
     lambda i: f"idx_addr must be 0 for a dense weight, not {i['idx_addr']}"),
    ((Opcode.MM, Opcode.MV), lambda i: i["has_bias"] or not i["bias_addr"],
     lambda i: f"bias_addr must be 0 without has_bias, not {i['bias_addr']}"),
    ((Opcode.MISC,), lambda i: i["func"] not in ATTN_FUNCS,
     lambda i: f"func {i['func'].name} runs on the matrix engine: use ATTN, not MISC"),
    ((Opcode.ATTN,), lambda i: i["func"] in ATTN_FUNCS,
     lambda i: f"func must be ATTN_QK or ATTN_PV, not {i['func'].name} (the SFU runs it: use MISC)"),
    ((Opcode.MISC, Opcode.ATTN), lambda i: not i["flags"] & ~MISC_FLAGS.get(i["func"], 0),
     lambda i: f"flags={i['flags']:#x} are not defined for {i['func'].name} "
               f"(allowed mask {MISC_FLAGS.get(i['func'], 0):#x})"),
)

_RULES_OF = {op: tuple((holds, msg) for ops, holds, msg in RULES if op in ops) for op in Opcode}


# ---------------------------------------------------------------------------------------------
# instructions


def mask(queues: int | Queue | Iterable[Queue]) -> int:
    """A wait/release mask from an int or Queue flags (`Queue.LOAD | Queue.SFU`), or an iterable of Queues."""
    if isinstance(queues, int):
        return queues if isinstance(queues, bool) else int(queues)
    m = 0
    for q in queues if isinstance(queues, Iterable) else (queues,):
        if not isinstance(q, Queue):
            raise IsaError(f"a queue mask is built from Queue members, not {q!r}")
        m |= q
    return m


def letters(m: int) -> str:
    """A mask as queue letters in queue order ('LM'), '-' when empty."""
    return "".join(q.letter for q in Queue if m & q) or "-"


@dataclass(frozen=True)
class Instruction:
    op: Opcode
    wait: int = 0
    release: int = 0
    len_reg: bool = False
    fields: Mapping[str, int] = dc_field(default_factory=dict)   # every field of FIELDS[op], in table order

    def __post_init__(self):
        if not isinstance(self.op, Opcode):
            raise IsaError(f"op must be an Opcode, not {self.op!r}")
        op = self.op
        for name in ("wait", "release"):
            v = mask(getattr(self, name))
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 15:
                raise IsaError(f"{op.name} {name}={v!r} is out of range [0, 15] (4-bit queue mask)")
            object.__setattr__(self, name, v)
        if self.len_reg not in (0, 1):
            raise IsaError(f"{op.name} len_reg must be 0 or 1, not {self.len_reg!r}")
        object.__setattr__(self, "len_reg", bool(self.len_reg))
        table = _BY_NAME[op]
        unknown = [k for k in self.fields if k not in table]
        if unknown:
            raise IsaError(f"{op.name} has no field {unknown[0]!r}; its fields: {', '.join(table)}")
        values = {f.name: f.check(op, self.fields.get(f.name, 0)) for f in FIELDS[op]}
        object.__setattr__(self, "fields", MappingProxyType(values))
        for holds, message in _RULES_OF[op]:
            if not holds(self):
                raise IsaError(f"{op.name}: {message(self)}")

    def __hash__(self) -> int:
        return hash((self.op, self.wait, self.release, self.len_reg, tuple(self.fields.values())))

    def __getitem__(self, name: str) -> int:
        try:
            return self.fields[name]
        except KeyError:
            raise IsaError(f"{self.op.name} has no field {name!r}; its fields: {', '.join(self.fields)}") from None

    @property
    def queue(self) -> Queue | None:
        return QUEUE_OF[self.op]

    def evolve(self, *, wait=None, release=None, len_reg=None, **fields) -> Instruction:
        """A copy with some tokens or fields changed (validated like a new instruction)."""
        return Instruction(self.op, self.wait if wait is None else wait,
                           self.release if release is None else release,
                           self.len_reg if len_reg is None else len_reg, {**self.fields, **fields})

    def __str__(self) -> str:
        return format_instruction(self)


def make(op: Opcode, *, wait=0, release=0, len_reg=False, **fields) -> Instruction:
    """`Instruction` with keyword fields; fields not given are 0."""
    return Instruction(op, wait, release, len_reg, fields)


def queue_of(inst: Instruction) -> Queue | None:
    """The queue that executes `inst`; None for SYS (executed by the controller, in order)."""
    return QUEUE_OF[inst.op]


def op_name(inst: Instruction) -> str:
    """What an instruction does, for reports: its opcode, or for MISC and ATTN its function."""
    return inst["func"].name if inst.op in (Opcode.MISC, Opcode.ATTN) else inst.op.name


def is_barrier(inst: Instruction) -> bool:
    return inst.op is Opcode.SYS and inst["func"] in BARRIERS


def encode(inst: Instruction) -> bytes:
    """The 32-byte little-endian encoding (values are range-checked when `inst` is built)."""
    word = inst.op | inst.wait << 3 | inst.release << 7 | int(inst.len_reg) << 11
    for f in FIELDS[inst.op]:
        word |= (inst.fields[f.name] & ((1 << f.bits) - 1)) << f.offset
    return word.to_bytes(INST_BYTES, "little")


def decode(data: bytes) -> Instruction:
    if len(data) != INST_BYTES:
        raise IsaError(f"an instruction is {INST_BYTES} bytes, not {len(data)}")
    word = int.from_bytes(data, "little")
    code = word & 7
    if code not in {o.value for o in Opcode}:
        known = ", ".join(f"{o.name}={o.value}" for o in Opcode)
        raise IsaError(f"unknown opcode {code} (known: {known})")
    op = Opcode(code)
    reserved = word & ~_USED[op]
    if reserved:
        bits = [b for b in range(INST_BITS) if reserved >> b & 1]
        shown = ", ".join(map(str, bits[:8])) + (", ..." if len(bits) > 8 else "")
        raise IsaError(f"{op.name} instruction has nonzero reserved bits ({shown})")
    values = {}
    for f in FIELDS[op]:
        v = word >> f.offset & ((1 << f.bits) - 1)
        values[f.name] = v - (1 << f.bits) if f.signed and v > f.hi else v
    return Instruction(op, word >> 3 & 15, word >> 7 & 15, bool(word >> 11 & 1), values)


# The field the length register adjusts, per opcode and len_pos: (field, scale field or None).
LENGTH_FIELD = {
    (Opcode.LD, 0): ("rows", None), (Opcode.LD, 1): ("hbm_addr", "hbm_stride"),
    (Opcode.ST, 0): ("rows", None), (Opcode.ST, 1): ("hbm_addr", "hbm_stride"),
    (Opcode.MM, 0): ("m", None),
    (Opcode.MISC, 0): ("cols", None), (Opcode.MISC, 1): ("imm", None),
    (Opcode.ATTN, 0): ("cols", None), (Opcode.ATTN, 1): ("imm", None),
}


def resolve_length(inst: Instruction, length: int) -> Instruction:
    """`inst` as executed with LEN = `length`: the length field plus LEN (times its scale), wrapped
    to the field's width; the result has len_reg = len_pos = 0. Other instructions are returned as is."""
    if not inst.len_reg:
        return inst
    if not 0 <= length < 1 << 32:
        raise IsaError(f"the length register holds 32 bits unsigned, not {length}")
    pos = inst.fields.get("len_pos", 0)
    name, scale = LENGTH_FIELD[(inst.op, pos)]
    f = _BY_NAME[inst.op][name]
    value = f.wrap(inst[name] + length * (inst[scale] if scale else 1))
    extra = {"len_pos": 0} if "len_pos" in inst.fields else {}
    return inst.evolve(len_reg=False, **{name: value}, **extra)


def prompt_chunks(length: int, step: int) -> list[tuple[int, int]]:
    """(first token, LEN) of each chunk a prompt of `length` tokens runs in, the host's protocol
    (docs/compile.md): LEN is the chunk's end, step, 2 step, ..., the last padded to a whole step.
    The compiler's prefill buckets and every runner of prefill programs share it."""
    return [(end - step, end) for end in range(step, -(-length // step) * step + 1, step)]


def weight_fields(scheme: QuantScheme, k: int) -> dict[str, IntEnum]:
    """`bits`, `sparsity` and `group` of an MM/MV instruction for a weight of `scheme` with K = k."""
    g = scheme.group_size(k)
    return {"bits": {w.bits: w for w in WeightBits}[scheme.bits],
            "sparsity": {s.pattern: s for s in Sparsity}[tuple(scheme.sparsity) if scheme.sparsity else None],
            "group": Group.CHANNEL if g == k else {gr.size: gr for gr in Group}[g]}


# ---------------------------------------------------------------------------------------------
# programs


_PROGRAM_HEADER = struct.Struct("<4sHHIH2x")   # magic, version, header_bytes, count, name_len


@dataclass(frozen=True)
class Program:
    name: str
    instructions: tuple[Instruction, ...]

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise IsaError(f"a program name is a str, not {self.name!r}")
        object.__setattr__(self, "instructions", tuple(self.instructions))
        for i, inst in enumerate(self.instructions):
            if not isinstance(inst, Instruction):
                raise IsaError(f"program {self.name!r} instruction {i} is not an Instruction: {inst!r}")
        if len(self.name.encode()) > 0xFFFF:
            raise IsaError(f"program name is {len(self.name.encode())} bytes, at most 65535")

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def header_bytes(self) -> int:
        n = _PROGRAM_HEADER.size + len(self.name.encode())
        return -(-n // INST_BYTES) * INST_BYTES

    @property
    def storage_bytes(self) -> int:
        return self.header_bytes + INST_BYTES * len(self.instructions)

    def to_bytes(self, encode_one=None) -> bytes:
        """The program file; `encode_one` (default `encode`) lets a caller reuse encodings."""
        enc = encode_one or encode
        name = self.name.encode()
        head = _PROGRAM_HEADER.pack(MAGIC, ISA_VERSION, self.header_bytes, len(self.instructions), len(name))
        return (head + name).ljust(self.header_bytes, b"\0") + b"".join(enc(i) for i in self.instructions)

    @classmethod
    def from_bytes(cls, data: bytes) -> Program:
        data = bytes(data)
        name, header_bytes, count = program_header(data)
        insts = []
        for i in range(count):
            at = header_bytes + INST_BYTES * i
            try:
                insts.append(decode(data[at:at + INST_BYTES]))
            except IsaError as e:
                raise IsaError(f"program {name!r} instruction {i}: {e}") from None
        return cls(name, tuple(insts))


def program_header(data: bytes) -> tuple[str, int, int]:
    """(name, header bytes, instruction count) of a program file, its header checked and its
    length matching the count (a truncated or padded file fails), without decoding instructions."""
    if len(data) < _PROGRAM_HEADER.size:
        raise IsaError(f"a program starts with a {_PROGRAM_HEADER.size}-byte header, got {len(data)} bytes")
    magic, version, header_bytes, count, name_len = _PROGRAM_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise IsaError(f"not an llmfab program: magic {magic!r}, expected {MAGIC!r}")
    if version != ISA_VERSION:
        raise IsaError(f"program format version {version} is not supported (this is version {ISA_VERSION})")
    need = -(-(_PROGRAM_HEADER.size + name_len) // INST_BYTES) * INST_BYTES
    if header_bytes != need or data[14:16] != b"\0\0":
        raise IsaError(f"malformed program header: {header_bytes} header bytes for a {name_len}-byte name "
                       f"(expected {need}, reserved bytes zero)")
    try:
        name = data[_PROGRAM_HEADER.size:_PROGRAM_HEADER.size + name_len].decode()
    except UnicodeDecodeError:
        raise IsaError("malformed program header: the name is not UTF-8") from None
    if len(data) != header_bytes + INST_BYTES * count:
        raise IsaError(f"program {name!r} declares {count} instructions ({header_bytes} + {INST_BYTES} * "
                       f"{count} bytes) but has {len(data)} bytes")
    if any(data[_PROGRAM_HEADER.size + name_len:header_bytes]):
        raise IsaError(f"program {name!r} has nonzero header padding")
    return name, header_bytes, count


def _value(v) -> str:
    return v.name if isinstance(v, IntEnum) else str(v)


def format_instruction(inst: Instruction) -> str:
    """`MV   wait=L    release=F          n=4096 ...`: tokens as queue letters, `len` if len_reg, then
    every field in table order as name=value (enum fields by name)."""
    head = (f"{inst.op.name:<4} wait={letters(inst.wait):<4} release={letters(inst.release):<4} "
            f"{'len' if inst.len_reg else '   '}  ")
    return head + " ".join(f"{k}={_value(v)}" for k, v in inst.fields.items())


def disassemble(program: Program) -> str:
    """One line per instruction: index, opcode, tokens, every field as name=value."""
    return "".join(f"{i:>6}  {format_instruction(inst)}\n" for i, inst in enumerate(program.instructions))


class ProgramBuilder:
    """Appends instructions with keyword fields, each validated at once; `build()` gives the Program."""

    def __init__(self, name: str):
        self.name = name
        self._insts: list[Instruction] = []

    def __len__(self) -> int:
        return len(self._insts)

    def emit(self, op: Opcode, *, wait=0, release=0, len_reg=False, **fields) -> int:
        """Append one instruction; returns its index."""
        try:
            self._insts.append(make(op, wait=wait, release=release, len_reg=len_reg, **fields))
        except IsaError as e:
            raise IsaError(f"program {self.name!r} instruction {len(self._insts)}: {e}") from None
        return len(self._insts) - 1

    def ld(self, **kw) -> int:
        return self.emit(Opcode.LD, **kw)

    def st(self, **kw) -> int:
        return self.emit(Opcode.ST, **kw)

    def mm(self, **kw) -> int:
        return self.emit(Opcode.MM, **kw)

    def mv(self, **kw) -> int:
        return self.emit(Opcode.MV, **kw)

    def misc(self, func: MiscFunc, **kw) -> int:
        return self.emit(Opcode.ATTN if func in ATTN_FUNCS else Opcode.MISC, func=func, **kw)

    def sync(self) -> int:
        return self.emit(Opcode.SYS, func=SysFunc.SYNC)

    def set_len(self, length: int) -> int:
        return self.emit(Opcode.SYS, func=SysFunc.SET_LEN, imm=length)

    def end(self) -> int:
        return self.emit(Opcode.SYS, func=SysFunc.END)

    def build(self) -> Program:
        return Program(self.name, tuple(self._insts))


# ---------------------------------------------------------------------------------------------
# token check: an abstract scheduler


def check_tokens(program: Program, *, counter_max: int | None = None, queue_depth: int | None = None) -> None:
    """Raise `IsaError` if the program can deadlock on its dependency tokens.

    The controller dispatches instructions in program order into the four queues (at most
    `queue_depth` waiting in each, if given); each queue issues its head once every channel named
    in its `wait` holds a token (and, with `counter_max`, every channel in its `release` has room),
    consuming them; it then releases. SYNC, SET_LEN and END wait until every queue is empty. Tokens
    left over at the end are allowed (the controller clears the counters when a program starts).
    Each channel has one producer and one consumer, so issuing never disables another queue: this
    greedy schedule deadlocks exactly when every schedule does.
    """
    tokens = {(s, d): 0 for s in Queue for d in Queue if s != d}
    queues: dict[Queue, deque[tuple[int, Instruction]]] = {q: deque() for q in Queue}
    insts, n, pc = program.instructions, len(program.instructions), 0

    def can_issue(q: Queue, inst: Instruction) -> bool:
        if any(inst.wait & s and tokens[(s, q)] == 0 for s in Queue):
            return False
        return counter_max is None or not any(inst.release & d and tokens[(q, d)] >= counter_max for d in Queue)

    while True:
        progress = False
        while pc < n:                                   # dispatch
            inst = insts[pc]
            if inst.op is Opcode.SYS:
                if is_barrier(inst) and any(queues.values()):
                    break
            else:
                q = QUEUE_OF[inst.op]
                if queue_depth is not None and len(queues[q]) >= queue_depth:
                    break
                queues[q].append((pc, inst))
            pc += 1
            progress = True
        for q in Queue:                                 # issue
            while queues[q] and can_issue(q, queues[q][0][1]):
                _, inst = queues[q].popleft()
                for other in Queue:
                    if inst.wait & other:
                        tokens[(other, q)] -= 1
                    if inst.release & other:
                        tokens[(q, other)] += 1
                progress = True
        if pc == n and not any(queues.values()):
            return
        if not progress:
            raise IsaError(_deadlock_message(program, queues, tokens, pc, counter_max))


def _deadlock_message(program, queues, tokens, pc, counter_max) -> str:
    blocked = []
    for q, pending in queues.items():
        if not pending:
            continue
        i, inst = pending[0]
        why = [f"{s.name}->{q.name} has 0" for s in Queue if inst.wait & s and tokens[(s, q)] == 0]
        if counter_max is not None:
            why += [f"{q.name}->{d.name} is full ({counter_max})" for d in Queue
                    if inst.release & d and tokens[(q, d)] >= counter_max]
        blocked.append(f"{q.name} at #{i} {inst.op.name} (wait={letters(inst.wait)}: {', '.join(why)})")
    where = (f"dispatch stopped at #{pc} {program.instructions[pc].op.name}" if pc < len(program.instructions)
             else "all instructions dispatched")
    return f"program {program.name!r} deadlocks on tokens ({where}): " + "; ".join(blocked)


def field_table(op: Opcode) -> str:
    """The markdown table of an opcode's fields and reserved bits (docs/isa.md holds these verbatim)."""
    rows = ["| field | offset | bits | meaning |", "|---|---|---|---|"]
    at = HEADER_BITS
    for f in FIELDS[op] + (Field("", 0, offset=INST_BITS),):
        if f.offset > at:
            rows.append(f"| reserved | {at} | {f.offset - at} | zero |")
        if f.name:
            kind = " (signed)" if f.signed else ""
            enum = f" ({f.enum.__name__})" if f.enum else ""
            rows.append(f"| `{f.name}` | {f.offset} | {f.bits}{kind} | {f.doc}{enum} |")
        at = f.offset + f.bits
    return "\n".join(rows) + "\n"
