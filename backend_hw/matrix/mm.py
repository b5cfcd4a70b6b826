"""The MV/MM sequencer: plays one instruction through the `MatrixEngine` of its weight format.

A pass is `n_chains` weight rows (n = q * n_chains + c) against one token row r; MM runs, for each
q, every token row r in turn (the weight tile is re-read from the weight buffer, as the engine's
docstring says). Chains past `n` (n not a multiple of n_chains) run on junk and write nothing.
The tile is chain-interleaved (ir/packing.py `ChainLayout`): chain c's rows are its own sub-stream
of each per-row stream, word j of it at the stream's word base + j * n_chains + c, so the chains
all start a pass at the same bit offset of their sub-streams and, with a bank per chain, each reads
only its own bank.

Passes overlap: three processes walk the same pass order, each with its own cursor.
- The loader (on `oport`, through one byte reader) reads pass j's scalars into a second register
  set: the token row's scale record, then the live chains' shifts (one command, four a chunk) and
  biases when `has_bias` (only for the first token row of the weight rows: MM's other rows keep
  them), and old outputs when `accumulate` (one command each, 4 bytes a chain).
  It starts once the runner has taken pass j - 1's set.
- The runner, as soon as pass j's set is loaded and pass j - 1's last beat has gone in, takes the
  set (`START`: the unpackers' `start`) and streams the pass (`RUN`): each chain's weight words on
  its own port `wports[c]` (one read per cycle, fixed priority over its three streams into
  per-stream FIFOs), the activation windows of chain_len * M / N bytes on `aport` and, with the
  last beat, the pass's row records. It runs ahead into pass j + 1 while pass j streams: a stream
  whose words of pass j are all fetched fetches pass j + 1's into its FIFO (the unpacker takes them
  after its next `start`), and the second activation reader takes pass j + 1's command and reads
  its first words once the first reader has issued all of pass j's. So pass j + 1's first beat can
  go in two cycles after its `START`. The engine is a pipeline: pass j + 1 streams in while pass j
  drains (`MatrixEngine.latency`).
- The engine's outputs land in one of `out_sets` output register sets (in turn), and the writer
  writes them on `oport`: a buffer word a cycle (the pass's int32 4-byte aligned in a buffer of the
  widest word: 192 outputs in 24 writes on the U280, not 192), else one int32 at a time.
The loader and the writer are one FSM taking turns on `oport` (`DISPATCH`): a pass's writes as soon
as its outputs are in, else the next pass's loads; a pass is loaded only while fewer than
`out_sets` passes await their writes, so its set is free when its outputs come (no stall on `o`).
With the scalars and the writes hidden, a pass costs about max(beats, a chain's weight words,
activation words) + 3 cycles (`START`, the unpacker's gearbox taking its first word, the beat).

The module is over the ~450 lines: the loader, the runner and the writer share the pass cursors,
the register sets and `oport` in one FSM; split into modules they would hand each other some
twenty signals (matrix/cycles.py follows the same three processes).
"""
from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import INST_BITS, BufferId, Opcode
from llmfab.ir.packing import MANT_FIELD_BITS

from ..engine.matrix_engine import MatrixEngine
from ..protocol.buffer_port import BufferPortSignature, word_log
from ..protocol.isa_fields import field, header
from .buffer_io import ByteReader, int32_write

STREAMS = ("codes", "idx", "mant")
FIFO_DEPTH = 3
OUT_SETS = 4         # output register sets by default: enough that the engine's latency (~14 cycles
                     # on sim-small) never holds the loader back on passes of a few beats


