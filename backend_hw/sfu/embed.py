"""EMBED's dequantization lanes (docs/isa.md EMBED, `simulator.functional._misc`):
`Y[k] = sat(rshr(code[k] * mant, shift - 16), 32)` for the `lanes` codes of one beat, all in one
scale group (the unit ends beats at group boundaries, so one mantissa serves the beat).

`codes` holds the beat's packed code bytes, the first code at bit `phase`; `bits` is the code
width (2, 3, 4 or 8; any other width gives zeros). Four registered stages (`LATENCY`): the codes
unpacked and the shift decoded, the products (a DSP each), the shift (by s - 1 when rounding
right), the rounding add and saturation; each stage a few LUT levels.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arith import sat

__all__ = ["CODE_BITS", "EmbedLanes"]

CODE_BITS = (2, 3, 4, 8)


class EmbedLanes(wiring.Component):
    LATENCY = 4

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
        right, sr1, sl = Signal(reset_less=True), Signal(5, reset_less=True), Signal(6, reset_less=True)
        mant = Signal(16, reset_less=True)
        m.d.sync += [right.eq(s > 0), sr1.eq(Mux(s > 31, 30, s - 1)), sl.eq(Mux(s < -31, 31, -s)),
                     mant.eq(self.mant)]
        right2, sr2, sl2 = (Signal.like(v, name=f"{v.name}2") for v in (right, sr1, sl))
        right3 = Signal(reset_less=True)
        m.d.sync += [right2.eq(right), sr2.eq(sr1), sl2.eq(sl), right3.eq(right2)]
        aligned = self.codes >> self.phase
        for n in range(L):
            code = Signal(signed(8), name=f"code_{n}", reset_less=True)
            with m.Switch(self.bits):
                for b in CODE_BITS:
                    with m.Case(b):
                        m.d.sync += code.eq(aligned[n * b:(n + 1) * b].as_signed())
                with m.Default():
                    m.d.sync += code.eq(0)
            v = Signal(signed(25), name=f"v_{n}", reset_less=True)
            sh = Signal(signed(57), name=f"sh_{n}", reset_less=True)     # |v| < 2^23, shifted left <= 31
            m.d.sync += [v.eq(code * mant), sh.eq(Mux(right2, v >> sr2, v << sl2)),
                         self.y[n].eq(sat(Mux(right3, (sh + 1) >> 1, sh)))]
        return m
