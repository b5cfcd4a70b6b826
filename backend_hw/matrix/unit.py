"""The matrix instruction unit: runs the matrix queue's MV, MM and ATTN words on the on-chip buffers.

MV and MM go to the `MatrixEngine` of their weight format (fields `bits`, `sparsity` and the
effective group min(group or k, k)) through `MatmulSequencer` (backend_hw/matrix/mm.py);
ATTN_QK / ATTN_PV run on `AttnSequencer`'s streaming datapath (backend_hw/matrix/attn.py). Both
are bit-exact with simulator/functional.py (`_matrix`, `_misc`). One instruction at a time.
"""
from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import INST_BITS, Group, MiscFunc, Opcode, Sparsity, WeightBits
from llmfab.ir.target import Target

from ..engine.matrix_engine import MatrixEngine
from ..protocol.buffer_port import BufferPortSignature
from ..protocol.isa_fields import field, header
from .attn import AttnSequencer, attn_lanes
from .mm import OUT_SETS, MatmulSequencer

PORT_OUTS = ("buf", "addr", "re", "we", "be", "wdata")
PORT_INS = ("rdata", "ready")


class MatrixUnit(wiring.Component):
    """MV / MM / ATTN executor for `target` (module docstring).

    `formats`: the weight formats to run, each (weight_bits, N:M pattern or None, group), group
    being the effective group along K (g, or K for per-channel weights); one `MatrixEngine` each.
    `hold`: int64 entries of ATTN's sums memory (default max(1024, 128 x attn_bytes): 128 rows of
    one chunk each; 32,768 on u280): ATTN_PV's held sums (rows * depth of one
    instruction with ob = 4 and depth a multiple of 4; rows * ceil((4 + depth) / ob) * ob for
    ob = `engine.attn_bytes` > 4), ATTN_QK's q rows.
    `out_sets`: MV / MM output register sets (`MatmulSequencer`: passes whose outputs may await writes).

    Ports:
    - `inst` (in, stream of 256-bit words): length-resolved MV, MM and ATTN words; taken when idle.
    - `done` (out): a one-cycle pulse per completed instruction, in order.
    - `error` (out): sticky; set by an instruction the unit cannot run (a format not in `formats`,
      a function other than ATTN_QK / ATTN_PV, ATTN beyond `hold`); that instruction completes.
    - `wports[c]` (chain c's weight words), `aports` (activation rows on aports[0]; K / V rows, a
      group of `attn.attn_lanes` words a cycle, word q on aports[q]), `oport` (outputs, old outputs,
      scalars, q / p rows) (out, `BufferPortSignature` of the widest buffer): `buf` selects the
      buffer. `wports` has one port per chain (`target.engine.n_chains`).
    """

    def __init__(self, target: Target, formats, *, hold: int | None = None, out_sets: int = OUT_SETS):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        formats = tuple(formats)
        if not formats:
            raise ValueError("formats must name at least one weight format, not ()")
        for fm in formats:
            if not (isinstance(fm, tuple) and len(fm) == 3):
                raise TypeError(f"a format must be a tuple (weight_bits, pattern or None, group), not {fm!r}")
        if hold is None:        # 128 rows of held sums of chunks of attn_bytes (a prefill chunk's, one head)
            hold = max(1024, 128 * target.engine.attn_bytes)
        if not isinstance(hold, int) or isinstance(hold, bool) or hold < 1:
            raise ValueError(f"hold must be a positive integer, not {hold!r}")
        if not isinstance(out_sets, int) or isinstance(out_sets, bool) or out_sets < 1:
            raise ValueError(f"out_sets must be a positive integer, not {out_sets!r}")
        self.target, self.hold, self.out_sets = target, hold, out_sets
        self.formats = tuple((b, None if p is None else tuple(p), g) for b, p, g in formats)
        self.engines = [MatrixEngine(target, weight_bits=b, pattern=p, group=g) for b, p, g in self.formats]
        self.words = target.word_bytes
        self.data_bits = 8 * max(self.words.values())
        port = BufferPortSignature(self.data_bits)
        self.attn_lanes = attn_lanes(target)
        super().__init__({"inst": In(stream.Signature(INST_BITS)), "done": Out(1), "error": Out(1),
                          "wports": Out(port).array(target.engine.n_chains),
                          "aports": Out(port).array(max(self.attn_lanes.values())), "oport": Out(port)})

    def elaborate(self, platform) -> Module:
        m = Module()
        mm = m.submodules.mm = MatmulSequencer(self.target, self.engines, self.words, out_sets=self.out_sets)
        attn = m.submodules.attn = AttnSequencer(self.target.engine.attn_bytes, self.words, self.hold,
                                                 self.attn_lanes)

        word = self.inst.payload
        op = header(word, "op")
        k = field(word, Opcode.MV, "k")
        size = Signal(8)
        with m.Switch(field(word, Opcode.MV, "group")):
            for g in Group:
                with m.Case(g):
                    m.d.comb += size.eq(g.size)
        g_eff = Mux((size == 0) | (size >= k), k, size)
        fmt, known = Signal.like(mm.fmt), Signal()
        for i, (bits, pattern, group) in enumerate(self.formats):
            wb = next(w for w in WeightBits if w.bits == bits)
            sp = next(s for s in Sparsity if s.pattern == pattern)
            with m.If((field(word, Opcode.MV, "bits") == wb) & (field(word, Opcode.MV, "sparsity") == sp)
                      & (g_eff == group)):
                m.d.comb += [fmt.eq(i), known.eq(1)]
        func = field(word, Opcode.ATTN, "func")
        is_mat = (op == Opcode.MV) | (op == Opcode.MM)
        is_attn = (op == Opcode.ATTN) & ((func == MiscFunc.ATTN_QK) | (func == MiscFunc.ATTN_PV))

        in_attn = Signal()
        m.d.comb += [mm.ir.eq(word), mm.fmt.eq(fmt), attn.ir.eq(word)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.inst.ready.eq(1)
                with m.If(self.inst.valid):
                    with m.If(is_mat & known):
                        m.d.comb += mm.start.eq(1)
                        m.d.sync += in_attn.eq(0)
                        m.next = "BUSY"
                    with m.Elif(is_attn):
                        m.d.comb += attn.start.eq(1)
                        m.d.sync += in_attn.eq(1)
                        m.next = "BUSY"
                    with m.Else():
                        m.d.sync += self.error.eq(1)
                        m.next = "REFUSED"
            with m.State("REFUSED"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
            with m.State("BUSY"), m.If(mm.done | attn.done):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        with m.If(attn.error):
            m.d.sync += self.error.eq(1)

        # aports[0] and oport are shared (the running instruction's); aports[1:] are ATTN's alone
        shared = [(self.aports[0], mm.aport, attn.aports[0]), (self.oport, mm.oport, attn.oport)]
        for name in PORT_OUTS:
            for c, wp in enumerate(self.wports):
                m.d.comb += getattr(wp, name).eq(getattr(mm.wports[c], name))
            for port, a, b in shared:
                m.d.comb += getattr(port, name).eq(Mux(in_attn, getattr(b, name), getattr(a, name)))
            for port, b in zip(self.aports[1:], attn.aports[1:]):
                m.d.comb += getattr(port, name).eq(getattr(b, name))
        for name in PORT_INS:
            m.d.comb += [getattr(mm.wports[c], name).eq(getattr(wp, name)) for c, wp in enumerate(self.wports)]
            for port, a, b in shared:
                m.d.comb += [getattr(a, name).eq(getattr(port, name)), getattr(b, name).eq(getattr(port, name))]
            for port, b in zip(self.aports[1:], attn.aports[1:]):
                m.d.comb += getattr(b, name).eq(getattr(port, name))
        return m
