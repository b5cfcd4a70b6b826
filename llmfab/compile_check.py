"""compile checks what it wrote: the programs and weight images, exactly the bytes of the BUILD,
run on the functional simulator (simulator/functional.py) for a few prompts and a decode step
after each, and every value they compute into the act buffer must equal the integer model's
(ir/integer.py) bit for bit. A miscompile is then an error naming the first value that differs
and its layer, never a BUILD that computes something else (issue 15).

Run by `compile` for models up to `CHECK_MAX_PARAMETERS` with weights (`--no-check` skips it).
The reference is the integer interpreter on the model loaded at the prompt's length + 1 with the
compiled graph's quantized weights: a causal model's first L rows are those of the L-token
prompt, so one run serves the prompt's chunks and the decode step. Its RoPE tables are the first
rows of the compiled graph's: a build has one table for all its positions, that of its max length
(Phi-3's longrope picks its factors by length, as Hugging Face does by the forward's last position).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmfab.ir import ArrayData, ConstAttrs, Graph, OpKind
from llmfab.ir.integer import run_integer_values
from llmfab.ir.isa import BufferId, Program
from llmfab.passes.buckets import Stage
from llmfab.passes.lower import Lowered, logits_value, section_of
from llmfab.passes.lower_copies import seq_axes
from llmfab.passes.quantize import adopt_parameters, feeds_for
from llmfab.ir.isa import prompt_chunks
from llmfab.simulator.functional import Machine

CHECK_MAX_PARAMETERS = 50_000_000
SEED = 15


class MiscompileError(ValueError):
    pass


def prompt_lengths(max_len: int, prefill_step: int) -> list[int]:
    """A short prompt, and one over two prefill chunks (its last padded) where max_len allows;
    each leaves room for a decode step."""
    longest = max(1, max_len - 1)
    return sorted({min(3, longest), min(prefill_step + 1, longest)})


def reference(load, compiled: Graph, ids: np.ndarray) -> tuple[Graph, dict[str, np.ndarray]]:
    """The model at len(ids) tokens (`load(seq_len)`) with `compiled`'s parameters (quantized and
    smoothed weights), and
    every value the integer interpreter computes for `ids` (raw Q.16)."""
    g = load(len(ids))
    adopt_parameters(g, compiled)
    _adopt_position_tables(g, compiled)
    feeds = feeds_for(g, ids[None])
    names = [n.name for n in g.nodes() if n.op not in (OpKind.CONST, OpKind.INPUT)]
    return g, run_integer_values(g, feeds, names)


def _adopt_position_tables(g: Graph, compiled: Graph) -> None:
    """The RoPE tables of `g` (positions 0..n-1) replaced by the first n rows of `compiled`'s."""
    for t in {i for n in g.nodes() if n.op is OpKind.ROPE for i in n.inputs[1:]}:
        if t in compiled and g.node(t).op is OpKind.CONST and compiled.node(t).op is OpKind.CONST:
            n = g.node(t)
            rows = np.ascontiguousarray(compiled.const_value(t)[..., :n.type.shape[-2], :])
            if rows.shape == n.type.shape:
                g.set_node(dataclasses.replace(n, attrs=ConstAttrs(ArrayData(rows), n.attrs.weight)))


