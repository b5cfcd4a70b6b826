"""The SFU instruction unit's cycles per instruction, derived from its RTL (backend_hw/sfu/unit.py):
from the cycle `SfuUnit` accepts a MISC instruction to the cycle its `done` pulses.

`sfu_cycles(target, inst)` replays the unit's sequencer beat by beat (one beat = up to `lanes`
elements of one pass over one row) with the RTL's recurrences, in cycles after the accept (0):

- start: IDLE accepts (and sets the sequencer up), SETUP fills the first beat's descriptor, RUN
  issues it at cycle `RUN_START`; EMBED first waits in GROUPS for the `cols / group` division
  (`EMBED_DIV_CYCLES` + 1 cycles), and fills the descriptor in RUN's first cycle.
- fetch: beat j issues at S_j = max(S_{j-1} + w_{j-1}, T_{j-IN_DEPTH}) (EMBED: S_{j-1} + max(w, 2):
  its descriptor is filled only in a cycle without an issue), w = max(words on src,
  words on src2) (both `PieceFetcher`s read one word a cycle from S + 1, and the next beat issues
  in the cycle of the last read; the input FIFO holds `SfuUnit.IN_DEPTH` issued beats, a slot
  freeing in the cycle its beat is taken). Passes that read only `a` split its words: ceil(w/2)
  on src, the rest on src2. The beat is written into the FIFO at S + w + 1 and readable at
  S + w + 2 (`FETCH_RETURN`).
- SFU: takes a beat at T_j = max(S_j + w_j + 2, T_{j-1} + 1, the SFU back in STREAM); after the
  last beat of a reduction pass the next pass's first beat is taken `sweep_gap` cycles later
  (sfu/datapath.py: SMAX `acc_ready` - 1; else `acc_ready` + 1 plus `RowScalars`' busy cycles,
  `SCALAR_CYCLES`, `QUANT_SCALAR_CYCLES`). An output beat reaches the FIFO `SFU.LATENCY` cycles
  after T; COPY and EMBED beats skip the SFU and reach it at T + `EmbedLanes.LATENCY`. A beat is
  held while `OUT_DEPTH` results are between take and the writer (the writer is the bottleneck of
  one-pass functions, whose beats write as many words as they read).
- writer: `ByteWriter` takes a FIFO entry the cycle after it was written, and the next one in the
  cycle it writes the current one's last word (one word a cycle); `done` pulses the cycle after
  the last word is written.

Words per piece are counted on each buffer's own word size (`Buffer.width_bits`), so alignment and
strides matter. Data-dependent: QUANT_ROWS' scalars skip their divisions on an all-zero row; this
model assumes non-zero rows (the common case). SOFTMAX's skip of the reciprocal when a CAUSAL row
sees no key (r mod period + imm < 0) follows from the instruction and is modelled. ATTN_QK,
ATTN_PV, unknown functions and empty instructions (rows or cols 0) take 1 cycle (done in SETUP).

Rows are replayed with their state relative to the row's first fetch and memoized on it (and the
rows' byte alignments), so long instructions cost a few distinct rows, not every beat.
"""
from __future__ import annotations

from llmfab.ir.isa import BROADCAST, CAUSAL, BufferId, MiscFunc
from llmfab.ir.target import Target

from .arith import SeqDivider
from .datapath import SFU, sweep_gap
from .embed import EmbedLanes
from .scalars import SWEEPS, Sweep
from .unit import SfuUnit

__all__ = ["sfu_cycles"]

F = MiscFunc
USES_SRC2 = (F.ADD, F.MUL, F.RMSNORM, F.LAYERNORM, F.ROPE)    # output passes that read the src2 port
RUN_START = 2          # cycle of the first beat's issue: accept (IDLE) 0, SETUP 1, RUN 2
N_BITS, _, RADIX = SfuUnit.EMBED_DIVIDER
EMBED_DIV_CYCLES = SeqDivider.steps(N_BITS, RADIX)   # EMBED's cols / group division, its whole numerator
FETCH_RETURN = 2       # issue S -> the beat readable from the input FIFO: S + w + 2 (the last word
                       # read at S + w, its data and the FIFO write at S + w + 1)


