"""The Vitis kernel's arguments and where they sit in the AXI4-Lite control register map.

    0x00 ap_ctrl (bit 0 ap_start, 1 ap_done, 2 ap_idle, 3 ap_ready)   0x04 global interrupt enable
    0x08 IP interrupt enable (bit 0 done, 1 ready)                    0x0C IP interrupt status
    0x10 length         u32   LEN for the program (the `length` register)
    0x18 program        u64   device address of the instruction words (read through m_axi_hbm0)
    0x20 program_bytes  u32   their size in bytes (at most the INST buffer; more is cut off)
    0x28 tokens         u64   device address of the token ids, int32 (read through m_axi_hbm0)
    0x30 tokens_bytes   u32   their size in bytes (written to ACT from byte 0)
    0x38 + 8k  hbm<k>   u64   base address of memory channel k's image (weights, KV cache, I/O
                              regions as the compiler laid them out): added to every address the
                              accelerator issues on m_axi_hbm<k>

Every argument takes an 8-byte slot (a u32 uses its low word); a u64 is its low word at the
offset and its high word at offset + 4. Pointers must be aligned to the memory beat
(`Target.memory.beat_bytes`); XRT's buffers are 4 KiB aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

CTRL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C
FIRST_ARG = 0x10
CONTROL_ADDR_BITS = 12            # s_axi_control spans 0x1000 bytes
CONTROL_RANGE = 1 << CONTROL_ADDR_BITS
M_AXI_ADDR_BITS = 64


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: `size` 4 (scalar) or 8 (scalar or pointer) bytes at `offset`;
    `bundle` is the m_axi port a pointer's memory is reached through (None for scalars)."""
    name: str
    offset: int
    size: int
    bundle: str | None
    doc: str

    @property
    def pointer(self) -> bool:
        return self.bundle is not None


def bundle(k: int) -> str:
    return f"m_axi_hbm{k}"


def kernel_args(target) -> tuple[KernelArg, ...]:
    """The arguments for `target` (one base address per memory channel), in id order."""
    spec = [("length", 4, None, "LEN for the program"),
            ("program", 8, bundle(0), "the program's instruction words"),
            ("program_bytes", 4, None, "the program's size in bytes"),
            ("tokens", 8, bundle(0), "the step's token ids (int32)"),
            ("tokens_bytes", 4, None, "the token ids' size in bytes")]
    spec += [(f"hbm{k}", 8, bundle(k), f"memory channel {k}'s image (weights, KV cache, I/O)")
             for k in range(target.memory.channels)]
    out = tuple(KernelArg(name, FIRST_ARG + 8 * i, size, b, doc) for i, (name, size, b, doc) in enumerate(spec))
    if out[-1].offset + 8 > CONTROL_RANGE:
        raise ValueError(f"{target.memory.channels} memory channels do not fit the control register map "
                         f"({CONTROL_RANGE:#x} bytes)")
    return out
