"""The matrix engine's datapath: per chain a weight unpacker and a DSP chain, one activation window
broadcast to every chain, and a requantizer per chain (docs/integer.md "Linear / LM head").

A pass runs `n_chains` weight rows (one per chain) against one token row: every cycle that the
activation window and every chain's unpacked beat are there, all of them advance together (the
chains stay in lockstep, so one window serves them all). A chain accumulates a scale group over
the beats from its `first` to its `last` (`group_kept` kept weights, at least `chain_len`); the
group sum leaves the chain `DSPChain.latency` cycles later and meets its mantissa, which waited in
a delay line of the same length, in the requantizer. On the row's last beat the engine also takes
the pass's `rows` record (per chain: shift, bias, prev, flags; the token row's mx, ex); the pass's
`n_chains` outputs leave together on `o`.

Modes: this datapath is the same in both; the order of passes is the sequencer's. MV (decode):
one token row, passes over the weight rows n = pass * n_chains + c. MM (prefill): for each pass
of weight rows, the passes of every token row in turn, re-reading the same rows of the weight
tile from the on-chip weight buffer (the tile comes from memory once for all token rows).

Ports (`c` a chain):
- `weights[c]`: the unpacker's inputs (`start`, `codes`, `idx` when N:M, `mant`), see
  `WeightUnpacker`; words are `Target.buffer("weight").width_bits` wide.
- `act` (in, stream): the activation window of the beat, chain_len * M / N signed int8.
- `rows` (in, stream): per chain a `RowScale` (ir/integer semantics of shift, ex, mx, bias,
  has_bias, prev, accumulate), taken with the pass's last beat.
- `o` (out, valid only): per chain the int32 Q.16 output of the pass.
Latency from the last beat to `o`: `DSPChain.latency + Requantizer.LATENCY`; throughput: one beat
(chain_len kept weights per chain) per cycle when the weight words keep up.
"""
from amaranth import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.quant import kept
from llmfab.ir.target import BufferName, DSPPrimitive, Target

from ..protocol.valid import Valid
from .dsp_chain import DSPChain
from .requant import OUT_BITS, Requantizer, RowScale
from .weight_unpack import WeightUnpacker


class MatrixEngine(wiring.Component):
    """`target.engine.n_chains` chains of `chain_len` for one weight format (module docstring).

    `group` is the scale group along K in dense weights (g of the QuantScheme, or K when per
    channel); it must hold at least `chain_len` kept weights and be a multiple of them.
    """

    def __init__(self, target: Target, *, weight_bits: int = 8, pattern: tuple[int, int] | None = None,
                 group: int = 128, sim_model: bool = False):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        target.check_weights(weight_bits, pattern)
        e = target.engine
        self.target, self.n_chains, self.chain_len = target, e.n_chains, e.chain_len
        pattern = None if pattern is None else tuple(pattern)
        if not (isinstance(group, int) and not isinstance(group, bool) and group > 0
                and (pattern is None or group % pattern[1] == 0)):
            raise ValueError(f"group must be a positive multiple of the N:M block, not {group!r}")
        gk = kept(group, pattern)
        if gk % e.chain_len:
            raise ValueError(f"group must hold a multiple of chain_len ({e.chain_len}) kept weights, "
                             f"not {gk} (group {group})")
        self.weight_bits, self.pattern, self.group = weight_bits, pattern, group
        word_bits = target.buffer(BufferName.WEIGHT).width_bits
        self.unpackers = [WeightUnpacker(e.chain_len, word_bits=word_bits, weight_bits=weight_bits,
                                         pattern=pattern, group_kept=gk) for _ in range(e.n_chains)]
        # Only the DSP48E2 cascade is instantiated explicitly (Yosys builds its adders in fabric
        # otherwise); ECP5's MULT18X18D and the rest are inferred from the behavioural chain.
        # `sim_model`: the DSP48E2 chain as its bit-accurate model, for amaranth.sim and Verilator.
        explicit = e.dsp_primitive is DSPPrimitive.DSP48E2
        self.chains = [DSPChain(e.chain_len, weight_bits=weight_bits, pattern=pattern,
                                primitive="DSP48E2" if explicit else "behavioural", sim_model=explicit and sim_model)
                       for _ in range(e.n_chains)]
        self.requants = [Requantizer() for _ in range(e.n_chains)]
        u = self.unpackers[0]
        weight_in = wiring.Signature({k: Out(v.signature.flip()) for k, v in u.signature.members.items() if k != "o"})
        super().__init__({
            "weights": In(weight_in).array(e.n_chains),
            "act": In(stream.Signature(data.ArrayLayout(signed(8), self.chains[0].n_act))),
            "rows": In(stream.Signature(data.ArrayLayout(RowScale, e.n_chains))),
            "o": Out(Valid(data.ArrayLayout(signed(OUT_BITS), e.n_chains))),
        })

    @property
    def latency(self) -> int:
        """Cycles from the pass's last beat (all inputs there) to its outputs on `o`."""
        return self.chains[0].latency + Requantizer.LATENCY

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.n_chains
        beats = [u.o for u in self.unpackers]
        for c, (u, ch, rq) in enumerate(zip(self.unpackers, self.chains, self.requants)):
            m.submodules[f"unpack{c}"], m.submodules[f"chain{c}"], m.submodules[f"requant{c}"] = u, ch, rq
            for k in u.signature.members:
                if k != "o":
                    wiring.connect(m, wiring.flipped(getattr(self.weights[c], k)), getattr(u, k))

        # Lockstep: a beat fires when every chain's weights and the window are there (and the
        # pass's row record on its last beat); all inputs are taken together.
        b0 = beats[0].payload
        ready = self.act.valid & (self.rows.valid | ~b0.row_last)
        for b in beats:
            ready = ready & b.valid
        fire = Signal()
        m.d.comb += [fire.eq(ready), self.act.ready.eq(fire), self.rows.ready.eq(fire & b0.row_last)]
        for b in beats:
            m.d.comb += b.ready.eq(fire)

        for c, (b, ch) in enumerate(zip(beats, self.chains)):
            i = ch.i.payload
            m.d.comb += [ch.i.valid.eq(fire), i.a.eq(self.act.payload), i.first.eq(b.payload.first),
                         i.last.eq(b.payload.last)]
            for s in range(self.chain_len):
                m.d.comb += i.w[s].eq(b.payload.w[s])
                if self.pattern is not None:
                    m.d.comb += i.idx[s].eq(b.payload.idx[s])

        # What the requantizers need besides the sums waits as long as the chain takes.
        side = data.StructLayout({"mant": data.ArrayLayout(15, n), "row_last": 1,
                                  "rows": data.ArrayLayout(RowScale, n)})
        src = Signal(side)
        m.d.comb += [src.row_last.eq(b0.row_last), src.rows.eq(self.rows.payload)]
        for c, b in enumerate(beats):
            m.d.comb += src.mant[c].eq(b.payload.mant[0])
        for k in range(self.chains[0].latency):
            nxt = Signal(side, name=f"side_d{k + 1}", reset_less=True)
            m.d.sync += nxt.eq(src)
            src = nxt

        for c, (ch, rq) in enumerate(zip(self.chains, self.requants)):
            p = rq.i.payload
            m.d.comb += [rq.i.valid.eq(ch.o.valid), p.p.eq(ch.o.payload.sums[0]), p.mant.eq(src.mant[c]),
                         p.last.eq(src.row_last), p.row.eq(src.rows[c]), self.o.payload[c].eq(rq.o.payload)]
        m.d.comb += self.o.valid.eq(self.requants[0].o.valid)
        return m
