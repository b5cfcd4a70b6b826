"""The SFU instruction unit: executes MISC instructions on the on-chip buffers, exactly as
`simulator.functional._misc` (docs/isa.md MISC), around the `SFU` datapath (backend_hw/sfu/datapath.py).

Per instruction, rows one after the other; per row, the passes `SWEEPS[func]` of the SFU; per
pass, beats of `lanes` elements. For each beat the unit fetches the operands (a, b, c, d of the
SFU's table) through two read ports, hands the beat to the SFU (or, for COPY and EMBED, straight
to the output), and writes the results through the third port:

| func | `src` port | `src2` port (output pass only) |
|---|---|---|
| ADD, MUL | a = src row | b = src2 row (`BROADCAST`: src2 row 0 for every row) |
| RELU, SILU, GELU, GELU_TANH, SOFTCAP, QUANT_ROWS, SOFTMAX | a | — |
| RMSNORM, LAYERNORM | a | b = weight, c = bias (src2 + 4 cols) |
| ROPE | a, b = each element's rotate-half partner in its head (1-2 pieces) | c = cos, d = sin of table row `imm + r mod period` |
| COPY | the row's bytes (rows `imm + r`) | — |
| EMBED | the beat's packed codes | the group's mantissa, the row's shift |

Reduction passes fetch only `a`. EMBED beats end at scale-group boundaries (one mantissa a beat).
Operands and results may sit at any byte address (sfu/ports.py gearboxes).

Passes that read only `a` (every reduction pass; the output pass of QUANT_ROWS, SOFTMAX, RELU,
SILU, GELU, GELU_TANH, SOFTCAP) read half of its words through `src2` (with the block-RAM buffers the two
halves meet in a bank at most once a beat: buffers.py).

Timing: the fetch is pipelined. Each beat's pieces are worked out a beat ahead into descriptor
registers; a beat issues (both `PieceFetcher`s start) in the cycle both read their previous
beat's last word, so a beat costs only its words on the busier read port; its last
word returns 1 cycle after its read and the beat is written into `ifo`, where up to `IN_DEPTH`
issued beats wait for the SFU (they keep the fetch going through the hand-over, the SFU's pass
gaps and the next rows). The SFU takes a beat a cycle while it streams, and adds its scalar
cycles between passes (`SFU.row_cycles`, `sweep_gap`); the writer writes a word a cycle. `done`
pulses once the last result word is written. backend_hw/sfu/cycles.py counts it exactly.
ROPE needs `depth` even, and `depth` a multiple of `lanes` unless `cols == depth` (the SFU's
head counter). ATTN_QK, ATTN_PV (the matrix engine's) and unknown functions complete at once.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BROADCAST, CAUSAL, INST_BITS, MiscFunc, Opcode
from llmfab.ir.target import Target

from ..protocol.buffer_port import BUF_ADDR_BITS, BufferPortSignature, checked_word_bytes, word_log
from ..protocol.isa_fields import field
from .arith import SeqDivider
from .datapath import SFU, SWEEPS
from .embed import EmbedLanes
from .ports import ByteWriter, PieceFetcher, align, aligned_layout, write_layout

__all__ = ["SfuUnit"]

F = MiscFunc
A_W = BUF_ADDR_BITS


class SfuUnit(wiring.Component):
    """MISC instructions on the buffers of `target` (module docstring).

    Ports:
    - `inst` (in, stream of 256-bit words): length-resolved MISC instructions (the controller's
      SFU queue); the next is taken after `done`.
    - `done` (out): one-cycle pulse when an instruction's results are all written.
    - `src`, `src2` (out, `BufferPortSignature`): reads of the first operand, and of the second
      operand or parameters; `dst` (out): result writes. Data width = the widest buffer.
    """

    OUT_DEPTH = 12           # result beats between the SFU and the writer (the SFU cannot stall): its
                             # LATENCY and then some, so the writer, not the credit, paces a row
    EMBED_DIVIDER = (17, 16, 2)   # EMBED's cols / group: SeqDivider numerator, divisor and radix bits
    IN_DEPTH = 16            # fetched beats ahead of the SFU: 4 keep up with beats of one word a port,
                             # more fetch the next pass during the scalars (distributed RAM: as cheap)

    def __init__(self, target: Target):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        lanes = target.sfu.lanes
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"sfu lanes must be a positive power of two, not {lanes!r}")
        self.word_bytes = checked_word_bytes(target)
        self.target, self.lanes = target, lanes
        width = 8 * max(self.word_bytes.values())
        super().__init__({"inst": In(stream.Signature(INST_BITS)), "done": Out(1),
                          "src": Out(BufferPortSignature(width)), "src2": Out(BufferPortSignature(width)),
                          "dst": Out(BufferPortSignature(width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        L, RB = self.lanes, 4 * self.lanes
        OB = RB + 4                                   # a result beat: QUANT_ROWS' record + codes fit
        m.submodules.sfu = sfu = SFU(self.target)
        m.submodules.fa = fa = PieceFetcher(3, RB, self.word_bytes)
        m.submodules.fb = fb = PieceFetcher(2, RB, self.word_bytes)
        m.submodules.wr = wr = ByteWriter(OB, self.word_bytes)
        wb_max = max(self.word_bytes.values())
        m.submodules.fifo = fifo = SyncFIFO(width=aligned_layout(OB, wb_max).size, depth=self.OUT_DEPTH)
        m.submodules.div = div = SeqDivider(*self.EMBED_DIVIDER)
        m.submodules.emb = emb = EmbedLanes(L, RB)
        wiring.connect(m, fa.port, wiring.flipped(self.src))
        wiring.connect(m, fb.port, wiring.flipped(self.src2))
        wiring.connect(m, wr.port, wiring.flipped(self.dst))

        # ---- the instruction and what follows from it
        ir = Signal(INST_BITS)
        names = ("func", "flags", "src_buf", "src2_buf", "imm", "rows", "cols", "depth", "period", "dst_buf",
                 "src_addr", "src2_addr", "dst_addr", "src_stride", "dst_stride")
        f = {n: field(ir, Opcode.MISC, n) for n in names}
        fin = {n: field(self.inst.payload, Opcode.MISC, n) for n in names}   # the instruction taken now
        func, cols, imm, depth = f["func"], f["cols"], f["imm"], f["depth"]
        is_copy, is_embed = func == F.COPY, func == F.EMBED
        bypass = is_copy | is_embed
        npass = Signal(3)
        with m.Switch(func):
            for fn, passes in SWEEPS.items():
                with m.Case(fn):
                    m.d.comb += npass.eq(len(passes))
            with m.Case(F.COPY, F.EMBED):
                m.d.comb += npass.eq(1)
        bits = imm[:4]
        group = Signal(16)                            # EMBED's scale group (registered at accept, as
        code_bytes = Signal(20)                       # everything the first beat's descriptor needs)

        spitch, dpitch, shift_off = Signal(A_W), Signal(A_W), Signal(A_W)
        src_row, src2_row, dst_row, tab0, tab = (Signal(A_W, name=n) for n in
                                                 ("src_row", "src2_row", "dst_row", "tab0", "tab"))
        r, rmod, p = Signal(16), Signal(16), Signal(3)
        k0, hpos, gidx, kbits = Signal(16), Signal(16), Signal(16), Signal(20)
        gleft = Signal(16)                            # EMBED: elements left in the scale group
        # EMBED's bits of the beat's codes: registered from the state each cycle, and EMBED's
        # descriptor is filled only in cycles without an issue, so it is always the state's
        nl_bits = Signal(range(8 * L * 16))
        seq_end = Signal()

        # ---- the beat: sizes, operand pieces
        left = Signal(16)                             # cols - k0, kept as a register
        # nl = min(left, L, and EMBED's gleft): the three compares side by side, off registers
        nl = Signal(range(L + 1))
        g_step = is_embed & (gleft < L)             # a beat that does not end the row takes min(L, gleft)
        m.d.comb += nl.eq(Mux(g_step & (gleft < left), gleft, Mux(left < L, left, L)))
        n_copy = Signal(range(RB + 1))
        m.d.comb += n_copy.eq(Mux(left < RB, left, RB))
        is_out = p == npass - 1
        # the beat ends the row when it takes all that is left (read off registers, not off nl)
        last_beat = Mux(is_copy, left <= RB, (left <= L) & (~is_embed | (left <= gleft)))
        elem = Signal(A_W)
        m.d.comb += elem.eq(src_row + (k0 << 2))

        # The beat's pieces are worked out from the sequencer's state one beat ahead, into the
        # descriptor registers `d_*` (filled in SETUP and whenever the beat in them issues), so the
        # issue, which waits for both fetchers' `ready`, only moves registers.
        sa, sb = Signal.like(fa.slot), Signal.like(fb.slot)
        ena, enb = Signal.like(fa.en), Signal.like(fb.en)
        d_sa, d_sb = Signal.like(fa.slot, reset_less=True), Signal.like(fb.slot, reset_less=True)
        d_ena, d_enb = Signal.like(fa.en), Signal.like(fb.en)
        d_valid = Signal()
        m.d.comb += [fa.slot.eq(d_sa), fb.slot.eq(d_sb), fa.en.eq(d_ena), fb.en.eq(d_enb)]
        m.d.comb += [sa[0].buf.eq(f["src_buf"]), sa[0].addr.eq(elem), sa[0].n.eq(nl << 2)]
        with m.If(is_copy):
            m.d.comb += [sa[0].addr.eq(src_row + k0), sa[0].n.eq(n_copy)]
        with m.If(is_embed):
            m.d.comb += [sa[0].addr.eq(src_row + (kbits >> 3)),
                         sa[0].n.eq(((kbits + nl_bits + 7) >> 3) - (kbits >> 3))]
        # ROPE partners: element j of a head pairs with j + depth/2 (first half) or j - depth/2
        half = depth >> 1
        lo_half = hpos < half
        n_first = Signal(range(L + 1))
        m.d.comb += n_first.eq(Mux(lo_half & (half - hpos < nl), half - hpos, nl))
        rope_out = (func == F.ROPE) & is_out
        m.d.comb += [sa[1].buf.eq(f["src_buf"]), sa[1].addr.eq(Mux(lo_half, elem + (half << 2), elem - (half << 2))),
                     sa[1].n.eq(n_first << 2), sa[1].tgt.eq(1),
                     sa[2].buf.eq(f["src_buf"]), sa[2].addr.eq(elem - (hpos << 2)), sa[2].off.eq(n_first << 2),
                     sa[2].n.eq((nl - n_first) << 2), sa[2].tgt.eq(1),
                     ena.eq(Cat(C(1, 1), rope_out, rope_out & (nl != n_first)))]
        # src2 port: b (c for ROPE), then c (d for ROPE)
        m.d.comb += [sb[0].buf.eq(f["src2_buf"]), sb[0].n.eq(nl << 2), sb[0].tgt.eq(1),
                     sb[1].buf.eq(f["src2_buf"]), sb[1].n.eq(nl << 2), sb[1].tgt.eq(2)]
        with m.Switch(func):
            with m.Case(F.ADD, F.MUL):
                m.d.comb += [sb[0].addr.eq(src2_row + (k0 << 2)), enb.eq(Cat(is_out, C(0, 1)))]
            with m.Case(F.RMSNORM, F.LAYERNORM):
                m.d.comb += [sb[0].addr.eq(f["src2_addr"] + (k0 << 2)),
                             sb[1].addr.eq(f["src2_addr"] + ((cols + k0) << 2)),
                             enb.eq(Cat(is_out, is_out & (func == F.LAYERNORM)))]
            with m.Case(F.ROPE):
                m.d.comb += [sb[0].addr.eq(tab + (hpos << 2)), sb[0].tgt.eq(2),
                             sb[1].addr.eq(tab + ((depth + hpos) << 2)), sb[1].tgt.eq(3),
                             enb.eq(Cat(is_out, is_out))]
            with m.Case(F.EMBED):
                m.d.comb += [sb[0].buf.eq(f["src_buf"]), sb[0].addr.eq(src_row + code_bytes + (gidx << 1)),
                             sb[0].n.eq(2), sb[1].buf.eq(f["src_buf"]), sb[1].addr.eq(src_row + shift_off),
                             sb[1].n.eq(1), enb.eq(0b11)]

        # Passes that read only `a` split its words between both ports (the src2 port reads the src
        # buffer too): the even words on `src`, the odd ones on `src2`, so that the two reads of a
        # cycle are of neighbouring words, on different banks of a word-interleaved buffer.
        wmask = Signal(range(wb_max))                 # the src buffer's word bytes - 1 (registered)
        lg_dst = Signal(range(wb_max.bit_length()))  # the dst buffer's word log (registered)
        phase = Signal(range(wb_max))                 # elem's byte in its word
        m.d.comb += phase.eq(elem & wmask)
        split_at = Signal(A_W)                         # the second word
        m.d.comb += split_at.eq((elem | wmask) + 1)
        uses_b = is_out & func.matches(F.ADD, F.MUL, F.RMSNORM, F.LAYERNORM, F.ROPE)
        split = ~bypass & ~uses_b & (phase + (nl << 2) > wmask + 1)   # a spans two words or more
        with m.If(split):
            m.d.comb += [sa[0].skip.eq(1),
                         sb[0].buf.eq(f["src_buf"]), sb[0].addr.eq(split_at), sb[0].off.eq(wmask + 1 - phase),
                         sb[0].n.eq((nl << 2) - (wmask + 1 - phase)), sb[0].tgt.eq(0), sb[0].skip.eq(1),
                         enb.eq(0b01)]

        # ---- operand registers, filled by both fetchers (different bytes of them). A beat is
        # complete in the cycle its last word returns: `full` is the registers with that word.
        regs = [Signal(8 * RB, name=f"op_{x}") for x in "abcd"]
        full = [Signal(8 * RB, name=f"full_{x}") for x in "abcd"]
        for t, (reg, fv) in enumerate(zip(regs, full)):
            v = reg
            for fx in (fa, fb):
                bm = Cat(*(b.replicate(8) for b in fx.ret_mask))
                v = Mux(fx.ret & (fx.ret_tgt == t), (v & ~bm) | (fx.ret_data & bm), v)
            m.d.comb += fv.eq(v)
            m.d.sync += reg.eq(fv)

        # ---- fetched beats wait in `ifo` for the SFU (or, COPY and EMBED, the results). A beat is
        # issued (both fetchers started) once both read their previous beat's last word, and only
        # with room for it in `ifo` (`outstanding`: issued and not yet taken), so the fetch of the
        # next beats runs under the hand-over, the SFU and the scalar unit.
        meta = data.StructLayout({"out": 1, "klim": signed(32), "addr": A_W, "n": range(OB + 1), "phase": 3})
        m.submodules.ifo = ifo = SyncFIFO(width=4 * 8 * RB + meta.size, depth=self.IN_DEPTH)
        d_meta, f_meta, p_meta = Signal(meta), Signal(meta), Signal(meta)   # the beat in the descriptor,
                                                      # the beat being read, the beat returning
        f_busy, p_push = Signal(), Signal()           # reads left to issue; last words return now
        outstanding = Signal(range(self.IN_DEPTH + 1))
        head = Signal(meta)
        hregs = [ifo.r_data[8 * RB * t:8 * RB * (t + 1)] for t in range(4)]
        m.d.comb += [ifo.w_data.eq(Cat(*full, p_meta)), ifo.w_en.eq(p_push),
                     head.eq(ifo.r_data[4 * 8 * RB:])]

        inflight = Signal(range(self.OUT_DEPTH + 1))
        credit = inflight < self.OUT_DEPTH
        m.d.comb += [sfu.func.eq(func), sfu.cols.eq(cols), sfu.eps.eq(imm), sfu.depth.eq(depth),
                     sfu.causal.eq((func == F.SOFTMAX) & (f["flags"] & CAUSAL).any()),
                     sfu.key_limit.eq(head.klim),
                     sfu.i.payload.a.eq(hregs[0]), sfu.i.payload.b.eq(hregs[1]),
                     sfu.i.payload.c.eq(hregs[2]), sfu.i.payload.d.eq(hregs[3]),
                     sfu.i.valid.eq(ifo.r_rdy & ~bypass & (credit | ~head.out))]
        take_sfu = sfu.i.valid & sfu.i.ready
        push_bypass = ifo.r_rdy & bypass & credit
        pop = take_sfu | push_bypass
        m.d.comb += ifo.r_en.eq(pop)
        both_ready = fa.ready & fb.ready
        last_issue = f_busy & both_ready               # the beat being read reads its last word now
        issue, gen = Signal(), Signal()
        m.d.comb += [fa.start.eq(issue), fb.start.eq(issue)]
        with m.If(issue):
            m.d.sync += [f_meta.eq(d_meta), d_valid.eq(0)]
        with m.If(gen):                               # the next beat's descriptor, from the state
            m.d.sync += [d_sa.eq(sa), d_sb.eq(sb), d_ena.eq(ena), d_enb.eq(enb), d_valid.eq(1),
                         d_meta.out.eq(is_out), d_meta.klim.eq(rmod + imm),
                         d_meta.addr.eq(Mux(is_copy, dst_row + k0, dst_row + (k0 << 2))),
                         d_meta.n.eq(Mux(is_copy, n_copy, nl << 2)), d_meta.phase.eq(kbits[:3])]
        m.d.sync += [p_push.eq(last_issue), f_busy.eq(issue | (f_busy & ~last_issue)),
                     outstanding.eq(outstanding + issue - pop)]
        with m.If(last_issue):
            m.d.sync += p_meta.eq(f_meta)

        # ---- results: SFU beats (counted on the output side) or bypass beats, into the FIFO
        o = sfu.o
        o_k0, o_row = Signal(16), Signal(A_W)
        o_left = cols - o_k0
        o_nl = Mux(o_left < L, o_left, L)
        e8 = Signal(signed(8))
        m.d.comb += e8.eq(o.payload.e)
        codes = Cat(*(o.payload.y[n][:8] for n in range(L)))
        entry = Signal(write_layout(OB))
        # COPY and EMBED beats reach the FIFO `EmbedLanes.LATENCY` cycles after their pop, COPY's
        # bytes delayed alike (one path, and no combinational work between the two FIFOs)
        by_push, by_addr, by_n, by_data = push_bypass, head.addr, head.n, hregs[0]
        for i in range(EmbedLanes.LATENCY):
            nxt = [Signal(name=f"by_push{i}"), Signal.like(head.addr, name=f"by_addr{i}"),
                   Signal.like(head.n, name=f"by_n{i}"), Signal(8 * RB, name=f"by_data{i}", reset_less=True)]
            m.d.sync += [nxt[0].eq(by_push), nxt[1].eq(by_addr), nxt[2].eq(by_n), nxt[3].eq(by_data)]
            by_push, by_addr, by_n, by_data = nxt
        with m.If(bypass):
            m.d.comb += [entry.addr.eq(by_addr), entry.n.eq(by_n),
                         entry.data.eq(Mux(is_copy, by_data, Cat(*(emb.y[n] for n in range(L)))))]
        with m.Elif(func == F.QUANT_ROWS):
            with m.If(o_k0 == 0):
                m.d.comb += [entry.addr.eq(o_row), entry.n.eq(o_nl + 4),
                             entry.data.eq(Cat(o.payload.m, C(0, 1), e8, C(0, 8), codes))]
            with m.Else():
                m.d.comb += [entry.addr.eq(o_row + 4 + o_k0), entry.n.eq(o_nl), entry.data.eq(codes)]
        with m.Else():
            m.d.comb += [entry.addr.eq(o_row + (o_k0 << 2)), entry.n.eq(o_nl << 2),
                         entry.data.eq(Cat(*(o.payload.y[n] for n in range(L))))]
        m.d.comb += [emb.codes.eq(hregs[0]), emb.phase.eq(head.phase), emb.bits.eq(bits),
                     emb.mant.eq(hregs[1][:16]), emb.shift.eq(hregs[2][:8]),
                     fifo.w_data.eq(align(m, entry, lg_dst, wb_max)), fifo.w_en.eq(o.valid | by_push),
                     wr.i.payload.eq(fifo.r_data), wr.i.valid.eq(fifo.r_rdy), fifo.r_en.eq(wr.i.ready),
                     wr.buf.eq(f["dst_buf"])]
        with m.If(o.valid):
            m.d.sync += o_k0.eq(o_k0 + L)
            with m.If(o_k0 + L >= cols):
                m.d.sync += [o_k0.eq(0), o_row.eq(o_row + dpitch)]
        popped = wr.i.valid & wr.i.ready
        m.d.sync += inflight.eq(inflight + ((take_sfu & head.out) | push_bypass) - popped)

        # ---- the sequencer: instruction, rows, passes, beats. Its state is set up as the
        # instruction is taken (from the payload), so SETUP already fills the descriptor and RUN
        # issues the first beat in its first cycle; `gen` then moves the state a beat on.
        lg_in = word_log(m, fin["src_buf"], self.word_bytes)
        lg_dst_in = word_log(m, fin["dst_buf"], self.word_bytes)
        m.d.sync += nl_bits.eq(nl * bits)

        def start_state(g):
            ss, ds, is_cp = g["src_stride"], g["dst_stride"], g["func"] == F.COPY
            nat_src = Mux(is_cp, g["cols"], g["cols"] << 2)
            nat_dst = Mux(is_cp, g["cols"], Mux(g["func"] == F.QUANT_ROWS, g["cols"] + 4, g["cols"] << 2))
            t0 = g["src2_addr"] + g["imm"] * (g["depth"] << 3)
            grp = Mux(g["depth"] == 0, g["cols"], g["depth"])
            return [spitch.eq(Mux(ss != 0, ss, nat_src)), dpitch.eq(Mux(ds != 0, ds, nat_dst)),
                    src_row.eq(Mux(is_cp, g["src_addr"] + g["imm"] * Mux(ss != 0, ss, g["cols"]), g["src_addr"])),
                    src2_row.eq(g["src2_addr"]), dst_row.eq(g["dst_addr"]), o_row.eq(g["dst_addr"]), o_k0.eq(0),
                    tab0.eq(t0), tab.eq(t0), group.eq(grp),
                    code_bytes.eq((g["cols"] * g["imm"][:4] + 7) >> 3), wmask.eq((1 << lg_in) - 1), lg_dst.eq(lg_dst_in),
                    left.eq(g["cols"]), gleft.eq(grp),
                    r.eq(0), rmod.eq(0), p.eq(0), k0.eq(0), hpos.eq(0), gidx.eq(0),
                    kbits.eq(0), seq_end.eq(0)]

        with m.If(gen):
            with m.If(last_beat):
                m.d.sync += [k0.eq(0), hpos.eq(0), gidx.eq(0), kbits.eq(0), left.eq(cols), gleft.eq(group)]
                with m.If(is_out):
                    wrap = (f["period"] != 0) & (rmod + 1 == f["period"])
                    bcast = func.matches(F.ADD, F.MUL) & (f["flags"] & BROADCAST).any()
                    m.d.sync += [p.eq(0), r.eq(r + 1), src_row.eq(src_row + spitch),
                                 dst_row.eq(dst_row + dpitch),
                                 src2_row.eq(src2_row + Mux(bcast, 0, cols << 2)),
                                 rmod.eq(Mux(wrap, 0, rmod + 1)),
                                 tab.eq(Mux(wrap, tab0, tab + (depth << 3)))]
                    with m.If(r + 1 == f["rows"]):
                        m.d.sync += seq_end.eq(1)
                with m.Else():
                    m.d.sync += p.eq(p + 1)
            with m.Else():
                step = Mux(is_copy, RB, Mux(g_step, gleft, L))   # = the beat's n_copy or nl
                m.d.sync += [k0.eq(k0 + step), left.eq(left - step), kbits.eq(kbits + nl_bits),
                             hpos.eq(Mux(hpos + L >= depth, 0, hpos + L))]
                with m.If(gleft <= L):                 # the beat ends its scale group
                    m.d.sync += [gleft.eq(group), gidx.eq(gidx + 1)]
                with m.Else():
                    m.d.sync += gleft.eq(gleft - nl)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.inst.ready.eq(1)
                with m.If(self.inst.valid):
                    m.d.sync += [ir.eq(self.inst.payload), *start_state(fin)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                supported = func.matches(F.COPY, F.EMBED, *SWEEPS)
                with m.If((f["rows"] == 0) | (cols == 0) | ~supported):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(is_embed):
                    m.d.comb += [div.start.eq(1), div.n.eq(cols), div.d.eq(group)]
                    m.next = "GROUPS"
                with m.Else():
                    m.d.comb += gen.eq(1)
                    m.next = "RUN"
            with m.State("GROUPS"):                  # EMBED: the shift follows cols / group mantissas
                with m.If(~div.busy):
                    q2 = div.q[:16] << 1
                    m.d.sync += [shift_off.eq(code_bytes + q2),
                                 spitch.eq(Mux(f["src_stride"] != 0, f["src_stride"], code_bytes + q2 + 1))]
                    m.next = "RUN"
            with m.State("RUN"):
                room = (outstanding < self.IN_DEPTH) | pop
                m.d.comb += [issue.eq(d_valid & both_ready & room), gen.eq(~seq_end & (~d_valid | (issue & ~is_embed)))]
                with m.If(seq_end & ~d_valid & (outstanding == 0) & (inflight == 0) & ~wr.busy):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
