"""The weight unpacker: one packed weight row (ir/packing.py) in as buffer words, chain beats out.

A row of the weight buffer's tile is three bit streams (ir/packing.py, `_matrix`): its kept
codes (`weight_bits` each, at codes_bit = row * kept * bits from `wbuf_addr`), their N:M indices
(ceil(log2 M) bits each, at row * kept * index_bits from `idx_addr`) and its group mantissas
(16 bits each, at row * groups * 16 from `scale_addr`). Field i of a stream occupies its bits
[i*b, (i+1)*b), least significant first, and bit t of the buffer is bit t mod W of word t // W
with words made of little-endian bytes: so each stream, read as consecutive words from the word
holding its first bit, is a plain little-endian bit string once the first `skip = bit mod W`
bits are dropped. Rows need not start on a byte (int3 codes, odd kept counts).

Per row: a `start` command (each stream's skip and word count, and the number of beats,
kept / chain_len), then the three word streams (exactly the words that hold the row's bits; the
last one's unused bits are dropped). Each stream takes only its row's word count, so a reader may
run ahead into the next row (its FIFO holds those words until the next `start`). Per output beat: `chain_len` kept codes sign-extended to int8 and their indices;
`first` / `last` mark the beats that start / end a scale group (a group of `group_kept` kept
codes), and a `last` beat carries the mantissas of the groups it ends (several per beat when
group_kept < chain_len, then every beat is `first` and `last`); `row_last` marks the row's end.

Each stream goes through a bit gearbox of W + 2B bits (B bits per beat), so with W >= B a beat
leaves every cycle; with W < B, one every B / W cycles.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.packing import MANT_FIELD_BITS
from llmfab.ir.quant import MANT_BITS, NM, check_format

CODE_BITS = 8        # codes leave sign-extended to the int8 operand width
BEAT_COUNT_BITS = 18  # beats per row: K <= 2^17 kept codes at chain_len >= 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Gearbox(wiring.Component):
    """Words of `in_bits` in, `out_bits` fields out, LSB first; `flush` empties it and drops the
    first `skip` bits of the next word and sets the row's word count: no word of the next row
    is taken before the next flush."""
    HOLD_BEATS = 2    # a word is taken while the gearbox holds at most this many beats

    def __init__(self, in_bits: int, out_bits: int):
        self.in_bits, self.out_bits = in_bits, out_bits
        self.cap = in_bits + 2 * out_bits
        super().__init__({
            "flush": In(1), "skip": In(range(in_bits)), "words": In(BEAT_COUNT_BITS),
            "i": In(stream.Signature(in_bits)),
            "o": Out(stream.Signature(out_bits)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        w, b = self.in_bits, self.out_bits
        buf = Signal(self.cap)
        n = Signal(range(self.cap + 1))
        skip = Signal(range(w))          # bits still to drop from the next word
        left = Signal(BEAT_COUNT_BITS)   # words of this row still to take
        m.d.comb += [self.o.valid.eq(n >= b), self.o.payload.eq(buf[:b]),
                     self.i.ready.eq((left != 0) & ~self.flush & (n <= self.HOLD_BEATS * b))]
        take = self.o.valid & self.o.ready
        n1 = Signal(range(self.cap + 1))  # after this cycle's beat left
        m.d.comb += n1.eq(Mux(take, n - b, n))
        buf1 = Mux(take, buf >> b, buf)
        word = self.i.payload >> skip
        with m.If(self.flush):
            m.d.sync += [buf.eq(0), n.eq(0), skip.eq(self.skip), left.eq(self.words)]
        with m.Elif(self.i.valid & self.i.ready):
            m.d.sync += [buf.eq(buf1 | (word << n1)[:self.cap]), n.eq(n1 + w - skip), skip.eq(0),
                         left.eq(left - 1)]
        with m.Else():
            m.d.sync += [buf.eq(buf1), n.eq(n1)]
        return m


class WeightUnpacker(wiring.Component):
    """One packed weight row in as word streams, chain beats out (see the module docstring).

    Ports:
    - `start` (in, stream): per stream (`codes`, `idx`, `mant`) `*_skip` (bits to drop from its
      first word) and `*_words` (its word count, `row_words`), and `beats` (kept / chain_len);
      accepted only between rows.
    - `codes`, `idx` (N:M only), `mant` (in, stream of `word_bits`): the row's words.
    - `o` (out, stream of `beat_layout`): `w` chain_len signed int8, `idx` (N:M only)
      chain_len unsigned ceil(log2 M), `mant` groups_per_beat unsigned 15 (valid on `last`),
      `first`, `last`, `row_last`.
    Latency: a beat is valid the cycle after the word that completes it is accepted.
    """

    def __init__(self, chain_len: int, *, word_bits: int, weight_bits: int = 8,
                 pattern: tuple[int, int] | None = None, group_kept: int):
        if not (_is_int(chain_len) and chain_len > 0 and chain_len & (chain_len - 1) == 0):
            raise ValueError(f"chain_len must be a positive power of two, not {chain_len!r}")
        if not (_is_int(word_bits) and word_bits > 0 and word_bits % 8 == 0):
            raise ValueError(f"word_bits must be a positive multiple of 8, not {word_bits!r}")
        pattern = check_format(weight_bits, pattern)
        if pattern is not None:
            if chain_len % pattern[0]:
                raise ValueError(f"chain_len must be a multiple of N ({pattern[0]} for {NM(*pattern)}) so "
                                 f"that a beat holds whole blocks, not {chain_len!r}")
        if not (_is_int(group_kept) and group_kept > 0
                and (group_kept % chain_len == 0 or chain_len % group_kept == 0)):
            raise ValueError(f"group_kept must be a positive multiple or divisor of chain_len ({chain_len}), "
                             f"not {group_kept!r}")
        self.chain_len, self.word_bits, self.weight_bits = chain_len, word_bits, weight_bits
        self.pattern, self.group_kept = pattern, group_kept
        self.index_bits = 0 if pattern is None else NM(*pattern).index_bits
        self.groups_per_beat = max(1, chain_len // group_kept)
        self.beats_per_group = max(1, group_kept // chain_len)
        fields = {"w": data.ArrayLayout(signed(CODE_BITS), chain_len)}
        if pattern is not None:
            fields["idx"] = data.ArrayLayout(unsigned(self.index_bits), chain_len)
        fields |= {"mant": data.ArrayLayout(unsigned(MANT_BITS), self.groups_per_beat),
                   "first": 1, "last": 1, "row_last": 1}
        self.beat_layout = data.StructLayout(fields)
        skip = range(word_bits)
        count = unsigned(BEAT_COUNT_BITS)
        ports = {"start": In(stream.Signature(data.StructLayout({
                     "codes_skip": skip, "idx_skip": skip, "mant_skip": skip,
                     "codes_words": count, "idx_words": count, "mant_words": count, "beats": count}))),
                 "codes": In(stream.Signature(word_bits))}
        if pattern is not None:
            ports["idx"] = In(stream.Signature(word_bits))
        ports |= {"mant": In(stream.Signature(word_bits)), "o": Out(stream.Signature(self.beat_layout))}
        super().__init__(ports)

    def elaborate(self, platform) -> Module:
        m = Module()
        cl, wb = self.chain_len, self.word_bits
        sparse = self.pattern is not None
        boxes = {"codes": _Gearbox(wb, cl * self.weight_bits),
                 "mant": _Gearbox(wb, MANT_FIELD_BITS * self.groups_per_beat)}
        if sparse:
            boxes["idx"] = _Gearbox(wb, cl * self.index_bits)
        for name, box in boxes.items():
            m.submodules[f"{name}_box"] = box
            wiring.connect(m, wiring.flipped(getattr(self, name)), box.i)

        active = Signal()
        beat = Signal(BEAT_COUNT_BITS)     # beat within the row
        in_group = Signal(range(self.beats_per_group))
        beats = Signal(BEAT_COUNT_BITS, reset_less=True)
        first = in_group == 0
        last = in_group == self.beats_per_group - 1
        row_last = beat == beats - 1

        start = self.start
        m.d.comb += start.ready.eq(~active)
        with m.If(start.valid & start.ready):
            m.d.sync += [active.eq(1), beat.eq(0), in_group.eq(0), beats.eq(start.payload.beats)]
        for name, box in boxes.items():
            m.d.comb += [box.flush.eq(start.valid & start.ready),
                         box.skip.eq(getattr(start.payload, f"{name}_skip")),
                         box.words.eq(getattr(start.payload, f"{name}_words"))]

        # A beat leaves when its codes and indices are there, and its mantissas if it ends a group.
        codes, mant = boxes["codes"].o, boxes["mant"].o
        have = codes.valid & (boxes["idx"].o.valid if sparse else 1) & (mant.valid | ~last)
        o = self.o.payload
        m.d.comb += self.o.valid.eq(active & have)
        fire = self.o.valid & self.o.ready
        m.d.comb += [codes.ready.eq(fire), mant.ready.eq(fire & last)]
        for s in range(cl):
            b = self.weight_bits
            m.d.comb += o.w[s].eq(codes.payload[s * b:(s + 1) * b].as_signed())
        if sparse:
            ib = self.index_bits
            m.d.comb += boxes["idx"].o.ready.eq(fire)
            for s in range(cl):
                m.d.comb += o.idx[s].eq(boxes["idx"].o.payload[s * ib:(s + 1) * ib])
        for j in range(self.groups_per_beat):
            m.d.comb += o.mant[j].eq(mant.payload[j * MANT_FIELD_BITS:j * MANT_FIELD_BITS + MANT_BITS])
        m.d.comb += [o.first.eq(first), o.last.eq(last), o.row_last.eq(row_last)]
        with m.If(fire):
            m.d.sync += [beat.eq(beat + 1), in_group.eq(Mux(last, 0, in_group + 1))]
            with m.If(row_last):
                m.d.sync += active.eq(0)
        return m


def row_words(bit_addr: int, nbits: int, word_bits: int) -> tuple[int, int, int]:
    """(first word, word count, skip) of a stream slice of `nbits` bits at buffer bit `bit_addr`:
    what a reader sends the unpacker for it (the plain-Python statement of the module docstring)."""
    first = bit_addr // word_bits
    skip = bit_addr - first * word_bits
    return first, -(-(skip + nbits) // word_bits), skip