class MatmulSequencer(wiring.Component):
    """MV and MM on the engines `engines[i]` (one per format); `fmt` selects the engine.

    Ports: `start` (in): take `ir` (an MV or MM word) and `fmt`; `done` (out): one-cycle pulse;
    `wports[c]` (out, `BufferPortSignature`): chain c's weight words; `aport`: activation windows;
    `oport`: the scalars (token records, shifts, biases, old outputs) and the output writes.
    `out_sets`: output register sets (passes whose outputs may await their writes).
    """
    # FSM states the cycle formula (matrix/cycles.py) counts as one cycle each, by name
    ENTRY_STATES = ("SETUP", "CHECK", "FINISH")       # once per instruction
    FIRST_LOAD_STATES = ("SETUP", "CHECK")             # between the accept and the first L_REC
    SCALAR_BYTES = 4                                   # the scalar reader's chunk

    def __init__(self, target, engines: list[MatrixEngine], words: dict[BufferId, int], *,
                 out_sets: int = OUT_SETS):
        if not isinstance(out_sets, int) or isinstance(out_sets, bool) or out_sets < 1:
            raise ValueError(f"out_sets must be a positive integer, not {out_sets!r}")
        self.target, self.engines, self.words, self.out_sets = target, engines, words, out_sets
        self.data_bits = 8 * max(words.values())
        self.wbits = target.buffer("weight").width_bits
        self.n_act = max(e.chains[0].n_act for e in engines)
        super().__init__({
            "start": In(1), "ir": In(INST_BITS), "fmt": In(range(max(len(engines), 2))), "done": Out(1),
            "wports": Out(BufferPortSignature(self.data_bits)).array(engines[0].n_chains),
            "aport": Out(BufferPortSignature(self.data_bits)),
            "oport": Out(BufferPortSignature(self.data_bits)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        e0 = self.engines[0]
        nc, cl, W = e0.n_chains, e0.chain_len, self.wbits
        lgw = W.bit_length() - 1
        lgb = lgw - 3                # log2 of the weight word's bytes
        for i, e in enumerate(self.engines):
            m.submodules[f"engine{i}"] = e
        # Two activation readers in turn: one streams the running pass, the other (`nxt`) reads the
        # next pass's first windows ahead, on aport's cycles the first leaves free.
        areads = [ByteReader(self.words, max(4, self.n_act)) for _ in range(2)]
        m.submodules.aread0, m.submodules.aread1 = areads
        nxt = Signal()                                    # the reader of the next START
        sread = m.submodules.sread = ByteReader(self.words, self.SCALAR_BYTES)
        for name in ("buf", "addr", "re"):
            # the output writes take oport in their own states
            m.d.comb += getattr(self.oport, name).eq(getattr(sread.ports[0], name))
        m.d.comb += [sread.ports[0].rdata.eq(self.oport.rdata), sread.ports[0].ready.eq(self.oport.ready)]
        # the running pass's reader first: the other reads once the first has issued all its words
        m.d.comb += [areads[0].hold.eq(~nxt & areads[1].busy), areads[1].hold.eq(nxt & areads[0].busy)]
        for i, rd in enumerate(areads):
            m.d.comb += [rd.ports[0].rdata.eq(self.aport.rdata), rd.ports[0].ready.eq(self.aport.ready)]
            with m.If(rd.ports[0].re):
                m.d.comb += [getattr(self.aport, name).eq(getattr(rd.ports[0], name)) for name in ("buf", "addr", "re")]
        # the running pass's reader, as one (its outputs; its `o.ready`)
        aread_o_valid, aread_o_data, aread_o_ready = Signal(), Signal.like(areads[0].o.payload.data), Signal()
        m.d.comb += [aread_o_valid.eq(Mux(nxt, areads[0].o.valid, areads[1].o.valid)),
                     aread_o_data.eq(Mux(nxt, areads[0].o.payload.data, areads[1].o.payload.data)),
                     areads[0].o.ready.eq(nxt & aread_o_ready), areads[1].o.ready.eq(~nxt & aread_o_ready)]

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

        # Per format (constants of the instruction): stream bits per row and beats per row, worked out
        # from the instruction word here and registered in SETUP, off the passes' paths.
        nbits_c = {s: Signal(24, name=f"nbits_c_{s}") for s in STREAMS}
        beats_c, n_act_c = Signal(18), Signal(range(self.n_act + 1))
        m.d.comb += nbits_c["mant"].eq(groups * MANT_FIELD_BITS)
        with m.Switch(fmt):
            for i, e in enumerate(self.engines):
                with m.Case(i):
                    p = e.pattern
                    kept = k if p is None else (k >> (p[1].bit_length() - 1)) * p[0]
                    ib = 0 if p is None else (p[1] - 1).bit_length()
                    m.d.comb += [nbits_c["codes"].eq(kept * e.weight_bits), nbits_c["idx"].eq(kept * ib),
                                 beats_c.eq(kept >> (cl.bit_length() - 1)), n_act_c.eq(e.chains[0].n_act)]
        nbits = {s: Signal(24, name=f"nbits_{s}", reset_less=True) for s in STREAMS}
        beats, n_act = Signal(18, reset_less=True), Signal(range(self.n_act + 1), reset_less=True)

        # -- pass cursors: each process walks the passes (q outer, r inner) on its own copy -----------
        class Cursor:
            def __init__(self, name):
                self.q, self.r = Signal(16, name=f"{name}_q"), Signal(16, name=f"{name}_r")
                self.a_row = Signal(24, name=f"{name}_arow")    # byte address of token row r's record
                self.o_row = Signal(24, name=f"{name}_orow")    # byte address of output row r
                self.last = (self.r + 1 >= rows) & (self.q + nc >= n)
                self.live = Signal(range(nc + 1), name=f"{name}_live")   # chains with a weight row
                m.d.comb += self.live.eq(Mux(n - self.q >= nc, nc, n - self.q))

            def reset(self):
                return [self.q.eq(0), self.r.eq(0), self.a_row.eq(f("a_addr")), self.o_row.eq(f("o_addr"))]

            def advance(self):
                """Steps to the next pass (sync); returns the condition under which q steps."""
                wrap = self.r + 1 >= rows
                with m.If(wrap):
                    m.d.sync += [self.r.eq(0), self.q.eq(self.q + nc), self.a_row.eq(f("a_addr")),
                                 self.o_row.eq(f("o_addr"))]
                with m.Else():
                    m.d.sync += [self.r.eq(self.r + 1), self.a_row.eq(self.a_row + k + 4),
                                 self.o_row.eq(self.o_row + pitch)]
                return wrap
        run_c, load_c, write_c = Cursor("run"), Cursor("load"), Cursor("write")

        # The loaded set (loader -> runner) and the running set (read by the engine with the last beat).
        rec_n, rec = Signal(24), Signal(24)
        shift_n = [Signal(8, name=f"shift_n{c}") for c in range(nc)]
        bias_n = [Signal(32, name=f"bias_n{c}") for c in range(nc)]
        prev_n = [Signal(32, name=f"prev_n{c}") for c in range(nc)]
        shift = [Signal(8, name=f"shift{c}") for c in range(nc)]
        bias = [Signal(32, name=f"bias{c}") for c in range(nc)]
        prev = [Signal(32, name=f"prev{c}") for c in range(nc)]
        next_full = Signal()
        mx, ex = Signal(16), Signal(8)
        m.d.comb += [mx.eq(rec[:16]), ex.eq(rec[16:24])]
        # Per stream: its first word, and the pass's bit offset in every chain's sub-stream.
        wbase = {s: Signal(24, name=f"wbase_{s}") for s in STREAMS}
        bitaddr = {s: Signal(32, name=f"bit_{s}") for s in STREAMS}

        def first_word(c, s):
            return wbase[s] + c + (bitaddr[s] >> lgw) * nc

        # Weight word fetch: a slot per (chain, stream); each chain has its own read port, one read
        # per cycle to the first of its streams with words left and room in its FIFO.
        fifos, left, waddr = {}, {}, {}
        ahead = {}                   # the slot holds the next pass's words (its START keeps them)
        for c in range(nc):
            port = self.wports[c]
            pend, pend_s = Signal(name=f"pend{c}"), Signal(range(len(STREAMS)), name=f"pend_s{c}")
            blocked = Const(0, 1)
            for j, s in enumerate(STREAMS):
                key = (c, s)
                fi = fifos[key] = m.submodules[f"fifo_{s}{c}"] = SyncFIFO(width=W, depth=FIFO_DEPTH)
                left[key] = Signal(20, name=f"left_{s}{c}")
                waddr[key] = Signal(24, name=f"waddr_{s}{c}")
                ahead[key] = Signal(name=f"ahead_{s}{c}")
                room = fi.level + (pend & (pend_s == j)) < FIFO_DEPTH
                ok = (left[key] != 0) & room
                t = Signal(name=f"take_{s}{c}")
                m.d.comb += t.eq(ok & ~blocked)
                blocked = blocked | ok
                with m.If(t):
                    m.d.comb += [port.re.eq(1), port.addr.eq(waddr[key]), port.buf.eq(BufferId.WEIGHT)]
                    with m.If(port.ready):
                        m.d.sync += [left[key].eq(left[key] - 1), waddr[key].eq(waddr[key] + nc), pend_s.eq(j)]
                m.d.comb += [fi.w_data.eq(port.rdata[:W]), fi.w_en.eq(pend & (pend_s == j))]
            m.d.sync += pend.eq(port.re & port.ready)

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
                    skip = bitaddr[s][:lgw]
                    m.d.comb += [getattr(st, f"{s}_skip").eq(skip),
                                 getattr(st, f"{s}_words").eq((skip + nbits[s] + W - 1) >> lgw)]
                    fi = fifos[c, s]
                    sp = getattr(port, s)
                    m.d.comb += [sp.valid.eq(fi.r_rdy & sel), sp.payload.eq(fi.r_data)]
                    with m.If(sel):
                        m.d.comb += fi.r_en.eq(sp.ready & fi.r_rdy)
            m.d.comb += [e.act.valid.eq(aread_o_valid & sel), e.act.payload.eq(aread_o_data),
                         e.rows.valid.eq(rows_valid & sel)]
            for c in range(nc):
                rr = e.rows.payload[c]
                m.d.comb += [rr.shift.eq(shift[c]), rr.ex.eq(ex), rr.mx.eq(mx), rr.bias.eq(bias[c]),
                             rr.has_bias.eq(f("has_bias")), rr.prev.eq(prev[c]), rr.accumulate.eq(f("accumulate"))]
            with m.If(sel):
                m.d.comb += [act_ready.eq(e.act.ready), rows_taken.eq(e.rows.ready & rows_valid),
                             o_valid.eq(e.o.valid)]
                m.d.comb += [o_vals[c].eq(e.o.payload[c]) for c in range(nc)]

        # -- the runner ------------------------------------------------------------------------------
        # The unpackers are idle the cycle after a pass's last beat, so the next pass may start
        # right away; its first words and windows are fetched ahead while the pass before runs
        # (its addresses are the runner's cursor once the pass before has started).
        more = Signal()              # a pass follows the one that started last
        a_ahead = Signal()           # the `nxt` reader holds that pass's command

        def stream_words(s):
            return Mux(nbits[s] == 0, 0, (bitaddr[s][:lgw] + nbits[s] + W - 1) >> lgw)

        def a_cmd(rd):
            m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.buf.eq(f("abuf")), rd.cmd.payload.addr.eq(run_c.a_row + 4),
                         rd.cmd.payload.nbytes.eq(k), rd.cmd.payload.step.eq(n_act)]

        with m.If(more & ~start_go):
            for key in ahead:
                with m.If(~ahead[key] & (left[key] == 0)):
                    m.d.sync += [ahead[key].eq(1), waddr[key].eq(first_word(*key)), left[key].eq(stream_words(key[1]))]
            with m.If(~a_ahead):
                for i, rd in enumerate(areads):
                    with m.If(nxt == i):
                        a_cmd(rd)
                        with m.If(rd.cmd.ready):
                            m.d.sync += a_ahead.eq(1)

        with m.FSM(name="runner"):
            with m.State("WAIT"), m.If(next_full):
                m.d.comb += start_go.eq(1)
                with m.If(~a_ahead):
                    for i, rd in enumerate(areads):
                        with m.If(nxt == i):
                            a_cmd(rd)
                m.d.sync += [next_full.eq(0), rec.eq(rec_n), nxt.eq(~nxt), a_ahead.eq(0), more.eq(~run_c.last)]
                m.d.sync += [d.eq(s) for d, s in zip(shift + bias + prev, shift_n + bias_n + prev_n)]
                for key in ahead:
                    m.d.sync += ahead[key].eq(0)
                    with m.If(~ahead[key]):
                        m.d.sync += [waddr[key].eq(first_word(*key)), left[key].eq(stream_words(key[1]))]
                with m.If(run_c.advance()):
                    m.d.sync += [bitaddr[s].eq(bitaddr[s] + nbits[s]) for s in STREAMS]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [rows_valid.eq(1), aread_o_ready.eq(act_ready)]
                with m.If(rows_taken):
                    m.next = "WAIT"

        # -- the engine's outputs: `out_sets` register sets, filled in turn ----------------------------
        S = self.out_sets
        out = [[Signal(32, name=f"out{b}_{c}") for c in range(nc)] for b in range(S)]
        full = Signal(S)
        set_in, set_w = Signal(range(S)), Signal(range(S))
        held = Signal(range(S + 1))  # passes loaded and not yet written: each will need a set

        # -- the loader and the writer, taking turns on oport ----------------------------------------
        def load(state, buf, addr, nbytes, step, dests, then):
            """A read of `nbytes` into `dests` (`step` bytes a chunk, each chunk the next
            step // size dests of `size` bytes); then `then()`."""
            size = len(dests[0]) // 8
            per = step // size
            li = Signal(range(nc + 1), name=f"li_{state}")
            with m.State(state):
                m.d.comb += [sread.cmd.valid.eq(1), sread.cmd.payload.buf.eq(buf), sread.cmd.payload.addr.eq(addr),
                             sread.cmd.payload.nbytes.eq(nbytes), sread.cmd.payload.step.eq(step)]
                m.d.sync += li.eq(0)
                with m.If(sread.cmd.ready):
                    m.next = state + "_W"
            with m.State(state + "_W"):
                m.d.comb += sread.o.ready.eq(1)
                with m.If(sread.o.valid):
                    with m.Switch(li):
                        for c in range(-(-len(dests) // per)):
                            with m.Case(c):
                                m.d.sync += [d.eq(sread.o.payload.data[8 * size * j:8 * size * (j + 1)])
                                             for j, d in enumerate(dests[c * per:(c + 1) * per])]
                    m.d.sync += li.eq(li + 1)
                    with m.If(sread.o.payload.last):
                        then()

        load_done = Signal()
        wrote = Signal()             # this cycle ends a pass's writes (frees a set)
        took_set = Signal()          # this cycle ends a pass's loads (it will need a set)

        def loaded():
            """The last read of a pass: hand the set over to the runner."""
            m.d.comb += took_set.eq(1)
            m.d.sync += [next_full.eq(1), load_done.eq(load_c.last)]
            load_c.advance()
            m.next = "DISPATCH"

        def after_bias():
            with m.If(f("accumulate")):
                m.next = "L_PREV"
            with m.Else():
                loaded()

        def after_shift():
            with m.If(f("has_bias")):
                m.next = "L_BIAS"
            with m.Else():
                after_bias()

        # The writer: the pass's outputs move from their set into `wq` (DISPATCH), then leave it a
        # buffer word at a time (`WA`: the pass's int32 4-byte aligned in the widest word's buffer;
        # word j's lanes are chains j * L - off4 .. : the previous chunk's top lanes (`carry`) then
        # this chunk's low ones), else an int32 at a time (`W0`/`W1` at any byte address).
        wbmax = self.data_bits // 8
        L = max(1, wbmax // 4)                               # int32 lanes of the widest word
        lgmax = wbmax.bit_length() - 1
        wq = Signal(32 * nc)
        carry = Signal(32 * L)
        off4 = Signal(range(max(L, 2)))                      # lanes before chain 0 in the first word
        wleft = Signal(range(nc + L + 1))                    # lanes from this word's first to the pass's end
        wfirst = Signal()
        wword = Signal(24)
        wc = Signal(range(nc))       # chain being written (W0/W1)
        wr_addr = Signal(24)
        obase = Signal(24)
        m.d.comb += [obase.eq(write_c.o_row + (write_c.q << 2)), wr_addr.eq(obase + (wc << 2))]
        wa, (d0, be0), (d1, be1), two = int32_write(m, f("obuf"), wr_addr, wq[:32], self.words, self.data_bits)
        widest = Signal()
        m.d.comb += widest.eq(word_log(m, f("obuf"), self.words) == lgmax)

        def pass_written():
            m.d.comb += wrote.eq(1)
            m.d.sync += [wc.eq(0), set_w.eq(Mux(set_w == S - 1, 0, set_w + 1))]
            write_c.advance()
            m.next = "DISPATCH"
            with m.If(write_c.last):
                m.next = "FINISH"

        def written():
            """The int32 of chain wc is out: the next chain, or the pass is written."""
            m.d.sync += wq.eq(wq >> 32)
            with m.If(wc + 1 < write_c.live):
                m.d.sync += wc.eq(wc + 1)
                m.next = "W0"
            with m.Else():
                pass_written()

        def take_set():
            """DISPATCH with the pass's outputs in: into wq, and the writer's way chosen."""
            with m.Switch(set_w):
                for b in range(S):
                    with m.Case(b):
                        m.d.sync += wq.eq(Cat(*out[b]))
            lane = obase[2:max(2, lgmax)]                   # chain 0's int32 lane in its word
            m.d.sync += [off4.eq(lane), wleft.eq(lane + write_c.live), wfirst.eq(1), wword.eq(obase >> lgmax)]
            with m.If(widest & (obase[:2] == 0)):
                m.next = "WA"
            with m.Else():
                m.next = "W0"

        chunk = wq[:32 * L]
        word = Signal(32 * L)
        with m.Switch(off4):
            for o in range(L):
                with m.Case(o):
                    m.d.comb += word.eq(Cat(carry[32 * (L - o):], chunk[:32 * (L - o)]))
        lane_be = Cat(*(((i < wleft) & (~wfirst | (i >= off4))).replicate(4) for i in range(L)))
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [ir.eq(self.ir), fmt.eq(self.fmt)]
                m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += run_c.reset() + load_c.reset() + write_c.reset()
                m.d.sync += [load_done.eq(0), wc.eq(0), set_w.eq(0), set_in.eq(0)]
                m.d.sync += [bitaddr[s].eq(0) for s in STREAMS]
                m.d.sync += [nbits[s].eq(nbits_c[s]) for s in STREAMS] + [beats.eq(beats_c), n_act.eq(n_act_c)]
                # the mantissas start at the first word after the n row shifts
                wb = W // 8
                m.d.sync += [wbase["codes"].eq(f("wbuf_addr") >> lgb), wbase["idx"].eq(f("idx_addr") >> lgb),
                             wbase["mant"].eq((f("scale_addr") + n + wb - 1) >> lgb)]
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If((n == 0) | (rows == 0)):
                    m.next = "FINISH"
                with m.Else():
                    m.next = "DISPATCH"
            # Writes first (they free sets); a pass is loaded once the runner has taken the one
            # before and a set is sure to be free when its outputs come.
            with m.State("DISPATCH"):
                with m.If(full.bit_select(set_w, 1)):
                    take_set()
                with m.Elif(~load_done & ~next_full & (held < S)):
                    m.d.comb += [sread.cmd.valid.eq(1), sread.cmd.payload.buf.eq(f("abuf")),
                                 sread.cmd.payload.addr.eq(load_c.a_row), sread.cmd.payload.nbytes.eq(4),
                                 sread.cmd.payload.step.eq(4)]
                    m.next = "L_REC_W"
            with m.State("L_REC_W"):
                m.d.comb += sread.o.ready.eq(1)
                with m.If(sread.o.valid):
                    m.d.sync += rec_n.eq(sread.o.payload.data[:24])
                    with m.If(load_c.r == 0):
                        m.next = "L_SHIFT"
                    with m.Else():   # the same weight rows as the pass before: its shifts and biases
                        after_bias()
            load("L_SHIFT", BufferId.WEIGHT, f("scale_addr") + load_c.q, load_c.live, self.SCALAR_BYTES, shift_n,
                 after_shift)
            load("L_BIAS", BufferId.WEIGHT, f("bias_addr") + (load_c.q << 2), load_c.live << 2, 4, bias_n,
                 after_bias)
            load("L_PREV", f("obuf"), load_c.o_row + (load_c.q << 2), load_c.live << 2, 4, prev_n, loaded)
            with m.State("WA"):
                m.d.comb += [self.oport.buf.eq(f("obuf")), self.oport.addr.eq(wword), self.oport.we.eq(1),
                             self.oport.wdata.eq(word), self.oport.be.eq(lane_be)]
                with m.If(self.oport.ready):
                    m.d.sync += [wq.eq(wq >> (32 * L)), carry.eq(chunk), wleft.eq(wleft - L), wfirst.eq(0),
                                 wword.eq(wword + 1)]
                    with m.If(wleft <= L):
                        pass_written()
            # an int32 at a time; W1 when the int32 straddles two words
            with m.State("W0"):
                m.d.comb += [self.oport.buf.eq(f("obuf")), self.oport.addr.eq(wa), self.oport.we.eq(1),
                             self.oport.wdata.eq(d0), self.oport.be.eq(be0)]
                with m.If(self.oport.ready):
                    with m.If(two):
                        m.next = "W1"
                    with m.Else():
                        written()
            with m.State("W1"):
                m.d.comb += [self.oport.buf.eq(f("obuf")), self.oport.addr.eq(wa + 1), self.oport.we.eq(1),
                             self.oport.wdata.eq(d1), self.oport.be.eq(be1)]
                with m.If(self.oport.ready):
                    written()
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"

        # Set bookkeeping: a set fills when the engine's outputs come, empties when written.
        got = Signal(S)
        m.d.comb += got.eq(Mux(o_valid, 1 << set_in, 0))
        m.d.sync += full.eq((full & ~Mux(wrote, 1 << set_w, 0)) | got)
        with m.If(o_valid):
            for b in range(S):
                with m.If(set_in == b):
                    m.d.sync += [out[b][c].eq(o_vals[c]) for c in range(nc)]
            m.d.sync += set_in.eq(Mux(set_in == S - 1, 0, set_in + 1))
        m.d.sync += held.eq(held + took_set - wrote)
        return m
