# amaranth: UnusedElaboratable=no
"""backend_hw.controller: dispatch, dependency tokens and SYS against a cycle model and the ISA rules.

Units are modelled in the testbench as fixed-latency responders (a random latency per queue; some
take one instruction at a time, some are pipelined). Every run checks, from the events seen on the
ports alone: each instruction reaches the right queue exactly once, in program order per queue,
length-resolved; no instruction issues before the releases it waits for have completed; nothing
passes a barrier before the queues drained; END halts. The issue cycle of every instruction is
compared with `ControllerModel`, a plain Python version of the same rules, and the hardware
counters with the token counts derived from the port events.
"""
import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from llmfab.backend_hw.control.controller import Controller
from llmfab.ir.isa import (FIELDS, QUEUE_OF, IsaError, MiscFunc, Opcode, Program, Queue, SysFunc, check_tokens,
                           encode, make, resolve_length)
from llmfab.ir.target import load_target
from conftest import tiny_compiled

TOKEN_COUNTER_MAX = load_target("sim-small").controller.token_counter_max

DEPTH, IN_FLIGHT = 4, 4


class Units:
    """Fixed-latency responders: done `lat[q]` cycles after issue; blocking units take one at a time."""

    def __init__(self, lat, blocking):
        self.lat, self.blocking = lat, blocking
        self.pending = {q: deque() for q in Queue}   # done cycles

    def ready(self, q, c):
        return not (self.blocking[q] and self.pending[q])

    def done(self, q, c):
        return bool(self.pending[q]) and self.pending[q][0] == c

    def step(self, c, issued):
        for q in Queue:
            if self.done(q, c):
                self.pending[q].popleft()
            if issued[q]:
                self.pending[q].append(c + self.lat[q])


class ControllerModel:
    """The controller's rules, cycle by cycle: returns {index: issue cycle}, the accept cycles and the halt cycle."""

    def __init__(self, insts, length, units, counter_max=TOKEN_COUNTER_MAX):
        self.insts, self.length, self.units, self.cmax = insts, length, units, counter_max

    def run(self, max_cycles):
        insts, u = self.insts, self.units
        tokens = {(s, d): 0 for s in Queue for d in Queue if s != d}
        reserved = dict(tokens)
        fifo = {q: deque() for q in Queue}
        flight = {q: deque() for q in Queue}
        cur, pc, issued_at, accepted_at = None, 0, {}, {}
        for c in range(max_cycles):
            done = {q: u.done(q, c) for q in Queue}
            issued = {}
            for q in Queue:
                ok = bool(fifo[q]) and len(flight[q]) < IN_FLIGHT and u.ready(q, c)
                if ok:
                    i = insts[fifo[q][0]]
                    ok = all(tokens[(s, q)] > 0 for s in Queue if i.wait & s) and \
                        all(tokens[(q, d)] + reserved[(q, d)] < self.cmax for d in Queue if i.release & d)
                issued[q] = ok
            drained = not any(fifo.values()) and not any(flight.values())
            leave = barrier = False
            if cur is not None:
                i = insts[cur]
                if i.op is Opcode.SYS:
                    if i["func"] is SysFunc.NOP:
                        leave = True
                    elif drained:
                        barrier = True
                else:
                    leave = len(fifo[QUEUE_OF[i.op]]) < DEPTH
            accept = pc < len(insts) and (cur is None or leave)
            # end of cycle
            for (s, d) in tokens:
                completed = done[s] and flight[s] and flight[s][0] & d
                consumed = issued[d] and insts[fifo[d][0]].wait & s
                promised = issued[s] and insts[fifo[s][0]].release & d
                tokens[(s, d)] += bool(completed) - bool(consumed)
                reserved[(s, d)] += bool(promised) - bool(completed)
            for q in Queue:
                if done[q] and flight[q]:
                    flight[q].popleft()
                if issued[q]:
                    idx = fifo[q].popleft()
                    issued_at[idx] = c
                    flight[q].append(insts[idx].release)
            u.step(c, issued)
            if leave and insts[cur].op is not Opcode.SYS:
                fifo[QUEUE_OF[insts[cur].op]].append(cur)
            if barrier:
                i = insts[cur]
                if i["func"] is SysFunc.END:
                    return issued_at, accepted_at, c
                cur = None
                continue
            if accept:
                accepted_at[pc] = c
                cur, pc = pc, pc + 1
            elif leave:
                cur = None
        raise AssertionError("the model did not halt")


