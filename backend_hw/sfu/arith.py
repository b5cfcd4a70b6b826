"""Integer building blocks of the special-function unit, bit-exact with `llmfab.ir.fixed_point`.

Combinational helpers (`sat`, `rshr`, `rshr_var`, `bit_length`) and the two sequential units the
SFU runs once per row: `SeqDivider` (floor division, `radix_bits` quotient bits a cycle, only as
many as the quotient needs) and `SeqSqrt` (`isqrt`, `radix_bits` result bits a cycle). Per-row
scalars are few, so a few-bits-a-cycle unit costs little next to a long row and saves a wide
combinational divider; on short rows (decode) its cycles are what the row waits for.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
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


def _try_sub(a, b, bits: int):
    """(a - b if a >= b else a, a >= b), the test read off the subtraction's borrow: one carry
    chain and a select a step, where a compare beside the subtraction doubles the levels."""
    diff = Cat(a, Const(0, 1)).as_unsigned() - b
    fits = ~diff[len(a)]
    return Mux(fits, diff[:bits], a[:bits]), fits


class SeqDivider(wiring.Component):
    """q = floor(n / d) for a signed `n` and a positive `d`, restoring division, `radix_bits`
    quotient bits a cycle (that many restoring steps chained in one cycle).

    Pulse `start` with `n`, `d` and `q_bits` set, where |n| < d 2^q_bits (the quotient's magnitude
    fits in `q_bits` bits; `q_bits` defaults to `n_bits`, always enough): only those quotient bits
    are computed, the numerator's bits above them go straight into the remainder. `busy` is high
    for 1 + `ceil(q_bits / radix_bits)` cycles (the first aligns the registered operands: the
    variable shifts stay off the caller's paths), after which `q` holds the quotient until the
    next start. A zero divisor, or a `q_bits` too small for the operands, gives garbage. With
    `signed_n=False` the numerator is unsigned (no absolute value in front of the first register).
    """

    def __init__(self, n_bits: int, d_bits: int, radix_bits: int = 1, *, signed_n: bool = True):
        for name, v in (("n_bits", n_bits), ("d_bits", d_bits)):
            if not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an integer of at least 2, not {v!r}")
        if not isinstance(radix_bits, int) or radix_bits < 1:
            raise ValueError(f"radix_bits must be a positive integer, not {radix_bits!r}")
        self.n_bits, self.d_bits, self.radix_bits, self.signed_n = n_bits, d_bits, radix_bits, signed_n
        super().__init__({
            "start": In(1), "n": In(signed(n_bits) if signed_n else unsigned(n_bits)), "d": In(unsigned(d_bits)),
            "q_bits": In(range(n_bits + 1), init=n_bits),
            "busy": Out(1), "q": Out(signed(n_bits + 1)),
        })

    def cycles(self, q_bits: int) -> int:
        """Cycles `busy` is high for a division with `q_bits` quotient bits."""
        return self.steps(q_bits, self.radix_bits)

    @staticmethod
    def steps(q_bits: int, radix_bits: int) -> int:
        """`cycles` without building the divider (for cycle formulas): the alignment, then the steps."""
        return 1 + -(-q_bits // radix_bits)

    def elaborate(self, platform):
        m = Module()
        R = self.radix_bits
        nb = -(-self.n_bits // R) * R                # whole steps: the quotient bits, rounded up
        num = Signal(nb, reset_less=True)          # numerator bits shifting out on top, quotient bits in below
        rem = Signal(self.d_bits + 1, reset_less=True)
        den = Signal(self.d_bits, reset_less=True)
        neg = Signal(reset_less=True)
        count = Signal(range(nb // R + 1))
        mag = Signal(nb, reset_less=True)          # |n| and the quotient bits asked, registered
        q_bits = Signal.like(self.q_bits, reset_less=True)
        align = Signal()
        m.d.comb += self.busy.eq(align | (count != 0))

        with m.If(self.start):
            m.d.sync += [mag.eq(abs(self.n) if self.signed_n else self.n), q_bits.eq(self.q_bits),
                         den.eq(self.d), neg.eq(self.n < 0 if self.signed_n else 0), align.eq(1)]
        with m.Elif(align):
            # steps, k and the shift up, a table of the registered q_bits (no adders before the shifts)
            steps, k, up = Signal(range(nb // R + 1)), Signal(range(nb + 1)), Signal(range(nb + 1))
            with m.Switch(q_bits):
                for q in range(self.n_bits + 1):
                    with m.Case(q):
                        st = -(-q // R)
                        m.d.comb += [steps.eq(st), k.eq(st * R), up.eq(nb - st * R)]
            m.d.sync += [num.eq(mag << up), rem.eq(mag >> k), count.eq(steps), align.eq(0)]
        with m.Elif(count != 0):                     # after the alignment
            r, q = rem, num
            for _ in range(R):
                trial = Cat(q[-1], r)                # (r << 1) | the next numerator bit
                r, fits = _try_sub(trial, den, self.d_bits + 1)
                q = Cat(fits, q[:-1])
            m.d.sync += [rem.eq(r), num.eq(q), count.eq(count - 1)]
        # floor for a negative numerator: -ceil(|n| / d)
        m.d.comb += self.q.eq(Mux(neg, -num - (rem != 0), num))
        return m


class SeqSqrt(wiring.Component):
    """r = isqrt(x) = floor(sqrt(x)) of an unsigned `x`, digit by digit from the top (shift and
    subtract, no multiplier), `radix_bits` result bits a cycle.

    Pulse `start` with `x` set; `busy` is high for `ceil(x_bits / (2 radix_bits))` cycles, then `r`
    holds."""

    def __init__(self, x_bits: int, radix_bits: int = 1):
        if not isinstance(x_bits, int) or x_bits < 2:
            raise ValueError(f"x_bits must be an integer of at least 2, not {x_bits!r}")
        if not isinstance(radix_bits, int) or radix_bits < 1:
            raise ValueError(f"radix_bits must be a positive integer, not {radix_bits!r}")
        self.x_bits, self.radix_bits = x_bits, radix_bits
        self.r_bits = (x_bits + 1) // 2
        super().__init__({"start": In(1), "x": In(unsigned(x_bits)), "busy": Out(1),
                          "r": Out(unsigned(self.r_bits))})

    def cycles(self) -> int:
        return -(-self.x_bits // (2 * self.radix_bits))

    def elaborate(self, platform):
        m = Module()
        R = self.radix_bits
        steps = self.cycles()
        rb = steps * R                             # result bits, whole cycles (leading zeros)
        x = Signal(2 * rb, reset_less=True)        # radicand bits left, the next pair on top
        rem = Signal(rb + 2, reset_less=True)      # x's bits so far - root^2 <= 2 root
        root = Signal(rb, reset_less=True)
        count = Signal(range(steps + 1))
        m.d.comb += [self.busy.eq(count != 0), self.r.eq(root)]
        with m.If(self.start):
            m.d.sync += [x.eq(self.x), rem.eq(0), root.eq(0), count.eq(steps)]
        with m.Elif(count != 0):
            xv, r, q = x, rem, root
            for _ in range(R):
                cur = Cat(xv[-2:], r)                # (rem << 2) | the next two radicand bits
                trial = Cat(Const(1, 2), q)          # (root << 2) | 1
                r, fits = _try_sub(cur, trial, rb + 2)
                q = Cat(fits, q[:-1])
                xv = Cat(Const(0, 2), xv[:-2])
            m.d.sync += [x.eq(xv), rem.eq(r), root.eq(q), count.eq(count - 1)]
        return m


# DSP48E2 multiplier: 27 x 18 bits signed. Unsigned limbs of 26 and 17 bits fit it with their sign bit.
A_LIMB, B_LIMB = 26, 17


def _limbs(v, width: int, lo: int) -> list[tuple[object, int]]:
    """`v` (signed, `width` bits) as unsigned `lo`-bit limbs and a signed top limb: (limb, offset)."""
    out, off = [], 0
    while width - off > lo + 1:
        out.append((v[off:off + lo], off))
        off += lo
    out.append((v[off:width].as_signed(), off))
    return out


def limb_mul(m: Module, a, a_bits: int, b, b_bits: int, name: str) -> Signal:
    """a * b for signed `a` (a_bits) and `b` (b_bits) in two registered stages: the DSP-sized
    partial products (each one DSP with its output register), then their sum. Splitting by hand
    keeps every DSP registered and the sum in fabric carry chains, where a wide `*` would become
    a chain of unregistered DSPs (one logic level each). The result is valid two cycles after
    the operands."""
    parts = []
    for i, (ai, ao) in enumerate(_limbs(a, a_bits, A_LIMB)):
        for j, (bj, bo) in enumerate(_limbs(b, b_bits, B_LIMB)):
            p = Signal(signed(len(ai) + len(bj) + 1), name=f"{name}_pp{i}{j}", reset_less=True)
            m.d.sync += p.eq(ai * bj)
            parts.append(p if ao + bo == 0 else p << (ao + bo))
    out = Signal(signed(a_bits + b_bits), name=name, reset_less=True)
    total, _ = tree(m, parts, lambda x, y: x + y, len(parts), name)   # no register inside: `out` is it
    m.d.sync += out.eq(total)
    return out


def tree(m: Module, terms, op, levels_per_stage: int, name: str):
    """Reduce `terms` with `op` in a balanced tree with a register after every `levels_per_stage`
    levels but the last group (which the caller's accumulator follows). Returns (value, registers)."""
    terms, level, regs = list(terms), 0, 0
    while len(terms) > 1:
        terms = [op(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        level += 1
        if level % levels_per_stage == 0 and len(terms) > 1:
            staged = []
            for k, t in enumerate(terms):
                s = Signal(t.shape(), name=f"{name}_r{regs}_{k}", reset_less=True)
                m.d.sync += s.eq(t)
                staged.append(s)
            terms, regs = staged, regs + 1
    return terms[0], regs


def tree_registers(n: int, levels_per_stage: int) -> int:
    """The registers `tree` puts in a reduction of `n` terms (for cycle formulas)."""
    levels = max(n - 1, 0).bit_length()
    return max(levels - 1, 0) // levels_per_stage
