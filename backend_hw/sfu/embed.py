"""EMBED's dequantization lanes (docs/isa.md EMBED, `simulator.functional._misc`):
`Y[k] = sat(rshr(code[k] * mant, shift - 16), 32)` for the `lanes` codes of one beat, all in one
scale group (the unit ends beats at group boundaries, so one mantissa serves the beat).

Combinational: `codes` holds the beat's packed code bytes, the first code at bit `phase`; `bits`
is the code width (2, 3, 4 or 8; any other width gives zeros).
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arith import rshr_var, sat

__all__ = ["CODE_BITS", "EmbedLanes"]

CODE_BITS = (2, 3, 4, 8)


class EmbedLanes(wiring.Component):
    def __init__(self, lanes: int, code_bytes: int):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if code_bytes * 8 < lanes * 8 + 7:
            raise ValueError(f"code_bytes must hold {lanes} 8-bit codes after a 7-bit phase, not {code_bytes}")
        self.lanes = lanes
        super().__init__({"codes": In(8 * code_bytes), "phase": In(3), "bits": In(4), "mant": In(16),
                          "shift": In(signed(8)), "y": Out(data.ArrayLayout(signed(32), lanes))})

    def elaborate(self, platform) -> Module:
        m = Module()
        L = self.lanes
        s = Signal(signed(10))
        m.d.comb += s.eq(self.shift - 16)
        # |code * mant| < 2^23: a right shift past 31 gives 0 as rshr does, a left one past 31 saturates
        right = s > 0
        sr1 = Signal(5)
        sl = Signal(6)
        m.d.comb += [sr1.eq(Mux(s > 31, 30, s - 1)), sl.eq(Mux(s < -31, 31, -s))]
        aligned = self.codes >> self.phase
        for n in range(L):
            code = Signal(signed(8), name=f"code_{n}")
            with m.Switch(self.bits):
                for b in CODE_BITS:
                    with m.Case(b):
                        m.d.comb += code.eq(aligned[n * b:(n + 1) * b].as_signed())
            v = Signal(signed(25), name=f"v_{n}")
            m.d.comb += v.eq(code * self.mant)
            m.d.comb += self.y[n].eq(sat(rshr_var(v, right, sr1, sl)))
        return m
