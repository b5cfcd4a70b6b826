"""The DSP chain: `chain_len` multiply-accumulate stages cascaded like DSP48E2 PCOUT->PCIN.

One input vector enters every cycle. Stage `s` multiplies one kept weight by the activation its
sparse multiplexer picks, and adds the partial sum the stage before it registered one cycle
earlier; the operands of stage `s` are therefore delayed by its position in its group (a
systolic skew), so a whole vector's products meet in one sum. Reduction nodes cut the cascade
every `group_kept` stages: each group restarts at zero (the DSP48E2 `OPMODE_M` mode) and all groups
finish in the same cycle. After the cascade, one int32 accumulator per group adds the group sums
of the cycles from `first` to `last` and emits them with `o.valid`.

Stage `s` of an N:M chain belongs to block `s // N` and reads one of that block's M activations,
`a[s // N * M + idx[s]]`: kept code `j` of a row sits at dense position `j // N * M + idx`
(`simulator/functional.py` `_matrix`).

Exactness: int32 without saturation. An accumulated group sum adds `group_kept` products per cycle
over the cycles from `first` to `last`, K products in all, each at most 128 * 128 = 2^14 in
magnitude (int8 x int8; narrower weights less), so it is exact while K < 2^17 (K <= 2^17 with the
integer contract's symmetric codes, |code| <= 127). Beyond that it wraps modulo 2^32.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.quant import NM, check_format
from llmfab.ir.target import ACT_BITS, DSPPrimitive

from ..protocol.valid import Valid
from .dsp48e2 import LATENCY as DSP_LATENCY
from .dsp48e2 import OPMODE_M, OPMODE_PCIN, DSP48E2Model, dsp48e2_instance

SUM_BITS = 32
_PRIMITIVES = (DSPPrimitive.BEHAVIOURAL, DSPPrimitive.DSP48E2)


def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and x & (x - 1) == 0


class DSPChain(wiring.Component):
    """A DSP chain of `chain_len` stages (see the module docstring).

    Ports:
    - `i` (in, `Valid`): `payload.w` chain_len signed `weight_bits` kept weights;
      `payload.idx` (N:M only) chain_len unsigned ceil(log2 M)-bit indices; `payload.a` the
      activation window, chain_len * M / N (dense: chain_len) signed int8; `payload.first` /
      `payload.last` mark the first / last cycle of an accumulation; `valid` qualifies the cycle
      (cycles without it are not accumulated, so a group may have gaps).
    - `o` (out, `Valid`): `payload.sums` chain_len / group_kept signed int32 group
      sums, `valid` for one cycle per accumulation, `latency` cycles after its `last` input.

    `primitive` is `"behavioural"` (plain `*` and `+`, any device) or `"DSP48E2"` (one primitive per
    stage; `sim_model=True` uses `DSP48E2Model` instead of the `Instance`, for simulation).
    """

    def __init__(self, chain_len: int, *, weight_bits: int = 8, pattern: tuple[int, int] | None = None,
                 group_kept: int | None = None, primitive: str | DSPPrimitive = "behavioural",
                 sim_model: bool = False):
        if not _is_pow2(chain_len):
            raise ValueError(f"chain_len must be a positive power of two, not {chain_len!r}")
        pattern = check_format(weight_bits, pattern)
        if group_kept is None:
            group_kept = chain_len
        if not (isinstance(group_kept, int) and not isinstance(group_kept, bool)
                and group_kept > 0 and chain_len % group_kept == 0):
            raise ValueError(f"group_kept must be a positive divisor of chain_len ({chain_len}), "
                             f"not {group_kept!r}")
        if pattern is not None and group_kept % pattern[0]:
            raise ValueError(f"group_kept must be a multiple of N ({pattern[0]} for "
                             f"{NM(*pattern)}) so that groups hold whole blocks, not {group_kept!r}")
        try:
            kind = DSPPrimitive(primitive)
        except ValueError:
            kind = None
        if kind not in _PRIMITIVES:
            raise ValueError(f"primitive must be 'behavioural' or 'DSP48E2', not {primitive!r}")
        primitive = kind
        if sim_model and primitive is not DSPPrimitive.DSP48E2:
            raise ValueError("sim_model applies only to primitive 'DSP48E2'")

        self.chain_len = chain_len
        self.weight_bits = weight_bits
        self.pattern = pattern
        self.group_kept = group_kept
        self.n_groups = chain_len // group_kept
        self.primitive = primitive
        self.sim_model = sim_model
        self.index_bits = 0 if pattern is None else NM(*pattern).index_bits
        self.n_act = chain_len if pattern is None else chain_len * pattern[1] // pattern[0]

        fields = {"w": data.ArrayLayout(signed(weight_bits), chain_len)}
        if pattern is not None:
            fields["idx"] = data.ArrayLayout(unsigned(self.index_bits), chain_len)
        fields |= {"a": data.ArrayLayout(signed(ACT_BITS), self.n_act), "first": 1, "last": 1}
        self.input_layout = data.StructLayout(fields)
        self.output_layout = data.StructLayout({"sums": data.ArrayLayout(signed(SUM_BITS), self.n_groups)})
        super().__init__({"i": In(Valid(self.input_layout)), "o": Out(Valid(self.output_layout))})

    @property
    def latency(self) -> int:
        """Cycles from presenting a group's `last` input to its sums on `o`: the operand skew
        (group_kept - 1), the stage registers (A/B, M, P: 3) and the accumulator (1)."""
        return self.group_kept - 1 + DSP_LATENCY + 1

    def elaborate(self, platform) -> Module:
        m = Module()
        i = self.i.payload
        G = self.group_kept

        def delay(value, cycles: int, name: str):
            for k in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{k + 1}", reset_less=True)
                m.d.sync += reg.eq(value)
                value = reg
            return value

        group_sums = []
        cascade = None
        for s in range(self.chain_len):
            skew = s % G  # stage position in its group: its operands wait for the partial sum
            a = delay(self._select(i, s), skew, f"a{s}")
            w = delay(i.w[s], skew, f"w{s}")
            psum, cascade = self._stage(m, s, a, w, cascade if skew else None)
            if skew == G - 1:
                group_sums.append(psum)

        # Control travels beside the data to the accumulators: skew + stage registers.
        ctl = Cat(self.i.valid, i.first, i.last)
        ctl = delay(ctl, G - 1 + DSP_LATENCY, "ctl")
        valid, first, last = ctl[0], ctl[1], ctl[2]

        for g, psum in enumerate(group_sums):
            acc = Signal(signed(SUM_BITS), name=f"acc{g}", reset_less=True)
            total = Signal(signed(SUM_BITS), name=f"total{g}")
            m.d.comb += total.eq(Mux(first, 0, acc) + psum)
            with m.If(valid):
                m.d.sync += acc.eq(total)
                with m.If(last):
                    m.d.sync += self.o.payload.sums[g].eq(total)
        m.d.sync += self.o.valid.eq(valid & last)
        return m

    def _select(self, i, s: int):
        """The sparse multiplexer of stage s: one of its block's M activations, by its index."""
        if self.pattern is None:
            return i.a[s]
        n, mm = self.pattern
        block = s // n
        return Array(i.a[block * mm + j] for j in range(mm))[i.idx[s]]

    def _stage(self, m: Module, s: int, a, w, pcin):
        """One multiply-accumulate stage: P = (pcin or 0) + a * w, three registers from a/w to P.
        `pcin` is the previous stage's cascade output, None at a group's first stage. Returns the
        registered partial sum (signed, exact) and the cascade output for the next stage."""
        if self.primitive is DSPPrimitive.BEHAVIOURAL:
            width = ACT_BITS + self.weight_bits + (self.group_kept - 1).bit_length()
            a2 = Signal(signed(ACT_BITS), name=f"a2_{s}", reset_less=True)
            w2 = Signal(signed(self.weight_bits), name=f"b2_{s}", reset_less=True)
            mreg = Signal(signed(ACT_BITS + self.weight_bits), name=f"m_{s}", reset_less=True)
            p = Signal(signed(width), name=f"p_{s}", reset_less=True)
            m.d.sync += [a2.eq(a), w2.eq(w), mreg.eq(a2 * w2), p.eq(mreg if pcin is None else pcin + mreg)]
            return p, p

        # DSP48E2: operands sign-extended to the primitive's ports by hand.
        a30, b18 = Signal(30, name=f"A_{s}"), Signal(18, name=f"B_{s}")
        pcin48 = Signal(48, name=f"PCIN_{s}")
        p48, pcout48 = Signal(48, name=f"P_{s}"), Signal(48, name=f"PCOUT_{s}")
        m.d.comb += [a30.eq(a), b18.eq(w)]
        if pcin is not None:
            m.d.comb += pcin48.eq(pcin)
        opmode = OPMODE_M if pcin is None else OPMODE_PCIN
        if self.sim_model:
            dsp = m.submodules[f"dsp{s}"] = DSP48E2Model(opmode)
            m.d.comb += [dsp.A.eq(a30), dsp.B.eq(b18), dsp.PCIN.eq(pcin48),
                         p48.eq(dsp.P), pcout48.eq(dsp.PCOUT)]
        else:
            m.submodules[f"dsp{s}"] = dsp48e2_instance(opmode, A=a30, B=b18, PCIN=pcin48, P=p48, PCOUT=pcout48)
        return p48[:SUM_BITS].as_signed(), pcout48
