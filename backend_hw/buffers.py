"""The on-chip buffers of a Target, shared by the units through byte-enabled client ports.

Two organisations of the same buffers behind the same client ports (`BufferPortSignature`: `buf`
selects the buffer by `BufferId`, `addr` is a word address in that buffer's words, narrower
buffers use the low lanes; read data the cycle after a taken `re`):

- `"block_ram"` (the hardware): each buffer is `Buffer.banks` memories of `width_bits` words,
  interleaved word by word (word `a` in bank `a % banks`, row `a // banks`), and each memory has
  one read port and one write port: simple dual-port, what RAMB36E2, URAM288 and DP16KD provide
  and what Yosys maps to them. In front of each port a fixed-priority arbiter takes one request a
  cycle: the lowest-numbered client asking wins, and the others see `ready` low and ask again
  (clients[0] is the highest priority: the Accelerator gives it to the host, so the host is never
  refused). A read and a write of the same memory proceed in the same cycle; a read sees the
  memory before that cycle's write.
- `"ports"` (simulation only): one memory per buffer with a read and a write port for every
  client: no request is ever refused. Many ports per memory are not block RAM (Yosys builds them
  from flip-flops); kept to measure what the arbitration costs.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In

from llmfab.ir.isa import BufferId
from llmfab.ir.target import BufferKind, Target

from .protocol.buffer_port import BufferPortSignature

ORGANISATIONS = ("block_ram", "ports")
# The Target's `kind` as the `ram_style` attribute Yosys' memory mapping honours (and Vivado's):
# `uram` buffers into URAM288 on UltraScale+, `bram` into RAMB18/36 (DP16KD on ECP5).
RAM_STYLE = {BufferKind.BRAM: "block", BufferKind.URAM: "ultra", BufferKind.LUTRAM: "distributed"}


def buffer_ids(target: Target) -> dict[BufferId, tuple[int, int]]:
    """BufferId -> (bytes, width_bits) for the buffers the target has."""
    return {b.id: (b.bytes, b.width_bits) for b in target.buffers}


def data_width(target: Target) -> int:
    """The client ports' data width: the widest buffer."""
    return max(w for _, w in buffer_ids(target).values())


def _words(raw: bytes, width_bits: int) -> list[int]:
    wb = width_bits // 8
    raw = raw + bytes(-len(raw) % wb)
    return [int.from_bytes(raw[i:i + wb], "little") for i in range(0, len(raw), wb)]


