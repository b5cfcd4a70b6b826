"""The SFU instruction unit: executes MISC instructions on the on-chip buffers, exactly as
`simulator.functional._misc` (docs/isa.md MISC), around the `SFU` datapath (backend_hw/sfu.py).

Per instruction, rows one after the other; per row, the passes `PASSES[func]` of the SFU; per
pass, beats of `lanes` elements. For each beat the unit fetches the operands (a, b, c, d of the
SFU's table) through two read ports, hands the beat to the SFU (or, for COPY and EMBED, straight
to the output), and writes the results through the third port:

| func | `src` port | `src2` port (output pass only) |
|---|---|---|
| ADD, MUL | a = src row | b = src2 row (`BROADCAST`: src2 row 0 for every row) |
| RELU, SILU, GELU, GELU_TANH, QUANT_ROWS, SOFTMAX | a | — |
| RMSNORM, LAYERNORM | a | b = weight, c = bias (src2 + 4 cols) |
| ROPE | a, b = each element's rotate-half partner in its head (1-2 pieces) | c = cos, d = sin of table row `imm + r mod period` |
| COPY | the row's bytes (rows `imm + r`) | — |
| EMBED | the beat's packed codes | the group's mantissa, the row's shift |

Reduction passes fetch only `a`. EMBED beats end at scale-group boundaries (one mantissa a beat).
Operands and results may sit at any byte address (sfu_unit_ports.py gearboxes).

Timing: a beat costs its word reads on the busier read port plus about 3 cycles (fetch start, read
latency, hand-over; the fetch of one beat overlaps the SFU and the writes of the previous ones);
the SFU adds its scalar cycles between passes (`SFU.row_cycles`). Rows follow each other without
gaps. `done` pulses once the last result word is written.
ROPE needs `depth` even, and `depth` a multiple of `lanes` unless `cols == depth` (the SFU's
head counter). ATTN_QK, ATTN_PV (the matrix engine's) and unknown functions complete at once.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import BROADCAST, CAUSAL, INST_BITS, BufferId, MiscFunc, Opcode
from llmfab.ir.target import Target

from .controller import field
from .dma import BUF_ADDR_BITS, BufferPortSignature
from .sfu import PASSES, SFU
from .sfu_arith import SeqDivider
from .sfu_unit_embed import EmbedLanes
from .sfu_unit_ports import ByteWriter, PieceFetcher, write_layout

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

    OUT_DEPTH = 4            # result beats between the SFU and the writer (the SFU cannot stall)

    def __init__(self, target: Target):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        lanes = target.sfu.lanes
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"sfu lanes must be a positive power of two, not {lanes!r}")
        self.word_bytes = {}
        for b in target.buffers:
            if b.width_bits < 32 or b.width_bits & (b.width_bits - 1):
                raise ValueError(f"buffer {b.name.value} width_bits must be a power of two of at least 32, "
                                 f"not {b.width_bits}")
            self.word_bytes[BufferId[b.name.name]] = b.width_bits // 8
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
        m.submodules.fifo = fifo = SyncFIFO(width=write_layout(OB).size, depth=self.OUT_DEPTH)
        m.submodules.div = div = SeqDivider(17, 16)
        m.submodules.emb = emb = EmbedLanes(L, RB)
        wiring.connect(m, fa.port, wiring.flipped(self.src))
        wiring.connect(m, fb.port, wiring.flipped(self.src2))
        wiring.connect(m, wr.port, wiring.flipped(self.dst))

        # ---- the instruction and what follows from it
        ir = Signal(INST_BITS)
        f = {n: field(ir, Opcode.MISC, n) for n in
             ("func", "flags", "src_buf", "src2_buf", "imm", "rows", "cols", "depth", "period", "dst_buf",
              "src_addr", "src2_addr", "dst_addr", "src_stride", "dst_stride")}
        func, cols, imm, depth = f["func"], f["cols"], f["imm"], f["depth"]
        is_copy, is_embed = func == F.COPY, func == F.EMBED
        bypass = is_copy | is_embed
        npass = Signal(3)
        with m.Switch(func):
            for fn, passes in PASSES.items():
                with m.Case(fn):
                    m.d.comb += npass.eq(len(passes))
            with m.Case(F.COPY, F.EMBED):
                m.d.comb += npass.eq(1)
        bits = imm[:4]
        group = Mux(depth == 0, cols, depth)          # EMBED's scale group
        code_bytes = Signal(20)
        m.d.comb += code_bytes.eq((cols * bits + 7) >> 3)

        spitch, dpitch, shift_off = Signal(A_W), Signal(A_W), Signal(A_W)
        src_row, src2_row, dst_row, tab0, tab = (Signal(A_W, name=n) for n in
                                                 ("src_row", "src2_row", "dst_row", "tab0", "tab"))
        r, rmod, p = Signal(16), Signal(16), Signal(3)
        k0, hpos, gpos, gidx, kbits = Signal(16), Signal(16), Signal(16), Signal(16), Signal(20)
        fetching, seq_end = Signal(), Signal()

        # ---- the beat: sizes, operand pieces
        left = cols - k0
        nl, nl_row = Signal(range(L + 1)), Signal(range(L + 1))
        m.d.comb += [nl_row.eq(Mux(left < L, left, L)), nl.eq(nl_row)]
        with m.If(is_embed & (group - gpos < nl_row)):
            m.d.comb += nl.eq(group - gpos)
        n_copy = Signal(range(RB + 1))
        m.d.comb += n_copy.eq(Mux(left < RB, left, RB))
        is_out = p == npass - 1
        last_beat = Mux(is_copy, k0 + n_copy >= cols, k0 + nl >= cols)
        elem = Signal(A_W)
        m.d.comb += elem.eq(src_row + (k0 << 2))

        sa, sb = fa.slot, fb.slot
        m.d.comb += [sa[0].buf.eq(f["src_buf"]), sa[0].addr.eq(elem), sa[0].n.eq(nl << 2)]
        with m.If(is_copy):
            m.d.comb += [sa[0].addr.eq(src_row + k0), sa[0].n.eq(n_copy)]
        with m.If(is_embed):
            m.d.comb += [sa[0].addr.eq(src_row + (kbits >> 3)),
                         sa[0].n.eq(((kbits + nl * bits + 7) >> 3) - (kbits >> 3))]
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
                     fa.en.eq(Cat(C(1, 1), rope_out, rope_out & (nl != n_first)))]
        # src2 port: b (c for ROPE), then c (d for ROPE)
        m.d.comb += [sb[0].buf.eq(f["src2_buf"]), sb[0].n.eq(nl << 2), sb[0].tgt.eq(1),
                     sb[1].buf.eq(f["src2_buf"]), sb[1].n.eq(nl << 2), sb[1].tgt.eq(2)]
        with m.Switch(func):
            with m.Case(F.ADD, F.MUL):
                m.d.comb += [sb[0].addr.eq(src2_row + (k0 << 2)), fb.en.eq(Cat(is_out, C(0, 1)))]
            with m.Case(F.RMSNORM, F.LAYERNORM):
                m.d.comb += [sb[0].addr.eq(f["src2_addr"] + (k0 << 2)),
                             sb[1].addr.eq(f["src2_addr"] + ((cols + k0) << 2)),
                             fb.en.eq(Cat(is_out, is_out & (func == F.LAYERNORM)))]
            with m.Case(F.ROPE):
                m.d.comb += [sb[0].addr.eq(tab + (hpos << 2)), sb[0].tgt.eq(2),
                             sb[1].addr.eq(tab + ((depth + hpos) << 2)), sb[1].tgt.eq(3),
                             fb.en.eq(Cat(is_out, is_out))]
            with m.Case(F.EMBED):
                m.d.comb += [sb[0].buf.eq(f["src_buf"]), sb[0].addr.eq(src_row + code_bytes + (gidx << 1)),
                             sb[0].n.eq(2), sb[1].buf.eq(f["src_buf"]), sb[1].addr.eq(src_row + shift_off),
                             sb[1].n.eq(1), fb.en.eq(0b11)]

        # ---- operand registers, filled by both fetchers (never the same register at once)
        regs = [Signal(8 * RB, name=f"op_{x}") for x in "abcd"]
        for fx in (fa, fb):
            with m.If(fx.ret):
                for t, reg in enumerate(regs):
                    with m.If(fx.ret_tgt == t):
                        bm = Cat(*(b.replicate(8) for b in fx.ret_mask))
                        m.d.sync += reg.eq((reg & ~bm) | (fx.ret_data & bm))

        # ---- the beat handed over: to the SFU, or (COPY, EMBED) straight to the results
        pregs = [Signal(8 * RB, name=f"p_{x}") for x in "abcd"]
        pv, p_out, p_bypass = Signal(), Signal(), Signal()
        p_klim = Signal(signed(32))
        p_addr, p_n, p_phase = Signal(A_W), Signal(range(OB + 1)), Signal(3)
        inflight = Signal(range(self.OUT_DEPTH + 1))
        credit = inflight < self.OUT_DEPTH
        m.d.comb += [sfu.func.eq(func), sfu.cols.eq(cols), sfu.eps.eq(imm), sfu.depth.eq(depth),
                     sfu.causal.eq((func == F.SOFTMAX) & (f["flags"] & CAUSAL).any()), sfu.key_limit.eq(p_klim),
                     sfu.i.payload.a.eq(pregs[0]), sfu.i.payload.b.eq(pregs[1]),
                     sfu.i.payload.c.eq(pregs[2]), sfu.i.payload.d.eq(pregs[3]),
                     sfu.i.valid.eq(pv & ~p_bypass & (credit | ~p_out))]
        take_sfu = sfu.i.valid & sfu.i.ready
        push_bypass = pv & p_bypass & credit
        with m.If(take_sfu | push_bypass):
            m.d.sync += pv.eq(0)
        xfer = fetching & fa.done & fb.done & (~pv | take_sfu | push_bypass)
        m.d.comb += [fa.start.eq(0), fb.start.eq(0)]

        # ---- results: SFU beats (counted on the output side) or bypass beats, into the FIFO
        o = sfu.o
        o_k0, o_row = Signal(16), Signal(A_W)
        o_left = cols - o_k0
        o_nl = Mux(o_left < L, o_left, L)
        e8 = Signal(signed(8))
        m.d.comb += e8.eq(o.payload.e)
        codes = Cat(*(o.payload.y[n][:8] for n in range(L)))
        entry = Signal(write_layout(OB))
        with m.If(p_bypass):
            m.d.comb += [entry.addr.eq(p_addr), entry.n.eq(p_n),
                         entry.data.eq(Mux(is_copy, pregs[0], Cat(*(emb.y[n] for n in range(L)))))]
        with m.Elif(func == F.QUANT_ROWS):
            with m.If(o_k0 == 0):
                m.d.comb += [entry.addr.eq(o_row), entry.n.eq(o_nl + 4),
                             entry.data.eq(Cat(o.payload.m, C(0, 1), e8, C(0, 8), codes))]
            with m.Else():
                m.d.comb += [entry.addr.eq(o_row + 4 + o_k0), entry.n.eq(o_nl), entry.data.eq(codes)]
        with m.Else():
            m.d.comb += [entry.addr.eq(o_row + (o_k0 << 2)), entry.n.eq(o_nl << 2),
                         entry.data.eq(Cat(*(o.payload.y[n] for n in range(L))))]
        m.d.comb += [emb.codes.eq(pregs[0]), emb.phase.eq(p_phase), emb.bits.eq(bits),
                     emb.mant.eq(pregs[1][:16]), emb.shift.eq(pregs[2][:8]),
                     fifo.w_data.eq(entry), fifo.w_en.eq(o.valid | push_bypass),
                     wr.i.payload.eq(fifo.r_data), wr.i.valid.eq(fifo.r_rdy), fifo.r_en.eq(wr.i.ready),
                     wr.buf.eq(f["dst_buf"])]
        with m.If(o.valid):
            m.d.sync += o_k0.eq(o_k0 + L)
            with m.If(o_k0 + L >= cols):
                m.d.sync += [o_k0.eq(0), o_row.eq(o_row + dpitch)]
        popped = wr.i.valid & wr.i.ready
        m.d.sync += inflight.eq(inflight + ((take_sfu & p_out) | push_bypass) - popped)

        # ---- the sequencer: instruction, rows, passes, beats
        ss, ds = f["src_stride"], f["dst_stride"]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.inst.ready.eq(1)
                with m.If(self.inst.valid):
                    m.d.sync += ir.eq(self.inst.payload)
                    m.next = "SETUP"
            with m.State("SETUP"):
                nat_src = Mux(is_copy, cols, cols << 2)
                nat_dst = Mux(is_copy, cols, Mux(func == F.QUANT_ROWS, cols + 4, cols << 2))
                m.d.sync += [spitch.eq(Mux(ss != 0, ss, nat_src)), dpitch.eq(Mux(ds != 0, ds, nat_dst)),
                             src_row.eq(f["src_addr"]), src2_row.eq(f["src2_addr"]), dst_row.eq(f["dst_addr"]),
                             o_row.eq(f["dst_addr"]), o_k0.eq(0),
                             tab0.eq(f["src2_addr"] + imm * (depth << 3)),
                             tab.eq(f["src2_addr"] + imm * (depth << 3)),
                             r.eq(0), rmod.eq(0), p.eq(0), k0.eq(0), hpos.eq(0), gpos.eq(0), gidx.eq(0),
                             kbits.eq(0), seq_end.eq(0), fetching.eq(0)]
                with m.If(is_copy):
                    m.d.sync += src_row.eq(f["src_addr"] + imm * Mux(ss != 0, ss, cols))
                supported = func.matches(F.COPY, F.EMBED, *PASSES)
                with m.If((f["rows"] == 0) | (cols == 0) | ~supported):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(is_embed):
                    m.d.comb += [div.start.eq(1), div.n.eq(cols), div.d.eq(group)]
                    m.next = "GROUPS"
                with m.Else():
                    m.next = "RUN"
            with m.State("GROUPS"):                  # EMBED: the shift follows cols / group mantissas
                with m.If(~div.busy):
                    q2 = div.q[:16] << 1
                    m.d.sync += [shift_off.eq(code_bytes + q2),
                                 spitch.eq(Mux(ss != 0, ss, code_bytes + q2 + 1))]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(~fetching & ~seq_end):
                    m.d.comb += [fa.start.eq(1), fb.start.eq(1)]
                    m.d.sync += fetching.eq(1)
                with m.If(xfer):
                    for dstr, srcr in zip(pregs, regs):
                        m.d.sync += dstr.eq(srcr)
                    m.d.sync += [pv.eq(1), p_out.eq(is_out), p_bypass.eq(bypass), p_klim.eq(rmod + imm),
                                 p_addr.eq(Mux(is_copy, dst_row + k0, dst_row + (k0 << 2))),
                                 p_n.eq(Mux(is_copy, n_copy, nl << 2)), p_phase.eq(kbits[:3]),
                                 fetching.eq(0)]
                    with m.If(last_beat):
                        m.d.sync += [k0.eq(0), hpos.eq(0), gpos.eq(0), gidx.eq(0), kbits.eq(0)]
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
                        m.d.sync += [k0.eq(k0 + Mux(is_copy, n_copy, nl)), kbits.eq(kbits + nl * bits),
                                     hpos.eq(Mux(hpos + L >= depth, 0, hpos + L))]
                        with m.If(gpos + nl == group):
                            m.d.sync += [gpos.eq(0), gidx.eq(gidx + 1)]
                        with m.Else():
                            m.d.sync += gpos.eq(gpos + nl)
                with m.If(seq_end & ~pv & ~fetching & (inflight == 0) & ~wr.busy):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
