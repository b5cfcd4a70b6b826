"""The on-chip buffer port every unit drives: a byte-enabled read/write port on one buffer."""
from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

BUF_ADDR_BITS = 24   # buffer byte addresses in the ISA


class BufferPortSignature(wiring.Signature):
    """A byte-enabled buffer port, from the unit's side: `buf` selects the buffer (BufferId),
    `addr` is a word address in that buffer's words (`Buffer.width_bits` each; narrower buffers use
    the low lanes of `wdata`/`rdata`), `rdata` is valid the cycle after `re`."""

    def __init__(self, data_width: int, addr_width: int = BUF_ADDR_BITS):
        self.data_width, self.addr_width = data_width, addr_width
        super().__init__({"buf": Out(3), "addr": Out(addr_width), "re": Out(1), "we": Out(1),
                          "be": Out(data_width // 8), "wdata": Out(data_width), "rdata": In(data_width)})

    def __eq__(self, other):
        return (isinstance(other, BufferPortSignature)
                and (self.data_width, self.addr_width) == (other.data_width, other.addr_width))

    def __repr__(self):
        return f"BufferPortSignature({self.data_width}, {self.addr_width})"
