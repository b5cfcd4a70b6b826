"""The matrix unit's cycles per instruction, from the RTL's structure (backend_hw/matrix/unit.py, mm.py, attn.py).

`matrix_cycles(target, inst)` is what `MatrixUnit` takes from accepting a length-resolved MV, MM or
ATTN word to its `done` pulse. Every fixed cost below counts FSM states of `MatmulSequencer` /
`AttnSequencer`; the data-dependent parts (the weight fetch, the activation windows, the dot
products) are played cycle by cycle on a small model of the RTL's own handshakes, because their
cost depends on the start-up transient of the fixed-priority weight read ports and their depth-3
FIFOs, not only on the steady-state rate:

- MV / MM: `SETUP`, `CHECK`, then the passes (n_chains weight rows x one token row) through three
  overlapping processes, played as events: the side FSM on `oport` decides in `DISPATCH` between
  writing the next pass (once its outputs are in its output set: `W0` / `W1` per live chain) and
  loading the next pass's scalars (once the runner has taken the loaded set and fewer than
  `out_sets` passes await their writes): the token record, the live chains' shifts, then their
  biases / old outputs when flagged, each a `ByteReader` command (its state + one chunk a cycle).
  The runner takes a loaded set (`START`) the cycle after it is loaded and after the previous
  pass's last beat, then `RUN`s until the engine takes the pass's last beat; the outputs are in
  their set `MatrixEngine.latency` + 1 cycles later; `FINISH` after the last pass's writes.
  The runner is played cycle by cycle over the whole instruction (`_Runner`), since each pass
  starts from what was fetched ahead during the one before: per chain one weight-buffer read per
  cycle (each chain has its own port) to the first of its stream slots with words left and room
  in its FIFO (level + in flight < `FIFO_DEPTH`), a slot done with its pass moving on to the next
  pass's words; each FIFO into its unpacker's gearbox (which takes a word while it holds <= 2
  beats of bits, not in the `START` cycle that flushes it); two activation `ByteReader`s in turn,
  the next pass's reading only once the running pass's has issued all its words; and the lockstep
  engine firing when every chain has a beat and the window is there. In steady state a pass costs
  max(a chain's weight words, activation words, beats) + 3; the scalars and the writes are hidden.
- ATTN_QK / ATTN_PV: backend_hw/matrix/attn_cycles.py, played on the same `_Reader`.

Assumptions: the unit's activation reader is as wide as this instruction's window (the RTL makes
it as wide as the widest format the unit was built for: pass `act_bytes` for another unit);
ATTN_PV fits the unit's held sums (`hold`, else it completes at once with `error`).
No data dependence: the matrix unit's cycles do not depend on values.
"""
from __future__ import annotations

from llmfab.ir.isa import BufferId, MiscFunc, Opcode
from llmfab.ir.packing import MANT_FIELD_BITS
from llmfab.ir.quant import NM
from llmfab.ir.quant import kept as kept_of
from llmfab.ir.target import Target

from ..engine.dsp48e2 import LATENCY as DSP_LATENCY
from ..engine.requant import Requantizer
from ..engine.weight_unpack import _Gearbox
from .buffer_io import ByteReader
from .mm import FIFO_DEPTH, OUT_SETS, STREAMS, MatmulSequencer

# FSM states that take one cycle each, named where the sequencers define them
MM_ENTRY = len(MatmulSequencer.ENTRY_STATES)
LOAD_FIRST = 1 + len(MatmulSequencer.FIRST_LOAD_STATES)   # the cycle of the first L_REC (accept = 0)
SCALAR_BYTES = MatmulSequencer.SCALAR_BYTES
GEARBOX_HOLD = _Gearbox.HOLD_BEATS
_reader_cap = ByteReader.capacity


def _words(addr: int, nbytes: int, wb: int) -> int:
    return (addr % wb + nbytes + wb - 1) // wb


def _write(addr: int, wb: int) -> int:
    """W0 (and W1 when the int32 at byte `addr` straddles two words)."""
    return 1 + (addr % wb + 4 > wb)


