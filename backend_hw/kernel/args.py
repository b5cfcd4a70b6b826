"""The Vitis kernel's arguments and where they sit in the AXI4-Lite control register map.

    0x00 ap_ctrl (bit 0 ap_start, 1 ap_done, 2 ap_idle, 3 ap_ready)   0x04 global interrupt enable
    0x08 IP interrupt enable (bit 0 done, 1 ready)                    0x0C IP interrupt status
    0x10 length         u32   LEN for the program (the `length` register)
    0x18 program        u64   device address of the instruction words (read through m_axi_hbm0)
    0x20 program_bytes  u32   their size in bytes (at most the INST buffer; more is cut off)
    0x28 tokens         u64   device address of the token ids, int32 (read through m_axi_hbm0)
    0x30 tokens_bytes   u32   their size in bytes (written to ACT from byte 0)
    0x38 status         u32   read only: the last run's error bits (`STATUS_BITS`), cleared at ap_start
    0x40 cycles         u64   read only: ap_clk cycles since the last ap_start (stops at ap_done)
    0x48 + 8k  hbm<k>   u64   base address of memory channel k's image (weights, KV cache, I/O
                              regions as the compiler laid them out): added to every address the
                              accelerator issues on m_axi_hbm<k>

Every argument takes an 8-byte slot (a u32 uses its low word); a u64 is its low word at the
offset and its high word at offset + 4. Pointers must be aligned to the memory beat
(`Target.memory.beat_bytes`); XRT's buffers are 4 KiB aligned. `status` and `cycles` are
arguments too (scalars in kernel.xml, so XRT's `kernel.offset(i)` finds them for
`read_register`); writes to them are ignored, and XRT's zeros at start do no harm.
"""
from __future__ import annotations

from dataclasses import dataclass

CTRL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C
FIRST_ARG = 0x10
CONTROL_ADDR_BITS = 12            # s_axi_control spans 0x1000 bytes
CONTROL_RANGE = 1 << CONTROL_ADDR_BITS
M_AXI_ADDR_BITS = 64
READONLY = ("status", "cycles")


# the bits of `status`: (bit, name, what sets it); sticky from the event to the next ap_start
STATUS_BITS = (
    (0, "illegal_instruction", "the accelerator's error: an illegal opcode (dropped) or a weight format its "
                               "matrix unit was not built for"),
    (1, "read_error", "a read response other than OKAY on a bundle (SLVERR, or DECERR: an address outside "
                      "the memory the bundle is connected to)"),
    (2, "write_error", "a write response other than OKAY on a bundle (SLVERR / DECERR as for reads)"),
    (3, "program_cut", "program_bytes is larger than the INST buffer: the program was cut to it"),
    (4, "tokens_cut", "tokens_bytes is larger than the ACT buffer: the token ids were cut to it"),
)


def status_names(status: int) -> list[str]:
    """The names of the bits set in a `status` value (unknown bits as `bit<n>`)."""
    known = {b: n for b, n, _ in STATUS_BITS}
    return [known.get(b, f"bit{b}") for b in range(32) if status >> b & 1]


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: `size` 4 (scalar) or 8 (scalar or pointer) bytes at `offset`;
    `bundle` is the m_axi port a pointer's memory is reached through (None for scalars);
    `readonly`: a status register the kernel drives (the host reads it, its writes are ignored)."""
    name: str
    offset: int
    size: int
    bundle: str | None
    doc: str
    readonly: bool = False

    @property
    def pointer(self) -> bool:
        return self.bundle is not None


def bundle(k: int) -> str:
    return f"m_axi_hbm{k}"


def bundle_banks(target) -> dict[str, str]:
    """The memory bank of each bundle, as the v++ link config connects it (package.py writes it):
    m_axi_hbm<k> on HBM[k] (DDR[k] for a DDR target)."""
    from llmfab.ir.target import MemoryKind
    bank = "HBM" if target.memory.kind is MemoryKind.HBM else "DDR"
    return {bundle(k): f"{bank}[{k}]" for k in range(target.memory.channels)}


def kernel_args(target) -> tuple[KernelArg, ...]:
    """The arguments for `target` (one base address per memory channel), in id order."""
    spec = [("length", 4, None, "LEN for the program"),
            ("program", 8, bundle(0), "the program's instruction words"),
            ("program_bytes", 4, None, "the program's size in bytes"),
            ("tokens", 8, bundle(0), "the step's token ids (int32)"),
            ("tokens_bytes", 4, None, "the token ids' size in bytes"),
            ("status", 4, None, "read only: the last run's error bits"),
            ("cycles", 8, None, "read only: cycles since the last ap_start")]
    spec += [(f"hbm{k}", 8, bundle(k), f"memory channel {k}'s image (weights, KV cache, I/O)")
             for k in range(target.memory.channels)]
    out = tuple(KernelArg(name, FIRST_ARG + 8 * i, size, b, doc, name in READONLY)
                for i, (name, size, b, doc) in enumerate(spec))
    if out[-1].offset + 8 > CONTROL_RANGE:
        raise ValueError(f"{target.memory.channels} memory channels do not fit the control register map "
                         f"({CONTROL_RANGE:#x} bytes)")
    return out


def register_writes(target, values: dict[str, int]) -> list[tuple[int, int]]:
    """The AXI4-Lite writes (offset, 32-bit word) that set the arguments `values` (name -> value),
    a u64 as its low then its high word; what a host without XRT's argument handling writes."""
    args = {a.name: a for a in kernel_args(target)}
    out = []
    for name, v in values.items():
        a = args.get(name)
        if a is None or a.readonly:
            raise ValueError(f"{name!r} is not a kernel argument the host sets "
                             f"({', '.join(n for n, x in args.items() if not x.readonly)})")
        if not 0 <= v < 1 << 8 * a.size:
            raise ValueError(f"kernel argument {name} = {v} does not fit its {a.size} bytes")
        out += [(a.offset + 4 * k, v >> 32 * k & 0xFFFFFFFF) for k in range(a.size // 4)]
    return out
