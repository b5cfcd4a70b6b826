"""ATTN on its own small datapath, bit-exact with simulator/functional.py `_misc`.

ATTN_QK: per query row r, per key t: the dot product over `depth` (chain_len int8 products per
cycle, q from `oport`, K from `aport`), then t1 = rshr(dot * m_k, e_k), t2 = _shr_sat(t1 * m_q,
e_q, 47), score = _shr_sat(t2 * imm, 32, 32), one register stage each (int64 wrap-around where
numpy has it). ATTN_PV: per row r, per key t: w = rshr(p[r, t] * m_v, e_v), then one
multiply-add per cycle into the int64 sums of row r (a `hold`-entry memory, rows * depth of them),
which CONTINUE starts from and HOLD keeps; without HOLD the rows are written as
_shr_sat(sum, 16, 32). An instruction whose rows * depth exceeds `hold` sets `error` and completes.
"""
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import CONTINUE, HOLD, INST_BITS, BufferId, MiscFunc, Opcode

from ..protocol.buffer_port import BufferPortSignature
from ..protocol.isa_fields import field
from .buffer_io import ByteReader, int32_write, rshr64, shr_sat, wrap64


class AttnSequencer(wiring.Component):
    """Ports: `start` (in): take `ir` (an ATTN word); `done` (out): one-cycle pulse; `error` (out):
    a pulse with `done` when the PV sums do not fit; `aport` (K/V rows), `oport` (q/p rows and the
    results) (out, `BufferPortSignature`)."""
    # FSM states the cycle formula (matrix/cycles.py) counts as one cycle each, by name
    QK_ENTRY_STATES = ("SETUP", "QK_ROW", "FINISH")   # the last QK_ROW finds r == rows
    QK_ROW_STATES = ("QK_ROW",)
    QK_KEY_STATES = ("DOT_CMD", "R1", "R2", "R3", "QK_NEXT")   # per key, besides reads and the write
    PV_ENTRY_STATES = ("SETUP", "PV_ROW", "FINISH")   # the last PV_ROW finds r == rows
    PV_ROW_STATES = ("PV_ROW",)
    PV_KEY_STATES = ("PV_W", "PV_CMD")                # per key, then PV_ACC until the last V byte
    PV_OUT_STATES = ("PV_OUT", "PV_ONEXT")            # per output, besides the write
    PV_OUT_END_STATES = ("PV_OUT",)                   # with r == rows

    def __init__(self, chain_len: int, words: dict[BufferId, int], hold: int):
        self.chain_len, self.words, self.hold = chain_len, words, hold
        self.data_bits = 8 * max(words.values())
        super().__init__({
            "start": In(1), "ir": In(INST_BITS), "done": Out(1), "error": Out(1),
            "aport": Out(BufferPortSignature(self.data_bits)), "oport": Out(BufferPortSignature(self.data_bits)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cl = self.chain_len
        ob = max(4, cl)
        sread = m.submodules.sread = ByteReader(self.words, ob)
        kread = m.submodules.kread = ByteReader(self.words, ob)
        for port, rd in ((self.aport, kread), (self.oport, sread)):
            for name in ("buf", "addr", "re"):
                m.d.comb += getattr(port, name).eq(getattr(rd.port, name))
            m.d.comb += [rd.port.rdata.eq(port.rdata), rd.port.ready.eq(port.ready)]
        mem = m.submodules.held = memory.Memory(shape=signed(64), depth=self.hold, init=[])
        rp = mem.read_port(domain="comb")
        wp = mem.write_port()

        ir = Signal(INST_BITS)

        def f(name):
            return field(ir, Opcode.ATTN, name)
        is_qk = f("func") == MiscFunc.ATTN_QK
        rows, cols, depth = f("rows"), f("cols"), f("depth")
        flags = f("flags")
        pitch2 = depth + 4 + f("src2_pad")
        spitch = Mux(f("src_stride") != 0, f("src_stride"), Mux(is_qk, depth + 4, cols << 2))
        dpitch = Mux(f("dst_stride") != 0, f("dst_stride"), Mux(is_qk, cols << 2, depth << 2))

        r, t, dd = Signal(16), Signal(16), Signal(16)
        s_row, k_row, d_row = Signal(24), Signal(24), Signal(24)
        base = Signal(range(self.hold + 1))
        rec_q, rec_k = Signal(24), Signal(24)
        mq, eq = rec_q[:16], rec_q[16:24].as_signed()
        mk, ek = rec_k[:16], rec_k[16:24].as_signed()
        acc = Signal(signed(64))
        t1, t2, y = Signal(signed(64)), Signal(signed(64)), Signal(signed(32))
        pval = Signal(32)
        w = Signal(signed(64))

        def cmd(rd, buf, addr, nbytes, step):
            m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.buf.eq(buf), rd.cmd.payload.addr.eq(addr),
                         rd.cmd.payload.nbytes.eq(nbytes), rd.cmd.payload.step.eq(step)]

        def scalar(state, rd, buf, addr, dest, nxt):
            with m.State(state):
                cmd(rd, buf, addr, 4, 4)
                with m.If(rd.cmd.ready):
                    m.next = state + "_W"
            with m.State(state + "_W"):
                m.d.comb += rd.o.ready.eq(1)
                with m.If(rd.o.valid):
                    m.d.sync += dest.eq(rd.o.payload.data[:len(dest)])
                    m.next = nxt

        wr_addr = Signal(24)
        wa, (d0, be0), (d1, be1), two = int32_write(m, f("dst_buf"), wr_addr, y, self.words, self.data_bits)

        def write(state, nxt):
            with m.State(state):
                m.d.comb += [self.oport.buf.eq(f("dst_buf")), self.oport.addr.eq(wa), self.oport.we.eq(1),
                             self.oport.wdata.eq(d0), self.oport.be.eq(be0)]
                with m.If(self.oport.ready):
                    m.next = state + "_HI"
                    with m.If(~two):
                        m.next = nxt
            with m.State(state + "_HI"):
                m.d.comb += [self.oport.buf.eq(f("dst_buf")), self.oport.addr.eq(wa + 1), self.oport.we.eq(1),
                             self.oport.wdata.eq(d1), self.oport.be.eq(be1)]
                with m.If(self.oport.ready):
                    m.next = nxt

        qa = sread.o.payload.data
        ka = kread.o.payload.data
        dot = sum(qa[8 * j:8 * j + 8].as_signed() * ka[8 * j:8 * j + 8].as_signed() for j in range(cl))

        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += ir.eq(self.ir)
                m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [r.eq(0), t.eq(0), base.eq(0), s_row.eq(f("src_addr")), d_row.eq(f("dst_addr")),
                             k_row.eq(f("src2_addr"))]
                with m.If(is_qk):
                    m.next = "QK_ROW"
                with m.Elif(rows * depth > self.hold):
                    m.d.comb += [self.error.eq(1), self.done.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "PV_ROW"

            # -- ATTN_QK ---------------------------------------------------------------------------
            with m.State("QK_ROW"):
                m.d.sync += [t.eq(0), k_row.eq(f("src2_addr"))]
                m.next = "QREC"
                with m.If((r == rows) | (cols == 0)):
                    m.next = "FINISH"
            scalar("QREC", sread, f("src_buf"), s_row, rec_q, "KREC")
            scalar("KREC", kread, f("src2_buf"), k_row, rec_k, "DOT_CMD")
            with m.State("DOT_CMD"):
                m.d.sync += acc.eq(0)
                cmd(sread, f("src_buf"), s_row + 4, depth, cl)
                cmd(kread, f("src2_buf"), k_row + 4, depth, cl)
                m.next = "DOT"
                with m.If(depth == 0):
                    m.next = "R1"
            with m.State("DOT"):
                both = sread.o.valid & kread.o.valid
                m.d.comb += [sread.o.ready.eq(both), kread.o.ready.eq(both)]
                with m.If(both):
                    m.d.sync += acc.eq(acc + dot)
                    with m.If(sread.o.payload.last):
                        m.next = "R1"
            with m.State("R1"):
                m.d.sync += t1.eq(rshr64(wrap64(acc * mk), ek))
                m.next = "R2"
            with m.State("R2"):
                m.d.sync += t2.eq(shr_sat(wrap64(t1 * mq), eq, 47))
                m.next = "R3"
            with m.State("R3"):
                m.d.sync += [y.eq(shr_sat(wrap64(t2 * f("imm")), 32, 32)), wr_addr.eq(d_row + (t << 2))]
                m.next = "QK_W"
            write("QK_W", "QK_NEXT")
            with m.State("QK_NEXT"):
                m.d.sync += [t.eq(t + 1), k_row.eq(k_row + pitch2)]
                m.next = "KREC"
                with m.If(t + 1 == cols):
                    m.d.sync += [r.eq(r + 1), s_row.eq(s_row + spitch), d_row.eq(d_row + dpitch)]
                    m.next = "QK_ROW"

            # -- ATTN_PV ---------------------------------------------------------------------------
            with m.State("PV_ROW"):
                m.d.sync += [t.eq(0), k_row.eq(f("src2_addr"))]
                m.next = "PREAD"
                with m.If((r == rows) | (depth == 0)):
                    m.d.sync += [r.eq(0), base.eq(0), dd.eq(0), s_row.eq(f("src_addr")), d_row.eq(f("dst_addr"))]
                    m.next = "PV_OUT"
                    with m.If((flags & HOLD).any() | (depth == 0)):
                        m.next = "FINISH"
                with m.Elif(cols == 0):          # no keys: the sums are what CONTINUE says
                    m.d.sync += dd.eq(0)
                    m.next = "PV_ZERO"
            with m.State("PV_ZERO"):
                m.d.comb += [rp.addr.eq(base + dd), wp.addr.eq(base + dd), wp.en.eq(1),
                             wp.data.eq(Mux(flags & CONTINUE, rp.data, 0))]
                m.d.sync += dd.eq(dd + 1)
                with m.If(dd + 1 == depth):
                    m.d.sync += [r.eq(r + 1), s_row.eq(s_row + spitch), base.eq(base + depth)]
                    m.next = "PV_ROW"
            scalar("PREAD", sread, f("src_buf"), s_row + (t << 2), pval, "VREC")
            scalar("VREC", kread, f("src2_buf"), k_row, rec_k, "PV_W")
            with m.State("PV_W"):
                m.d.sync += [w.eq(rshr64(pval.as_signed() * mk, ek)), dd.eq(0)]
                m.next = "PV_CMD"
            with m.State("PV_CMD"):
                cmd(kread, f("src2_buf"), k_row + 4, depth, 1)
                m.next = "PV_ACC"
            with m.State("PV_ACC"):
                m.d.comb += kread.o.ready.eq(1)
                fresh = (t == 0) & ~(flags & CONTINUE)
                m.d.comb += [rp.addr.eq(base + dd), wp.addr.eq(base + dd), wp.en.eq(kread.o.valid),
                             wp.data.eq(wrap64(Mux(fresh, 0, rp.data) + w * kread.o.payload.data[:8].as_signed()))]
                with m.If(kread.o.valid):
                    m.d.sync += dd.eq(dd + 1)
                    with m.If(kread.o.payload.last):
                        m.d.sync += [t.eq(t + 1), k_row.eq(k_row + pitch2)]
                        m.next = "PREAD"
                        with m.If(t + 1 == cols):
                            m.d.sync += [r.eq(r + 1), s_row.eq(s_row + spitch), base.eq(base + depth)]
                            m.next = "PV_ROW"
            with m.State("PV_OUT"):
                m.d.comb += rp.addr.eq(base + dd)
                m.d.sync += [y.eq(shr_sat(rp.data, 16, 32)), wr_addr.eq(d_row + (dd << 2))]
                m.next = "PV_WR"
                with m.If(r == rows):
                    m.next = "FINISH"
            write("PV_WR", "PV_ONEXT")
            with m.State("PV_ONEXT"):
                m.d.sync += dd.eq(dd + 1)
                with m.If(dd + 1 == depth):
                    m.d.sync += [dd.eq(0), r.eq(r + 1), base.eq(base + depth), d_row.eq(d_row + dpitch)]
                m.next = "PV_OUT"
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
