"""AXI4 memory ports: channel signatures, and `AxiMemory`, a slave model for amaranth.sim testbenches.

Each AXI4 channel is a `stream.Signature` (valid/ready) whose payload is a `data.StructLayout` of
the AXI fields (`id`, `addr`, `len`, `size`, `burst`, `data`, `strb`, `resp`, `last`), so a port
elaborates to `axi__ar__payload__addr` and the like. Only what the DMA uses is modelled: INCR
bursts, one ID, OKAY responses.
"""
from __future__ import annotations

import random
from collections import deque
from enum import IntEnum

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.memory import AXI_PAGE_BYTES


class Burst(IntEnum):
    FIXED = 0
    INCR = 1
    WRAP = 2


def address_layout(addr_width: int, id_width: int) -> data.StructLayout:
    return data.StructLayout({"id": id_width, "addr": addr_width, "len": 8, "size": 3, "burst": 2})


class AxiSignature(wiring.Signature):
    """An AXI4 port, from the manager's side: AR, AW, W out; R, B in."""

    def __init__(self, addr_width: int, data_width: int, id_width: int = 1):
        if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an integer in [12, 64], not {addr_width!r}")
        if not isinstance(data_width, int) or data_width < 8 or data_width & (data_width - 1):
            raise ValueError(f"data_width must be a power of two of at least 8, not {data_width!r}")
        if not isinstance(id_width, int) or id_width < 1:
            raise ValueError(f"id_width must be a positive integer, not {id_width!r}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        addr = address_layout(addr_width, id_width)
        super().__init__({
            "ar": Out(stream.Signature(addr)),
            "r": In(stream.Signature(data.StructLayout({"id": id_width, "data": data_width, "resp": 2, "last": 1}))),
            "aw": Out(stream.Signature(addr)),
            "w": Out(stream.Signature(data.StructLayout({"data": data_width, "strb": data_width // 8, "last": 1}))),
            "b": In(stream.Signature(data.StructLayout({"id": id_width, "resp": 2}))),
        })

    def __eq__(self, other):
        return (isinstance(other, AxiSignature) and (self.addr_width, self.data_width, self.id_width) ==
                (other.addr_width, other.data_width, other.id_width))

    def __repr__(self):
        return f"AxiSignature({self.addr_width}, {self.data_width}, {self.id_width})"


class AxiProtocolError(AssertionError):
    pass


class AxiMemory:
    """An AXI4 slave over a `bytearray`, for amaranth.sim (not hardware).

    Accepts up to `outstanding` read and `outstanding` write bursts; the first beat of a read
    comes `latency` cycles after its AR, a write's B `latency` cycles after its last W. With
    `stall` > 0, R and W beats pause at random (seeded). Every burst is checked: INCR, full-width
    beats, within 256 beats and one 4 KB page, inside the array, WLAST on the last beat; a
    violation raises `AxiProtocolError` in the testbench. `reads`/`writes` count bursts.
    """

    def __init__(self, mem: bytearray, data_width: int, *, latency: int = 3, outstanding: int = 4,
                 stall: float = 0.0, seed: int = 0):
        self.mem, self.width, self.bytes = mem, data_width, data_width // 8
        self.latency, self.outstanding, self.stall = latency, outstanding, stall
        self.rng = random.Random(seed)
        self.reads = self.writes = 0

    def _check(self, kind, p) -> tuple[int, int]:
        addr, beats = p.addr, p.len + 1
        if p.burst != Burst.INCR or 1 << p.size != self.bytes:
            raise AxiProtocolError(f"{kind} burst {p.burst} size {p.size}: only full-width INCR is modelled")
        if addr % self.bytes:
            raise AxiProtocolError(f"{kind} at {addr:#x} is not aligned to {self.bytes} bytes")
        if addr // AXI_PAGE_BYTES != (addr + beats * self.bytes - 1) // AXI_PAGE_BYTES:
            raise AxiProtocolError(f"{kind} at {addr:#x} of {beats} beats crosses a 4 KB boundary")
        if addr + beats * self.bytes > len(self.mem):
            raise AxiProtocolError(f"{kind} at {addr:#x} of {beats} beats is outside the memory")
        return addr, beats

    def testbench(self, port):
        """An async testbench function serving `port` (an `AxiSignature` interface, manager side)."""
        async def serve(ctx):
            last = {}

            def drive(sig, value):      # each set settles the design: only set what changed
                key = id(sig)
                if last.get(key) != value:
                    last[key] = value
                    ctx.set(sig, value)
            reads, writes, bresp = deque(), deque(), deque()    # [ready cycle, addr, beats left]
            r_on = w_on = False
            cycle = 0
            ctx.set(port.b.payload.resp, 0)
            ctx.set(port.r.payload.resp, 0)
            while True:
                drive(port.ar.ready, len(reads) < self.outstanding)
                drive(port.aw.ready, len(writes) < self.outstanding)
                if not r_on and reads and reads[0][0] <= cycle and self.rng.random() >= self.stall:
                    r_on = True
                if r_on:
                    _, addr, left = reads[0]
                    drive(port.r.payload.data, int.from_bytes(self.mem[addr:addr + self.bytes], "little"))
                    drive(port.r.payload.last, left == 1)
                drive(port.r.valid, r_on)
                w_on = bool(writes) and writes[0][0] <= cycle and self.rng.random() >= self.stall
                drive(port.w.ready, w_on)
                drive(port.b.valid, bool(bresp) and bresp[0] <= cycle)
                # handshakes at this edge
                if ctx.get(port.ar.valid) and ctx.get(port.ar.ready):
                    addr, beats = self._check("read", ctx.get(port.ar.payload))
                    reads.append([cycle + self.latency, addr, beats])
                    self.reads += 1
                if ctx.get(port.aw.valid) and ctx.get(port.aw.ready):
                    addr, beats = self._check("write", ctx.get(port.aw.payload))
                    writes.append([cycle + 1, addr, beats])
                    self.writes += 1
                if r_on and ctx.get(port.r.ready):
                    reads[0][1] += self.bytes
                    reads[0][2] -= 1
                    if reads[0][2] == 0:
                        reads.popleft()
                    r_on = False   # the next beat is presented (or stalled) from the next cycle
                if w_on and ctx.get(port.w.valid):
                    w = ctx.get(port.w.payload)
                    _, addr, left = writes[0]
                    for k in range(self.bytes):
                        if w.strb >> k & 1:
                            self.mem[addr + k] = w.data >> 8 * k & 0xFF
                    if w.last != (left == 1):
                        raise AxiProtocolError(f"WLAST={w.last} on a beat with {left} beats left in the burst")
                    writes[0][1] += self.bytes
                    writes[0][2] -= 1
                    if left == 1:
                        writes.popleft()
                        bresp.append(cycle + self.latency)
                if bresp and bresp[0] <= cycle and ctx.get(port.b.ready):
                    bresp.popleft()
                await ctx.tick()
                cycle += 1
        return serve
