"""The on-chip buffers of a Target, shared by the units through byte-enabled client ports.

Each buffer of `Target.buffers` is one `amaranth.lib.memory.Memory` of `width_bits` words. Every
client port (`BufferPortSignature`: `buf` selects the buffer by `BufferId`, `addr` is a word
address in that buffer's words, narrower buffers use the low lanes) gets its own read and write
port on every buffer, so the units never stall each other: the dependency tokens of the program
already keep them off each other's bytes (docs/isa.md). Read data comes the cycle after `re`.

This is the simulation organisation (amaranth.sim, Verilator). Many ports per memory are not
block RAM: a synthesizable buffer needs one read and one write port with an arbiter in front,
which the units would then have to wait for (docs/hardware.md, "What is not built yet").
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In

from llmfab.ir.isa import BufferId
from llmfab.ir.target import Target

from .protocol.buffer_port import BufferPortSignature


def buffer_ids(target: Target) -> dict[BufferId, tuple[int, int]]:
    """BufferId -> (bytes, width_bits) for the buffers the target has."""
    return {b.id: (b.bytes, b.width_bits) for b in target.buffers}


def data_width(target: Target) -> int:
    """The client ports' data width: the widest buffer."""
    return max(w for _, w in buffer_ids(target).values())


class BufferBank(wiring.Component):
    """The target's buffers with `clients` ports (`clients[i]`, `BufferPortSignature` flipped).

    `memories[BufferId]` are the Memory objects (a testbench may read or preload them)."""

    def __init__(self, target: Target, clients: int, *, init: dict[BufferId, bytes] | None = None):
        if not isinstance(clients, int) or clients < 1:
            raise ValueError(f"clients must be a positive integer, not {clients!r}")
        self.target, self.n_clients = target, clients
        self.width = data_width(target)
        ids = buffer_ids(target)
        for bid, raw in (init or {}).items():
            if bid not in ids or len(raw) > ids[bid][0]:
                raise ValueError(f"init of {bid.name} holds {len(raw)} bytes, more than the buffer's "
                                 f"{ids.get(bid, (0,))[0]}")
        self.memories: dict[BufferId, memory.Memory] = {}
        for bid, (nbytes, w) in ids.items():
            depth = nbytes * 8 // w
            raw = (init or {}).get(bid, b"")
            raw = raw + bytes(-len(raw) % (w // 8))
            words = [int.from_bytes(raw[i:i + w // 8], "little") for i in range(0, len(raw), w // 8)]
            self.memories[bid] = memory.Memory(shape=unsigned(w), depth=depth, init=words)
        super().__init__({"clients": In(BufferPortSignature(self.width)).array(clients)})

    def elaborate(self, platform) -> Module:
        m = Module()
        for bid, mem in self.memories.items():
            m.submodules[f"buf_{bid.name.lower()}"] = mem
        for i, c in enumerate(self.clients):
            sel = Signal(3, name=f"c{i}_sel")
            m.d.comb += c.ready.eq(1)                    # a port of its own: every request is taken
            m.d.sync += sel.eq(c.buf)                    # which buffer answers the read next cycle
            reads = {}
            for bid, mem in self.memories.items():
                w = mem.shape.width
                rp = mem.read_port()
                wp = mem.write_port(granularity=8)
                hit = c.buf == bid
                m.d.comb += [rp.addr.eq(c.addr), rp.en.eq(c.re & hit),
                             wp.addr.eq(c.addr), wp.data.eq(c.wdata[:w]),
                             wp.en.eq(Mux(c.we & hit, c.be[:w // 8], 0))]
                reads[bid] = rp.data
            with m.Switch(sel):
                for bid, data in reads.items():
                    with m.Case(bid):
                        m.d.comb += c.rdata.eq(data)
        return m


def read_bytes(mem_values: list[int], width_bits: int) -> bytes:
    """A buffer's bytes from its words (e.g. read in a testbench)."""
    return b"".join(v.to_bytes(width_bits // 8, "little") for v in mem_values)
