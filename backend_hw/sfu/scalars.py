"""Per-row scalars of the SFU's multi-pass functions, computed between passes over a row.

Each MISC function streams its row through the SFU once per entry of `SWEEPS[func]`; after each
reduction pass `RowScalars` turns the pass's reduction (a sum or a max) into the scalars the next
pass needs, exactly as ir/integer.py does:

| after pass | scalars                                                                  | kernel |
|------------|---------------------------------------------------------------------------|--------|
| MEAN       | mu = div_round(sum(x) 2^8, D)                                              | int_layer_norm |
| AMAX       | norms: s = max(bit_length(a) - 23, F - 32); QUANT_ROWS: inv, m, e of a     | _normalize, quantize_activation |
| SUMSQ      | ms = div_round(sum Xs^2, D), S = isqrt(ms + E), r = div_round(2^46, max(S, 1)) | _normalize |
| SSUM       | R = floor(2^35 / 2Z), the reciprocal that makes div_round(e 2^16, Z) one multiply | int_softmax_rows |

Every division is one `SeqDivider` (2 quotient bits a cycle after a cycle that aligns the operands,
only the bits the quotient can have: the `Q_*` bounds below) and the root `SeqSqrt` (2 result bits
a cycle); QUANT_ROWS' m has a small divider of its own beside inv's, started a cycle later. After
the pass a norm row spends `SCALAR_CYCLES[SUMSQ]` = 68 cycles here, a quantized row 21, a softmax
row 19 (`SCALAR_CYCLES`, `QUANT_SCALAR_CYCLES`). Every path from a register to the next stays
within the SFU's few LUT levels: operands derived in one cycle (the divider's alignment, e, E)
are registered before the shifts that use them.
"""

from enum import IntEnum

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import MiscFunc

from .arith import SeqDivider, SeqSqrt, bit_length, rshr_var

RECIP_BITS = 35        # softmax: 2 e 2^16 + Z < 2^35, so one correction step makes the quotient exact
MAX_BITS = 48          # the max register: |x 2^8 - mu| < 2^40, softmax's empty-row max -2^40
SUM_BITS = 64


class Sweep(IntEnum):
    """What one sweep over a row does (a function makes one to four sweeps of each row; the
    name `Pass` is kept for compiler passes)."""
    OUT = 0      # compute and emit the results
    MEAN = 1     # sum x
    AMAX = 2     # max |X| (X = x, or x 2^8 - mu for LayerNorm)
    SUMSQ = 3    # sum Xs^2
    SMAX = 4     # max over the visible keys
    SSUM = 5     # sum of exp over the visible keys


SWEEPS: dict[MiscFunc, tuple[Sweep, ...]] = {
    MiscFunc.ADD: (Sweep.OUT,), MiscFunc.MUL: (Sweep.OUT,), MiscFunc.RELU: (Sweep.OUT,),
    MiscFunc.SILU: (Sweep.OUT,), MiscFunc.GELU: (Sweep.OUT,), MiscFunc.GELU_TANH: (Sweep.OUT,),
    MiscFunc.ROPE: (Sweep.OUT,), MiscFunc.SOFTCAP: (Sweep.OUT,),
    MiscFunc.QUANT_ROWS: (Sweep.AMAX, Sweep.OUT),
    MiscFunc.RMSNORM: (Sweep.AMAX, Sweep.SUMSQ, Sweep.OUT),
    MiscFunc.LAYERNORM: (Sweep.MEAN, Sweep.AMAX, Sweep.SUMSQ, Sweep.OUT),
    MiscFunc.SOFTMAX: (Sweep.SMAX, Sweep.SSUM, Sweep.OUT),
}


