"""The matrix unit's cycles per instruction, from the RTL's structure (backend_hw/matrix_unit*.py).

`matrix_cycles(target, inst)` is what `MatrixUnit` takes from accepting a length-resolved MV, MM or
ATTN word to its `done` pulse. Every fixed cost below counts FSM states of `MatmulSequencer` /
`AttnSequencer`; the data-dependent parts (the weight fetch, the activation windows, the dot
products) are played cycle by cycle on a small model of the RTL's own handshakes, because their
cost depends on the start-up transient of the fixed-priority weight read port and its depth-3
FIFOs, not only on the steady-state rate:

- MV / MM: `SETUP`, `CHECK`, then per pass (n_chains weight rows x one token row) the record read
  (`REC`), per chain `SHIFT` / `BIAS` / `PREV` (a scalar read when live and flagged, else one
  state), `START`, `RUN` until the engine takes the row's last beat, `WAIT` for the engine's
  `latency`, the int32 writes (`WSEL`, `W0`, `W1` when the int32 straddles a word) and `NEXT`;
  then `FINISH`. The `RUN` phase: one weight-buffer read per cycle to the first (chain, stream)
  slot with words left and room in its FIFO (level + in flight < `FIFO_DEPTH`), each FIFO into
  its unpacker's gearbox (which takes a word while it holds <= 2 beats of bits), the activation
  `ByteReader`, and the lockstep engine firing when every chain has a beat and the window is there.
  In steady state that is max(weight words, activation words, beats) per pass, plus start-up.
- ATTN_QK: per query row the q record, per key the K record, the dot product (two ByteReaders in
  lockstep, chain_len bytes a cycle), `R1`..`R3` and the int32 write.
- ATTN_PV: per row, per key the p value, the V record, `PV_W`, `PV_CMD` and one V byte per cycle;
  then (without HOLD) per output element `PV_OUT`, the write and `PV_ONEXT`.

Assumptions: the unit's activation reader is as wide as this instruction's window (the RTL makes
it as wide as the widest format the unit was built for: pass `act_bytes` for another unit);
ATTN_PV fits the unit's held sums (`hold`, else it completes at once with `error`).
No data dependence: the matrix unit's cycles do not depend on values.
"""
from __future__ import annotations

from functools import lru_cache

from llmfab.ir.isa import HOLD, BufferId, MiscFunc, Opcode
from llmfab.ir.packing import MANT_FIELD_BITS
from llmfab.ir.quant import kept as kept_of
from llmfab.ir.target import Target

from .dsp48e2 import LATENCY as DSP_LATENCY
from .matrix_unit_io import buffer_words
from .matrix_unit_mm import FIFO_DEPTH, STREAMS
from .requant import Requantizer

# States that are always one cycle each (their names in the sequencers' FSMs).
MM_ENTRY = 3            # SETUP, CHECK, FINISH
MM_PASS_FIXED = 3       # START, the last WSEL (wc == n_chains or a dead chain), NEXT
WRITE_FIXED = 1         # WSEL before a live chain's W0 (+ W1 when the int32 straddles a word)
SKIPPED = 1             # SHIFT / BIAS / PREV with its condition false: one state
SCALAR_FIXED = 3        # a scalar read: the command state, and in its _W state the word's read and
                        # store cycles (the chunk leaves the cycle after its last word arrives)
QK_ENTRY = 3            # SETUP, the final QK_ROW (r == rows), FINISH
QK_ROW = 1              # QK_ROW
QK_KEY_FIXED = 5        # DOT_CMD, R1, R2, R3, QK_NEXT (+ the write, 1 or 2)
PV_ENTRY = 3            # SETUP, the final PV_ROW, FINISH
PV_ROW = 1              # PV_ROW
PV_KEY_FIXED = 2        # PV_W, PV_CMD (then PV_ACC until the last V byte)
PV_OUT_FIXED = 2        # PV_OUT, PV_ONEXT (+ the write, 1 or 2)
PV_OUT_END = 1          # PV_OUT with r == rows
GEARBOX_HOLD = 2        # a weight gearbox takes a word while it holds <= 2 beats (weight_unpack._Gearbox)