def _words(addr: int, n: int, wb: int) -> int:
    """Words of `wb` bytes a run of `n` bytes at byte `addr` touches (PieceFetcher, ByteWriter)."""
    return (addr + n - 1) // wb - addr // wb + 1 if n > 0 else 0


def sfu_cycles(target: Target, inst) -> int:
    """Cycles of `SfuUnit(target)` on the length-resolved MISC instruction `inst`, from its accept
    to its `done` (module docstring). Assumes rows with a non-zero element (QUANT_ROWS)."""
    return _cycles(target, inst)


def _cycles(target: Target, inst, zero_rows=frozenset()) -> int:
    """`sfu_cycles`, with the QUANT_ROWS rows (indices) that are all zeros given: their scalars
    skip both divisions."""
    func, rows, cols = inst["func"], inst["rows"], inst["cols"]
    if rows == 0 or cols == 0 or not (func in SWEEPS or func in (F.COPY, F.EMBED)):
        return 1
    L = target.sfu.lanes
    RB = 4 * L
    wbytes = target.word_bytes
    depth, imm, period, flags = inst["depth"], inst["imm"], inst["period"], inst["flags"]
    ss, ds = inst["src_stride"], inst["dst_stride"]
    wsrc, wsrc2, wdst = wbytes[BufferId(inst["src_buf"])], wbytes[BufferId(inst["src2_buf"])], \
        wbytes[BufferId(inst["dst_buf"])]
    is_copy, is_embed = func == F.COPY, func == F.EMBED
    bypass = is_copy or is_embed
    passes = (Sweep.OUT,) if bypass else SWEEPS[func]
    bits = imm & 15
    group = depth or cols
    code_bytes = (cols * bits + 7) >> 3
    nat_src = cols if is_copy else 4 * cols
    nat_dst = cols if is_copy else cols + 4 if func == F.QUANT_ROWS else 4 * cols
    start = RUN_START
    if is_embed:
        shift_off = code_bytes + 2 * (cols // group)
        nat_src = shift_off + 1
        start += EMBED_DIV_CYCLES + 2     # the division, RUN's first cycle fills the descriptor
    spitch, dpitch = ss or nat_src, ds or nat_dst
    src_row = inst["src_addr"] + (imm * spitch if is_copy else 0)
    src2_row, dst_row = inst["src2_addr"], inst["dst_addr"]
    tab0 = inst["src2_addr"] + imm * depth * 8
    bcast = func in (F.ADD, F.MUL) and bool(flags & BROADCAST)
    causal = func == F.SOFTMAX and bool(flags & CAUSAL)
    half = depth >> 1

    def gap(kind: Sweep, skip: bool) -> int:
        return sweep_gap(func, kind, L, skip)

    def beats(src_row, src2_row, dst_row, tab):
        """Per beat of one row: (pass kind, src words, src2 words, result words or 0, pass end)."""
        out = []
        for kind in passes:
            is_out = kind is Sweep.OUT
            k0 = hpos = gpos = gidx = kbits = 0
            o_row = dst_row
            while True:
                left = cols - k0
                nl = min(left, L)
                if is_embed:
                    nl = min(nl, group - gpos)
                elem = src_row + 4 * k0
                wb_ = 0
                if is_copy:
                    n = min(left, RB)
                    wa = _words(src_row + k0, n, wsrc)
                    wo = _words(dst_row + k0, n, wdst)
                elif is_embed:
                    wa = _words(src_row + (kbits >> 3), ((kbits + nl * bits + 7) >> 3) - (kbits >> 3), wsrc)
                    wb_ = _words(src_row + code_bytes + 2 * gidx, 2, wsrc) + _words(src_row + shift_off, 1, wsrc)
                    wo = _words(dst_row + 4 * k0, 4 * nl, wdst)
                else:
                    wa = _words(elem, 4 * nl, wsrc)
                    wo = 0
                    if not (is_out and func in USES_SRC2):      # a's words split over both ports
                        wa, wb_ = (wa + 1) // 2, wa // 2
                    if is_out:
                        if func == F.QUANT_ROWS:
                            wo = _words(o_row, nl + 4, wdst) if k0 == 0 else _words(o_row + 4 + k0, nl, wdst)
                        else:
                            wo = _words(o_row + 4 * k0, 4 * nl, wdst)
                        if func in (F.ADD, F.MUL):
                            wb_ = _words(src2_row + 4 * k0, 4 * nl, wsrc2)
                        elif func in (F.RMSNORM, F.LAYERNORM):
                            wb_ = _words(inst["src2_addr"] + 4 * k0, 4 * nl, wsrc2)
                            if func == F.LAYERNORM:
                                wb_ += _words(inst["src2_addr"] + 4 * (cols + k0), 4 * nl, wsrc2)
                        elif func == F.ROPE:
                            lo = hpos < half
                            n_first = min(half - hpos, nl) if lo else nl
                            wa += _words(elem + 4 * half if lo else elem - 4 * half, 4 * n_first, wsrc)
                            if nl != n_first:
                                wa += _words(elem - 4 * hpos, 4 * (nl - n_first), wsrc)
                            wb_ = _words(tab + 4 * hpos, 4 * nl, wsrc2) + _words(tab + 4 * (depth + hpos), 4 * nl, wsrc2)
                step = min(left, RB) if is_copy else nl
                last = k0 + step >= cols
                out.append((kind, wa, wb_, wo, last))
                if last:
                    break
                k0 += step
                kbits += nl * bits
                hpos = 0 if hpos + L >= depth else hpos + L
                if gpos + nl == group:
                    gpos, gidx = 0, gidx + 1
                else:
                    gpos += nl
        return tuple(out)

    D = SfuUnit.IN_DEPTH

    def run_row(row_beats, no_key, state):
        """Time one row from the cycle its first beat may issue (0), `state` relative to that: (the
        pops of the last `IN_DEPTH` beats, SFU back in STREAM, writer free, (take, writer accept)
        of results still in flight). Returns the cycle the next row's first beat may issue and the
        writer's free cycle, relative, and the state."""
        pops, sfu_ready, wr_free, flight = state
        pops, flight = list(pops), list(flight)
        s = 0
        for kind, wa, wb_, wo, last in row_beats:
            w = max(wa, wb_)
            s = max(s, pops[-D]) if len(pops) >= D else s      # room in the input FIFO
            t = max(s + w + FETCH_RETURN, pops[-1] + 1 if pops else 0)
            if bypass:
                lat = EmbedLanes.LATENCY
            else:
                t, lat = max(t, sfu_ready), SFU.LATENCY
            if wo:
                while sum(1 for ti, ai in flight if ti < t <= ai) >= SfuUnit.OUT_DEPTH:
                    t += 1
                a = max(t + lat + 1, wr_free)
                wr_free = a + wo
                flight.append((t, a))
            if not bypass:
                sfu_ready = t + gap(kind, no_key) if last and kind is not Sweep.OUT else t + 1
            pops.append(t)
            s += max(w, 2) if is_embed else w    # EMBED refills its descriptor a cycle after an issue
        # the next row's first beat may issue at s: state relative to it (clamped where it cannot matter)
        nxt = (tuple(max(ti - s, 0) for ti in pops[-D:]), max(sfu_ready - s, 0), max(wr_free - s, 0),
               tuple((max(ti - s, 0), ai - s) for ti, ai in flight if ai > s))
        return s, wr_free, nxt

    memo_beats, memo_rows = {}, {}
    state = ((), 0, 0, ())
    now, done = start, start
    rmod, tab = 0, tab0
    for r in range(rows):
        no_key = (causal and rmod + imm < 0) or (func == F.QUANT_ROWS and r in zero_rows)
        key = ((src_row % wsrc, src2_row % wsrc2, dst_row % wdst, tab % wsrc2) if not is_embed
               else (src_row % wsrc, dst_row % wdst))
        if key not in memo_beats:
            memo_beats[key] = beats(src_row, src2_row, dst_row, tab)
        rk = (key, no_key, state)
        if rk not in memo_rows:
            memo_rows[rk] = run_row(memo_beats[key], no_key, state)
        s, wr_free, state = memo_rows[rk]
        done = now + wr_free + 1                # the cycle after the last word is written
        now += s
        src_row += spitch
        dst_row += dpitch
        src2_row += 0 if bcast else 4 * cols
        wrap = period != 0 and rmod + 1 == period
        rmod = 0 if wrap else rmod + 1
        tab = tab0 if wrap else tab + depth * 8
    return done
