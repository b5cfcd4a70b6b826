"""The MV/MM sequencer: plays one instruction through the `MatrixEngine` of its weight format.

A pass is `n_chains` weight rows (n = q * n_chains + c) against one token row r; MM runs, for each
q, every token row r in turn (the weight tile is re-read from the weight buffer, as the engine's
docstring says). Per pass, in order: the token row's scale record, per chain its shift (and bias,
and the old output when `accumulate`) into registers; then the unpackers' `start`, the weight words
of the three streams of every chain (one `wport` read per cycle, fixed priority into per-stream
FIFOs), the activation codes in windows of chain_len * M / N bytes and the pass's row records;
then the pass's outputs, written one int32 at a time. Chains past `n` (n not a multiple of
n_chains) run on junk and write nothing.
"""
from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from llmfab.ir.isa import INST_BITS, BufferId, Opcode
from llmfab.ir.packing import MANT_FIELD_BITS

from .controller import field, header
from .dma import BufferPortSignature
from .matrix_engine import MatrixEngine
from .matrix_unit_io import ByteReader, int32_write

STREAMS = ("codes", "idx", "mant")
FIFO_DEPTH = 3


class MatmulSequencer(wiring.Component):
    """MV and MM on the engines `engines[i]` (one per format); `fmt` selects the engine.

    Ports: `start` (in): take `ir` (an MV or MM word) and `fmt`; `done` (out): one-cycle pulse;
    `wport`, `aport`, `oport` (out, `BufferPortSignature`): weight buffer; activations; outputs.
    """

    def __init__(self, target, engines: list[MatrixEngine], words: dict[BufferId, int]):
        self.target, self.engines, self.words = target, engines, words
        self.data_bits = 8 * max(words.values())
        self.wbits = target.buffer("weight").width_bits
        self.n_act = max(e.chains[0].n_act for e in engines)
        super().__init__({
            "start": In(1), "ir": In(INST_BITS), "fmt": In(range(max(len(engines), 2))), "done": Out(1),
            "wport": Out(BufferPortSignature(self.data_bits)), "aport": Out(BufferPortSignature(self.data_bits)),
            "oport": Out(BufferPortSignature(self.data_bits)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        e0 = self.engines[0]
        nc, cl, W = e0.n_chains, e0.chain_len, self.wbits
        lgw = W.bit_length() - 1
        for i, e in enumerate(self.engines):
            m.submodules[f"engine{i}"] = e
        wread = m.submodules.wread = ByteReader(self.words, 4)
        aread = m.submodules.aread = ByteReader(self.words, max(4, self.n_act))
        oread = m.submodules.oread = ByteReader(self.words, 4)
        for port, rd in ((self.wport, wread), (self.aport, aread), (self.oport, oread)):
            for name in ("buf", "addr", "re"):
                m.d.comb += getattr(port, name).eq(getattr(rd.port, name))
            # the fetcher below and the output writes take these ports in their own states
            m.d.comb += rd.port.rdata.eq(port.rdata)

        ir = Signal(INST_BITS)
        fmt = Signal.like(self.fmt)

        def f(name, op=Opcode.MV):
            return field(ir, op, name)
        is_mm = header(ir, "op") == Opcode.MM
        n, k = f("n"), f("k")
        rows = Mux(is_mm, f("m", Opcode.MM), 1)
        pitch = Mux(is_mm & (f("o_stride", Opcode.MM) != 0), f("o_stride", Opcode.MM), n << 2)
        gsize = Signal(8)
        with m.Switch(f("group")):
            for code, size in ((1, 32), (2, 64), (3, 128)):
                with m.Case(code):
                    m.d.comb += gsize.eq(size)
        groups = Signal(16)
        with m.Switch(gsize):
            for size in (32, 64, 128):
                with m.Case(size):
                    m.d.comb += groups.eq(Mux(k > size, k >> (size.bit_length() - 1), 1))
            with m.Default():
                m.d.comb += groups.eq(1)

        # Per format (constants): stream bits per row and beats per row.
        nbits = {s: Signal(24, name=f"nbits_{s}") for s in STREAMS}
        beats = Signal(18)
        n_act = Signal(range(self.n_act + 1))
        m.d.comb += nbits["mant"].eq(groups * MANT_FIELD_BITS)
        with m.Switch(fmt):
            for i, e in enumerate(self.engines):
                with m.Case(i):
                    p = e.pattern
                    kept = k if p is None else (k >> (p[1].bit_length() - 1)) * p[0]
                    ib = 0 if p is None else (p[1] - 1).bit_length()
                    m.d.comb += [nbits["codes"].eq(kept * e.weight_bits), nbits["idx"].eq(kept * ib),
                                 beats.eq(kept >> (cl.bit_length() - 1)), n_act.eq(e.chains[0].n_act)]

        # Pass state and per-chain registers.
        q_row = Signal(16)           # first weight row of the pass
        r = Signal(16)
        a_row = Signal(24)           # byte address of token row r's record
        o_row = Signal(24)           # byte address of output row r
        bitaddr = {(c, s): Signal(32, name=f"bit_{s}{c}") for c in range(nc) for s in STREAMS}
        mx, ex = Signal(16), Signal(8)
        shift = [Signal(8, name=f"shift{c}") for c in range(nc)]
        bias = [Signal(32, name=f"bias{c}") for c in range(nc)]
        prev = [Signal(32, name=f"prev{c}") for c in range(nc)]
        out = [Signal(32, name=f"out{c}") for c in range(nc)]
        live = [Signal(name=f"live{c}") for c in range(nc)]
        m.d.comb += [live[c].eq(q_row + c < n) for c in range(nc)]
        shift_base = Signal(24)

        # Weight word fetch: a slot per (chain, stream), one read per cycle, fixed priority.
        slots = [(c, s) for c in range(nc) for s in STREAMS]
        fifos, left, waddr = {}, {}, {}
        for c, s in slots:
            fifos[c, s] = m.submodules[f"fifo_{s}{c}"] = SyncFIFO(width=W, depth=FIFO_DEPTH)
            left[c, s] = Signal(20, name=f"left_{s}{c}")
            waddr[c, s] = Signal(24, name=f"waddr_{s}{c}")
        pend, pend_slot = Signal(), Signal(range(len(slots)))
        fetching = Signal()
        chosen = Signal()
        # which slot was chosen this cycle (the same priority, as a one-hot)
        taken = []
        blocked = Const(0, 1)
        for j, key in enumerate(slots):
            room = fifos[key].level + (pend & (pend_slot == j)) < FIFO_DEPTH
            ok = fetching & (left[key] != 0) & room
            t = Signal(name=f"take_{key[1]}{key[0]}")
            m.d.comb += t.eq(ok & ~blocked)
            blocked = blocked | ok
            taken.append(t)
            with m.If(t):
                m.d.comb += [chosen.eq(1), self.wport.addr.eq(waddr[key]), self.wport.buf.eq(BufferId.WEIGHT)]
                m.d.sync += [left[key].eq(left[key] - 1), waddr[key].eq(waddr[key] + 1), pend_slot.eq(j)]
        m.d.comb += self.wport.re.eq(chosen | wread.port.re)
        m.d.sync += pend.eq(chosen)
        for j, key in enumerate(slots):
            m.d.comb += [fifos[key].w_data.eq(self.wport.rdata[:W]), fifos[key].w_en.eq(pend & (pend_slot == j))]

        # The engines: everything goes to the engine of `fmt`.
        start_go = Signal()
        rows_valid = Signal()
        rows_taken = Signal()
        o_valid = Signal()
        o_vals = [Signal(32, name=f"o{c}") for c in range(nc)]
        act_ready = Signal()
        for i, e in enumerate(self.engines):
            sel = fmt == i
            for c in range(nc):
                port = e.weights[c]
                st = port.start.payload
                m.d.comb += [port.start.valid.eq(start_go & sel), st.beats.eq(beats)]
                for s in STREAMS:
                    if s == "idx" and e.pattern is None:
                        continue
                    ba = bitaddr[c, s]
                    skip = ba[:lgw]
                    m.d.comb += [getattr(st, f"{s}_skip").eq(skip),
                                 getattr(st, f"{s}_words").eq((skip + nbits[s] + W - 1) >> lgw)]
                    fi = fifos[c, s]
                    sp = getattr(port, s)
                    m.d.comb += [sp.valid.eq(fi.r_rdy & sel), sp.payload.eq(fi.r_data)]
                    with m.If(sel):
                        m.d.comb += fi.r_en.eq(sp.ready & fi.r_rdy)
            m.d.comb += [e.act.valid.eq(aread.o.valid & sel), e.act.payload.eq(aread.o.payload.data),
                         e.rows.valid.eq(rows_valid & sel)]
            for c in range(nc):
                rec = e.rows.payload[c]
                m.d.comb += [rec.shift.eq(shift[c]), rec.ex.eq(ex), rec.mx.eq(mx), rec.bias.eq(bias[c]),
                             rec.has_bias.eq(f("has_bias")), rec.prev.eq(prev[c]), rec.accumulate.eq(f("accumulate"))]
            with m.If(sel):
                m.d.comb += [act_ready.eq(e.act.ready), rows_taken.eq(e.rows.ready & rows_valid),
                             o_valid.eq(e.o.valid)]
                m.d.comb += [o_vals[c].eq(e.o.payload[c]) for c in range(nc)]

        # -- the sequence ---------------------------------------------------------------------------
        def scalar(state, rd, buf, addr, nbytes, dest, nxt, cond=1):
            with m.State(state):
                with m.If(cond):
                    m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.buf.eq(buf), rd.cmd.payload.addr.eq(addr),
                                 rd.cmd.payload.nbytes.eq(nbytes), rd.cmd.payload.step.eq(nbytes)]
                    with m.If(rd.cmd.ready):
                        m.next = state + "_W"
                with m.Else():
                    m.next = nxt
            with m.State(state + "_W"):
                m.d.comb += rd.o.ready.eq(1)
                with m.If(rd.o.valid):
                    m.d.sync += dest.eq(rd.o.payload.data[:len(dest)])
                    m.next = nxt

        wc = Signal(range(nc + 1))     # chain being written
        wr_addr = Signal(24)
        wr_val = Signal(32)
        wa, (d0, be0), (d1, be1), two = int32_write(m, f("obuf"), wr_addr, wr_val, self.words, self.data_bits)
        rec = Signal(24)
        m.d.comb += [mx.eq(rec[:16]), ex.eq(rec[16:24])]
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [ir.eq(self.ir), fmt.eq(self.fmt)]
                m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [q_row.eq(0), r.eq(0), a_row.eq(f("a_addr")), o_row.eq(f("o_addr")),
                             shift_base.eq(f("scale_addr") + ((n * groups) << 1))]
                for c in range(nc):
                    for s, base in (("codes", "wbuf_addr"), ("idx", "idx_addr"), ("mant", "scale_addr")):
                        m.d.sync += bitaddr[c, s].eq((f(base) << 3) + c * nbits[s])
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If((n == 0) | (rows == 0)):
                    m.next = "FINISH"
                with m.Else():
                    m.next = "REC"
            scalar("REC", aread, f("abuf"), a_row, 4, rec, "SHIFT0")
            for c in range(nc):
                nxt = f"SHIFT{c + 1}" if c + 1 < nc else "START"
                scalar(f"SHIFT{c}", wread, BufferId.WEIGHT, shift_base + q_row + c, 1, shift[c], f"BIAS{c}", live[c])
                scalar(f"BIAS{c}", wread, BufferId.WEIGHT, f("bias_addr") + ((q_row + c) << 2), 4, bias[c],
                       f"PREV{c}", live[c] & f("has_bias"))
                scalar(f"PREV{c}", oread, f("obuf"), o_row + ((q_row + c) << 2), 4, prev[c], nxt,
                       live[c] & f("accumulate"))
            with m.State("START"):
                m.d.comb += [start_go.eq(1), aread.cmd.valid.eq(1), aread.cmd.payload.buf.eq(f("abuf")),
                             aread.cmd.payload.addr.eq(a_row + 4), aread.cmd.payload.nbytes.eq(k),
                             aread.cmd.payload.step.eq(n_act)]
                m.d.sync += fetching.eq(1)
                for c in range(nc):
                    for s in STREAMS:
                        ba = bitaddr[c, s]
                        m.d.sync += [waddr[c, s].eq(ba >> lgw),
                                     left[c, s].eq(Mux(nbits[s] == 0, 0, (ba[:lgw] + nbits[s] + W - 1) >> lgw))]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [rows_valid.eq(1), aread.o.ready.eq(act_ready)]
                with m.If(rows_taken):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += aread.o.ready.eq(act_ready)
                with m.If(o_valid):
                    m.d.sync += [out[c].eq(o_vals[c]) for c in range(nc)]
                    m.d.sync += [wc.eq(0), fetching.eq(0)]
                    m.next = "WSEL"
            with m.State("WSEL"):
                with m.Switch(wc):
                    for c in range(nc):
                        with m.Case(c):
                            m.d.sync += [wr_addr.eq(o_row + ((q_row + c) << 2)), wr_val.eq(out[c])]
                            with m.If(live[c]):
                                m.next = "W0"
                            with m.Else():
                                m.next = "NEXT"
                    with m.Default():
                        m.next = "NEXT"
            with m.State("W0"):
                m.d.comb += [self.oport.buf.eq(f("obuf")), self.oport.addr.eq(wa), self.oport.we.eq(1),
                             self.oport.wdata.eq(d0), self.oport.be.eq(be0)]
                m.next = "W1"
                with m.If(~two):
                    m.d.sync += wc.eq(wc + 1)
                    m.next = "WSEL"
            with m.State("W1"):
                m.d.comb += [self.oport.buf.eq(f("obuf")), self.oport.addr.eq(wa + 1), self.oport.we.eq(1),
                             self.oport.wdata.eq(d1), self.oport.be.eq(be1)]
                m.d.sync += wc.eq(wc + 1)
                m.next = "WSEL"
            with m.State("NEXT"):
                # MM: every token row for this weight pass, then the next pass.
                with m.If(r + 1 < rows):
                    m.d.sync += [r.eq(r + 1), a_row.eq(a_row + k + 4), o_row.eq(o_row + pitch)]
                    m.next = "REC"
                with m.Elif(q_row + nc < n):
                    m.d.sync += [r.eq(0), a_row.eq(f("a_addr")), o_row.eq(f("o_addr")), q_row.eq(q_row + nc)]
                    for c in range(nc):
                        for s in STREAMS:
                            m.d.sync += bitaddr[c, s].eq(bitaddr[c, s] + nc * nbits[s])
                    m.next = "REC"
                with m.Else():
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