def run_controller(insts, length, lat, blocking, max_cycles=20000):
    """Run the RTL on `insts`; returns the events seen on its ports."""
    dut = Controller(load_target("sim-small"), counter_max=TOKEN_COUNTER_MAX, queue_depth=DEPTH, in_flight=IN_FLIGHT)
    words = [int.from_bytes(encode(i), "little") for i in insts]
    units = Units(lat, blocking)
    ev = {"issued": {}, "dispatched": {q: [] for q in Queue}, "done": [], "accepted": {}, "halted": None,
          "max_counter": 0, "counter_mismatch": [], "early": []}

    async def bench(ctx):
        ctx.set(dut.length, length)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pc, tokens = 0, {k: 0 for k in dut.tokens}
        flight = {q: deque() for q in Queue}
        for c in range(max_cycles):
            ctx.set(dut.inst.valid, pc < len(words))
            ctx.set(dut.inst.payload, words[pc] if pc < len(words) else 0)
            done = {q: units.done(q, c) for q in Queue}
            ctx.set(dut.done, sum(q for q in Queue if done[q]))
            for q in Queue:
                ctx.set(dut.queue_port(q).ready, units.ready(q, c))
            if ctx.get(dut.halted):
                ev["halted"] = c - 1
                return
            # the counters hold what the port events imply (releases of completed instructions
            # minus the waits of issued ones), never more than counter_max
            for k, sig in dut.tokens.items():
                v = ctx.get(sig)
                ev["max_counter"] = max(ev["max_counter"], v + ctx.get(dut.reserved[k]))
                if v != tokens[k]:
                    ev["counter_mismatch"].append((c, k, v, tokens[k]))
            issued = {}
            for q in Queue:
                port = dut.queue_port(q)
                issued[q] = ctx.get(port.valid) and ctx.get(port.ready)
                if issued[q]:
                    word = ctx.get(port.payload)
                    ev["dispatched"][q].append(word)
                    ev["issued"].setdefault(q, []).append(c)
                    wait = word >> 3 & 15
                    for s in Queue:
                        if wait & s:
                            if tokens[(s, q)] <= 0:
                                ev["early"].append((c, s, q))
                            tokens[(s, q)] -= 1
            for q in Queue:
                if done[q] and flight[q]:
                    rel = flight[q].popleft()
                    ev["done"].append((c, q))
                    for d in Queue:
                        if rel & d:
                            tokens[(q, d)] += 1
                if issued[q]:
                    flight[q].append(ev["dispatched"][q][-1] >> 7 & 15)
            if ctx.get(dut.inst.valid) and ctx.get(dut.inst.ready):
                ev["accepted"][pc] = c
                pc += 1
            units.step(c, issued)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return ev


