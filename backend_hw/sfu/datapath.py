"""The special-function unit: the MISC functions of docs/isa.md, bit-exact with ir/integer.py.

`SFU(target)` takes `target.sfu.lanes` elements per cycle through a three-stage pipeline:

    stage 0  the accepted beat: element indices, in-range / visible / first-half-of-head masks
    stage 1  LayerNorm's x 2^8 - mu, the norm shift Xs = rshr(X, s), |X|, the table address
    stage 2  the function (or the pass's reduction), saturation; registered into `o`

A function runs over a row in the passes `SWEEPS[func]` (sfu/scalars.py): the row is streamed in
once per pass (`cols` elements, `ceil(cols / lanes)` beats, the last beat's extra lanes ignored),
and only the last pass (`Sweep.OUT`) emits results. Between passes `i.ready` is low while the
pipeline drains and `RowScalars` computes the next pass's scalars. `o` has no backpressure: a
beat of the output pass leaves `LATENCY` = 3 cycles after its handshake on `i`; a row takes
`row_cycles(func, cols)` cycles (one-pass functions: ceil(cols / lanes); RMSNORM 3 beats per lane
group + 72, LAYERNORM 4 + 95, SOFTMAX 3 + 22, QUANT_ROWS 2 + 23: `sweep_gap` between passes).

| func | passes | operands (a, b, c, d) | output `y` |
|---|---|---|---|
| ADD, MUL | OUT | x, y | int_add, int_mul |
| RELU, SILU, GELU, GELU_TANH | OUT | x | int_relu, int_silu, int_gelu |
| ROPE | OUT | x, partner x[k +- depth/2] (same head), cos, sin | int_rope (`depth` = head dim) |
| QUANT_ROWS | AMAX, OUT | x | int8 codes (and the row's `m`, `e`) of quantize_activation |
| RMSNORM | AMAX, SUMSQ, OUT | x, weight | int_rms_norm (`eps` = round(eps 2^32)) |
| LAYERNORM | MEAN, AMAX, SUMSQ, OUT | x, weight, bias | int_layer_norm |
| SOFTMAX | SMAX, SSUM, OUT | scores | int_softmax_rows; with `causal` key k is visible iff k <= key_limit |

The configuration inputs (`func`, `cols`, `eps`, `depth`, `causal`, `key_limit`) must hold while
a row is in flight (`busy`). Rows of one-pass functions stream back to back at one beat a cycle.
"""

from functools import reduce

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import MiscFunc

from .arith import rshr, rshr_var, sat
from .lut import LutEval, Table
from .scalars import MAX_BITS, QUANT_SCALAR_CYCLES, RECIP_BITS, SCALAR_CYCLES, SUM_BITS, SWEEPS, RowScalars, Sweep

__all__ = ["FUNCS", "SWEEPS", "SFU", "Sweep", "sweep_gap"]

FUNCS = tuple(SWEEPS)                    # the MISC functions the SFU computes
ONE = 1 << 16
_TABLES = {MiscFunc.SILU: Table.SILU, MiscFunc.GELU: Table.GELU,
           MiscFunc.GELU_TANH: Table.GELU_TANH, MiscFunc.SOFTMAX: Table.EXP}


def operand_layout(lanes: int) -> data.StructLayout:
    lane = data.ArrayLayout(signed(32), lanes)
    return data.StructLayout({"a": lane, "b": lane, "c": lane, "d": lane})


def result_layout(lanes: int) -> data.StructLayout:
    return data.StructLayout({"y": data.ArrayLayout(signed(32), lanes),
                              "m": unsigned(15), "e": signed(7)})


def sweep_gap(func: MiscFunc, kind: Sweep, skip: bool = False) -> int:
    """Cycles from the last input beat of a reduction pass `kind` to the next pass's first: SMAX 2
    (DRAIN0, then the max is final when the next beat's stage 0 reads it); others 4 (DRAIN0,
    DRAIN1, SCALARS, then WAIT takes the beat when `RowScalars` is done) plus `RowScalars`' busy
    cycles, none when `skip` (an all-zero QUANT_ROWS row, a SOFTMAX row with no visible key)."""
    if kind is Sweep.SMAX:
        return 2
    busy = QUANT_SCALAR_CYCLES if func == MiscFunc.QUANT_ROWS else SCALAR_CYCLES[kind]
    if skip and kind in (Sweep.SSUM, Sweep.AMAX):
        busy = 0
    return 4 + busy


