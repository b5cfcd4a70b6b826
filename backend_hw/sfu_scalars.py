"""Per-row scalars of the SFU's multi-pass functions, computed between passes over a row.

Each MISC function streams its row through the SFU once per entry of `PASSES[func]`; after each
reduction pass `RowScalars` turns the pass's reduction (a sum or a max) into the scalars the next
pass needs, exactly as ir/integer.py does:

| after pass | scalars                                                                  | kernel |
|------------|---------------------------------------------------------------------------|--------|
| MEAN       | mu = div_round(sum(x) 2^8, D)                                              | int_layer_norm |
| AMAX       | norms: s = max(bit_length(a) - 23, F - 32); QUANT_ROWS: inv, m, e of a     | _normalize, quantize_activation |
| SUMSQ      | ms = div_round(sum Xs^2, D), S = isqrt(ms + E), r = div_round(2^46, max(S, 1)) | _normalize |
| SSUM       | R = floor(2^35 / 2Z), the reciprocal that makes div_round(e 2^16, Z) one multiply | int_softmax_rows |

Every division is `SeqDivider` (64 cycles) and the root `SeqSqrt` (31 cycles), so a norm row spends
~230 cycles here, a quantized row ~130, a softmax row ~65.
"""

from enum import IntEnum

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import MiscFunc

from .sfu_arith import SeqDivider, SeqSqrt, bit_length, rshr_var

RECIP_BITS = 35        # softmax: 2 e 2^16 + Z < 2^35, so one correction step makes the quotient exact
MAX_BITS = 48          # the max register: |x 2^8 - mu| < 2^40, softmax's empty-row max -2^40
SUM_BITS = 64


class Pass(IntEnum):
    """What one pass over a row does."""
    OUT = 0      # compute and emit the results
    MEAN = 1     # sum x
    AMAX = 2     # max |X| (X = x, or x 2^8 - mu for LayerNorm)
    SUMSQ = 3    # sum Xs^2
    SMAX = 4     # max over the visible keys
    SSUM = 5     # sum of exp over the visible keys


PASSES: dict[MiscFunc, tuple[Pass, ...]] = {
    MiscFunc.ADD: (Pass.OUT,), MiscFunc.MUL: (Pass.OUT,), MiscFunc.RELU: (Pass.OUT,),
    MiscFunc.SILU: (Pass.OUT,), MiscFunc.GELU: (Pass.OUT,), MiscFunc.GELU_TANH: (Pass.OUT,),
    MiscFunc.ROPE: (Pass.OUT,),
    MiscFunc.QUANT_ROWS: (Pass.AMAX, Pass.OUT),
    MiscFunc.RMSNORM: (Pass.AMAX, Pass.SUMSQ, Pass.OUT),
    MiscFunc.LAYERNORM: (Pass.MEAN, Pass.AMAX, Pass.SUMSQ, Pass.OUT),
    MiscFunc.SOFTMAX: (Pass.SMAX, Pass.SSUM, Pass.OUT),
}


# cycles RowScalars is busy after a pass (the worst case: a non-zero row): a division is 65, the root 32
SCALAR_CYCLES = {Pass.MEAN: 65, Pass.AMAX: 0, Pass.SUMSQ: 65 + 32 + 65, Pass.SMAX: 0, Pass.SSUM: 65}
QUANT_SCALAR_CYCLES = 65 + 65     # QUANT_ROWS' AMAX: inv, then m


class RowScalars(wiring.Component):
    """Pulse `start` after a reduction pass with `kind`, `func` and the reductions set (held while
    `busy`); the scalars hold from the cycle `busy` is low again until the next start."""

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
        m.submodules.div = div = SeqDivider(64, 34)
        m.submodules.sqrt = sqrt = SeqSqrt(62)
        is_ln = self.func == MiscFunc.LAYERNORM
        cols = self.cols

        a = self.acc_max.as_unsigned()[:42]
        bl = bit_length(m, a, 42)
        s = Signal(signed(7), reset_less=True)
        s_new = Signal(signed(7))
        m.d.comb += s_new.eq(Mux(is_ln, Mux(bl > 15, bl - 23, -8), Mux(bl > 7, bl - 23, -16)))
        # QUANT_ROWS: e = 21 - bit_length(a), scaled = rshr(a, -e)
        e = Signal(signed(7))
        m.d.comb += e.eq(21 - bl)
        scaled = rshr_var(a, e < 0, (-e - 1).as_unsigned()[:5], e.as_unsigned()[:5])
        # norms: E = rshr(eps32, 2s - 2(F - 16)), t in [-32, 18]
        t = Signal(signed(8))
        m.d.comb += t.eq(2 * s - Mux(is_ln, 16, 0))
        big_e = rshr_var(self.eps, t > 0, (t - 1).as_unsigned()[:5], (-t).as_unsigned()[:6])
        s_max = Signal(unsigned(31))
        m.d.comb += s_max.eq(Mux(sqrt.r == 0, 1, sqrt.r))

        def divide(n, d, state):
            m.d.comb += [div.start.eq(1), div.n.eq(n), div.d.eq(d)]
            m.next = state

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    with m.Switch(self.kind):
                        with m.Case(Pass.MEAN):
                            divide(2 * (self.acc_sum << 8) + cols, 2 * cols, "MEAN")
                        with m.Case(Pass.AMAX):
                            with m.If(self.func == MiscFunc.QUANT_ROWS):
                                m.d.sync += [self.inv.eq(0), self.m.eq(0), self.e.eq(0)]
                                with m.If(a != 0):
                                    divide((2 * 127 << 32) + a, 2 * a, "INV")
                            with m.Else():
                                m.d.sync += [s.eq(s_new), self.s_right.eq(s_new > 0),
                                             self.s_r1.eq(s_new - 1), self.s_l.eq(-s_new)]
                        with m.Case(Pass.SUMSQ):
                            divide(2 * self.acc_sum + cols, 2 * cols, "MS")
                        with m.Case(Pass.SSUM):
                            m.d.sync += self.zzero.eq(self.acc_sum == 0)
                            with m.If(self.acc_sum != 0):
                                divide(1 << RECIP_BITS, 2 * self.acc_sum, "RECIP")
            with m.State("MEAN"):
                with m.If(~div.busy):
                    m.d.sync += self.mu.eq(div.q)
                    m.next = "IDLE"
            with m.State("INV"):
                with m.If(~div.busy):
                    m.d.sync += [self.inv.eq(div.q), self.e.eq(e)]
                    divide(2 * scaled + 127, 254, "M")
            with m.State("M"):
                with m.If(~div.busy):
                    m.d.sync += self.m.eq(div.q)
                    m.next = "IDLE"
            with m.State("MS"):
                with m.If(~div.busy):
                    m.d.comb += [sqrt.start.eq(1), sqrt.x.eq(div.q + big_e)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                with m.If(~sqrt.busy):
                    divide((1 << 47) + s_max, 2 * s_max, "R")
            with m.State("R"):
                with m.If(~div.busy):
                    m.d.sync += self.r.eq(div.q)
                    m.next = "IDLE"
            with m.State("RECIP"):
                with m.If(~div.busy):
                    m.d.sync += self.recip.eq(div.q)
                    m.next = "IDLE"
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