def check_run(insts, length, seed, lat=None, blocking=None):
    rng = random.Random(seed)
    lat = lat or {q: rng.randint(1, 12) for q in Queue}
    blocking = blocking or {q: rng.random() < 0.5 for q in Queue}
    ev = run_controller(insts, length, lat, blocking)
    assert ev["halted"] is not None, "END did not halt the controller"
    end = next(i for i, x in enumerate(insts) if x.op is Opcode.SYS and x["func"] is SysFunc.END)

    # every instruction before END reaches its queue once, in program order, length-resolved
    expect, LEN = {q: [] for q in Queue}, length
    for i in insts[:end]:
        if i.op is Opcode.SYS:
            if i["func"] is SysFunc.SET_LEN:
                LEN = i["imm"]
            continue
        expect[QUEUE_OF[i.op]].append(int.from_bytes(encode(resolve_length(i, LEN)), "little"))
    for q in Queue:
        assert ev["dispatched"][q] == expect[q], f"queue {q.name}"
    assert end + 1 not in ev["accepted"], "an instruction after END was fetched"

    # tokens: a wait is only served by a release that completed in an earlier cycle; counters agree
    assert not ev["early"], f"issued without a completed release: {ev['early'][:3]}"
    assert not ev["counter_mismatch"], ev["counter_mismatch"][:3]
    assert ev["max_counter"] <= TOKEN_COUNTER_MAX

    # the same cycles as the model of the rules
    issued_at, accepted_at, halt = ControllerModel(insts, length, Units(lat, blocking)).run(20000)
    order = {q: [idx for idx, i in enumerate(insts[:end]) if i.op is not Opcode.SYS and QUEUE_OF[i.op] is q]
             for q in Queue}
    for q in Queue:
        assert ev["issued"].get(q, []) == [issued_at[idx] for idx in order[q]], f"issue cycles of {q.name}"
    assert ev["accepted"] == {k: v for k, v in accepted_at.items()}
    assert ev["halted"] == halt

    # barriers: everything before a barrier completed before anything after it issued
    at = {}
    for q in Queue:
        for idx, c in zip(order[q], ev["issued"].get(q, [])):
            at[idx] = c
    done_cycles = {q: [c for c, dq in ev["done"] if dq is q] for q in Queue}
    completed = {}
    for q in Queue:
        for idx, c in zip(order[q], done_cycles[q]):
            completed[idx] = c
    for b, i in enumerate(insts[:end]):
        if i.op is Opcode.SYS and i["func"] is not SysFunc.NOP:
            before = [completed[k] for k in at if k < b]
            after = [at[k] for k in at if k > b]
            if before and after:
                assert max(before) < min(after), f"barrier #{b} was passed"
    return ev


def random_program(rng, n):
    """Random instructions whose waits are all served by earlier releases (check_tokens decides the rest)."""
    avail = {(s, d): 0 for s in Queue for d in Queue if s != d}
    insts = [make(Opcode.SYS, func=SysFunc.SET_LEN, imm=rng.randrange(1, 100))]
    for _ in range(n):
        r = rng.random()
        if r < 0.06:
            insts.append(make(Opcode.SYS, func=rng.choice([SysFunc.NOP, SysFunc.SYNC, SysFunc.SET_LEN]),
                              imm=rng.randrange(1 << 16)))
            continue
        q = rng.choice(list(Queue))
        wait = 0
        for s in Queue:
            if s is not q and avail[(s, q)] and rng.random() < 0.6:
                wait |= s
                avail[(s, q)] -= 1
        release = 0
        for d in Queue:
            if d is not q and rng.random() < 0.3:
                release |= d
                avail[(q, d)] += 1
        lr = rng.random() < 0.3
        if q in (Queue.LOAD, Queue.STORE):
            i = make(Opcode.LD if q is Queue.LOAD else Opcode.ST, wait=wait, release=release, len_reg=lr,
                     len_pos=lr and rng.random() < 0.5, channels=1, rows=rng.randrange(1 << 16),
                     row_bytes=rng.randrange(64), hbm_addr=rng.randrange(1 << 32), hbm_stride=rng.randrange(1 << 32))
        elif q is Queue.MATRIX:
            if rng.random() < 0.5:
                i = make(Opcode.MM, wait=wait, release=release, len_reg=lr, n=8, k=8, m=rng.randrange(1 << 16))
            else:
                i = make(Opcode.MV, wait=wait, release=release, n=rng.randrange(1 << 16), k=8)
        else:
            i = make(Opcode.MISC, wait=wait, release=release, len_reg=lr, len_pos=lr and rng.random() < 0.5,
                     func=MiscFunc.SOFTMAX, cols=rng.randrange(1 << 16), imm=rng.randrange(-(1 << 31), 1 << 31))
        insts.append(i)
    insts.append(make(Opcode.SYS, func=SysFunc.END))
    insts.append(make(Opcode.LD, channels=1))          # after END: never fetched
    return insts


@pytest.mark.sim
@pytest.mark.parametrize("seed", range(4))
def test_random_programs(seed):
    rng = random.Random(seed)
    for _ in range(100):
        insts = random_program(rng, 60)
        try:
            check_tokens(Program("r", insts[:-1]), counter_max=TOKEN_COUNTER_MAX, queue_depth=DEPTH)
            break
        except IsaError:
            continue
    else:
        raise AssertionError("no random program passed check_tokens")
    check_run(insts, rng.randrange(1 << 16), seed)


