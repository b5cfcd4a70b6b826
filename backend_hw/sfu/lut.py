"""The SFU's table unit: `lut_eval` of the 257-knot tables of docs/integer.md, `lanes` per cycle.

The tables come from `llmfab.ir.integer.act_table` at elaboration time. One ROM word per knot
interval j holds T[j] and the slope T[j+1] - T[j], so each lane reads one word per element; the
five tables (SiLU, GELU, GELU-tanh, exp, tanh) share a ROM of 5 x 256 words, the table number in
the top address bits. Bit-exact with `lut_eval(table, x, lo, below)` given u = x - lo * 2^16:

    u < 0: below;   u >= 2^20: T[256];   else T[j] + rshr(slope[j] * (u & 4095), 12), j = u >> 12

(`below` is `Lut.below`: 0, or tanh's T[0] = -1, like T[256] a constant per table.)

The caller decodes u into a lane's `Index` (`below` = u < 0, `above` = u >= 2^20, `j`, `fr` =
u & 4095): for the SFU's two inputs that is bit selects and comparisons with constants
(`Index.of_act`, `Index.of_exp`), no adder in front of the ROM.

Latency 2: the index and `table` in one cycle (the ROM's read address), the ROM word the next,
`y` registered after the interpolation (its product is one DSP).
"""

from enum import IntEnum

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.integer import Lut, act_table

from .arith import rshr

LATENCY = 2


class Table(IntEnum):
    """ROM bank of each table (its top address bits)."""
    SILU = 0
    GELU = 1
    GELU_TANH = 2
    EXP = 3
    TANH = 4     # MISC SOFTCAP

    @property
    def lut(self) -> Lut:
        return Lut[self.name]


TABLE_BITS = (len(Table) - 1).bit_length()


class Index(data.Struct):
    """Where u = x - lo 2^16 falls: clipped below or above, or knot interval `j` at `fr` / 4096."""
    j: unsigned(8)
    fr: unsigned(12)
    below: unsigned(1)
    above: unsigned(1)

    @staticmethod
    def of_act(x) -> dict:
        """The index of an activation table (lo = -8) at Q.16 `x`: u = x + 2^19, so u < 0 is
        x < -2^19, u >= 2^20 is x >= 2^19, and bits 12..19 of u are x's with bit 19 flipped."""
        return {"j": x[12:20] ^ 0x80, "fr": x[:12], "below": x < -(1 << 19), "above": x >= 1 << 19}

    @staticmethod
    def of_exp(d) -> dict:
        """The index of the exp table (lo = -16) at min(d, 0): u = min(d, 0) + 2^20, so u < 0 is
        d < -2^20, u >= 2^20 is d >= 0, and bits 0..19 of u are d's."""
        return {"j": d[12:20], "fr": d[:12], "below": d < -(1 << 20), "above": d >= 0}


def _bits(values, signed_: bool) -> int:
    return max(int(abs(v)).bit_length() for v in values) + (1 if signed_ else 0)


class LutEval(wiring.Component):
    """`lanes` table lookups with linear interpolation per cycle (module docstring)."""

    def __init__(self, lanes: int):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        tables = [act_table(t.lut) for t in Table]
        self._base = [int(v) for t in tables for v in t[:256]]
        self._slope = [int(t[j + 1] - t[j]) for t in tables for j in range(256)]
        self._top = [int(t[256]) for t in tables]
        self._bottom = [t.lut.below for t in Table]
        self.base_bits = _bits(self._base + self._top + self._bottom, True)
        self.slope_bits = _bits(self._slope, True)
        super().__init__({
            "table": In(unsigned(TABLE_BITS)),
            "idx": In(data.ArrayLayout(Index, lanes)),
            "y": Out(data.ArrayLayout(signed(self.base_bits + 1), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        depth = 256 * len(Table)
        m.submodules.base = base = memory.Memory(shape=signed(self.base_bits), depth=depth,
                                                 init=self._base)
        m.submodules.slope = slope = memory.Memory(shape=signed(self.slope_bits), depth=depth,
                                                   init=self._slope)
        table = Signal(TABLE_BITS, reset_less=True)
        m.d.sync += table.eq(self.table)
        top = Signal(signed(self.base_bits), reset_less=True)
        bottom = Signal(signed(self.base_bits), reset_less=True)
        with m.Switch(table):
            for i, (hi, lo) in enumerate(zip(self._top, self._bottom)):
                with m.Case(i):
                    m.d.comb += [top.eq(hi), bottom.eq(lo)]
        for n in range(self.lanes):
            idx = self.idx[n]
            rb, rs = base.read_port(), slope.read_port()
            addr = Signal(8 + TABLE_BITS)
            m.d.comb += [addr.eq(self.table << 8 | idx.j), rb.addr.eq(addr), rs.addr.eq(addr)]
            below, above = Signal(reset_less=True), Signal(reset_less=True)
            fr = Signal(12, reset_less=True)
            # clip(u, 0, 2^20) & 4095: 0 at either clip, the low 12 bits in between
            m.d.sync += [below.eq(idx.below), above.eq(idx.above), fr.eq(idx.fr)]
            interp = rb.data + rshr(rs.data * fr, 12)
            m.d.sync += self.y[n].eq(Mux(below, bottom, Mux(above, top, interp)))
        return m
