"""The SFU instruction unit's cycles per instruction, derived from its RTL (backend_hw/sfu_unit.py):
from the cycle `SfuUnit` accepts a MISC instruction to the cycle its `done` pulses.

`sfu_cycles(target, inst)` replays the unit's sequencer beat by beat (one beat = up to `lanes`
elements of one pass over one row) with the RTL's recurrences, in cycles after the accept (0):

- start: IDLE accepts, SETUP decodes, RUN starts the first fetch at cycle `RUN_START`; EMBED first
  waits in GROUPS for the `cols / group` division (`EMBED_DIV_BITS` + 1 cycles).
- fetch: the two `PieceFetcher`s start together at S; each reads one word a cycle of its enabled
  pieces, the last word's data lands 2 cycles after its read, so the beat is handed over
  (`xfer`) at X = S + max(words on src, words on src2) + 2, and not before the previous beat left
  the hand-over register (X >= its take cycle). The next fetch starts at X + 1.
- SFU: takes a beat at T = max(X + 1, the SFU back in STREAM); after the last beat of a reduction
  pass it is out of STREAM for `SFU_PASS_GAP` cycles plus `RowScalars`' busy cycles
  (`SCALAR_CYCLES`, `QUANT_SCALAR_CYCLES`). An output beat reaches the FIFO `SFU.LATENCY` cycles
  after T; COPY and EMBED beats skip the SFU and reach it at X + 1. A beat is held while
  `OUT_DEPTH` results are between take and the writer (never in practice: the fetch is slower).
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

from .sfu import SFU
from .sfu_scalars import PASSES, QUANT_SCALAR_CYCLES, SCALAR_CYCLES, Pass
from .sfu_unit import SfuUnit

__all__ = ["sfu_cycles"]

F = MiscFunc
RUN_START = 2          # cycle of the first fetch start: accept (IDLE) 0, SETUP 1, RUN 2
EMBED_DIV_BITS = 17    # EMBED's cols / group divider: `SeqDivider(17, 16)` in SfuUnit.elaborate
SFU_PASS_GAP = 5       # SFU: last beat of a reduction pass -> first beat of the next: DRAIN0, DRAIN1,
                       # SCALARS, WAIT (one cycle each with RowScalars idle), then STREAM's take
FETCH_RETURN = 2       # fetch start S -> xfer: the start cycle, then the last word's read data (+1)


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
    if rows == 0 or cols == 0 or not (func in PASSES or func in (F.COPY, F.EMBED)):
        return 1
    L = target.sfu.lanes
    RB = 4 * L
    wbytes = {BufferId[b.name.name]: b.width_bits // 8 for b in target.buffers}
    depth, imm, period, flags = inst["depth"], inst["imm"], inst["period"], inst["flags"]
    ss, ds = inst["src_stride"], inst["dst_stride"]
    wsrc, wsrc2, wdst = wbytes[BufferId(inst["src_buf"])], wbytes[BufferId(inst["src2_buf"])], \
        wbytes[BufferId(inst["dst_buf"])]
    is_copy, is_embed = func == F.COPY, func == F.EMBED
    bypass = is_copy or is_embed
    passes = (Pass.OUT,) if bypass else PASSES[func]
    bits = imm & 15
    group = depth or cols
    code_bytes = (cols * bits + 7) >> 3
    nat_src = cols if is_copy else 4 * cols
    nat_dst = cols if is_copy else cols + 4 if func == F.QUANT_ROWS else 4 * cols
    start = RUN_START
    if is_embed:
        shift_off = code_bytes + 2 * (cols // group)
        nat_src = shift_off + 1
        start += EMBED_DIV_BITS + 1
    spitch, dpitch = ss or nat_src, ds or nat_dst
    src_row = inst["src_addr"] + (imm * spitch if is_copy else 0)
    src2_row, dst_row = inst["src2_addr"], inst["dst_addr"]
    tab0 = inst["src2_addr"] + imm * depth * 8
    bcast = func in (F.ADD, F.MUL) and bool(flags & BROADCAST)
    causal = func == F.SOFTMAX and bool(flags & CAUSAL)
    half = depth >> 1

    def gap(kind: Pass, skip: bool) -> int:
        busy = QUANT_SCALAR_CYCLES if func == F.QUANT_ROWS else SCALAR_CYCLES[kind]
        if skip and kind in (Pass.SSUM, Pass.AMAX):   # Z == 0, or amax == 0: no division
            busy = 0
        return SFU_PASS_GAP + busy

    def beats(src_row, src2_row, dst_row, tab):
        """Per beat of one row: (pass kind, src words, src2 words, result words or 0, pass end)."""
        out = []
        for kind in passes:
            is_out = kind is Pass.OUT
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

    def run_row(row_beats, no_key, state):
        """Time one row from its first fetch at 0, `state` relative to that: (take of the previous
        beat, SFU back in STREAM, writer free, (take, writer accept) of results still in flight).
        Returns the next row's first fetch and the writer's free cycle, relative, and the state."""
        t_prev, sfu_ready, wr_free, flight = state
        flight = list(flight)
        s = 0
        for kind, wa, wb_, wo, last in row_beats:
            x = max(s + max(wa, wb_) + FETCH_RETURN, t_prev)
            if bypass:
                t, lat = x + 1, 0
            else:
                t, lat = max(x + 1, sfu_ready), SFU.LATENCY
            if wo:
                while sum(1 for ti, ai in flight if ti < t <= ai) >= SfuUnit.OUT_DEPTH:
                    t += 1
                a = max(t + lat + 1, wr_free)
                wr_free = a + wo
                flight.append((t, a))
            if not bypass:
                sfu_ready = t + gap(kind, no_key) if last and kind is not Pass.OUT else t + 1
            t_prev, s = t, x + 1
        # the next row's first fetch is at s: state relative to it (clamped where it cannot matter)
        nxt = (max(t_prev - s, 0), max(sfu_ready - s, 0), max(wr_free - s, 0),
               tuple((max(ti - s, 0), ai - s) for ti, ai in flight if ai > s))
        return s, wr_free, nxt

    memo_beats, memo_rows = {}, {}
    state = (0, 0, 0, ())
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
