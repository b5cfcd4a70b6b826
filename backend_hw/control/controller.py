"""The instruction controller: decode, dispatch into the four queues, dependency tokens, SYS.

Instructions arrive one 256-bit word at a time on a stream, in program order (a fetch unit reads
them from the instruction buffer or HBM). The controller resolves the length register into the
one LEN-relative field (docs/isa.md, `resolve_length`), pushes each queued instruction into its
queue's FIFO, and issues the head of each queue to its unit once every queue named in its `wait`
mask has a token for it. Units report completion with a `done` pulse, in the order they accepted
instructions; the controller then adds the `release` tokens. SYNC, SET_LEN and END wait until
every queue is empty and every unit has reported `done` for everything it took.

Every bit position comes from the field tables of `llmfab.ir.isa` at elaboration time.
"""
from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import FIELDS, INST_BITS, LENGTH_FIELD, QUEUE_OF, Opcode, Queue, SysFunc, lookup_field
from llmfab.ir.target import Target

from ..protocol.isa_fields import field, header

QUEUE_NAMES = {Queue.LOAD: "load", Queue.MATRIX: "matrix", Queue.SFU: "sfu", Queue.STORE: "store"}

class Controller(wiring.Component):
    """Decodes and dispatches instructions; orders the queues with dependency tokens.

    Ports:
    - `inst` (in, stream of 256-bit words): the program, in order.
    - `load`, `matrix`, `sfu`, `store` (out, streams of 256-bit words): each queue's instructions,
      in program order, length-resolved (`len_reg` and `len_pos` cleared).
    - `done` (in, 4 bits, one per `Queue` bit): a one-cycle pulse when that queue's unit completes
      the oldest instruction it took; a pulse with nothing outstanding is ignored.
    - `start` (in): clears the token counters, loads LEN from `length` and starts fetching.
    - `length` (in, 32): LEN for the next `start`; `len` (out, 32): the length register.
    - `running` (out): between `start` and END; `halted` (out): END executed (until `start`).
    - `error` (out): an illegal opcode was fetched (it is dropped); sticky until `start`.

    Latency: an instruction accepted at cycle t is in its queue's FIFO at t+1 and can be issued
    at t+2; a `done` at t makes its tokens usable at t+1. A barrier executes one cycle after the
    queues drain. Throughput: one instruction per cycle while the FIFOs have room.
    """

    def __init__(self, target: Target, *, counter_max: int | None = None, queue_depth: int | None = None,
                 in_flight: int = 4):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        # Dependency-token counters are 5 bits by default, as in FlightLLM's artifact ISA.
        counter_max = target.controller.token_counter_max if counter_max is None else counter_max
        queue_depth = target.controller.queue_depth if queue_depth is None else queue_depth
        for name, v in (("counter_max", counter_max), ("queue_depth", queue_depth), ("in_flight", in_flight)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self.target = target
        self.counter_max = counter_max
        self.queue_depth = queue_depth
        self.in_flight = in_flight
        members = {"inst": In(stream.Signature(INST_BITS)), "done": In(len(Queue)),
                   "start": In(1), "length": In(32), "len": Out(32),
                   "running": Out(1), "halted": Out(1), "error": Out(1)}
        members.update({name: Out(stream.Signature(INST_BITS)) for name in QUEUE_NAMES.values()})
        super().__init__(members)
        # Token counters per channel src -> dst (visible to tests): tokens ready to be consumed,
        # and tokens promised by issued instructions that have not completed yet.
        width = counter_max.bit_length()
        self.tokens = {(s, d): Signal(width, name=f"tok_{s.letter}{d.letter}") for s in Queue for d in Queue if s != d}
        self.reserved = {(s, d): Signal(width, name=f"res_{s.letter}{d.letter}") for s in Queue for d in Queue if s != d}

    def queue_port(self, q: Queue):
        return getattr(self, QUEUE_NAMES[q])

    def elaborate(self, platform) -> Module:
        m = Module()
        length = Signal(32)
        m.d.comb += self.len.eq(length)

        # -- dispatch stage: one instruction register --------------------------------------------
        cur = Signal(INST_BITS)
        cur_valid = Signal()
        addend = Signal(32)            # LEN, or LEN * scale, for cur's length field
        op = header(cur, "op")
        sys_func = field(cur, Opcode.SYS, "func")

        fifos = {}
        for q in Queue:
            fifos[q] = m.submodules[f"fifo_{QUEUE_NAMES[q]}"] = SyncFIFO(width=INST_BITS, depth=self.queue_depth)
        flights = {}
        for q in Queue:
            flights[q] = m.submodules[f"flight_{QUEUE_NAMES[q]}"] = SyncFIFO(width=len(Queue), depth=self.in_flight)

        resolved = Signal(INST_BITS)
        m.d.comb += resolved.eq(cur)
        for (lop, pos), (name, _scale) in LENGTH_FIELD.items():
            has_pos = any(f.name == "len_pos" for f in FIELDS[lop])
            cond = (op == lop) & header(cur, "len_reg")
            if has_pos:
                cond &= field(cur, lop, "len_pos") == pos
            f = lookup_field(lop, name)
            with m.If(cond):
                m.d.comb += resolved[f.offset:f.offset + f.bits].eq(cur[f.offset:f.offset + f.bits] + addend)
                m.d.comb += header(resolved, "len_reg").eq(0)
                if has_pos:
                    m.d.comb += field(resolved, lop, "len_pos").eq(0)

        drained = Signal()
        m.d.comb += drained.eq(~Cat(*(fifos[q].r_rdy for q in Queue), *(flights[q].r_rdy for q in Queue)).any())

        leave = Signal()   # cur goes on this cycle and a new instruction may take its place
        barrier_done = Signal()
        with m.If(cur_valid):
            with m.Switch(op):
                for o, q in QUEUE_OF.items():
                    if q is None:
                        continue
                    with m.Case(o):
                        m.d.comb += [fifos[q].w_data.eq(resolved), fifos[q].w_en.eq(1), leave.eq(fifos[q].w_rdy)]
                with m.Case(Opcode.SYS):
                    with m.If(sys_func == SysFunc.NOP):
                        m.d.comb += leave.eq(1)
                    with m.Elif(drained):
                        m.d.comb += barrier_done.eq(1)
                        with m.If(sys_func == SysFunc.SET_LEN):
                            m.d.sync += length.eq(field(cur, Opcode.SYS, "imm"))
                        with m.If(sys_func == SysFunc.END):
                            m.d.sync += [self.halted.eq(1), self.running.eq(0)]
                with m.Default():   # an opcode the ISA lacks (7): drop it and say so
                    m.d.comb += leave.eq(1)
                    m.d.sync += self.error.eq(1)

        m.d.comb += self.inst.ready.eq(self.running & (~cur_valid | leave))
        with m.If(self.inst.valid & self.inst.ready):
            m.d.sync += [cur.eq(self.inst.payload), cur_valid.eq(1)]
        with m.Elif(leave | barrier_done):
            m.d.sync += cur_valid.eq(0)

        # LEN * scale for the incoming word, so the dispatch stage only adds. LEN cannot change
        # between here and dispatch: SET_LEN is a barrier and blocks the fetch while it waits.
        in_op = header(self.inst.payload, "op")
        scale = Signal(32)
        m.d.comb += scale.eq(1)
        for (lop, pos), (_name, sname) in LENGTH_FIELD.items():
            if sname is None:
                continue
            with m.If((in_op == lop) & (field(self.inst.payload, lop, "len_pos") == pos)):
                m.d.comb += scale.eq(field(self.inst.payload, lop, sname))
        with m.If(self.inst.valid & self.inst.ready):
            m.d.sync += addend.eq((length * scale)[:32])

        # -- issue: the head of each queue, once its tokens are there -----------------------------
        issue = {}
        for q in Queue:
            port = self.queue_port(q)
            head = fifos[q].r_data
            wait, release = header(head, "wait"), header(head, "release")
            ok = fifos[q].r_rdy & flights[q].w_rdy
            for s in Queue:
                if s is q:
                    continue
                ok &= ~wait[_bit(s)] | (self.tokens[(s, q)] != 0)
                # A counter that would overflow stalls the releasing instruction (docs/isa.md).
                ok &= ~release[_bit(s)] | (self.tokens[(q, s)] + self.reserved[(q, s)] < self.counter_max)
            issue[q] = Signal(name=f"issue_{QUEUE_NAMES[q]}")
            m.d.comb += [port.payload.eq(head), port.valid.eq(ok), issue[q].eq(ok & port.ready),
                         fifos[q].r_en.eq(issue[q]),
                         flights[q].w_data.eq(release), flights[q].w_en.eq(issue[q]),
                         flights[q].r_en.eq(self.done[_bit(q)])]

        # -- token counters -----------------------------------------------------------------------
        for (s, d), tok in self.tokens.items():
            res = self.reserved[(s, d)]
            completed = self.done[_bit(s)] & flights[s].r_rdy & flights[s].r_data[_bit(d)]
            consumed = issue[d] & header(fifos[d].r_data, "wait")[_bit(s)]
            promised = issue[s] & header(fifos[s].r_data, "release")[_bit(d)]
            m.d.sync += [tok.eq(tok + completed - consumed), res.eq(res + promised - completed)]

        with m.If(self.start):
            m.d.sync += [length.eq(self.length), self.running.eq(1), self.halted.eq(0), self.error.eq(0)]
            m.d.sync += [t.eq(0) for t in self.tokens.values()]
            m.d.sync += [r.eq(0) for r in self.reserved.values()]
        return m


def _bit(q: Queue) -> int:
    return q.bit_length() - 1