def _writes(base: int, live: int, owb: int, wbmax: int) -> int:
    """A pass's writes from DISPATCH (which takes the set): a word a cycle (`WA`) when the int32
    are 4-byte aligned in a buffer of the widest word, else an int32 at a time (`W0`/`W1`)."""
    if owb == wbmax and base % 4 == 0:
        lanes = wbmax // 4
        return 1 + -(-(base % wbmax // 4 + live) // lanes)
    return 1 + sum(_write(base + 4 * c, owb) for c in range(live))


class _Reader:
    """buffer_io.ByteReader, cycle by cycle: `valid()` / `last()` / `idle()`, then `step(take, hold)`.
    `wb`: the bytes of the buffer's read group; `more` records after the first, `pitch` bytes apart,
    back at `addr` after every `wrap` (when not 0); `run` (not 0): read as `rmore + 1` runs of `run`."""

    def __init__(self, addr: int, nbytes: int, step: int, wb: int, cap: int, more: int = 0, pitch: int = 0,
                 wrap: int = 0, run: int = 0, rmore: int = 0):
        self.wb, self.cap, self.step_n, self.nbytes, self.pitch = wb, cap, step, nbytes, pitch
        self.base, self.wrap, self.k = addr, wrap, 1
        self.raddr, self.skip = addr, addr % wb
        self.rlen = run or nbytes
        self.rd_left, self.rd_more = (self.rlen, rmore if run else more) if nbytes else (0, 0)
        self.out_left, self.out_more = nbytes, more if nbytes else 0
        self.n, self.pend, self.pend_n = 0, 0, 0

    def valid(self) -> bool:
        return self.out_left != 0 and self.n >= min(self.out_left, self.step_n)

    def last(self) -> bool:
        return self.out_left <= self.step_n

    def idle(self) -> bool:
        """Ready for a command."""
        return self.rd_left == 0 and not self.pend and self.out_left == 0

    def step(self, take: bool, hold: bool = False):
        take_n = min(self.out_left, self.step_n)
        n1 = self.n - take_n if take else self.n
        issue = self.rd_left != 0 and self.n + (self.pend + 1) * self.wb <= self.cap and not hold
        if take:
            if self.out_left <= self.step_n and self.out_more:
                self.out_left, self.out_more = self.nbytes, self.out_more - 1
            else:
                self.out_left -= take_n
        self.n = n1 + self.pend_n if self.pend else n1
        if issue:
            room = self.wb - self.skip
            self.pend_n = min(room, self.rd_left)
            if self.rd_left > room:
                self.skip, self.rd_left = 0, self.rd_left - room
            elif self.rd_more:
                again = self.k == self.wrap
                self.raddr, self.k = (self.base, 1) if again else (self.raddr + self.pitch, self.k + 1)
                self.skip, self.rd_left, self.rd_more = self.raddr % self.wb, self.rlen, self.rd_more - 1
            else:
                self.rd_left = 0
        self.pend = int(issue)


class _Runner:
    """MatmulSequencer's runner, its weight fetch and activation readers, and the engine's input,
    cycle by cycle over a whole instruction. `passes[j]`: per chain, per stream (codes, idx, mant)
    its (words, skip), and the activation row's (byte address, byte count). `start(S)` plays the
    cycles up to the pass's `START` in cycle S (the fetch and the other reader running ahead for
    it), then its `RUN`; it returns the cycle in which the engine takes the pass's last beat."""

    def __init__(self, nc, W, passes, beat_bits, bpg, beats, n_act, awb, cap):
        self.nc, self.W, self.passes, self.beat_bits = nc, W, passes, beat_bits
        self.bpg, self.beats, self.n_act, self.awb, self.cap = bpg, beats, n_act, awb, cap
        ns = self.ns = len(STREAMS)
        self.lvl = [0] * (nc * ns)            # FIFO levels
        self.left = [0] * (nc * ns)           # words still to fetch
        self.ahead = [False] * (nc * ns)      # the slot fetches the next pass's words
        self.pend = [-1] * nc                 # per chain: the slot whose word is in flight
        self.g_n = [0] * (nc * ns)            # gearboxes: bits held, words to take, skip
        self.g_left = [0] * (nc * ns)
        self.g_skip = [0] * (nc * ns)
        self.rd = [_Reader(0, 0, n_act, awb, cap) for _ in range(2)]
        self.nxt, self.a_ahead, self.more = 0, False, False
        self.t, self.j = 0, -1                # the last cycle played; the pass that started last

    def _reader(self, j):
        addr, k = self.passes[j][1]
        return _Reader(addr, k, self.n_act, self.awb, self.cap)

    def _cycle(self, go: bool, running: bool):
        """One cycle: `go` the START cycle of pass self.j + 1, `running` its RUN. Returns
        (fired, the beat was the row's last)."""
        nc, ns, W = self.nc, self.ns, self.W
        chosen = [-1] * nc
        for c in range(nc):
            for j in range(c * ns, (c + 1) * ns):
                if self.left[j] and self.lvl[j] + (self.pend[c] == j) < FIFO_DEPTH:
                    chosen[c] = j
                    break
        last = self.in_group == self.bpg - 1 if running else False
        cur = self.rd[1 - self.nxt]
        fire = running and cur.valid()
        if fire:
            for j in range(nc * ns):
                b = self.beat_bits[j % ns]
                if b and (j % ns != 2 or last) and self.g_n[j] < b:
                    fire = False
        # sequential
        for j in range(nc * ns):
            b = self.beat_bits[j % ns]
            if not b:
                continue
            out = fire and (j % ns != 2 or last)
            n1 = self.g_n[j] - b if out else self.g_n[j]
            take = not go and self.g_left[j] != 0 and self.g_n[j] <= GEARBOX_HOLD * b and self.lvl[j] > 0
            if take:
                self.g_n[j], self.g_skip[j] = n1 + W - self.g_skip[j], 0
                self.g_left[j] -= 1
            else:
                self.g_n[j] = n1
            self.lvl[j] += (self.pend[j // ns] == j) - take
        busy = [r.rd_left != 0 for r in self.rd]          # ByteReader's `busy`
        cur.step(fire)
        other = self.rd[self.nxt]
        other.step(False, hold=busy[1 - self.nxt])
        for c in range(nc):
            if chosen[c] >= 0:
                self.left[chosen[c]] -= 1
        self.pend = chosen
        nxt_pass = self.j + 1
        if go:
            words = self.passes[nxt_pass][0]
            for j in range(nc * ns):
                w, skip = words[j // ns][j % ns]
                if not self.ahead[j]:
                    self.left[j] = w
                self.ahead[j] = False
                self.g_n[j], self.g_skip[j], self.g_left[j] = 0, skip, w
            if not self.a_ahead:
                self.rd[self.nxt] = self._reader(nxt_pass)
            self.nxt, self.a_ahead = 1 - self.nxt, False
            self.more = nxt_pass + 1 < len(self.passes)
            self.beat, self.in_group = 0, 0
        elif self.more:
            words = self.passes[self.j + 1][0]
            for j in range(nc * ns):
                if not self.ahead[j] and self.left[j] == 0 and not (chosen[j // ns] == j):
                    self.ahead[j] = True
                    self.left[j] = words[j // ns][j % ns][0]
            if not self.a_ahead and other.idle_before:
                self.rd[self.nxt] = self._reader(self.j + 1)
                self.a_ahead = True
        if fire:
            self.beat += 1
            self.in_group = 0 if last else self.in_group + 1
        return fire, fire and self.beat == self.beats

    def start(self, S: int) -> int:
        limit = S + 64 + 8 * sum(w for ch in self.passes[self.j + 1][0] for w, _ in ch) + 8 * self.beats
        while self.t + 1 < S:
            self._prep()
            self.t += 1
            self._cycle(False, False)
        self._prep()
        self.t += 1
        self._cycle(True, False)
        self.j += 1
        while True:
            self._prep()
            self.t += 1
            if self.t > limit:
                raise RuntimeError("matrix pass model did not finish")
            _, done = self._cycle(False, True)
            if done:
                return self.t

    def _prep(self):
        # the cmd handshake looks at the reader's state at the start of the cycle
        for r in self.rd:
            r.idle_before = r.idle()


def _engine_latency(target: Target) -> int:
    """MatrixEngine.latency: DSPChain.latency (skew chain_len - 1, DSP_LATENCY stages, the
    accumulator) + Requantizer.LATENCY; the engine's chains run one group of chain_len stages."""
    return target.engine.chain_len - 1 + DSP_LATENCY + 1 + Requantizer.LATENCY


def _read(addr: int, nbytes: int, step: int, wb: int, cap: int) -> int:
    """A loader read: its command state, then until its last chunk is taken (a chunk a cycle)."""
    return 1 + _stream_one(_Reader(addr, nbytes, step, wb, cap))


def _matmul(target: Target, inst, act_bytes: int | None, out_sets: int) -> int:
    e = target.engine
    nc, cl = e.n_chains, e.chain_len
    W = target.buffer("weight").width_bits
    words = target.word_bytes
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
    kept = kept_of(k, pattern)
    ib = 0 if pattern is None else NM(*pattern).index_bits
    nbits = (kept * bits, kept * ib, groups * MANT_FIELD_BITS)
    beat_bits = (cl * bits, cl * ib, MANT_FIELD_BITS)
    bpg = max(1, kept_of(g_eff, pattern) // cl)
    beats = kept // cl
    n_act = cl if pattern is None else cl * pattern[1] // pattern[0]
    out_bytes = max(4, act_bytes or n_act, n_act)
    wbmax = max(words.values())
    cap, scap = _reader_cap(out_bytes, wbmax), _reader_cap(SCALAR_BYTES, wbmax)
    shift_base = inst["scale_addr"]
    lat = _engine_latency(target)

    def o_row_of(r):
        return inst["o_addr"] + r * pitch

    passes = [(q, r) for q in range(0, n, nc) for r in range(rows)]
    streams = []
    for q, r in passes:
        # chain-interleaved streams (ir/packing.py): every chain's pass starts at the same bit of
        # its own sub-stream, and the sub-streams start on words
        ch = []
        for s in range(len(STREAMS)):
            ba = q // nc * nbits[s]
            ch.append((0, 0) if nbits[s] == 0 else ((ba % W + nbits[s] + W - 1) // W, ba % W))
        streams.append(((tuple(ch),), (inst["a_addr"] + r * (k + 4) + 4, k)))
    # every chain's streams are the same and the chains fire in lockstep: one chain plays them all
    runner = _Runner(1, W, streams, beat_bits, bpg, beats, n_act, awb, cap)

    # The processes' events, in cycles from the accepting one (SETUP is cycle 1). The side FSM
    # (loader + writer) decides in DISPATCH: write the next pass once its outputs are in, else load
    # the next pass once the runner took the one before and fewer than OUT_SETS passes await writes.
    P = len(passes)
    start, taken = [], []
    side, nl, nw = LOAD_FIRST, 0, 0
    while nw < P:
        w_ready = taken[nw] + lat + 1 if nw < nl else None            # its set is full
        l_ready = None
        if nl < P and nl - nw < out_sets:
            l_ready = side if nl == 0 else max(side, start[nl - 1] + 1)  # the loaded set is free
        if w_ready is not None and w_ready <= side:
            q, r = passes[nw]
            side += _writes(o_row_of(r) + 4 * q, min(nc, n - q), owb, wbmax)
            nw += 1
        elif l_ready is not None and l_ready <= side:
            q, r = passes[nl]
            live = min(nc, n - q)
            t = side + _read(inst["a_addr"] + r * (k + 4), 4, 4, awb, scap)
            if r == 0:                        # later token rows keep the weight rows' shifts, biases
                t += _read(shift_base + q, live, SCALAR_BYTES, wwb, scap)
                if inst["has_bias"]:
                    t += _read(inst["bias_addr"] + 4 * q, 4 * live, 4, wwb, scap)
            if inst["accumulate"]:
                t += _read(o_row_of(r) + 4 * q, 4 * live, 4, owb, scap)
            side = t                                                      # DISPATCH again; the set is full
            start.append(t if nl == 0 else max(t, taken[nl - 1] + 1))    # the runner takes it
            taken.append(runner.start(start[nl]))
            nl += 1
        else:
            side = min(v for v in (w_ready, l_ready) if v is not None)   # DISPATCH waits
    return side                       # FINISH


def _stream_one(a) -> int:
    t = 0
    while True:
        t += 1
        v = a.valid()
        done = v and a.last()
        a.step(v)
        if done:
            return t


def matrix_cycles(target: Target, inst, *, act_bytes: int | None = None, out_sets: int = OUT_SETS) -> int:
    """Cycles of `MatrixUnit` for one length-resolved MV, MM or ATTN (ATTN_QK / ATTN_PV)
    instruction, from the cycle it is accepted to its `done` pulse (module docstring).

    `act_bytes`: the window of the unit's activation reader (the widest N:M window of the formats
    it was built for); default: this instruction's own. `out_sets`: the unit's (`MatrixUnit`)."""
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, not {target!r}")
    if inst.op in (Opcode.MV, Opcode.MM):
        return _matmul(target, inst, act_bytes, out_sets)
    if inst.op is Opcode.ATTN and inst["func"] in (MiscFunc.ATTN_QK, MiscFunc.ATTN_PV):
        from .attn_cycles import attn_cycles    # (it plays cycles.py's _Reader)
        return attn_cycles(target, inst)
    raise ValueError(f"the matrix unit runs MV, MM, ATTN_QK and ATTN_PV, not {inst.op.name}")