def _reader_cap(out_bytes: int, wb: int) -> int:
    """ByteReader.cap: its byte store holds two chunks and two words (it issues a word only while
    the store keeps room for it and the one in flight)."""
    return 2 * out_bytes + 2 * wb


def _words(addr: int, nbytes: int, wb: int) -> int:
    return (addr % wb + nbytes + wb - 1) // wb


def _scalar(addr: int, nbytes: int, wb: int) -> int:
    return SCALAR_FIXED + _words(addr, nbytes, wb)


def _write(addr: int, wb: int) -> int:
    """W0 (and W1 when the int32 at byte `addr` straddles two words)."""
    return 1 + (addr % wb + 4 > wb)


class _Reader:
    """matrix_unit_io.ByteReader, cycle by cycle: `comb()` then `step(ready)`."""

    def __init__(self, addr: int, nbytes: int, step: int, wb: int, cap: int):
        self.wb, self.cap, self.step_n = wb, cap, step
        self.skip = addr % wb
        self.words = (self.skip + nbytes + wb - 1) // wb
        self.out_left, self.n, self.pend = nbytes, 0, 0

    def valid(self) -> bool:
        return self.out_left != 0 and self.n >= min(self.out_left, self.step_n)

    def last(self) -> bool:
        return self.out_left <= self.step_n

    def step(self, take: bool):
        take_n = min(self.out_left, self.step_n)
        n1 = self.n - take_n if take else self.n
        issue = self.words != 0 and self.n + (self.pend + 1) * self.wb <= self.cap
        if take:
            self.out_left -= take_n
        if self.pend:
            self.n, self.skip = n1 + self.wb - self.skip, 0
        else:
            self.n = n1
        if issue:
            self.words -= 1
        self.pend = int(issue)


@lru_cache(maxsize=4096)
def _run_phase(nc: int, W: int, slots: tuple, beat_bits: tuple, bpg: int, beats: int,
               act: tuple) -> int:
    """Cycles from `START` to the engine taking the pass's last beat (the RUN state's last cycle).

    `slots`: per chain, per stream (codes, idx, mant) its (words, skip); `beat_bits`: bits a beat
    takes from each stream (0: no such stream); `act`: (skip, k, n_act, word bytes, cap)."""
    ns = len(STREAMS)
    left = [w for ch in slots for w, _ in ch]
    lvl = [0] * len(left)
    pend = -1
    g_n = [0] * len(left)
    g_left = list(left)
    g_skip = [s for ch in slots for _, s in ch]
    a_skip, k, n_act, awb, cap = act
    rd = _Reader(a_skip, k, n_act, awb, cap)
    beat, in_group = 0, 0
    t = 0
    limit = 64 + 8 * (sum(left) + rd.words + beats)
    while True:
        t += 1
        if t > limit:
            raise RuntimeError("matrix pass model did not finish")
        # combinational: the read port's choice, the FIFOs into the gearboxes, the engine's fire
        chosen = -1
        for j in range(len(left)):
            if left[j] and lvl[j] + (pend == j) < FIFO_DEPTH:
                chosen = j
                break
        last = in_group == bpg - 1
        have = rd.valid()
        for c in range(nc):
            for s in range(ns):
                b = beat_bits[s]
                if b and (s != 2 or last) and g_n[c * ns + s] < b:
                    have = False
        fire = have
        # sequential
        for j in range(len(left)):
            s = j % ns
            b = beat_bits[s]
            if not b:
                continue
            out = fire and (s != 2 or last)
            n1 = g_n[j] - b if out else g_n[j]
            take = g_left[j] != 0 and g_n[j] <= GEARBOX_HOLD * b and lvl[j] > 0
            if take:
                g_n[j] = n1 + W - g_skip[j]
                g_skip[j] = 0
                g_left[j] -= 1
            else:
                g_n[j] = n1
            lvl[j] += (pend == j) - take
        rd.step(fire)
        if chosen >= 0:
            left[chosen] -= 1
        pend = chosen
        if fire:
            if beat == beats - 1:
                return t
            beat += 1
            in_group = 0 if last else in_group + 1