# Quotient bits each division needs (|n| < d 2^bits, `SeqDivider.q_bits`), from the operands' ranges
# (x, weights int32; |Xs| <= 2^23 after the norm shift; a = max |x| <= 2^31 for QUANT_ROWS):
Q_MEAN = 40        # div_round(sum(x) 2^8, D): |mean x| <= 2^31, so |q| <= 2^39
Q_INV = 40         # div_round(127 2^32, a), a >= 1: q < 2^39
Q_M = 16           # div_round(scaled, 127), scaled <= 2^21: q < 2^15 (its own divider, beside inv's)
M_N_BITS = 24      # its numerator 2 scaled + 127 < 2^23
Q_MS = 48          # div_round(sum Xs^2, D), Xs^2 <= 2^46: q <= 2^46
Q_R = 48           # div_round(2^46, S), S >= 1: q <= 2^46
Q_RECIP = 36       # 2^35 // 2Z, Z >= 1: q < 2^34
RADIX_BITS = 2     # quotient bits a cycle
SQRT_BITS = 62     # isqrt(ms + E)


def _div(q_bits: int) -> int:
    """Cycles of one division in RowScalars: its start cycle (the state before), then `busy`."""
    return 1 + SeqDivider.steps(q_bits, RADIX_BITS)


# cycles RowScalars is busy after a pass (the worst case: a non-zero row); the last step's result
# registers in the cycle `busy` drops (-1)
SQRT_CYCLES = 1 + -(-SQRT_BITS // (2 * RADIX_BITS))    # 2 radicand bits a result bit
SCALAR_CYCLES = {Sweep.MEAN: _div(Q_MEAN) - 1, Sweep.AMAX: 0,
                 Sweep.SUMSQ: _div(Q_MS) + SQRT_CYCLES + _div(Q_R) - 1, Sweep.SMAX: 0, Sweep.SSUM: _div(Q_RECIP) - 1}
QUANT_SCALAR_CYCLES = _div(Q_INV) - 1     # QUANT_ROWS' AMAX: inv, and m beside it


class RowScalars(wiring.Component):
    """Pulse `start` after a reduction pass with `kind`, `func` and the reductions set (held while
    `busy`); the scalars hold from the cycle after `busy` is low again until the next start."""

    def __init__(self):
        super().__init__({
            "start": In(1), "kind": In(3), "func": In(5), "cols": In(16),
            "eps": In(signed(32)), "acc_sum": In(signed(SUM_BITS)), "acc_max": In(signed(MAX_BITS)),
            "busy": Out(1),
            "mu": Out(signed(57)),                              # LayerNorm mean, Q.24
            "s_right": Out(1), "s_r1": Out(unsigned(5)), "s_l": Out(unsigned(5)),  # norm shift s
            "r": Out(unsigned(47)),                             # norm 1 / rms
            "inv": Out(unsigned(40)), "m": Out(unsigned(15)), "e": Out(signed(7)),  # QUANT_ROWS
            "recip": Out(unsigned(RECIP_BITS)), "zzero": Out(1),  # softmax 2^35 // 2Z, Z == 0
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.div = div = SeqDivider(64, 34, RADIX_BITS)
        m.submodules.div_m = div_m = SeqDivider(M_N_BITS, 8, RADIX_BITS, signed_n=False)  # QUANT_ROWS' m, beside inv
        m.submodules.sqrt = sqrt = SeqSqrt(SQRT_BITS, RADIX_BITS)
        is_ln = self.func == MiscFunc.LAYERNORM
        cols = self.cols

        a = self.acc_max.as_unsigned()[:42]
        bl = bit_length(m, a, 42)
        s = Signal(signed(7), reset_less=True)
        s_new = Signal(signed(7))
        m.d.comb += s_new.eq(Mux(is_ln, Mux(bl > 15, bl - 23, -8), Mux(bl > 7, bl - 23, -16)))
        # QUANT_ROWS: e = 21 - bit_length(a), scaled = rshr(a, -e); m's division starts a cycle after
        # inv's, from the registered e (the encoder and the shift in one cycle are too deep)
        e, e_r = Signal(signed(7)), Signal(signed(7), reset_less=True)
        a_r = Signal(42, reset_less=True)
        m_pending = Signal()
        m.d.comb += e.eq(21 - bl)
        scaled = rshr_var(a_r, e_r < 0, (-e_r - 1).as_unsigned()[:5], e_r.as_unsigned()[:5])
        # norms: E = rshr(eps32, 2s - 2(F - 16)), t in [-32, 18]
        t = Signal(signed(8))
        m.d.comb += t.eq(2 * s - Mux(is_ln, 16, 0))
        # from s, set an AMAX pass before the sqrt needs it: registered twice, the shift from t's register
        t_r, big_e = Signal(signed(8), reset_less=True), Signal(signed(SQRT_BITS + 1), reset_less=True)
        m.d.sync += [t_r.eq(t), big_e.eq(rshr_var(self.eps, t_r > 0, (t_r - 1).as_unsigned()[:5],
                                                  (-t_r).as_unsigned()[:6]))]
        s_max = Signal(unsigned(31))
        m.d.comb += s_max.eq(Mux(sqrt.r == 0, 1, sqrt.r))

        def divide(n, d, q_bits, state):
            m.d.comb += [div.start.eq(1), div.n.eq(n), div.d.eq(d), div.q_bits.eq(q_bits)]
            m.next = state

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    with m.Switch(self.kind):
                        with m.Case(Sweep.MEAN):
                            divide(2 * (self.acc_sum << 8) + cols, 2 * cols, Q_MEAN, "MEAN")
                        with m.Case(Sweep.AMAX):
                            with m.If(self.func == MiscFunc.QUANT_ROWS):
                                m.d.sync += [self.inv.eq(0), self.m.eq(0), self.e.eq(0)]
                                with m.If(a != 0):
                                    divide((2 * 127 << 32) + a, 2 * a, Q_INV, "INV")
                                    m.d.sync += [e_r.eq(e), a_r.eq(a), m_pending.eq(1)]
                            with m.Else():
                                m.d.sync += [s.eq(s_new), self.s_right.eq(s_new > 0),
                                             self.s_r1.eq(s_new - 1), self.s_l.eq(-s_new)]
                        with m.Case(Sweep.SUMSQ):
                            divide(2 * self.acc_sum + cols, 2 * cols, Q_MS, "MS")
                        with m.Case(Sweep.SSUM):
                            m.d.sync += self.zzero.eq(self.acc_sum == 0)
                            with m.If(self.acc_sum != 0):
                                divide(1 << RECIP_BITS, 2 * self.acc_sum, Q_RECIP, "RECIP")
            with m.State("MEAN"):
                with m.If(~div.busy):
                    m.d.sync += self.mu.eq(div.q)
                    m.next = "IDLE"
            with m.State("INV"):                 # m's division is the shorter
                with m.If(m_pending):
                    m.d.comb += [div_m.start.eq(1), div_m.n.eq(2 * scaled + 127), div_m.d.eq(254),
                                 div_m.q_bits.eq(Q_M)]
                    m.d.sync += m_pending.eq(0)
                with m.If(~div.busy):
                    m.d.sync += [self.inv.eq(div.q), self.e.eq(e_r), self.m.eq(div_m.q)]
                    m.next = "IDLE"
            with m.State("MS"):
                with m.If(~div.busy):
                    m.d.comb += [sqrt.start.eq(1), sqrt.x.eq(div.q + big_e)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                with m.If(~sqrt.busy):
                    divide((1 << 47) + s_max, 2 * s_max, Q_R, "R")
            with m.State("R"):
                with m.If(~div.busy):
                    m.d.sync += self.r.eq(div.q)
                    m.next = "IDLE"
            with m.State("RECIP"):
                with m.If(~div.busy):
                    m.d.sync += self.recip.eq(div.q)
                    m.next = "IDLE"
            # the last division's quotient is registered in the cycle busy drops: the SFU reads the
            # scalars from the cycle after its first beat of the next pass is taken
            last = fsm.ongoing("MEAN") | fsm.ongoing("INV") | fsm.ongoing("R") | fsm.ongoing("RECIP")
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") & ~(last & ~div.busy))
        return m
