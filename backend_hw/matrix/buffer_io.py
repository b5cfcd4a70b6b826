"""Buffer access for the matrix unit: a byte reader (any byte address, any buffer word width, chunks
of a chosen size out), int32 writes at any byte address, and numpy-exact shift arithmetic.

Buffers have their own word widths (`Target.buffer(..).width_bits`); a port is as wide as the widest
and narrower buffers use its low lanes (backend_hw/dma/unit.py `BufferPortSignature`).
"""
from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BufferId

from ..protocol.buffer_port import BUF_ADDR_BITS, BufferPortSignature, word_log

LEN_BITS = 21        # bytes of one read command


class ByteReader(wiring.Component):
    """Reads `more + 1` records of `nbytes` bytes, the first at byte address `addr` of buffer `buf`
    and each next `pitch` bytes on (back at `addr` after every `wrap` records, when `wrap` is not 0),
    and hands each record out in chunks of `step` (<= `out_bytes`) bytes, its last chunk shorter and
    zero-padded, with `last` on it. With `run` not 0 the records lie back to back and are read as
    `rmore + 1` runs of `run` bytes instead (each from `addr` again when `wrap` is 1, else `pitch` on):
    no group is read twice where one record ends and the next begins.

    A read is a group of `lanes[buf]` consecutive words (a power of two, 1 by default), aligned to
    the group, word q of the group on `ports[q]`: word `a` lives in bank `a % banks`, so with no more
    lanes than banks a group's words never meet at a bank. The group is taken once every port is
    granted (a port granted while another was not reads again: the same word). A record's groups
    follow the previous record's at once (the bytes past a record's end are dropped), so records
    stream at the groups' rate.

    Ports: `cmd` (in, stream; taken only when idle), `ports` (out, array of max(lanes) ports,
    `BufferPortSignature`), `o` (out, stream of `data` 8 * out_bytes bits and `last`); for readers
    sharing ports, `hold` (in: no group read this cycle; 0 when unconnected) and `busy` (out: groups
    of the command are still to be read, a register). One group read per cycle while the byte
    store has room; a chunk leaves the cycle after the group that completes it arrives.
    """

    @staticmethod
    def capacity(out_bytes: int, group_bytes: int) -> int:
        """The byte store: two chunks and two groups (a group is read only while the store keeps
        room for it and the one in flight)."""
        return 2 * out_bytes + 2 * group_bytes

    @staticmethod
    def group_bytes(words: dict[BufferId, int], lanes: dict[BufferId, int] | None) -> dict[BufferId, int]:
        """Bytes of a read group per buffer."""
        return {b: wb * (lanes or {}).get(b, 1) for b, wb in words.items()}

    def __init__(self, words: dict[BufferId, int], out_bytes: int, lanes: dict[BufferId, int] | None = None):
        self.words, self.out_bytes = dict(words), out_bytes
        self.lanes = {b: (lanes or {}).get(b, 1) for b in self.words}
        for b, n in self.lanes.items():
            if n < 1 or n & (n - 1):
                raise ValueError(f"lanes of {b.name} must be a power of two, not {n}")
        self.groups = self.group_bytes(self.words, self.lanes)
        self.wb, self.gb = max(self.words.values()), max(self.groups.values())
        self.cap = self.capacity(out_bytes, self.gb)
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({
                "buf": 3, "addr": BUF_ADDR_BITS, "nbytes": LEN_BITS, "step": range(out_bytes + 1),
                "more": 32, "pitch": BUF_ADDR_BITS, "wrap": 16, "run": BUF_ADDR_BITS, "rmore": 16}))),
            "ports": Out(BufferPortSignature(8 * self.wb)).array(max(self.lanes.values())),
            "o": Out(stream.Signature(data.StructLayout({"data": 8 * out_bytes, "last": 1}))),
            "hold": In(1), "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        ob, cap, GB = self.out_bytes, self.cap, self.gb
        buf, step = Signal(3), Signal(range(ob + 1))
        nbytes, pitch, base, wrap = Signal(LEN_BITS), Signal(BUF_ADDR_BITS), Signal(BUF_ADDR_BITS), Signal(16)
        # the read side: the run being read (a record, or `run` bytes; its start, the bytes not yet
        # asked for, the runs after it) and its next group (address, the bytes of it before the run)
        rlen = Signal(BUF_ADDR_BITS)
        raddr, rd_left, rd_more, rd_k = Signal(BUF_ADDR_BITS), Signal(BUF_ADDR_BITS), Signal(32), Signal(16)
        gaddr, skip = Signal(BUF_ADDR_BITS), Signal(range(GB))
        pend, pend_skip, pend_n = Signal(), Signal(range(GB)), Signal(range(GB + 1))     # the group in flight
        # the out side: the record being handed out, the records after it
        out_left, out_more = Signal(LEN_BITS), Signal(32)
        n = Signal(range(cap + 1))
        store = Signal(8 * cap)

        lg = word_log(m, buf, self.groups)         # log2 of the group's bytes
        gb = Signal(range(GB + 1))
        m.d.comb += gb.eq(Const(1, 1) << lg)

        cmd = self.cmd.payload
        clg = word_log(m, cmd.buf, self.groups)
        m.d.comb += self.cmd.ready.eq((rd_left == 0) & ~pend & (out_left == 0))
        with m.If(self.cmd.valid & self.cmd.ready):
            none, runs = cmd.nbytes == 0, cmd.run != 0
            run_len = Mux(runs, cmd.run, cmd.nbytes)
            m.d.sync += [buf.eq(cmd.buf), step.eq(cmd.step), nbytes.eq(cmd.nbytes), pitch.eq(cmd.pitch),
                         base.eq(cmd.addr), wrap.eq(cmd.wrap), rd_k.eq(1), raddr.eq(cmd.addr),
                         gaddr.eq(cmd.addr >> clg), skip.eq(cmd.addr & ((Const(1, 1) << clg) - 1)),
                         rlen.eq(run_len), rd_left.eq(Mux(none, 0, run_len)),
                         rd_more.eq(Mux(none, 0, Mux(runs, cmd.rmore, cmd.more))),
                         out_left.eq(cmd.nbytes), out_more.eq(Mux(none, 0, cmd.more)), n.eq(0), store.eq(0)]

        # Chunks out: `step` bytes, or what is left of the record.
        take_n = Signal(range(ob + 1))
        m.d.comb += take_n.eq(Mux(out_left < step, out_left, step))
        mask = Signal(8 * ob)
        m.d.comb += mask.eq(Cat(*((j < take_n).replicate(8) for j in range(ob))))
        m.d.comb += [self.o.valid.eq((out_left != 0) & (n >= take_n)),
                     self.o.payload.data.eq(store[:8 * ob] & mask),
                     self.o.payload.last.eq(out_left <= step)]
        take = self.o.valid & self.o.ready
        n1 = Signal(range(cap + 1))
        store1 = Signal(8 * cap)
        m.d.comb += [n1.eq(Mux(take, n - take_n, n)), store1.eq(Mux(take, store >> (take_n * 8), store))]
        with m.If(take):
            m.d.sync += out_left.eq(out_left - take_n)
            with m.If((out_left <= step) & (out_more != 0)):
                m.d.sync += [out_left.eq(nbytes), out_more.eq(out_more - 1)]

        # Group reads: at most one in flight; issue only while the store keeps room for it.
        issue = Signal()
        m.d.comb += [issue.eq((rd_left != 0) & (n + Mux(pend, gb << 1, gb) <= cap) & ~self.hold),
                     self.busy.eq(rd_left != 0)]
        L = len(self.ports)
        llog = Signal(range(max(2, L.bit_length())))      # log2 of the buffer's lanes
        group = Signal(8 * GB)
        with m.Switch(buf):
            for b, nl in self.lanes.items():
                with m.Case(b):
                    m.d.comb += [llog.eq(nl.bit_length() - 1),
                                 group.eq(Cat(*(self.ports[q].rdata[:8 * self.words[b]] for q in range(nl))))]
        granted = []
        for q, port in enumerate(self.ports):
            m.d.comb += [port.buf.eq(buf), port.addr.eq((gaddr << llog) | q),
                         port.re.eq(issue & ((Const(1, L.bit_length()) << llog) > q))]
            granted.append(port.ready | ~port.re)
        taken = issue & Cat(*granted).all()
        m.d.sync += pend.eq(taken)
        room = Signal(range(GB + 1))               # the group's bytes from `skip` on
        m.d.comb += room.eq(gb - skip)
        with m.If(taken):
            m.d.sync += [pend_skip.eq(skip), pend_n.eq(Mux(rd_left < room, rd_left, room))]
            with m.If(rd_left > room):
                m.d.sync += [gaddr.eq(gaddr + 1), skip.eq(0), rd_left.eq(rd_left - room)]
            with m.Elif(rd_more != 0):             # the next run's first group
                nxt, again = Signal(BUF_ADDR_BITS), Signal()
                m.d.comb += [again.eq((wrap != 0) & (rd_k == wrap)), nxt.eq(Mux(again, base, raddr + pitch))]
                m.d.sync += [raddr.eq(nxt), gaddr.eq(nxt >> lg), skip.eq(nxt & (gb - 1)), rd_left.eq(rlen),
                             rd_more.eq(rd_more - 1), rd_k.eq(Mux(again, 1, rd_k + 1))]
            with m.Else():
                m.d.sync += rd_left.eq(0)
        fresh = Signal(8 * GB)
        m.d.comb += fresh.eq((group >> (pend_skip * 8)) & Cat(*((j < pend_n).replicate(8) for j in range(GB))))
        with m.If(pend):
            m.d.sync += [store.eq(store1 | (fresh << (n1 * 8))[:8 * cap]), n.eq(n1 + pend_n)]
        with m.Elif(~(self.cmd.valid & self.cmd.ready)):
            m.d.sync += [store.eq(store1), n.eq(n1)]
        return m


