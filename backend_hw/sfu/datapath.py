"""The special-function unit: the MISC functions of docs/isa.md, bit-exact with ir/integer.py.

`SFU(target)` takes `target.sfu.lanes` elements per cycle through an eight-stage pipeline, every
stage a few LUT levels deep (the issue's proxy for 225 MHz on UltraScale+: <= 8 levels):

    stage 0    the accepted beat: element indices, in-range / visible / first-half-of-head masks
    stage 1    LayerNorm's X = x 2^8 - mu, |X|; the table ROM reads
    stage 2    the table's interpolation e (SiLU, GELU, exp, tanh), the norm shift Xs = rshr(X, s)
    stage 3-4  the first product (`limb_mul`: DSP partial products, then their sum) of the operands
               the function picks: x b, x cos, x inv, Xs r, Xs^2, softmax's N R, SOFTCAP's e cap
    stage 5-6  the second product: norm * weight, q0 2Z, the rotated partner * sin; stage 5 also
               saturates the one-product functions
    stage 7    the two-product functions' rounding and saturation, registered into `o`

Per lane that is two wide multipliers shared by every function (10 DSPs) and the table's one,
where a product per function and operand pair cost ~46. A function runs over a row in the passes
`SWEEPS[func]` (sfu/scalars.py): the row is streamed in once per pass (`cols` elements,
`ceil(cols / lanes)` beats, the last beat's extra lanes ignored), and only the last pass
(`Sweep.OUT`) emits results. A pass's reduction accumulates where its terms are ready (the mean
and the maxima after stage 1, softmax's sum of e after stage 2, the sum of squares after stage 4,
through a tree registered every few levels for wide lanes: `acc_ready`). Between passes `i.ready`
is low while that drains and `RowScalars` computes the next pass's scalars. `o` has no
backpressure: a beat of the output pass leaves `LATENCY` = 8 cycles after its handshake on `i`;
a row takes `row_cycles(func, cols)` cycles (`sweep_gap` between passes).

| func | passes | operands (a, b, c, d) | output `y` |
|---|---|---|---|
| ADD, MUL | OUT | x, y | int_add, int_mul |
| RELU, SILU, GELU, GELU_TANH | OUT | x | int_relu, int_silu, int_gelu |
| SOFTCAP | OUT | x | int_softcap (`eps` = the Q.16 cap): the tanh table, then e cap in the first product |
| ROPE | OUT | x, partner x[k +- depth/2] (same head), cos, sin | int_rope (`depth` = head dim) |
| QUANT_ROWS | AMAX, OUT | x | int8 codes (and the row's `m`, `e`) of quantize_activation |
| RMSNORM | AMAX, SUMSQ, OUT | x, weight | int_rms_norm (`eps` = round(eps 2^32)) |
| LAYERNORM | MEAN, AMAX, SUMSQ, OUT | x, weight, bias | int_layer_norm |
| SOFTMAX | SMAX, SSUM, OUT | scores | int_softmax_rows; with `causal` key k is visible iff k <= key_limit |

The configuration inputs (`func`, `cols`, `eps`, `depth`, `causal`, `key_limit`) must hold while
a row is in flight (`busy`). Rows of one-pass functions stream back to back at one beat a cycle.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import MiscFunc

from .arith import limb_mul, rshr, rshr_var, sat, tree, tree_registers
from .lut import Index, LutEval, Table
from .scalars import MAX_BITS, QUANT_SCALAR_CYCLES, SCALAR_CYCLES, SUM_BITS, SWEEPS, RowScalars, Sweep

__all__ = ["FUNCS", "SWEEPS", "SFU", "Sweep", "acc_ready", "sweep_gap"]

FUNCS = tuple(SWEEPS)                    # the MISC functions the SFU computes
ONE = 1 << 16
_TABLES = {MiscFunc.SILU: Table.SILU, MiscFunc.GELU: Table.GELU,
           MiscFunc.GELU_TANH: Table.GELU_TANH, MiscFunc.SOFTMAX: Table.EXP, MiscFunc.SOFTCAP: Table.TANH}


def _add(a, b):
    return a + b


def _max(a, b):
    return Mux(a > b, a, b)


# Tree levels between registers in a lane reduction: an add is one LUT level (and a carry chain),
# a max two or three (the compare's carry chain, then the select), as deep as the accumulator's own
_TREE_LEVELS = {_add: 3, _max: 1}
# The stage whose registers hold each reduction's terms, and the reduction
_ACC = {Sweep.MEAN: (1, _add), Sweep.AMAX: (1, _max), Sweep.SMAX: (1, _max), Sweep.SSUM: (2, _add),
        Sweep.SUMSQ: (4, _add)}


def acc_ready(kind: Sweep, lanes: int) -> int:
    """Cycles from the handshake of a reduction pass's last beat to its complete reduction in the
    accumulator: its terms' stage + 1, the tree's registers, the accumulator's own."""
    stage, op = _ACC[kind]
    return stage + 2 + tree_registers(lanes, _TREE_LEVELS[op])