class _Probe:
    """Compares each value a program run leaves in the act buffer with the reference's rows
    [first, first + valid) along the value's sequence axis."""

    def __init__(self, machine: Machine, g: Graph, values: dict, axes: dict, what: str):
        self.m, self.g, self.values, self.axes, self.what = machine, g, values, axes, what

    def run(self, low: Lowered, program: Program, length: int, first: int, valid: int) -> None:
        at = {}
        for n, name, addr in low.probes:
            at.setdefault(n, []).append((name, addr))

        def after(n: int) -> None:
            for name, addr in at.get(n, ()):
                self.compare(name, addr, low, first, valid)
        self.m.run(program, length, after)

    def compare(self, name: str, addr: int, low: Lowered, first: int, valid: int) -> None:
        s = self.axes.get(name)
        if name not in self.values or s is None:
            return                                 # not a value of the reference graph's layout
        want = np.take(self.values[name], range(first, first + valid), axis=s)
        shape = list(self.values[name].shape)
        shape[s] = low.bucket.rows
        raw = self.m.read(BufferId.ACT, addr, 4 * int(np.prod(shape)))
        got = np.take(np.frombuffer(raw, "<i4").astype(np.int64).reshape(shape), range(valid), axis=s)
        if not np.array_equal(got, want):
            bad = np.argwhere(got != want)
            idx = tuple(int(i) for i in bad[0])
            node = self.g.node(name)
            layer = section_of(name)
            raise MiscompileError(
                f"compile check: program {low.program.name} ({self.what}) computes {name!r} ({node.op}, "
                f"{'layer ' + layer.split('.')[1] if layer.startswith('layers.') else 'outside the layers'}) "
                f"other than the integer model: {len(bad)} of {want.size} values differ, first at {list(idx)}: "
                f"{int(got[idx])} instead of {int(want[idx])} (raw Q.16); no BUILD was written "
                "(--no-check skips this check)")


def check_build(load, graph: Graph, target, lowered: list[Lowered], programs: dict[str, bytes],
                images: list[bytes], channel_bytes: int, output, prefill_step: int, max_len: int) -> tuple[int, ...]:
    """MiscompileError unless every prompt of `prompt_lengths` and a decode step after it compute
    what the integer model computes, value by value and logits by logits; the lengths run."""
    by_stage = {st: [lo for lo in lowered if lo.bucket.stage is st] for st in Stage}

    def program_for(stage: Stage, length: int) -> tuple[Lowered, Program]:
        low = next(lo for lo in by_stage[stage] if lo.bucket.lo <= length <= lo.bucket.hi)
        return low, Program.from_bytes(programs[f"programs/{low.bucket.name}.bin"])

    rng = np.random.default_rng(SEED)
    head = logits_value(graph)
    for length in prompt_lengths(max_len, prefill_step):
        decode = length < max_len
        ids = rng.integers(0, graph.node(head).type.shape[-1], length + decode)
        g, values = reference(load, graph, ids)
        axes = seq_axes(g)
        m = Machine.for_target(target, images, channel_bytes)
        logits = values[head][0]
        for first, end in prompt_chunks(length, prefill_step):
            chunk = np.zeros(prefill_step, "<i4")
            chunk[:len(ids[first:min(end, length)])] = ids[first:min(end, length)]
            m.write(BufferId.ACT, 0, chunk.tobytes())
            low, prog = program_for(Stage.PREFILL, end)
            what = f"prefill chunk [{first}, {end}) of a {length}-token prompt"
            _Probe(m, g, values, axes, what).run(low, prog, end, first, min(end, length) - first)
        _logits(m, output, range(length), logits[:length], f"the logits of a {length}-token prompt")
        if decode:
            m.write(BufferId.ACT, 0, np.array([ids[length]], "<i4").tobytes())
            low, prog = program_for(Stage.DECODE, length + 1)
            _Probe(m, g, values, axes, f"decode step at position {length}").run(low, prog, length + 1, length, 1)
            _logits(m, output, [0], logits[length:length + 1], f"the logits of the decode step at position {length}")
    return tuple(prompt_lengths(max_len, prefill_step))


def _logits(m: Machine, output, rows, want: np.ndarray, what: str) -> None:
    got = np.array([np.frombuffer(m.read_row(output, r), "<i4")[:want.shape[-1]] for r in rows], np.int64)
    if not np.array_equal(got, want):
        r, c = (int(i) for i in np.argwhere(got != want)[0])
        raise MiscompileError(f"compile check: {what} differ from the integer model's at row {r}, token {c}: "
                              f"{got[r, c]} instead of {want[r, c]} (raw Q.16); no BUILD was written "
                              "(--no-check skips this check)")
