"""The on-chip buffer port every unit drives: a byte-enabled read/write port on one buffer."""
from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BufferId

BUF_ADDR_BITS = 24   # buffer byte addresses in the ISA


class BufferPortSignature(wiring.Signature):
    """A byte-enabled buffer port, from the unit's side: `buf` selects the buffer (BufferId),
    `addr` is a word address in that buffer's words (`Buffer.width_bits` each; narrower buffers use
    the low lanes of `wdata`/`rdata`). A request (`re` or `we`) happens only in a cycle where the
    bank raises `ready` (its grant, which may depend on the request); a unit whose request is not
    taken asks again. `rdata` is valid the cycle after a taken `re`."""

    def __init__(self, data_width: int, addr_width: int = BUF_ADDR_BITS):
        self.data_width, self.addr_width = data_width, addr_width
        super().__init__({"buf": Out(3), "addr": Out(addr_width), "re": Out(1), "we": Out(1),
                          "be": Out(data_width // 8), "wdata": Out(data_width), "rdata": In(data_width),
                          "ready": In(1)})

    def __eq__(self, other):
        return (isinstance(other, BufferPortSignature)
                and (self.data_width, self.addr_width) == (other.data_width, other.addr_width))

    def __repr__(self):
        return f"BufferPortSignature({self.data_width}, {self.addr_width})"


def checked_word_bytes(target) -> dict[BufferId, int]:
    """The target's buffer word bytes, after checking that each unit can address them: every
    word a power of two of at least 4 bytes (byte lanes in whole 32-bit groups)."""
    for b in target.buffers:
        if b.width_bits < 32 or b.width_bits & (b.width_bits - 1):
            raise ValueError(f"buffer {b.name.value} width_bits must be a power of two of at least 32, "
                             f"not {b.width_bits}")
    return target.word_bytes


def word_log(m: Module, buf: Value, word_bytes: dict[BufferId, int]) -> Signal:
    """log2 of the word bytes of buffer `buf` (a BufferId-valued signal), for byte <-> word
    addresses of whichever buffer an instruction names."""
    lg = Signal(range(max(word_bytes.values()).bit_length()), name="word_log")
    with m.Switch(buf):
        for b, wb in word_bytes.items():
            with m.Case(b):
                m.d.comb += lg.eq(wb.bit_length() - 1)
    return lg