def sweep_gap(func: MiscFunc, kind: Sweep, lanes: int, skip: bool = False) -> int:
    """Cycles from the last input beat of a reduction pass `kind` to the next pass's first: SMAX
    `acc_ready` - 1 (the next beat reads the max in its stage 1); others `acc_ready` + 1 (DRAIN,
    then SCALARS starts `RowScalars` on the complete reduction, then WAIT takes the beat when it is
    done) plus `RowScalars`' busy cycles, none when `skip` (an all-zero QUANT_ROWS row, a SOFTMAX
    row with no visible key)."""
    if kind is Sweep.SMAX:
        return acc_ready(kind, lanes) - 1
    busy = QUANT_SCALAR_CYCLES if func == MiscFunc.QUANT_ROWS else SCALAR_CYCLES[kind]
    if skip and kind in (Sweep.SSUM, Sweep.AMAX):
        busy = 0
    return acc_ready(kind, lanes) + 1 + busy


def operand_layout(lanes: int) -> data.StructLayout:
    lane = data.ArrayLayout(signed(32), lanes)
    return data.StructLayout({"a": lane, "b": lane, "c": lane, "d": lane})


def result_layout(lanes: int) -> data.StructLayout:
    return data.StructLayout({"y": data.ArrayLayout(signed(32), lanes),
                              "m": unsigned(15), "e": signed(7)})


def _delayed(m: Module, sig, name: str) -> Signal:
    out = Signal.like(sig, name=name)
    m.d.sync += out.eq(sig)
    return out


