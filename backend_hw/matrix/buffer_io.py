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
    """Reads `nbytes` bytes at byte address `addr` of buffer `buf` and hands them out in chunks of
    `step` (<= `out_bytes`) bytes, the last one shorter and zero-padded, with `last` on it.

    Ports: `cmd` (in, stream; taken only when idle), `port` (out, `BufferPortSignature`),
    `o` (out, stream of `data` 8 * out_bytes bits and `last`); for readers sharing a port, `hold`
    (in: no word read this cycle; 0 when unconnected) and `busy` (out: words of the command are
    still to be read, a register). One word read per cycle while the
    byte store has room; a chunk leaves the cycle after the word that completes it arrives.
    """

    @staticmethod
    def capacity(out_bytes: int, word_bytes: int) -> int:
        """The byte store: two chunks and two words (a word is read only while the store keeps
        room for it and the one in flight)."""
        return 2 * out_bytes + 2 * word_bytes

    def __init__(self, words: dict[BufferId, int], out_bytes: int):
        self.words, self.out_bytes = dict(words), out_bytes
        self.wb = max(self.words.values())
        self.cap = self.capacity(out_bytes, self.wb)
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({
                "buf": 3, "addr": BUF_ADDR_BITS, "nbytes": LEN_BITS, "step": range(out_bytes + 1)}))),
            "port": Out(BufferPortSignature(8 * self.wb)),
            "o": Out(stream.Signature(data.StructLayout({"data": 8 * out_bytes, "last": 1}))),
            "hold": In(1), "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        ob, cap = self.out_bytes, self.cap
        buf = Signal(3)
        waddr = Signal(BUF_ADDR_BITS)
        words_left = Signal(LEN_BITS + 1)
        out_left = Signal(LEN_BITS)
        step = Signal(range(ob + 1))
        skip = Signal(range(self.wb))
        n = Signal(range(cap + 1))
        pend = Signal()
        store = Signal(8 * cap)

        lg = word_log(m, buf, self.words)
        wb = Signal(range(self.wb + 1))
        m.d.comb += wb.eq(Const(1, 1) << lg)

        cmd = self.cmd.payload
        clg = word_log(m, cmd.buf, self.words)
        cskip = Signal(range(self.wb))
        m.d.comb += [cskip.eq(cmd.addr & ((Const(1, 1) << clg) - 1)),
                     self.cmd.ready.eq((words_left == 0) & ~pend & (out_left == 0))]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [buf.eq(cmd.buf), waddr.eq(cmd.addr >> clg), skip.eq(cskip), out_left.eq(cmd.nbytes),
                         step.eq(cmd.step), n.eq(0), store.eq(0),
                         words_left.eq((cskip + cmd.nbytes + (Const(1, 1) << clg) - 1) >> clg)]

        # Chunks out: `step` bytes, or what is left.
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

        # Word reads: at most one in flight; issue only while the store keeps room for it.
        issue = Signal()
        m.d.comb += [issue.eq((words_left != 0) & (n + (pend + 1) * self.wb <= cap) & ~self.hold),
                     self.port.buf.eq(buf), self.port.addr.eq(waddr), self.port.re.eq(issue)]
        taken = issue & self.port.ready
        m.d.sync += pend.eq(taken)
        m.d.comb += self.busy.eq(words_left != 0)
        with m.If(taken):
            m.d.sync += [waddr.eq(waddr + 1), words_left.eq(words_left - 1)]
        wmask = Signal(8 * self.wb)
        m.d.comb += wmask.eq(Cat(*((j < wb).replicate(8) for j in range(self.wb))))
        word = (self.port.rdata & wmask) >> (skip * 8)
        with m.If(pend):
            m.d.sync += [store.eq(store1 | (word << (n1 * 8))[:8 * cap]), n.eq(n1 + wb - skip), skip.eq(0)]
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