@pytest.mark.sim
def test_full_counter_stalls_the_releaser():
    """40 LOAD->MATRIX releases ahead of their waits: the 32nd LD waits for an MV to consume a token."""
    n = 40
    insts = [make(Opcode.LD, release=Queue.MATRIX, channels=1, rows=i) for i in range(n)]
    insts += [make(Opcode.MV, wait=Queue.LOAD, n=i) for i in range(n)]
    insts += [make(Opcode.SYS, func=SysFunc.END)]
    with pytest.raises(IsaError, match="deadlocks"):
        check_tokens(Program("full", insts), counter_max=TOKEN_COUNTER_MAX, queue_depth=DEPTH)
    # with the MVs interleaved late enough to fill the counter but not deadlock the FIFO
    insts = [make(Opcode.LD, release=Queue.MATRIX, channels=1, rows=i) for i in range(n)]
    for k in range(n):
        insts.insert(TOKEN_COUNTER_MAX + 2 * k, make(Opcode.MV, wait=Queue.LOAD, n=k))
    insts.append(make(Opcode.SYS, func=SysFunc.END))
    check_tokens(Program("full", insts), counter_max=TOKEN_COUNTER_MAX, queue_depth=DEPTH)
    # a fast pipelined LOAD unit and a slow blocking matrix unit
    ev = check_run(insts, 0, seed=7, lat={Queue.LOAD: 1, Queue.MATRIX: 12, Queue.SFU: 1, Queue.STORE: 1},
                   blocking={Queue.LOAD: False, Queue.MATRIX: True, Queue.SFU: False, Queue.STORE: False})
    assert ev["max_counter"] == TOKEN_COUNTER_MAX   # the limit was reached, and held


@pytest.fixture(scope="module")
def compiled():
    """The first program of each stage, and the LEN it runs at: a decode step at 9, a prefill
    chunk at its end (the build's prefill step)."""
    c = tiny_compiled()
    first = {}
    for e, (_, data) in zip(c.manifest["programs"], c.programs):
        first.setdefault(e["stage"], Program.from_bytes(data))
    return {"decode": (first["decode"], 9), "prefill": (first["prefill"], c.manifest["prefill_step"])}


@pytest.mark.sim
@pytest.mark.parametrize("stage,seed", [("decode", 0), ("prefill", 1)])
def test_compiled_program(compiled, stage, seed):
    prog, length = compiled[stage]
    check_tokens(prog, counter_max=TOKEN_COUNTER_MAX, queue_depth=DEPTH)
    ev = check_run(list(prog.instructions), length, seed)
    assert sum(len(v) for v in ev["dispatched"].values()) == sum(i.op is not Opcode.SYS for i in prog.instructions)


def test_constructor_checks():
    t = load_target("sim-small")
    with pytest.raises(ValueError, match=r"^queue_depth must be a positive integer, not 0$"):
        Controller(t, queue_depth=0)
    with pytest.raises(TypeError, match=r"^target must be a Target, not 'sim-small'$"):
        Controller("sim-small")


def test_field_slices_follow_the_tables():
    """The controller's slicing is FIELDS: change a field's value and only its slice changes."""
    from amaranth.sim import Simulator as _S
    from llmfab.backend_hw.protocol.isa_fields import field
    from amaranth import Module, Signal
    rng = random.Random(3)
    for op in (Opcode.LD, Opcode.MISC):
        for f in FIELDS[op]:
            if f.enum or f.name == "flags":
                continue
            v = rng.randrange(max(f.lo, 1), min(f.hi, 62) + 1) if f.name.startswith("channel") else \
                rng.randrange(f.lo, f.hi + 1)
            base = {"channels": 1, "indirect": 1} if op is Opcode.LD else {}
            inst = make(op, len_reg=True, **{**base, f.name: v})
            word = Signal(256)
            m = Module()
            out = Signal(f.bits, name="o")
            m.d.comb += out.eq(field(word, op, f.name))
            got = {}

            async def tb(ctx, word=word, out=out, inst=inst):
                ctx.set(word, int.from_bytes(encode(inst), "little"))
                got["v"] = ctx.get(out)
            s = _S(m)
            s.add_testbench(tb)
            s.run()
            assert f.wrap(got["v"]) == v, (op, f.name)