class SFU(wiring.Component):
    """The special-function unit of `target` (module docstring)."""

    LATENCY = 8

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
                total += sweep_gap(func, kind, self.lanes) - 1
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
        acc_sum, acc_max = Signal(signed(SUM_BITS)), Signal(signed(MAX_BITS))
        m.d.comb += [sc.acc_sum.eq(acc_sum), sc.acc_max.eq(acc_max)]
        # DRAIN's cycles after a reduction pass's last beat: until SCALARS finds the reduction
        # complete (acc_ready), or, after SMAX, until the next pass may stream (sweep_gap)
        drain, drain_init = Signal(4), Signal(4)
        with m.Switch(kind):
            for k in _ACC:
                with m.Case(k):
                    m.d.comb += drain_init.eq(acc_ready(k, L) - (3 if k is Sweep.SMAX else 2))
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
                        m.d.sync += drain.eq(drain_init)
                        m.next = "DRAIN"
                with m.Else():
                    m.next = "STREAM"

        with m.FSM() as fsm:
            with m.State("STREAM"):
                m.d.comb += self.i.ready.eq(1)
                stream()
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    with m.If(kind == Sweep.SMAX):    # SSUM needs only the max, in its stage 1
                        m.d.sync += pass_no.eq(pass_no + 1)
                        m.next = "STREAM"
                    with m.Else():
                        m.next = "SCALARS"
            with m.State("SCALARS"):
                m.d.comb += sc.start.eq(1)
                m.d.sync += pass_no.eq(pass_no + 1)
                m.next = "WAIT"
            with m.State("WAIT"):            # the next pass streams once RowScalars is done
                m.d.comb += self.i.ready.eq(~sc.busy)
                stream()

        # ---- stage 0: the accepted beat. Stage k's registers (`sk`) hold a beat k + 1 cycles after
        # its handshake, with what later stages still need carried along.
        def lanes_of(shape, name):
            return [Signal(shape, name=f"{name}_{n}", reset_less=True) for n in range(L)]

        def stage(k, prev, **extra):
            """Stage k's registers: the control of stage k - 1 and the per-lane values named in
            `extra` (name -> (shape, lane -> value))."""
            cur = {"v": Signal(name=f"v{k}"), "first": Signal(name=f"first{k}", reset_less=True),
                   "kind": Signal(3, name=f"kind{k}", reset_less=True),
                   "func": Signal(5, name=f"func{k}", reset_less=True)}
            for f in ("v", "first", "kind", "func"):
                m.d.sync += cur[f].eq(prev[f])
            for f, (shape, value) in extra.items():
                cur[f] = lanes_of(shape, f"{f}{k}")
                for n in range(L):
                    m.d.sync += cur[f][n].eq(value(n))
            return cur

        p = self.i.payload
        s0 = stage(0, {"v": take, "first": beat == 0, "kind": kind, "func": self.func},
                   x=(signed(32), lambda n: p.a[n]), b=(signed(32), lambda n: p.b[n]),
                   c=(signed(32), lambda n: p.c[n]), d=(signed(32), lambda n: p.d[n]),
                   ok=(1, lambda n: ((beat << lg) | n) < self.cols),
                   vis=(1, lambda n: (((beat << lg) | n) < self.cols)
                        & (~self.causal | (((beat << lg) | n) <= self.key_limit))),
                   half=(1, lambda n: hpos + n < (self.depth >> 1)))

        # ---- stage 1: X (LayerNorm's x 2^8 - mu), |X|; the table index (the ROM reads)
        with m.Switch(s0["func"]):
            for f, t in _TABLES.items():
                with m.Case(f):
                    m.d.comb += lut.table.eq(t)
        is_ln0 = s0["func"] == MiscFunc.LAYERNORM
        big_x = [Mux(is_ln0, (s0["x"][n] << 8) - sc.mu, s0["x"][n]) for n in range(L)]
        for n in range(L):
            exp = Index.of_exp(s0["x"][n] - acc_max)          # softmax: s - max, <= 0 when visible
            act = Index.of_act(s0["x"][n])
            for f in ("j", "fr", "below", "above"):
                m.d.comb += lut.idx[n][f].eq(Mux(s0["func"] == MiscFunc.SOFTMAX, exp[f], act[f]))
        keep = {f: (signed(32), lambda n, f=f: s0[f][n]) for f in "xbcd"}
        keep.update({f: (1, lambda n, f=f: s0[f][n]) for f in ("ok", "vis", "half")})
        s1 = stage(1, s0, **keep, bx=(signed(42), lambda n: big_x[n]),
                   ax=(unsigned(42), lambda n: abs(big_x[n])))                                  # |X| < 2^40

        # ---- stage 2: the table's output e (SiLU, GELU, exp, tanh); the norm shift Xs = rshr(X, s)
        keep = {f: (signed(32), lambda n, f=f: s1[f][n]) for f in "xbcd"}
        keep.update({f: (1, lambda n, f=f: s1[f][n]) for f in ("ok", "vis", "half")})
        s2 = stage(2, s1, **keep,                                                          # |Xs| <= 2^23
                   xs=(signed(26), lambda n: rshr_var(s1["bx"][n], sc.s_right, sc.s_r1, sc.s_l)))
        e2 = [lut.y[n] for n in range(L)]                     # LutEval's registers: stage 2

        # ---- stage 3-4: the first product (limb_mul: partial products, then their sum), whose
        # operands the function picks; softmax's N = e 2^17 + Z and 2Z, read here from the
        # accumulator and carried, like every scalar a later stage needs (the next row's passes
        # may change them while this beat is in flight)
        z = acc_sum[:33]                                      # softmax: Z = sum e < 2^32
        ev = [Mux(s2["vis"][n], e2[n], 0) for n in range(L)]
        nn = [(ev[n] << 17) + z for n in range(L)]            # < 2^35
        func2, is_sumsq2 = s2["func"], s2["kind"] == Sweep.SUMSQ
        is_norm2 = func2.matches(MiscFunc.RMSNORM, MiscFunc.LAYERNORM)
        pa = []
        for n in range(L):
            a_op, b_op = Signal(signed(36), name=f"ma_a_{n}"), Signal(signed(48), name=f"ma_b_{n}")
            with m.If(is_sumsq2):
                m.d.comb += [a_op.eq(s2["xs"][n]), b_op.eq(s2["xs"][n])]
            with m.Elif(is_norm2):
                m.d.comb += [a_op.eq(s2["xs"][n]), b_op.eq(sc.r)]
            with m.Elif(func2 == MiscFunc.SOFTMAX):
                m.d.comb += [a_op.eq(nn[n]), b_op.eq(sc.recip)]
            with m.Elif(func2 == MiscFunc.ROPE):
                m.d.comb += [a_op.eq(s2["x"][n]), b_op.eq(s2["c"][n])]
            with m.Elif(func2 == MiscFunc.QUANT_ROWS):
                m.d.comb += [a_op.eq(s2["x"][n]), b_op.eq(sc.inv)]
            with m.Elif(func2 == MiscFunc.SOFTCAP):           # the cap holds while the row is in flight
                m.d.comb += [a_op.eq(e2[n]), b_op.eq(self.eps)]
            with m.Else():
                m.d.comb += [a_op.eq(s2["x"][n]), b_op.eq(s2["b"][n])]
            pa.append(limb_mul(m, a_op, 36, b_op, 48, f"pa_{n}"))
        keep = {f: (signed(32), lambda n, f=f: s2[f][n]) for f in "xbcd"}
        keep.update({f: (1, lambda n, f=f: s2[f][n]) for f in ("ok", "half")})
        two_z = z << 1
        s3 = stage(3, s2, **keep, e=(signed(lut.base_bits + 1), lambda n: e2[n]),
                   nz=(signed(37), lambda n: nn[n] - two_z), tz=(unsigned(34), lambda n: two_z),
                   zz=(1, lambda n: sc.zzero), qm=(unsigned(15), lambda n: sc.m), qe=(signed(7), lambda n: sc.e))
        keep = {f: (s3[f][0].shape(), lambda n, f=f: s3[f][n]) for f in s3 if f not in ("v", "first", "kind", "func")}
        s4 = stage(4, s3, **keep)                             # pa: stage 4

        # ---- stage 5-6: the second product: the norms' norm * weight, softmax's q0 2Z, RoPE's
        # rotated partner * sin; stage 5 also settles the one-product functions
        func4 = s4["func"]
        is_norm4 = func4.matches(MiscFunc.RMSNORM, MiscFunc.LAYERNORM)
        norm = [sat(rshr(pa[n], 30)) for n in range(L)]
        q0 = [pa[n][35:55].as_signed() for n in range(L)]    # floor(N R / 2^35), 20 bits
        pc = []
        for n in range(L):
            a_op, b_op = Signal(signed(33), name=f"mc_a_{n}"), Signal(signed(35), name=f"mc_b_{n}")
            with m.If(is_norm4):
                m.d.comb += [a_op.eq(norm[n]), b_op.eq(s4["b"][n])]
            with m.Elif(func4 == MiscFunc.SOFTMAX):
                m.d.comb += [a_op.eq(q0[n]), b_op.eq(s4["tz"][n])]
            with m.Else():                                    # ROPE
                m.d.comb += [a_op.eq(Mux(s4["half"][n], -s4["b"][n], s4["b"][n])), b_op.eq(s4["d"][n])]
            pc.append(limb_mul(m, a_op, 33, b_op, 35, f"pc_{n}"))

        def one_product(n):
            x, b, y = s4["x"][n], s4["b"][n], Signal(signed(32), name=f"y5_{n}")
            with m.Switch(func4):
                with m.Case(MiscFunc.ADD):
                    m.d.comb += y.eq(sat(x + b))
                with m.Case(MiscFunc.MUL, MiscFunc.SOFTCAP):
                    m.d.comb += y.eq(sat(rshr(pa[n], 16)))
                with m.Case(MiscFunc.RELU):
                    m.d.comb += y.eq(Mux(x > 0, x, 0))
                with m.Case(MiscFunc.SILU, MiscFunc.GELU, MiscFunc.GELU_TANH):
                    m.d.comb += y.eq(Mux(x >= 8 * ONE, x, s4["e"][n]))
                with m.Case(MiscFunc.QUANT_ROWS):
                    m.d.comb += y.eq(sat(rshr(pa[n], 32), 8))
            return y

        def rounding(n):
            # rshr(P + K', 16) = (P + K) >> 16 with K = K' 2^16 + 2^15: the norms' + bias, RoPE's x cos
            return Mux(func4 == MiscFunc.ROPE, pa[n], Mux(func4 == MiscFunc.LAYERNORM, s4["c"][n] << 16, 0)) + (1 << 15)
        s5 = stage(5, s4, y=(signed(32), one_product), rk=(signed(85), rounding), q0=(signed(20), lambda n: q0[n]),
                   nz=(signed(37), lambda n: s4["nz"][n]), zz=(1, lambda n: s4["zz"][n]),
                   qm=(unsigned(15), lambda n: s4["qm"][n]), qe=(signed(7), lambda n: s4["qe"][n]))
        keep = {f: (s5[f][0].shape(), lambda n, f=f: s5[f][n]) for f in s5 if f not in ("v", "first", "kind", "func")}
        s6 = stage(6, s5, **keep)                             # pc: stage 6

        # ---- stage 7 (`o`): the two-product functions' results
        func6 = s6["func"]
        for n in range(L):
            y = Signal(signed(32), name=f"y_{n}")
            with m.Switch(func6):
                with m.Case(MiscFunc.RMSNORM, MiscFunc.LAYERNORM, MiscFunc.ROPE):
                    m.d.comb += y.eq(sat((pc[n] + s6["rk"][n]) >> 16))
                with m.Case(MiscFunc.SOFTMAX):
                    # div_round(e 2^16, Z) = floor(N / 2Z): q0 or q0 + 1, the latter when N - q0 2Z >= 2Z
                    m.d.comb += y.eq(Mux(s6["zz"][n], 0, s6["q0"][n] + (pc[n] <= s6["nz"][n])))
                with m.Default():
                    m.d.comb += y.eq(s6["y"][n])
            m.d.sync += self.o.payload.y[n].eq(y)
        m.d.sync += [self.o.valid.eq(s6["v"] & (s6["kind"] == Sweep.OUT)),
                     self.o.payload.m.eq(s6["qm"][0]), self.o.payload.e.eq(s6["qe"][0])]

        # ---- the passes' reductions, each where its terms are ready: the mean and the maxima of
        # stage 1, softmax's sum of e of stage 2, the sum of squares of stage 4 (the product)
        def reduce_into(acc, st, k, terms, op):
            value, regs = tree(m, terms, op, _TREE_LEVELS[op], f"red{int(k)}")
            v, first, kd = st["v"], st["first"], st["kind"]
            for r in range(regs):                         # the control follows the tree's registers
                v, first, kd = (_delayed(m, sig, f"red{int(k)}_{nm}{r}") for sig, nm in
                                ((v, "v"), (first, "first"), (kd, "kind")))
            with m.If(v & (kd == k)):
                m.d.sync += acc.eq(Mux(first, value, op(acc, value)))

        reduce_into(acc_sum, s1, Sweep.MEAN, [Mux(s1["ok"][n], s1["x"][n], 0) for n in range(L)], _add)
        reduce_into(acc_max, s1, Sweep.AMAX, [Mux(s1["ok"][n], s1["ax"][n], 0) for n in range(L)], _max)
        reduce_into(acc_max, s1, Sweep.SMAX, [Mux(s1["vis"][n], s1["x"][n], -(1 << 40)) for n in range(L)],
                    _max)
        reduce_into(acc_sum, s2, Sweep.SSUM, ev, _add)
        reduce_into(acc_sum, s4, Sweep.SUMSQ, [Mux(s4["ok"][n], pa[n], 0) for n in range(L)], _add)

        m.d.comb += [self.busy.eq(~fsm.ongoing("STREAM") | (pass_no != 0) | (beat != 0) | self.o.valid
                                  | s0["v"] | s1["v"] | s2["v"] | s3["v"] | s4["v"] | s5["v"] | s6["v"])]
        return m
