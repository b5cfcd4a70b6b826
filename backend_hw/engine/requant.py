"""The requantizer at the end of the matrix engine: group sums in, one int32 Q.16 output per row.

It computes docs/integer.md "Linear / LM head" steps 3 and 4 for one output row (one `n`, one
token row `r`), bit for bit as `llmfab.ir.integer.int_linear` and the simulator's `_matrix`:

    acc = sum_j p[j] * mant[j]                     (exact, signed `acc_bits`)
    y   = sat(rshr(acc * mx, shift + ex), 32)      (`_shr_sat`: round half up, any shift)
    y   = sat(y + bias, 32)        if has_bias
    y   = sat(y + prev, 32)        if accumulate  (the fused residual add: prev is the old output)

Widths, from the contract's bounds (K <= 2^17 = `MAX_K`): |p| < 2^31 (int32), mant < 2^15,
|acc| < 2^14 * K * 2^15 <= 2^46 (so 47 signed bits; `acc_bits` defaults to 48), mx < 2^15,
|acc * mx| < 2^61; shift is int8 and ex int8 (the activation record's byte), so the total shift
is a signed 9-bit value in [-256, 254]. Every shift is exact: a right shift of s >= 1 is
`((x >> (s - 1)) + 1) >> 1` (= floor((x + 2^(s-1)) / 2^s) without a wider adder), a left shift
clamps x to +-2^32 first (anything larger saturates whatever the shift) and shifts by at most 32.

Pipelined, one group beat per cycle, no backpressure (the engine stalls its own input): a beat
with `last` set leaves as `o.payload` `LATENCY` cycles after it enters. The row's scale fields
(`shift`, `ex`, `mx`, `bias`, `has_bias`, `prev`, `accumulate`) are read on the `last` beat only.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.quant import MANT_BITS

from ..protocol.valid import Valid

P_BITS = 32          # group partial sums: |P| <= 127 * 127 * K < 2^31
MX_BITS = 15         # activation scale mantissa m < 2^15 (docs/integer.md)
OUT_BITS = 32
MIN_ACC_BITS = 47    # |acc| < 2^46 for K <= 2^17


class RowScale(data.Struct):
    """What turns a row's accumulator into its output (read on the row's `last` beat)."""
    shift: signed(8)          # the weight row's shift[n]
    ex: signed(8)             # the activation row's exponent e_x
    mx: unsigned(MX_BITS)     # the activation row's mantissa m_x
    bias: signed(OUT_BITS)
    has_bias: unsigned(1)
    prev: signed(OUT_BITS)    # the output's old value, added when `accumulate`
    accumulate: unsigned(1)


class GroupBeat(data.Struct):
    """One group's partial sum and mantissa."""
    p: signed(P_BITS)
    mant: unsigned(MANT_BITS)
    last: unsigned(1)         # the row's last group: emit its output
    row: RowScale


def _sat(v, bits: int = OUT_BITS):
    lim = (1 << (bits - 1)) - 1
    return Mux(v > lim, lim, Mux(v < -lim, -lim, v))


class Requantizer(wiring.Component):
    """Group sums and mantissas in, saturated int32 rows out (module docstring)."""

    LATENCY = 7  # cycles from the `last` beat in to its output valid

    def __init__(self, *, acc_bits: int = 48):
        if not isinstance(acc_bits, int) or isinstance(acc_bits, bool) or not MIN_ACC_BITS <= acc_bits <= 64:
            raise ValueError(f"acc_bits must be an integer in {MIN_ACC_BITS}..64 (the contract needs "
                             f"{MIN_ACC_BITS}), not {acc_bits!r}")
        self.acc_bits = acc_bits
        super().__init__({
            "i": In(Valid(GroupBeat)),
            "o": Out(Valid(signed(OUT_BITS))),
        })

    @property
    def latency(self) -> int:
        return self.LATENCY

    def elaborate(self, platform) -> Module:
        m = Module()
        a = self.acc_bits
        xw = a + MX_BITS  # |acc * mx| < 2^(a - 1 + 15)

        def carry(src, shape, name):
            r = Signal(shape, name=name, reset_less=True)
            m.d.sync += r.eq(src)
            return r

        beat = self.i.payload
        # 1: the group product (a DSP multiplier with its output register)
        v1 = Signal()
        m.d.sync += v1.eq(self.i.valid)
        prod = Signal(signed(P_BITS + MANT_BITS), reset_less=True)
        m.d.sync += prod.eq(beat.p * beat.mant)
        b1, l1 = carry(beat.row, RowScale, "b1"), carry(beat.last, 1, "l1")

        # 2: accumulate; on the row's last group the total moves on and the accumulator clears
        acc = Signal(signed(a))
        total = Signal(signed(a), reset_less=True)
        v2 = Signal()
        s2 = Signal(signed(9), reset_less=True)
        m.d.sync += v2.eq(v1 & l1)
        with m.If(v1):
            m.d.sync += acc.eq(Mux(l1, 0, acc + prod))
        m.d.sync += [total.eq(acc + prod), s2.eq(b1.shift + b1.ex)]
        b2 = carry(b1, RowScale, "b2")

        # 3: times the activation mantissa; the shift amounts decoded beside it (off the shifter's path)
        v3 = Signal()
        x = Signal(signed(xw), reset_less=True)
        m.d.sync += [v3.eq(v2), x.eq(total * b2.mx)]
        b3 = carry(b2, RowScale, "b3")
        right3 = carry(s2 > 0, 1, "right3")
        rs1 = carry((Mux(s2 > xw, xw, s2) - 1)[:7], 7, "rs1")   # beyond xw bits every shift gives 0 / -1
        k3 = carry(Mux(-s2 > 32, 32, -s2)[:6], 6, "k3")

        # 4: the barrel shift; right shifts keep one extra bit for rounding
        v4 = Signal()
        right = Signal(reset_less=True)
        half = Signal(signed(xw), reset_less=True)       # x >> (s - 1), s >= 1
        left = Signal(signed(34 + 32), reset_less=True)  # clamp(x, +-2^32) << min(-s, 32)
        xc = Mux(x > (1 << 32), 1 << 32, Mux(x < -(1 << 32), -(1 << 32), x))
        m.d.sync += [v4.eq(v3), right.eq(right3), half.eq(x >> rs1), left.eq(xc.as_signed() << k3)]
        b4 = carry(b3, RowScale, "b4")

        # 5: round half up and saturate to int32
        v5 = Signal()
        y5 = Signal(signed(OUT_BITS), reset_less=True)
        rounded = (half + 1) >> 1
        m.d.sync += [v5.eq(v4), y5.eq(Mux(right, _sat(rounded), _sat(left)))]
        b5 = carry(b4, RowScale, "b5")

        # 6: bias, 7: the fused residual add (two saturations, in this order, as the contract)
        v6 = Signal()
        y6 = Signal(signed(OUT_BITS), reset_less=True)
        m.d.sync += [v6.eq(v5), y6.eq(Mux(b5.has_bias, _sat(y5 + b5.bias), y5))]
        b6 = carry(b5, RowScale, "b6")
        v7 = Signal()
        y7 = Signal(signed(OUT_BITS), reset_less=True)
        m.d.sync += [v7.eq(v6), y7.eq(Mux(b6.accumulate, _sat(y6 + b6.prev), y6))]
        m.d.comb += [self.o.valid.eq(v7), self.o.payload.eq(y7)]
        return m
