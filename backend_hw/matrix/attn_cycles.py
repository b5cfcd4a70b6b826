"""`AttnSequencer`'s cycles for one ATTN_QK / ATTN_PV, played cycle by cycle on a model of its
processes (backend_hw/matrix/attn.py): the K / V reader on `aports` (`_Reader` of the buffer's
read groups, `attn_lanes` words each; one command of every row's keys' records), the
consumer taking a chunk a cycle, the datapath's fixed latencies (`AttnSequencer.*_LATENCY`), the
score / output FIFO and the writer on `oport` (W0, and W1 when the int32 straddles two words), and
`sread` (q records, p rows) holding while the writer writes. The cycle of the `FINISH` state,
counting `SETUP` as cycle 1, is the instruction's cycles.

Assumptions (as matrix/cycles.py's): every request is granted at once; the sums fit `hold`.
"""
from __future__ import annotations

from collections import deque

from llmfab.ir.isa import CONTINUE, HOLD, BufferId, MiscFunc
from llmfab.ir.target import Target

from .attn import CAP, AttnSequencer, attn_lanes

A = AttnSequencer
ENTRY = len(A.ENTRY_STATES)          # SETUP, CHECK, FINISH


class _Writer:
    """The FIFO (SyncFIFOBuffered) and the writer: scores / outputs in order, `n_out` a row."""

    def __init__(self, addr: int, pitch: int, n_out: int, wb: int):
        self.addr, self.pitch, self.n_out, self.wb = addr, pitch, n_out, wb
        self.row, self.i = addr, 0
        self.q: deque[int] = deque()      # FIFO write cycles of the entries not yet written
        self.avail, self.hi, self.popped, self.rows = None, False, 0, 0

    def push(self, cycle: int):
        self.q.append(cycle)
        if self.avail is None and len(self.q) == 1:
            self.avail = cycle + A.FIFO_LATENCY

    def busy(self, c: int) -> bool:
        """`r_rdy` in cycle c: the writer has the port."""
        return self.avail is not None and self.avail <= c

    def step(self, c: int):
        if not self.busy(c):
            return
        if not self.hi and self.addr % self.wb + 4 > self.wb:
            self.hi = True
            return
        self.hi = False
        self.q.popleft()
        self.popped += 1
        self.i += 1
        self.addr += 4
        if self.i == self.n_out:
            self.i, self.row, self.rows = 0, self.row + self.pitch, self.rows + 1
            self.addr = self.row
        self.avail = max(self.q[0] + A.FIFO_LATENCY, c + 1) if self.q else None


def attn_cycles(target: Target, inst) -> int:
    from .cycles import _Reader, _reader_cap
    ob = target.engine.attn_bytes
    words, lanes = target.word_bytes, attn_lanes(target)
    is_qk = inst["func"] is MiscFunc.ATTN_QK
    rows, cols, depth, flags = inst["rows"], inst["cols"], inst["depth"], inst["flags"]
    swb, dwb = (words[BufferId(inst[b])] for b in ("src_buf", "dst_buf"))
    kgb = words[BufferId(inst["src2_buf"])] * lanes[BufferId(inst["src2_buf"])]     # a K / V read group
    cap = _reader_cap(ob, max(words.values()))
    kcap = _reader_cap(ob, max(words[b] * n for b, n in lanes.items()))
    rec, pitch2 = depth + 4, depth + 4 + inst["src2_pad"]
    nch = -(-rec // ob)
    spitch = inst["src_stride"] or (rec if is_qk else cols * 4)
    dpitch = inst["dst_stride"] or (cols * 4 if is_qk else depth * 4)
    if rows == 0 or (cols if is_qk else depth) == 0:
        return ENTRY
    writer = _Writer(inst["dst_addr"], dpitch, cols if is_qk else depth, dwb)
    if not is_qk and cols == 0:
        if flags & CONTINUE:
            return ENTRY if flags & HOLD else _outputs(writer, 3, rows, depth)
        zero_end = 2 + rows * (nch - 4 // ob)       # ZERO: an entry a cycle
        return zero_end + 1 if flags & HOLD else _outputs(writer, zero_end + 1, rows, depth)

    kr = _Reader(0, 0, ob, kgb, kcap)
    fetching = True                                # the K / V command not yet taken
    sread = _Reader(0, 0, ob, swb, cap)
    pr = 0                                         # PV: the next p row's command
    r = t = j = 0
    admitted = 0
    lr, loading = 0, False                         # QK: the q row the loader reads next; in LLOAD
    state = "QKEYS" if is_qk else "PKEYS"
    last_take = None
    c = 2
    while True:
        c += 1
        if c > 64 + 64 * (rows + 1) * (cols + 1) * (nch + 4) + 8 * rows * depth:
            raise RuntimeError("ATTN cycle model did not finish")
        wbusy = writer.busy(c)
        count = admitted - writer.popped
        issue = fetching and kr.idle()
        take = stake = False
        s_cmd = None
        nxt = state
        if is_qk:                                      # the q loader (LIDLE, LLOAD)
            if loading:
                stake = sread.valid()
                if stake and sread.last():
                    loading = False
            elif lr < rows and lr <= r + 1 and writer.rows + 1 >= lr and sread.idle():
                s_cmd, loading = (inst["src_addr"] + lr * spitch, rec, ob), True
        if state == "QKEYS":
            take = kr.valid() and lr > r and (j != 0 or count < CAP)
            admitted += take and j == 0
        elif state == "QDRAIN":
            if count == 0:
                nxt = "FINISH"
        elif state == "PKEYS":
            take = kr.valid() and (j != 0 or sread.valid())
            stake = take and j == 0
        elif state == "PDRAIN":
            if c > last_take + A.PV_LATENCY:
                nxt = "FINISH" if flags & HOLD else "OUT"
        elif state == "FINISH":
            return c
        else:                                          # OUT, ODRAIN
            return _outputs(writer, c, rows, depth)
        if not is_qk and pr < rows and sread.idle():
            s_cmd = (inst["src_addr"] + pr * spitch, 4 * cols, 4)
            pr += 1
        last = take and kr.last()
        if stake and is_qk and sread.last():
            lr += 1
        writer.step(c)
        kr.step(take)
        sread.step(stake, wbusy)
        if s_cmd is not None:
            sread = _Reader(*s_cmd[:2], s_cmd[2], swb, cap)
        if issue:
            packed = inst["src2_pad"] == 0           # records back to back: a row's keys are one run
            kr = _Reader(inst["src2_addr"], rec, ob, kgb, kcap, rows * cols - 1, pitch2,
                         1 if packed else cols, cols * rec if packed else 0, rows - 1)
            fetching = False
        if take:
            j += 1
            if last:
                j, t = 0, t + 1
                if is_qk:
                    writer.push(c + A.DOT_LATENCY + A.dot_registers(ob) + A.QK_LATENCY)
                if t == cols:
                    t, r = 0, r + 1
                    if r == rows:
                        nxt, last_take = ("QDRAIN" if is_qk else "PDRAIN"), c
        state = nxt


def _outputs(writer: _Writer, c0: int, rows: int, depth: int) -> int:
    """PV's OUT from cycle c0 (an output issued a cycle while fewer than CAP await their
    writes), ODRAIN until the last is written, FINISH: the FINISH cycle."""
    issued, total, c = 0, rows * depth, c0 - 1
    while True:
        c += 1
        count = issued - writer.popped
        done = issued == total and count == 0
        writer.step(c)
        if done:
            return c + 1
        if issued < total and count < CAP:
            writer.push(c + A.OUT_LATENCY)
            issued += 1