class BufferBank(wiring.Component):
    """The target's buffers with `clients` ports (`clients[i]`, `BufferPortSignature` flipped).

    `memories[BufferId]` is the list of the buffer's memories (its banks; one with `"ports"`);
    `peek(ctx, bid)` reads a buffer's bytes back in a testbench."""

    def __init__(self, target: Target, clients: int, *, init: dict[BufferId, bytes] | None = None,
                 organisation: str = "block_ram"):
        if not isinstance(clients, int) or clients < 1:
            raise ValueError(f"clients must be a positive integer, not {clients!r}")
        if organisation not in ORGANISATIONS:
            raise ValueError(f"organisation must be one of {', '.join(ORGANISATIONS)}, not {organisation!r}")
        self.target, self.n_clients, self.organisation = target, clients, organisation
        self.width = data_width(target)
        ids = buffer_ids(target)
        for bid, raw in (init or {}).items():
            if bid not in ids or len(raw) > ids[bid][0]:
                raise ValueError(f"init of {bid.name} holds {len(raw)} bytes, more than the buffer's "
                                 f"{ids.get(bid, (0,))[0]}")
        self.banks = {b.id: (b.banks if organisation == "block_ram" else 1) for b in target.buffers}
        kind = {b.id: b.kind for b in target.buffers}
        self.memories: dict[BufferId, list[memory.Memory]] = {}
        for bid, (nbytes, w) in ids.items():
            n = self.banks[bid]
            words = _words((init or {}).get(bid, b""), w)
            depth = nbytes * 8 // w // n
            style = {"ram_style": RAM_STYLE[kind[bid]]} if organisation == "block_ram" else None
            self.memories[bid] = [memory.Memory(shape=unsigned(w), depth=depth, init=words[j::n], attrs=style)
                                  for j in range(n)]
        super().__init__({"clients": In(BufferPortSignature(self.width)).array(clients)})

    def peek(self, ctx, bid: BufferId) -> bytes:
        """The bytes of buffer `bid` (an amaranth.sim testbench context), banks interleaved back."""
        mems = self.memories[bid]
        wb = mems[0].shape.width // 8
        n, depth = len(mems), mems[0].depth
        return b"".join(ctx.get(mems[a % n].data[a // n]).to_bytes(wb, "little") for a in range(n * depth))

    def elaborate(self, platform) -> Module:
        m = Module()
        for bid, mems in self.memories.items():
            for j, mem in enumerate(mems):
                m.submodules[f"buf_{bid.name.lower()}" + (f"_{j}" if len(mems) > 1 else "")] = mem
        if self.organisation == "ports":
            self._ports(m)
        else:
            self._arbitrated(m)
        return m

    def _ports(self, m: Module):
        for i, c in enumerate(self.clients):
            sel = Signal(3, name=f"c{i}_sel")
            m.d.comb += c.ready.eq(1)                    # a port of its own: every request is taken
            m.d.sync += sel.eq(c.buf)                    # which buffer answers the read next cycle
            reads = {}
            for bid, (mem,) in self.memories.items():
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

    def _arbitrated(self, m: Module):
        clients = list(self.clients)
        taken_r = [Const(0, 1)] * len(clients)          # the client's read was granted somewhere
        taken_w = [Const(0, 1)] * len(clients)
        known = [Const(0, 1)] * len(clients)            # the client names a buffer that exists
        returns = [[] for _ in clients]                  # (granted-last-cycle flag, read data) per memory
        for bid, mems in self.memories.items():
            n = len(mems)
            lg = (n - 1).bit_length()
            # each client's bank and row in this buffer, once for all its banks (word a: bank a % n)
            hit = [c.buf == bid for c in clients]
            if n == 1:
                bank, row = [Const(0, 1)] * len(clients), [c.addr for c in clients]
            elif n == 1 << lg:
                bank, row = [c.addr[:lg] for c in clients], [c.addr >> lg for c in clients]
            else:
                bank, row = [c.addr % n for c in clients], [c.addr // n for c in clients]
            for i in range(len(clients)):
                known[i] = known[i] | hit[i]
            for j, mem in enumerate(mems):
                w = mem.shape.width
                tag = f"{bid.name.lower()}{j}"
                rp, wp = mem.read_port(), mem.write_port(granularity=8)
                rgrant = [Signal(name=f"rg_{tag}_c{i}") for i in range(len(clients))]
                wgrant = [Signal(name=f"wg_{tag}_c{i}") for i in range(len(clients))]
                rbusy, wbusy = Const(0, 1), Const(0, 1)
                for i, c in enumerate(clients):          # priority: the first client asking wins
                    here = hit[i] & (bank[i] == j)
                    rq, wq = c.re & here, c.we & here
                    m.d.comb += [rgrant[i].eq(rq & ~rbusy), wgrant[i].eq(wq & ~wbusy)]
                    rbusy, wbusy = rbusy | rq, wbusy | wq
                    taken_r[i] = taken_r[i] | rgrant[i]
                    taken_w[i] = taken_w[i] | wgrant[i]
                with m.If(rbusy):
                    m.d.comb += rp.en.eq(1)
                for i, c in reversed(list(enumerate(clients))):
                    with m.If(rgrant[i]):
                        m.d.comb += rp.addr.eq(row[i])
                    with m.If(wgrant[i]):
                        m.d.comb += [wp.addr.eq(row[i]), wp.data.eq(c.wdata[:w]), wp.en.eq(c.be[:w // 8])]
                for i in range(len(clients)):
                    got = Signal(name=f"rv_{tag}_c{i}")
                    m.d.sync += got.eq(rgrant[i])
                    returns[i].append((got, rp.data))
        for i, c in enumerate(clients):
            # a request to a buffer the target lacks is dropped (taken), so a unit never waits forever
            m.d.comb += c.ready.eq((~c.re | taken_r[i] | ~known[i]) & (~c.we | taken_w[i] | ~known[i]))
            for got, data in returns[i]:
                with m.If(got):
                    m.d.comb += c.rdata.eq(data)


def read_bytes(mem_values: list[int], width_bits: int) -> bytes:
    """A buffer's bytes from its words (e.g. read in a testbench)."""
    return b"".join(v.to_bytes(width_bits // 8, "little") for v in mem_values)
