"""Integer building blocks of the special-function unit, bit-exact with `llmfab.ir.fixed_point`.

Combinational helpers (`sat`, `rshr`, `rshr_var`, `bit_length`) and the two sequential units the
SFU runs once per row: `SeqDivider` (floor division, one quotient bit per cycle) and `SeqSqrt`
(`isqrt`, one result bit per cycle). Per-row scalars are few, so a bit-serial unit costs nothing in
throughput next to a row of thousands of elements and saves a wide combinational divider.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


def sat(v, bits: int = 32):
    """Symmetric saturation to [-(2^(bits-1) - 1), 2^(bits-1) - 1] (`fixed_point.sat`)."""
    lim = (1 << (bits - 1)) - 1
    return Mux(v > lim, lim, Mux(v < -lim, -lim, v))


def rshr(v, s: int):
    """Round-half-up shift right by a constant s >= 1 (`fixed_point.rshr`)."""
    return (v + (1 << (s - 1))) >> s


def rshr_var(v, right, sr1, sl):
    """rshr(v, s) for a run-time s: `right` is s > 0, `sr1` = s - 1 then, else `sl` = -s.
    floor((v + 2^(s-1)) / 2^s) = (floor(v / 2^(s-1)) + 1) >> 1, so no wide rounding constant."""
    return Mux(right, ((v >> sr1) + 1) >> 1, v << sl)


def bit_length(m: Module, v, width: int) -> Signal:
    """Number of bits of the non-negative `v` (0 for 0): a priority encoder, the top bit wins."""
    bl = Signal(range(width + 1))
    for i in range(width):
        with m.If(v[i]):
            m.d.comb += bl.eq(i + 1)
    return bl


class SeqDivider(wiring.Component):
    """q = floor(n / d) for a signed `n` and a positive `d`, restoring division.

    Pulse `start` with `n` and `d` set; `busy` is high for `n_bits` cycles, after which `q` holds
    the quotient until the next start. A zero divisor gives garbage (callers never divide by 0).
    """

    def __init__(self, n_bits: int, d_bits: int):
        for name, v in (("n_bits", n_bits), ("d_bits", d_bits)):
            if not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an integer of at least 2, not {v!r}")
        self.n_bits, self.d_bits = n_bits, d_bits
        super().__init__({
            "start": In(1), "n": In(signed(n_bits)), "d": In(unsigned(d_bits)),
            "busy": Out(1), "q": Out(signed(n_bits + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        nb = self.n_bits
        num = Signal(nb, reset_less=True)          # |n| shifting out on top, quotient bits in below
        rem = Signal(self.d_bits + 1, reset_less=True)
        den = Signal(self.d_bits, reset_less=True)
        neg = Signal(reset_less=True)
        count = Signal(range(nb + 1))
        m.d.comb += self.busy.eq(count != 0)

        trial = Signal(self.d_bits + 2)
        m.d.comb += trial.eq((rem << 1) | num[-1])
        with m.If(self.start):
            m.d.sync += [num.eq(abs(self.n)), rem.eq(0), den.eq(self.d), neg.eq(self.n < 0),
                         count.eq(nb)]
        with m.Elif(count != 0):
            fits = trial >= den
            m.d.sync += [rem.eq(Mux(fits, trial - den, trial)), num.eq((num << 1) | fits),
                         count.eq(count - 1)]
        # floor for a negative numerator: -ceil(|n| / d)
        m.d.comb += self.q.eq(Mux(neg, -num - (rem != 0), num))
        return m


class SeqSqrt(wiring.Component):
    """r = isqrt(x) = floor(sqrt(x)) of an unsigned `x`, one result bit per cycle from the top.

    Pulse `start` with `x` set; `busy` is high for `ceil(x_bits / 2)` cycles, then `r` holds."""

    def __init__(self, x_bits: int):
        if not isinstance(x_bits, int) or x_bits < 2:
            raise ValueError(f"x_bits must be an integer of at least 2, not {x_bits!r}")
        self.x_bits = x_bits
        self.r_bits = (x_bits + 1) // 2
        super().__init__({"start": In(1), "x": In(unsigned(x_bits)), "busy": Out(1),
                          "r": Out(unsigned(self.r_bits))})

    def elaborate(self, platform):
        m = Module()
        x = Signal(self.x_bits, reset_less=True)
        bit = Signal(self.r_bits)                  # one-hot: the result bit being tried
        m.d.comb += self.busy.eq(bit != 0)
        with m.If(self.start):
            m.d.sync += [x.eq(self.x), self.r.eq(0), bit.eq(1 << (self.r_bits - 1))]
        with m.Elif(bit != 0):
            t = self.r | bit
            with m.If(t * t <= x):
                m.d.sync += self.r.eq(t)
            m.d.sync += bit.eq(bit >> 1)
        return m