def int32_write(m: Module, buf, addr, value, words: dict[BufferId, int], data_bits: int):
    """An int32 at byte address `addr` of `buf` as up to two word writes:
    (word address, (wdata, be) of the first word, (wdata, be) of the second, whether there is one)."""
    wbmax = data_bits // 8
    lg = word_log(m, buf, words)
    off = Signal(range(wbmax))
    m.d.comb += off.eq(addr & ((Const(1, 1) << lg) - 1))
    d = Signal(2 * data_bits)
    be = Signal(2 * wbmax)
    m.d.comb += [d.eq(value.as_unsigned() << (off * 8)), be.eq(Const(0xF, 4) << off)]
    wb = Const(1, 1) << lg
    hi_d, hi_be = Signal(data_bits), Signal(wbmax)
    m.d.comb += [hi_d.eq(d >> (wb * 8)), hi_be.eq(be >> wb)]
    lo_be = Signal(wbmax)
    m.d.comb += lo_be.eq(be & ((Const(1, 1) << wb) - 1))
    return addr >> lg, (d[:data_bits], lo_be), (hi_d, hi_be), hi_be != 0


def wrap64(v):
    """`v` truncated to a signed 64-bit value: numpy int64 arithmetic, wrap-around included."""
    return v[:64].as_signed()


def rshr64(x, s):
    """ir.fixed_point.rshr on int64 (0 <= s <= 62 for right shifts, 0 <= -s < 64 for left)."""
    right = wrap64(x + (Const(1, 64) << (s - 1)[:6])) >> s[:6]
    left = wrap64(x << (-s)[:6])
    return Mux(s > 0, right, left)


def shr_sat(x, s, bits: int):
    """ir.integer._shr_sat(x, s, bits) for a signed 64-bit x and a signed shift s, exactly."""
    lim = (1 << (bits - 1)) - 1
    s = Value.cast(s)
    if not s.shape().signed:
        s = Cat(s, Const(0, 1)).as_signed()
    rs = Mux(s > 62, 62, s)
    down = rshr64(x, rs)
    k = Mux(-s > 62, 62, -s)[:6]
    up = x << k
    v = Mux(s > 0, down, up)
    return Mux(v > lim, lim, Mux(v < -lim, -lim, v)).as_signed()
