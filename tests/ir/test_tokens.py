"""Dependency tokens: every cross-queue hazard is ordered, and releases pair with waits."""
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.passes.tokens import TokenTracker

access = st.tuples(st.integers(0, 3), st.lists(st.integers(0, 5), max_size=2), st.lists(st.integers(0, 5), max_size=2))


def happens_before(t: TokenTracker) -> list[set[int]]:
    """For each instruction, the set of instructions guaranteed to finish before it starts."""
    n = len(t.queue)
    before = [set() for _ in range(n)]
    last_in_queue = {}
    consumed = {}
    for i in range(n):
        q = t.queue[i]
        if q in last_in_queue:
            p = last_in_queue[q]
            before[i] |= before[p] | {p}
        for src in range(4):
            if t.wait[i] >> src & 1:
                k = consumed.get((src, q), 0)
                prods = [j for j in range(i) if t.queue[j] == src and t.release[j] >> q & 1]
                assert k < len(prods), f"instruction {i} waits for a token {src}->{q} that was never released"
                p = prods[k]
                consumed[(src, q)] = k + 1
                before[i] |= before[p] | {p}
        last_in_queue[q] = i
    return before


@settings(max_examples=300, deadline=None)
@given(st.lists(access, min_size=1, max_size=40))
def test_every_hazard_is_ordered(ops):
    t = TokenTracker()
    for q, reads, writes in ops:
        t.add(q, reads, writes)
    before = happens_before(t)
    for j, (qj, rj, wj) in enumerate(ops):
        for i in range(j):
            qi, ri, wi = ops[i]
            hazard = set(wi) & (set(rj) | set(wj)) or set(ri) & set(wj)
            if hazard and qi != qj:
                assert i in before[j], (i, j, ops)
    # releases and waits balance per queue pair (no stray tokens left)
    for s in range(4):
        for d in range(4):
            rel = sum(1 for i in range(len(ops)) if t.queue[i] == s and t.release[i] >> d & 1)
            wai = sum(1 for i in range(len(ops)) if t.queue[i] == d and t.wait[i] >> s & 1)
            assert rel == wai


def test_double_buffering_pattern():
    """LD tile t -> half t%2, MV tile t reads it: LD t+2 waits for MV t, MV t waits for LD t."""
    LOAD, MATRIX = 0, 1
    t = TokenTracker()
    for k in range(4):
        t.add(LOAD, writes=[("w", k % 2)])
        t.add(MATRIX, reads=[("w", k % 2)], writes=["out"])
    assert t.wait == [0, 1 << LOAD, 0, 1 << LOAD, 1 << MATRIX, 1 << LOAD, 1 << MATRIX, 1 << LOAD]
    assert t.release[0] == 1 << MATRIX and t.release[1] == 1 << LOAD
