"""ATTN on its own streaming datapath, bit-exact with simulator/functional.py `_misc`.

Both functions stream the K / V records (a 4-byte scale record, then `depth` int8 codes) on `aports`
at the ports' rate: one `ByteReader` command reads every query row's keys' records (4 + depth
bytes each, `depth + 4 + src2_pad` apart, from the first key again for each row; with no pad a
row's records are one run of bytes, no group read twice) in chunks of `ob` bytes (the Target's
`engine.attn_bytes`), as groups of `attn_lanes` words a cycle (consecutive words, one per bank, on
as many ports), a record's groups right after the previous record's. A chunk is taken every cycle
it is there; its lanes line up with the record's bytes (lane l of chunk j is byte j * ob + l; the
scale record sits in lanes 0..3 of chunk 0).

ATTN_QK, per query row: the q record is read on `oport` into the sums memory (area r % 2, chunk j
in its entry j, the scale lanes zeroed; a row ahead of the keys, once row r - 2's scores are
written), then the row's keys stream: per chunk the ob int8 products against q's chunk
(registered), their sum and the accumulate; per key t1 = rshr(dot * m_k, e_k),
t2 = _shr_sat(t1 * m_q, e_q, 47), score = _shr_sat(t2 * imm, 32, 32), each product split into
DSP-sized registered partial products (`limb_mul`) and each shift / saturation its own register
stage (int64 wrap-around where numpy has it; the row's q scale comes with the key). The scores go
through a FIFO to the writer on `oport` (which the q reads give way to); a key enters only while
fewer than `CAP` keys await their writes.
ATTN_PV, per row r, per key t: p[r, t] (a stream of the row's int32s on `oport`) and the V record;
w = rshr(p * m_v, e_v) from the record's chunk 0 (`limb_mul`, two shift stages) meets the chunks,
delayed by as many stages, and each chunk's ob products w * v (`limb_mul` per lane) are added to
the row's int64 sums in one read-modify-write a cycle (entry r * nrow + j, lanes as the chunk's,
nrow = nch; with ob = 4 chunk 0 is the scale record alone and is not kept: entry r * nrow + j - 1;
a read sees the write of the cycle before, so keys back to back need no forwarding). CONTINUE
starts from the held sums, HOLD keeps them; without HOLD the sums stream out as
_shr_sat(sum, 16, 32) through the same writer. The sums memory holds hold // ob entries of ob
int64s: an instruction needing more (PV: rows * nrow entries, QK: 2 nch, or nch for one row;
nch = ceil((4 + depth) / ob)) sets `error` and completes.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import CONTINUE, HOLD, INST_BITS, BufferId, MiscFunc, Opcode

from ..protocol.buffer_port import BufferPortSignature
from ..protocol.isa_fields import field
from ..sfu.arith import limb_mul, sat, tree, tree_registers
from .buffer_io import ByteReader, int32_write, wrap64

CAP = 32                 # keys (QK) / outputs (PV) admitted and not yet written: the FIFO's depth, more
                         # than a key's latency from its chunk to its score (21 cycles), so a key a cycle streams
SUM_LEVELS = 2           # adder levels between the dot product's registers


def attn_lanes(target) -> dict[BufferId, int]:
    """Words of each buffer the K / V readers take a cycle (a power of two): as many as a chunk
    of `engine.attn_bytes` holds and the buffer has banks, so a group's words never meet at a bank."""
    ob = target.engine.attn_bytes
    return {b.id: 1 << (max(1, min(ob // b.word_bytes, b.banks)).bit_length() - 1) for b in target.buffers}


def _rshr64(m: Module, x, s, name: str) -> Signal:
    """buffer_io.rshr64(x, s) in two register stages (`s` aligned with `x`): the rounding add and
    the left shift, then the right shift and the choice."""
    pre, left = Signal(signed(64), name=f"{name}_pre"), Signal(signed(64), name=f"{name}_left")
    pos, sh = Signal(name=f"{name}_pos"), Signal(6, name=f"{name}_sh")
    m.d.sync += [pre.eq(wrap64(x + (Const(1, 64) << (s - 1)[:6]))), left.eq(wrap64(x << (-s)[:6])),
                 pos.eq(s > 0), sh.eq(s[:6])]
    out = Signal(signed(64), name=name)
    m.d.sync += out.eq(Mux(pos, pre >> sh, left))
    return out


def _delay(m: Module, v, n: int, name: str):
    """`v` n cycles later (registers)."""
    for i in range(n):
        r = Signal.like(v, name=f"{name}_d{i}")
        m.d.sync += r.eq(v)
        v = r
    return v


class AttnSequencer(wiring.Component):
    """Ports: `start` (in): take `ir` (an ATTN word); `done` (out): one-cycle pulse; `error` (out):
    a pulse with `done` when the sums memory is too small; `aports` (K/V rows, word q of a group on
    aports[q]), `oport` (q/p rows and the results) (out, `BufferPortSignature`)."""
    # FSM states, and the latencies the cycle model (matrix/attn_cycles.py) plays
    ENTRY_STATES = ("SETUP", "CHECK", "FINISH")
    QK_STATES = ("QKEYS", "QDRAIN")
    LOADER_STATES = ("LIDLE", "LLOAD")     # QK's q rows, a row ahead of the keys
    PV_STATES = ("PKEYS", "PDRAIN", "ZERO", "OUT", "ODRAIN")
    DOT_LATENCY = 3          # a key's last chunk taken -> its dot product: q / K chunks, products, sum
    QK_LATENCY = 13          # dot product -> score in the FIFO: three products, two shifts, two saturations
    PV_LATENCY = 7           # a chunk taken -> its sums written: w (4), then w * v (2), the read-modify-write
    OUT_LATENCY = 3          # PV output issued -> in the FIFO: the lane's read, the shift, the saturation
    FIFO_LATENCY = 2         # SyncFIFOBuffered: written -> readable when empty
    W_STAGES = 4             # PV: the chunks wait for w: p * m_v (2), rshr (2)

    def __init__(self, ob: int, words: dict[BufferId, int], hold: int, lanes: dict[BufferId, int] | None = None):
        if ob < 4 or ob & (ob - 1):
            raise ValueError(f"ob must be a power of two of at least 4, not {ob!r}")
        self.ob, self.words, self.hold = ob, words, hold
        self.lanes = {b: (lanes or {}).get(b, 1) for b in words}
        self.entries = max(1, hold // self.ob)
        self.data_bits = 8 * max(words.values())
        port = BufferPortSignature(self.data_bits)
        super().__init__({
            "start": In(1), "ir": In(INST_BITS), "done": Out(1), "error": Out(1),
            "aports": Out(port).array(max(self.lanes.values())), "oport": Out(port),
        })

    @staticmethod
    def dot_registers(ob: int) -> int:
        """Registers inside the dot product's adder tree (`tree`)."""
        return tree_registers(ob, SUM_LEVELS)

    def _qk(self, m, ir_imm, v0, jz, last, kdata, qdata, par, mq, eq):
        """The QK datapath from a taken chunk (`v0`, its K and q chunks, `par` its row's parity) to
        the score: (y, valid). mq[p] / eq[p]: the q scale of the rows of parity p."""
        ob = self.ob
        v1, first1, last1 = Signal(name="qk_v1"), Signal(name="qk_first1"), Signal(name="qk_last1")
        kd1, qd1, hdr1 = Signal(8 * ob, name="qk_k1"), Signal(8 * ob, name="qk_q1"), Signal(24, name="qk_hdr1")
        par1 = Signal(name="qk_par1")
        m.d.sync += [v1.eq(v0), first1.eq(jz), last1.eq(last), kd1.eq(kdata), qd1.eq(qdata), par1.eq(par)]
        with m.If(v0 & jz):
            m.d.sync += hdr1.eq(kdata[:24])            # the key's scale record, kept for its chunks
        prods = []
        for lane in range(ob):
            p = Signal(signed(16), name=f"qk_prod{lane}")
            m.d.sync += p.eq(qd1[8 * lane:8 * lane + 8].as_signed() * kd1[8 * lane:8 * lane + 8].as_signed())
            prods.append(p)
        ctl = Cat(v1, first1, last1, par1, hdr1)
        ctl2 = _delay(m, ctl, 1, "qk_ctl")
        total, regs = tree(m, prods, lambda a, b: a + b, SUM_LEVELS, "qk_dot")
        ctl3 = _delay(m, ctl2, regs, "qk_ctlt")
        acc, fin, hdr = Signal(signed(32), name="qk_acc"), Signal(name="qk_fin"), Signal(24, name="qk_hdr")
        pf = Signal(name="qk_par")
        with m.If(ctl3[0]):
            m.d.sync += acc.eq(Mux(ctl3[1], 0, acc) + total)
        m.d.sync += [fin.eq(ctl3[0] & ctl3[2]), pf.eq(ctl3[3]), hdr.eq(ctl3[4:])]
        # t1 = rshr(dot * m_k, e_k)
        x1 = limb_mul(m, acc, 32, Cat(hdr[:16], Const(0, 1)).as_signed(), 17, "qk_x1")
        t1 = _rshr64(m, wrap64(x1), _delay(m, hdr[16:24].as_signed(), 2, "qk_ek"), "qk_t1")
        # t2 = _shr_sat(t1 * m_q, e_q, 47): e_q is the row's, its shift amounts registered ahead
        p4 = _delay(m, pf, 4, "qk_par_t1")
        x2 = wrap64(limb_mul(m, t1, 64, Cat(Mux(p4, mq[1], mq[0]), Const(0, 1)).as_signed(), 17, "qk_x2"))
        sets = []
        for e in eq:
            rs = Mux(e > 62, 62, e)
            q = Signal(64), Signal(6), Signal(6), Signal()     # rounding bit, right shift, left shift, right?
            m.d.sync += [q[0].eq(Const(1, 64) << (rs - 1)[:6]), q[1].eq(rs[:6]),
                         q[2].eq(Mux(-e > 62, 62, -e)[:6]), q[3].eq(e > 0)]
            sets.append(q)
        p6 = _delay(m, p4, 2, "qk_par_x2")
        p7 = _delay(m, p6, 1, "qk_par_pre")
        pre2, up2 = Signal(signed(64), name="qk_pre2"), Signal(signed(64 + 63), name="qk_up2")
        m.d.sync += [pre2.eq(wrap64(x2 + Mux(p6, sets[1][0], sets[0][0]))),
                     up2.eq(x2 << Mux(p6, sets[1][2], sets[0][2]))]
        v2, t2 = Signal(signed(64 + 63), name="qk_v2"), Signal(signed(47), name="qk_t2")
        m.d.sync += [v2.eq(Mux(Mux(p7, sets[1][3], sets[0][3]), pre2 >> Mux(p7, sets[1][1], sets[0][1]), up2)),
                     t2.eq(sat(v2, 47))]
        # score = _shr_sat(t2 * imm, 32, 32)
        x3 = wrap64(limb_mul(m, t2, 47, ir_imm, 32, "qk_x3"))
        v3, y = Signal(signed(33), name="qk_v3"), Signal(signed(32), name="qk_y")
        m.d.sync += [v3.eq(wrap64(x3 + (Const(1, 64) << 31)) >> 32), y.eq(sat(v3, 32))]
        return y, _delay(m, fin, self.QK_LATENCY, "qk_valid")

    def _pv(self, m, v0, jz, kdata, pdata, addr, fresh, rdata):
        """The PV datapath from a taken chunk to its read-modify-write: (address, enable, new sums, busy)."""
        ob = self.ob
        v1, first1, fresh1 = Signal(name="pv_v1"), Signal(name="pv_first1"), Signal(name="pv_fresh1")
        vd1, p1, a1 = Signal(8 * ob, name="pv_v"), Signal(signed(32), name="pv_p"), Signal.like(addr, name="pv_a1")
        m.d.sync += [v1.eq(v0), first1.eq(jz), fresh1.eq(fresh), vd1.eq(kdata), p1.eq(pdata), a1.eq(addr)]
        # w = rshr(p * m_v, e_v), from the record's chunk 0
        x = limb_mul(m, p1, 32, Cat(vd1[:16], Const(0, 1)).as_signed(), 17, "pv_x")
        w = _rshr64(m, wrap64(x), _delay(m, vd1[16:24].as_signed(), 2, "pv_ev"), "pv_w")
        valid = [v1]
        for i in range(self.PV_LATENCY - 1):
            r = Signal(name=f"pv_v{i + 2}")
            m.d.sync += r.eq(valid[-1])
            valid.append(r)
        ctl = _delay(m, Cat(first1, fresh1, vd1, a1), self.W_STAGES, "pv_ctl")
        first, vd = ctl[0], ctl[2:2 + 8 * ob]
        w_hold = Signal(signed(64), name="pv_w_hold")
        w_use = Mux(first, w, w_hold)
        with m.If(valid[self.W_STAGES] & first):
            m.d.sync += w_hold.eq(w)
        prods = [limb_mul(m, w_use, 64, vd[8 * lane:8 * lane + 8].as_signed(), 8, f"pv_mac{lane}")
                 for lane in range(ob)]
        ctl2 = _delay(m, Cat(first & (ob == 4), ctl[1], ctl[2 + 8 * ob:]), 2, "pv_ctl2")
        scale7, fresh7, a7 = ctl2[0], ctl2[1], ctl2[2:]
        new = Cat(*(wrap64(Mux(fresh7, 0, rdata[64 * lane:64 * lane + 64].as_signed()) + wrap64(prods[lane]))
                    for lane in range(ob)))
        busy = Signal(name="pv_busy")
        m.d.comb += busy.eq(Cat(*valid).any())
        return a7, valid[-1] & ~scale7, new, busy

    def elaborate(self, platform) -> Module:
        m = Module()
        ob, lg_ob, E = self.ob, self.ob.bit_length() - 1, self.entries
        sread = m.submodules.sread = ByteReader(self.words, ob)
        kread = m.submodules.kread = ByteReader(self.words, ob, self.lanes)
        mem = m.submodules.sums = memory.Memory(shape=64 * ob, depth=E, init=[])
        rp, wp = mem.read_port(domain="comb"), mem.write_port()
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=32, depth=CAP)

        ir = Signal(INST_BITS)

        def f(name):
            return field(ir, Opcode.ATTN, name)
        is_qk = Signal()
        rows, cols, depth, flags = f("rows"), f("cols"), f("depth"), f("flags")
        cont, keep = (flags & CONTINUE).any(), (flags & HOLD).any()
        rec, nch, pitch2, spitch, dpitch = Signal(17), Signal(15), Signal(24), Signal(24), Signal(24)
        nrow = Signal(15)                         # PV: sums entries a row (nch, less a scale-only chunk)
        need, n_out = Signal(32), Signal(16)

        # -- K / V records: one reader, one command of every row's keys' records on aports --------
        for ap, port in zip(self.aports, kread.ports):
            m.d.comb += [port.rdata.eq(ap.rdata), port.ready.eq(ap.ready),
                         ap.buf.eq(port.buf), ap.addr.eq(port.addr), ap.re.eq(port.re)]
        # (records back to back, no pad: each row's keys are one run of cols x rec bytes)
        fetching, n_keys, run = Signal(), Signal(32), Signal(24)
        packed = f("src2_pad") == 0
        m.d.comb += [kread.cmd.valid.eq(fetching), kread.cmd.payload.buf.eq(f("src2_buf")),
                     kread.cmd.payload.addr.eq(f("src2_addr")), kread.cmd.payload.nbytes.eq(rec),
                     kread.cmd.payload.step.eq(ob), kread.cmd.payload.more.eq(n_keys - 1),
                     kread.cmd.payload.pitch.eq(pitch2), kread.cmd.payload.wrap.eq(Mux(packed, 1, cols)),
                     kread.cmd.payload.run.eq(Mux(packed, run, 0)), kread.cmd.payload.rmore.eq(rows - 1)]
        with m.If(fetching & kread.cmd.ready):
            m.d.sync += fetching.eq(0)
        k_valid, k_last, kdata, take = Signal(), Signal(), Signal(8 * ob), Signal()
        m.d.comb += [k_valid.eq(kread.o.valid), k_last.eq(kread.o.payload.last), kdata.eq(kread.o.payload.data),
                     kread.o.ready.eq(take)]

        # -- oport: the writer's writes first, else sread's reads --------------------------------
        wr_addr, wrow, wi, hi, written = Signal(24), Signal(24), Signal(16), Signal(), Signal(16)
        wa, (d0, be0), (d1, be1), two = int32_write(m, f("dst_buf"), wr_addr, fifo.r_data, self.words,
                                                    self.data_bits)
        pop = Signal()
        sport = sread.ports[0]
        m.d.comb += [sport.rdata.eq(self.oport.rdata), sport.ready.eq(self.oport.ready & ~fifo.r_rdy),
                     sread.hold.eq(fifo.r_rdy)]
        with m.If(fifo.r_rdy):
            m.d.comb += [self.oport.buf.eq(f("dst_buf")), self.oport.we.eq(1),
                         self.oport.addr.eq(Mux(hi, wa + 1, wa)), self.oport.wdata.eq(Mux(hi, d1, d0)),
                         self.oport.be.eq(Mux(hi, be1, be0))]
            with m.If(self.oport.ready):
                m.d.sync += hi.eq(~hi & two)
                m.d.comb += pop.eq(hi | ~two)
        with m.Else():
            m.d.comb += [self.oport.buf.eq(sport.buf), self.oport.addr.eq(sport.addr), self.oport.re.eq(sport.re)]
        m.d.comb += fifo.r_en.eq(pop)
        with m.If(pop):
            m.d.sync += [wi.eq(wi + 1), wr_addr.eq(wr_addr + 4)]
            with m.If(wi + 1 == n_out):
                m.d.sync += [wi.eq(0), wrow.eq(wrow + dpitch), wr_addr.eq(wrow + dpitch), written.eq(written + 1)]
        count, room, admit = Signal(range(CAP + 1)), Signal(), Signal()
        count1 = Signal(range(CAP + 2))
        m.d.comb += count1.eq(count + admit - pop)
        m.d.sync += [count.eq(count1), room.eq(count1 < CAP)]

        def scmd(addr, nbytes, step):
            m.d.comb += [sread.cmd.valid.eq(1), sread.cmd.payload.buf.eq(f("src_buf")),
                         sread.cmd.payload.addr.eq(addr), sread.cmd.payload.nbytes.eq(nbytes),
                         sread.cmd.payload.step.eq(step)]

        # -- the consumer: chunk j of key t of row r --------------------------------------------
        r, t, j, jz = Signal(16), Signal(16), Signal(range(max(1 << 15, 2 * E + 1))), Signal()   # jz: j == 0
        base = Signal(range(E + 1))
        with m.If(take):
            m.d.sync += [j.eq(j + 1), jz.eq(0)]
            with m.If(k_last):
                m.d.sync += [j.eq(0), jz.eq(1), t.eq(t + 1)]
                with m.If(t + 1 == cols):
                    m.d.sync += [t.eq(0), r.eq(r + 1), base.eq(base + nrow)]
        mq, eq = [Signal(16, name=f"mq{p}") for p in (0, 1)], [Signal(signed(8), name=f"eq{p}") for p in (0, 1)]
        ld_v, ld_addr, ld_data = Signal(), Signal.like(j), Signal(8 * ob)     # QK: a q chunk, registered
        q_at = Signal.like(j)
        m.d.comb += q_at.eq(Mux(r[0], nch, 0) + j)                           # row r's q in area r % 2
        qdata = Mux(ld_v & (ld_addr == q_at), ld_data, rp.data[:8 * ob])    # (written the cycle after)
        y_qk, yv_qk = self._qk(m, f("imm"), take & is_qk, jz, k_last, kdata, qdata, r[0], mq, eq)
        a7, v7, new, pv_busy = self._pv(m, take & ~is_qk, jz, kdata, sread.o.payload.data[:32], base + j - 4 // ob,
                                        (t == 0) & ~cont, rp.data)
        m.d.sync += ld_v.eq(0)
        m.d.comb += [rp.addr.eq(a7), wp.addr.eq(Mux(is_qk, ld_addr, a7)), wp.en.eq(v7 | ld_v),
                     wp.data.eq(Mux(is_qk, ld_data, new))]

        # -- PV outputs: element d of row r at byte d + 4 of the row's chunks -------------------
        oe, ebase, olane = Signal(range(E + 1)), Signal(range(E + 1)), Signal(range(ob))
        od, orow = Signal(16), Signal(16)
        issue = Signal()
        o1, o2, y_pv = Signal(signed(64)), Signal(signed(48)), Signal(signed(32))
        m.d.sync += [o1.eq(rp.data.word_select(olane, 64).as_signed()),
                     o2.eq(wrap64(o1 + (Const(1, 64) << 15)) >> 16), y_pv.eq(sat(o2, 32))]
        yv_pv = _delay(m, issue, self.OUT_LATENCY, "out_valid")
        m.d.comb += [fifo.w_en.eq(yv_qk | yv_pv), fifo.w_data.eq(Mux(yv_qk, y_qk, y_pv))]
        with m.If(issue):
            m.d.sync += [olane.eq(olane + 1), od.eq(od + 1)]
            with m.If(olane == ob - 1):
                m.d.sync += oe.eq(oe + 1)
            with m.If(od + 1 == depth):
                m.d.sync += [od.eq(0), orow.eq(orow + 1), ebase.eq(ebase + nrow), oe.eq(ebase + nrow),
                             olane.eq(4 % ob)]

        pf_row, p_addr, pfetching = Signal(16), Signal(24), Signal()
        with m.If(pfetching & sread.cmd.ready):      # PV: the p rows, one command each
            scmd(p_addr, cols << 2, 4)
            m.d.sync += [pf_row.eq(pf_row + 1), p_addr.eq(p_addr + spitch)]
            with m.If(pf_row + 1 == rows):
                m.d.sync += pfetching.eq(0)

        # QK: the q rows into the sums memory, row lr in area lr % 2 (its scale in mq / eq[lr % 2]),
        # once the keys are at row lr - 1 and row lr - 2's scores are written (its area and scale free)
        lr, lj, lz, l_row, loading = Signal(16), Signal.like(j), Signal(), Signal(24), Signal()
        with m.FSM():
            with m.State("LIDLE"):
                with m.If(loading & (lr <= r + 1) & (written + 1 >= lr)):
                    scmd(l_row, rec, ob)
                    with m.If(sread.cmd.ready):
                        m.d.sync += [lj.eq(Mux(lr[0], nch, 0)), lz.eq(1)]
                        m.next = "LLOAD"
            with m.State("LLOAD"):
                m.d.comb += sread.o.ready.eq(1)
                chunk = sread.o.payload.data
                with m.If(sread.o.valid):
                    m.d.sync += [ld_v.eq(1), ld_addr.eq(lj), ld_data.eq(Mux(lz, Cat(Const(0, 32), chunk[32:]), chunk)),
                                 lj.eq(lj + 1), lz.eq(0)]
                    for p in (0, 1):
                        with m.If(lz & (lr[0] == p)):
                            m.d.sync += [mq[p].eq(chunk[:16]), eq[p].eq(chunk[16:24])]
                    with m.If(sread.o.payload.last):
                        m.d.sync += [lr.eq(lr + 1), l_row.eq(l_row + spitch)]
                        with m.If(lr + 1 == rows):
                            m.d.sync += loading.eq(0)
                        m.next = "LIDLE"

        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += ir.eq(self.ir)
                m.next = "SETUP"
            with m.State("SETUP"):
                qk = f("func") == MiscFunc.ATTN_QK
                nc = (depth + 4 + ob - 1) >> lg_ob
                m.d.sync += [is_qk.eq(qk), rec.eq(depth + 4), nch.eq(nc), nrow.eq(nc - 4 // ob),
                             need.eq(Mux(qk, Mux(rows > 1, nc << 1, nc), rows * (nc - 4 // ob))),
                             pitch2.eq(depth + 4 + f("src2_pad")),
                             spitch.eq(Mux(f("src_stride") != 0, f("src_stride"), Mux(qk, depth + 4, cols << 2))),
                             dpitch.eq(Mux(f("dst_stride") != 0, f("dst_stride"), Mux(qk, cols << 2, depth << 2))),
                             n_out.eq(Mux(qk, cols, depth)),
                             r.eq(0), t.eq(0), j.eq(0), jz.eq(1), base.eq(0),
                             n_keys.eq(rows * cols), run.eq(cols * (depth + 4)),
                             pf_row.eq(0), p_addr.eq(f("src_addr")),
                             wi.eq(0), wrow.eq(f("dst_addr")), wr_addr.eq(f("dst_addr")), hi.eq(0), written.eq(0),
                             lr.eq(0), lj.eq(0), lz.eq(1), l_row.eq(f("src_addr")),
                             oe.eq(0), ebase.eq(0), olane.eq(4 % ob), od.eq(0), orow.eq(0)]
                m.next = "CHECK"
            with m.State("CHECK"):
                empty = (rows == 0) | Mux(is_qk, cols == 0, depth == 0)
                with m.If(~empty & (need > E)):
                    m.d.comb += [self.error.eq(1), self.done.eq(1)]
                    m.next = "IDLE"
                with m.Elif(empty):
                    m.next = "FINISH"
                with m.Elif(is_qk):
                    m.d.sync += [fetching.eq(1), loading.eq(1)]
                    m.next = "QKEYS"
                with m.Elif(cols == 0):           # no keys: the sums are what CONTINUE says
                    m.next = "ZERO"
                    with m.If(cont):
                        m.next = "OUT"
                        with m.If(keep):
                            m.next = "FINISH"
                with m.Else():
                    m.d.sync += [fetching.eq(1), pfetching.eq(1)]
                    m.next = "PKEYS"

            # -- ATTN_QK ---------------------------------------------------------------------------
            with m.State("QKEYS"):
                m.d.comb += [rp.addr.eq(q_at), take.eq(k_valid & (lr > r) & (~jz | room)), admit.eq(take & jz)]
                with m.If(take & k_last & (t + 1 == cols) & (r + 1 == rows)):
                    m.next = "QDRAIN"
            with m.State("QDRAIN"):
                with m.If(count == 0):
                    m.next = "FINISH"

            # -- ATTN_PV ---------------------------------------------------------------------------
            with m.State("PKEYS"):
                m.d.comb += [take.eq(k_valid & (~jz | sread.o.valid)), sread.o.ready.eq(take & jz)]
                with m.If(take & k_last & (t + 1 == cols) & (r + 1 == rows)):
                    m.next = "PDRAIN"
            with m.State("PDRAIN"):
                with m.If(~pv_busy):
                    m.next = "OUT"
                    with m.If(keep):
                        m.next = "FINISH"
            with m.State("ZERO"):
                m.d.comb += [wp.addr.eq(j), wp.en.eq(1), wp.data.eq(0)]
                m.d.sync += j.eq(j + 1)
                with m.If(j + 1 == need):
                    m.d.sync += j.eq(0)
                    m.next = "OUT"
                    with m.If(keep):
                        m.next = "FINISH"
            with m.State("OUT"):
                m.d.comb += [rp.addr.eq(oe), issue.eq(room), admit.eq(room)]
                with m.If(room & (od + 1 == depth) & (orow + 1 == rows)):
                    m.next = "ODRAIN"
            with m.State("ODRAIN"):
                with m.If(count == 0):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