class SFU(wiring.Component):
    """The special-function unit of `target` (module docstring)."""

    LATENCY = 3

    def __init__(self, target):
        lanes = target.sfu.lanes
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"sfu lanes must be a positive power of two, not {lanes!r}")
        self.lanes = lanes
        super().__init__({
            "func": In(5), "cols": In(16), "eps": In(signed(32)), "depth": In(16),
            "causal": In(1), "key_limit": In(signed(32)),
            "i": In(stream.Signature(operand_layout(lanes))),
            "o": Out(stream.Signature(result_layout(lanes), always_ready=True)),
            "busy": Out(1),
        })

    def row_cycles(self, func: MiscFunc, cols: int) -> int:
        """Cycles from a row's first input beat to the next row's, inputs always valid: one per beat
        of each pass, and after each reduction pass `sweep_gap` - 1 (the worst case: rows of zeros or
        with no visible key are faster)."""
        beats = -(-cols // self.lanes)
        total = 0
        for kind in SWEEPS[MiscFunc(func)]:
            total += beats
            if kind is not Sweep.OUT:
                total += sweep_gap(func, kind) - 1
        return total

    def elaborate(self, platform):
        m = Module()
        L, lg = self.lanes, self.lanes.bit_length() - 1
        m.submodules.scalars = sc = RowScalars()
        m.submodules.lut = lut = LutEval(L)

        # ---- sequencer: pass number, beat within the pass, head position for ROPE
        pass_no, beat, hpos = Signal(2), Signal(16), Signal(16)
        n_beats = Signal(16)
        m.d.comb += n_beats.eq((self.cols + L - 1) >> lg)
        kind = Signal(3)
        with m.Switch(self.func):
            for f, passes in SWEEPS.items():
                with m.Case(f):
                    with m.Switch(pass_no):
                        for p, k in enumerate(passes):
                            with m.Case(p):
                                m.d.comb += kind.eq(k)
        take = Signal()
        m.d.comb += [take.eq(self.i.valid & self.i.ready),
                     sc.kind.eq(kind), sc.func.eq(self.func), sc.cols.eq(self.cols),
                     sc.eps.eq(self.eps)]
        def stream():
            with m.If(take):
                wrap = hpos + L >= self.depth
                m.d.sync += [beat.eq(beat + 1), hpos.eq(Mux(wrap, 0, hpos + L))]
                with m.If(beat == n_beats - 1):
                    m.d.sync += [beat.eq(0), hpos.eq(0)]
                    with m.If(kind == Sweep.OUT):
                        m.d.sync += pass_no.eq(0)
                        m.next = "STREAM"
                    with m.Else():
                        m.next = "DRAIN0"
                with m.Else():
                    m.next = "STREAM"

        with m.FSM() as fsm:
            with m.State("STREAM"):
                m.d.comb += self.i.ready.eq(1)
                stream()
            with m.State("DRAIN0"):          # the last beat is in stage 1
                with m.If(kind == Sweep.SMAX):    # SSUM needs only the max: in stage 0 from next cycle
                    m.d.sync += pass_no.eq(pass_no + 1)
                    m.next = "STREAM"
                with m.Else():
                    m.next = "DRAIN1"
            with m.State("DRAIN1"):          # ... in stage 2: the reduction is complete next cycle
                m.next = "SCALARS"
            with m.State("SCALARS"):
                m.d.comb += sc.start.eq(1)
                m.d.sync += pass_no.eq(pass_no + 1)
                m.next = "WAIT"
            with m.State("WAIT"):            # the next pass streams once RowScalars is done
                m.d.comb += self.i.ready.eq(~sc.busy)
                stream()

        # ---- stage 0: the accepted beat
        def lanes_of(shape, name):
            return [Signal(shape, name=f"{name}_{n}", reset_less=True) for n in range(L)]

        v0, first0 = Signal(), Signal(reset_less=True)
        kind0, func0 = Signal(3, reset_less=True), Signal(5, reset_less=True)
        x0, b0, c0, d0 = (lanes_of(signed(32), f"{f}0") for f in "xbcd")
        ok0, vis0, half0 = (lanes_of(1, f"{f}0") for f in ("ok", "vis", "half"))
        m.d.sync += [v0.eq(take), first0.eq(beat == 0), kind0.eq(kind), func0.eq(self.func)]
        p = self.i.payload
        for n in range(L):
            k = (beat << lg) | n                     # the element's index in the row
            m.d.sync += [x0[n].eq(p.a[n]), b0[n].eq(p.b[n]), c0[n].eq(p.c[n]), d0[n].eq(p.d[n]),
                         ok0[n].eq(k < self.cols),
                         vis0[n].eq((k < self.cols) & (~self.causal | (k <= self.key_limit))),
                         half0[n].eq(hpos + n < (self.depth >> 1))]

        # ---- stage 1: norm operand, table address
        v1, first1 = Signal(), Signal(reset_less=True)
        kind1, func1 = Signal(3, reset_less=True), Signal(5, reset_less=True)
        x1, b1, c1, d1 = (lanes_of(signed(32), f"{f}1") for f in "xbcd")
        ok1, vis1, half1 = (lanes_of(1, f"{f}1") for f in ("ok", "vis", "half"))
        xs1 = lanes_of(signed(26), "xs1")            # |Xs| <= 2^23
        ax1 = lanes_of(unsigned(42), "ax1")          # |X| < 2^40
        m.d.sync += [v1.eq(v0), first1.eq(first0), kind1.eq(kind0), func1.eq(func0)]
        acc_sum, acc_max = Signal(signed(SUM_BITS)), Signal(signed(MAX_BITS))
        m.d.comb += [sc.acc_sum.eq(acc_sum), sc.acc_max.eq(acc_max)]
        with m.Switch(func0):
            for f, t in _TABLES.items():
                with m.Case(f):
                    m.d.comb += lut.table.eq(t)
        is_ln0 = func0 == MiscFunc.LAYERNORM
        for n in range(L):
            big_x = Mux(is_ln0, (x0[n] << 8) - sc.mu, x0[n])
            d = x0[n] - acc_max                      # softmax: s - max, <= 0 when visible
            u_exp = Mux(d < 0, d, 0) + (16 * ONE)
            m.d.comb += lut.u[n].eq(Mux(func0 == MiscFunc.SOFTMAX, u_exp, x0[n] + 8 * ONE))
            m.d.sync += [x1[n].eq(x0[n]), b1[n].eq(b0[n]), c1[n].eq(c0[n]), d1[n].eq(d0[n]),
                         ok1[n].eq(ok0[n]), vis1[n].eq(vis0[n]), half1[n].eq(half0[n]),
                         xs1[n].eq(rshr_var(big_x, sc.s_right, sc.s_r1, sc.s_l)),
                         ax1[n].eq(abs(big_x))]

        # ---- stage 2: the function or the pass's reduction
        y = lanes_of(signed(32), "y")
        sums = {Sweep.MEAN: [], Sweep.SUMSQ: [], Sweep.SSUM: []}
        maxes = {Sweep.AMAX: [], Sweep.SMAX: []}
        two_z = acc_sum << 1
        for n in range(L):
            x, b, c, dd, e_lut = x1[n], b1[n], c1[n], d1[n], lut.y[n]
            sums[Sweep.MEAN].append(Mux(ok1[n], x, 0))
            sums[Sweep.SUMSQ].append(Mux(ok1[n], xs1[n] * xs1[n], 0))
            e = Mux(vis1[n], e_lut, 0)
            sums[Sweep.SSUM].append(e)
            maxes[Sweep.AMAX].append(Mux(ok1[n], ax1[n], 0))
            maxes[Sweep.SMAX].append(Mux(vis1[n], x, -(1 << 40)))
            # softmax: div_round(e 2^16, Z) = floor(nn / 2Z), nn < 2^35: one correction step
            nn = (e << 17) + acc_sum
            q0 = Signal(signed(20), name=f"q0_{n}")
            m.d.comb += q0.eq((nn * sc.recip) >> RECIP_BITS)
            p_soft = q0 + (nn - q0 * two_z >= two_z)
            norm = Signal(signed(32), name=f"norm_{n}")
            m.d.comb += norm.eq(sat(rshr(xs1[n] * sc.r, 30)))
            with m.Switch(func1):
                with m.Case(MiscFunc.ADD):
                    m.d.comb += y[n].eq(sat(x + b))
                with m.Case(MiscFunc.MUL):
                    m.d.comb += y[n].eq(sat(rshr(x * b, 16)))
                with m.Case(MiscFunc.RELU):
                    m.d.comb += y[n].eq(Mux(x > 0, x, 0))
                with m.Case(MiscFunc.SILU, MiscFunc.GELU, MiscFunc.GELU_TANH):
                    m.d.comb += y[n].eq(Mux(x >= 8 * ONE, x, e_lut))
                with m.Case(MiscFunc.ROPE):
                    m.d.comb += y[n].eq(sat(rshr(x * c + Mux(half1[n], -b, b) * dd, 16)))
                with m.Case(MiscFunc.QUANT_ROWS):
                    m.d.comb += y[n].eq(sat(rshr(x * sc.inv, 32), 8))
                with m.Case(MiscFunc.RMSNORM):
                    m.d.comb += y[n].eq(sat(rshr(norm * b, 16)))
                with m.Case(MiscFunc.LAYERNORM):
                    m.d.comb += y[n].eq(sat(rshr(norm * b, 16) + c))
                with m.Case(MiscFunc.SOFTMAX):
                    m.d.comb += y[n].eq(Mux(sc.zzero, 0, p_soft))

        beat_sum, beat_max = Signal(signed(SUM_BITS)), Signal(signed(MAX_BITS))
        with m.Switch(kind1):
            for k, terms in sums.items():
                with m.Case(k):
                    m.d.comb += beat_sum.eq(reduce(lambda s, t: s + t, terms))
            for k, terms in maxes.items():
                with m.Case(k):
                    m.d.comb += beat_max.eq(reduce(lambda s, t: Mux(s > t, s, t), terms))
        with m.If(v1 & kind1.matches(*sums)):
            m.d.sync += acc_sum.eq(Mux(first1, beat_sum, acc_sum + beat_sum))
        with m.If(v1 & kind1.matches(*maxes)):
            m.d.sync += acc_max.eq(Mux(first1 | (beat_max > acc_max), beat_max, acc_max))

        m.d.sync += self.o.valid.eq(v1 & (kind1 == Sweep.OUT))
        for n in range(L):
            m.d.sync += self.o.payload.y[n].eq(y[n])
        m.d.comb += [self.o.payload.m.eq(sc.m), self.o.payload.e.eq(sc.e),
                     self.busy.eq(~fsm.ongoing("STREAM") | (pass_no != 0) | (beat != 0)
                                  | v0 | v1 | self.o.valid)]
        return m