def _engine_latency(target: Target) -> int:
    """MatrixEngine.latency: DSPChain.latency (skew chain_len - 1, DSP_LATENCY stages, the
    accumulator) + Requantizer.LATENCY; the engine's chains run one group of chain_len stages."""
    return target.engine.chain_len - 1 + DSP_LATENCY + 1 + Requantizer.LATENCY


def _matmul(target: Target, inst, act_bytes: int | None) -> int:
    e = target.engine
    nc, cl = e.n_chains, e.chain_len
    W = target.buffer("weight").width_bits
    words = buffer_words(target)
    wwb = words[BufferId.WEIGHT]
    abuf, obuf = BufferId(inst["abuf"]), BufferId(inst["obuf"])
    awb, owb = words[abuf], words[obuf]
    n, k = inst["n"], inst["k"]
    is_mm = inst.op is Opcode.MM
    rows = inst["m"] if is_mm else 1
    if n == 0 or rows == 0:
        return MM_ENTRY
    pitch = inst["o_stride"] if is_mm and inst["o_stride"] else 4 * n
    bits, pattern, size = inst["bits"].bits, inst["sparsity"].pattern, inst["group"].size
    groups = k // size if size and k > size else 1
    g_eff = k if size == 0 or size >= k else size
    kept = k if pattern is None else (k // pattern[1]) * pattern[0]
    ib = 0 if pattern is None else (pattern[1] - 1).bit_length()
    nbits = (kept * bits, kept * ib, groups * MANT_FIELD_BITS)
    beat_bits = (cl * bits, cl * ib, MANT_FIELD_BITS)
    bpg = max(1, kept_of(g_eff, pattern) // cl)
    beats = kept // cl
    n_act = cl if pattern is None else cl * pattern[1] // pattern[0]
    out_bytes = max(4, act_bytes or n_act, n_act)
    cap = _reader_cap(out_bytes, max(words.values()))
    bases = (inst["wbuf_addr"], inst["idx_addr"], inst["scale_addr"])
    shift_base = inst["scale_addr"] + 2 * n * groups
    lat = _engine_latency(target)
    total = MM_ENTRY
    for p, q in enumerate(range(0, n, nc)):
        slots = []
        for c in range(nc):
            ch = []
            for s in range(len(STREAMS)):
                ba = 8 * bases[s] + (q + c) * nbits[s]
                ch.append((0, 0) if nbits[s] == 0 else ((ba % W + nbits[s] + W - 1) // W, ba % W))
            slots.append(tuple(ch))
        slots = tuple(slots)
        for r in range(rows):
            a_row = inst["a_addr"] + r * (k + 4)
            o_row = inst["o_addr"] + r * pitch
            cyc = _scalar(a_row, 4, awb)
            live = [q + c < n for c in range(nc)]
            for c in range(nc):
                if not live[c]:
                    cyc += 3 * SKIPPED
                    continue
                cyc += _scalar(shift_base + q + c, 1, wwb)
                cyc += _scalar(inst["bias_addr"] + 4 * (q + c), 4, wwb) if inst["has_bias"] else SKIPPED
                cyc += _scalar(o_row + 4 * (q + c), 4, owb) if inst["accumulate"] else SKIPPED
                cyc += WRITE_FIXED + _write(o_row + 4 * (q + c), owb)
            cyc += MM_PASS_FIXED + lat
            cyc += _run_phase(nc, W, slots, beat_bits, bpg, beats, ((a_row + 4) % awb, k, n_act, awb, cap))
            total += cyc
    return total


def _stream_pair(a, b) -> int:
    """Cycles of the DOT state: two ByteReaders whose commands were taken the cycle before, a chunk
    of each taken together; until the first reader's last chunk."""
    t = 0
    while True:
        t += 1
        both = a.valid() and b.valid()
        done = both and a.last()
        a.step(both)
        b.step(both)
        if done:
            return t


def _stream_one(a) -> int:
    t = 0
    while True:
        t += 1
        v = a.valid()
        done = v and a.last()
        a.step(v)
        if done:
            return t


def _attn(target: Target, inst) -> int:
    cl = target.engine.chain_len
    words = buffer_words(target)
    ob = max(4, cl)
    is_qk = inst["func"] is MiscFunc.ATTN_QK
    rows, cols, depth = inst["rows"], inst["cols"], inst["depth"]
    sb, kb, db = BufferId(inst["src_buf"]), BufferId(inst["src2_buf"]), BufferId(inst["dst_buf"])
    swb, kwb, dwb = words[sb], words[kb], words[db]
    cap_s = cap_k = _reader_cap(ob, max(words.values()))
    pitch2 = depth + 4 + inst["src2_pad"]
    spitch = inst["src_stride"] or (depth + 4 if is_qk else cols * 4)
    dpitch = inst["dst_stride"] or (cols * 4 if is_qk else depth * 4)
    if is_qk:
        if cols == 0:
            return QK_ENTRY
        total = QK_ENTRY
        for r in range(rows):
            s_row, d_row = inst["src_addr"] + r * spitch, inst["dst_addr"] + r * dpitch
            total += QK_ROW + _scalar(s_row, 4, swb)
            for t in range(cols):
                k_row = inst["src2_addr"] + t * pitch2
                total += _scalar(k_row, 4, kwb) + QK_KEY_FIXED + _write(d_row + 4 * t, dwb)
                if depth:
                    total += _stream_pair(_Reader(s_row + 4, depth, cl, swb, cap_s),
                                          _Reader(k_row + 4, depth, cl, kwb, cap_k))
        return total
    if depth == 0:
        return PV_ENTRY
    total = PV_ENTRY
    for r in range(rows):
        s_row = inst["src_addr"] + r * spitch
        total += PV_ROW
        if cols == 0:
            total += depth
        for t in range(cols):
            k_row = inst["src2_addr"] + t * pitch2
            total += _scalar(s_row + 4 * t, 4, swb) + _scalar(k_row, 4, kwb) + PV_KEY_FIXED
            total += _stream_one(_Reader(k_row + 4, depth, 1, kwb, cap_k))
    if not inst["flags"] & HOLD:
        total += PV_OUT_END
        for r in range(rows):
            d_row = inst["dst_addr"] + r * dpitch
            for d in range(depth):
                total += PV_OUT_FIXED + _write(d_row + 4 * d, dwb)
    return total


def matrix_cycles(target: Target, inst, *, act_bytes: int | None = None) -> int:
    """Cycles of `MatrixUnit` for one length-resolved MV, MM or ATTN (ATTN_QK / ATTN_PV)
    instruction, from the cycle it is accepted to its `done` pulse (module docstring).

    `act_bytes`: the window of the unit's activation reader (the widest N:M window of the formats
    it was built for); default: this instruction's own."""
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, not {target!r}")
    if inst.op in (Opcode.MV, Opcode.MM):
        return _matmul(target, inst, act_bytes)
    if inst.op is Opcode.ATTN and inst["func"] in (MiscFunc.ATTN_QK, MiscFunc.ATTN_PV):
        return _attn(target, inst)
    raise ValueError(f"the matrix unit runs MV, MM, ATTN_QK and ATTN_PV, not {inst.op.name}")
