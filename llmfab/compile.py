"""`llmfab compile`: model + target + policy -> BUILD/ with programs, weight images and a manifest.

The flow is `STEPS`, named functions over one `Flow` (as FINN's build steps): load (the fused
graph with shapes at max_len, so position tables cover every position) -> quantize by the
policy -> lay out HBM -> lower every length bucket -> check every program -> package -> run the
packaged programs against the integer model (compile_check.py); then `write_build`. Writing is atomic (a temporary folder renamed into place), so a failed compile leaves an
earlier BUILD untouched, and replaces only a BUILD llmfab wrote (ir/folders.py); the same inputs give
byte-identical files (no timestamps, sorted JSON).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmfab.ir import Graph, OpKind
from llmfab.ir.folders import write_folder
from llmfab.ir.host import require
from llmfab.ir.isa import quant_row_bytes
from llmfab.ir.quant import NM, QuantError
from llmfab.ir.target import TARGET_FILE, Target, load_target
from llmfab.passes.auto_precision import assign
from llmfab.passes.buckets import Bucket, Stage, buckets
from llmfab.passes.hbm_layout import HbmLayout, LayoutError, channel_images, place
from llmfab.passes.lower import Engine, Lowered, check_lowerable, lower_bucket
from llmfab.passes.act_calibration import calibrate, needs_inputs
from llmfab.passes.policy import PER_TOKEN, Policy, load_policy
from llmfab.passes.program_check import Limits, check_program
from llmfab.passes.quantize import quantize_graph, weight_formats, weight_sites
from llmfab.passes.summary import summarize

from . import progress
from .compile_check import CHECK_MAX_PARAMETERS, MiscompileError, check_build
from .flow import is_onnx, load_model


class CompileError(ValueError):
    pass


DEFAULT_MAX_LEN = 2048   # longest prompt + generation when not given (or the model's positions if fewer)
INSTRUCTION_BYTES = 200   # an instruction held while compiling, at least (measured ~500 with its operands)


@dataclass
class Compiled:
    manifest: dict
    programs: list[tuple[str, bytes]]
    images: list[tuple[str, bytes]]
    seconds: float
    layout: HbmLayout | None = None    # where everything lives (not written; for tests and reports)
    graph: object = None               # the quantized graph the programs compute (not written)
    target_yaml: bytes = b""           # the target file compiled for, written as BUILD/target.yaml
    target: Target | None = None       # ... and as read (for `compile --rtl`: never looked up again)
    inputs: tuple[Path, ...] = ()      # the files compiled from: BUILD must never hold one
    checked: tuple[int, ...] = ()      # the prompt lengths run against the integer model (none: not checked)


def _check_formats(g, target: Target, plans) -> None:
    for const, plan in plans.items():
        s = plan.scheme
        if s.bits not in target.engine.weight_bits or (s.sparsity and tuple(s.sparsity) not in target.engine.sparsity):
            raise CompileError(f"target {target.name} does not run {s} weights ({const}); it supports "
                               f"bits {list(target.engine.weight_bits)} and N:M "
                               f"{[str(NM(*p)) for p in target.engine.sparsity]}")


@dataclass
class Flow:
    """What the compile steps hand each other: the inputs, then each step's results."""
    model: str
    target: Target
    policy: Policy
    max_len: int
    prefill_step: int | None            # as asked (None: the largest that fits)
    decode_step: int | None
    graph: Graph | None = None
    has_data: bool = False              # weights with values (not a config-only model)
    layout: HbmLayout | None = None
    engine: Engine | None = None
    capacity: int = 0                   # bytes per HBM channel
    p_step: int = 0                     # the prefill and decode bucket steps chosen
    d_step: int = 0
    prefill: list[Lowered] = field(default_factory=list)
    decode: list[Lowered] = field(default_factory=list)
    programs: list[tuple[str, bytes]] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    check: bool | None = None           # run the programs against the integer model (None: if small enough)
    graph_at: Callable[[int], Graph] | None = None   # the fused graph at a length, instead of loading `model`
    parameters: int = 0
    checked: tuple[int, ...] = ()

    def load(self, seq_len: int) -> Graph:
        return self.graph_at(seq_len) if self.graph_at else load_model(self.model, seq_len=seq_len)


def _check_positions(f: Flow, n_pos) -> None:
    if isinstance(n_pos, int) and f.max_len > n_pos:
        raise CompileError(f"{f.model}: a context of {f.max_len} tokens exceeds the model's {n_pos} positions "
                           f"(max_position_embeddings)")


def step_load(f: Flow) -> None:
    """The fused graph, with shapes at max_len so position tables cover every position (no more
    than the model has)."""
    if not is_onnx(f.model):  # a config's positions first, in a second, not after building tables for max_len
        _check_positions(f, f.load(1).meta.get("max_position_embeddings"))
    f.graph = f.load(f.max_len)
    _check_positions(f, f.graph.meta.get("max_position_embeddings"))
    try:  # now, not after quantizing and after every prefill step was tried
        check_lowerable(f.graph)
    except LayoutError as e:
        raise CompileError(f"{f.model}: {e}") from None
    f.has_data = all(f.graph.node(s.const).data.has_values for s in weight_sites(f.graph))
    f.parameters = summarize(f.graph).parameters


def step_quantize(f: Flow) -> None:
    """Quantize every weight by the policy (calibrating on the float model when it asks)."""
    g, pol = f.graph, f.policy
    if pol.activations != PER_TOKEN:
        raise CompileError(f"{pol.source}: activations: {pol.activations} is a what-if of the integer model "
                           f"(`llmfab quantize`) that the accelerator cannot run: its QUANT_ROWS scales every "
                           f"token row by that row's own max (docs/integer.md); compile needs activations: {PER_TOKEN}")
    inputs = None
    if f.has_data and needs_inputs(pol, assign(g, pol, None)):
        # on streams of the policy's calibration length, as `llmfab quantize` (smoothing g first if asked)
        n = pol.calibration.seq_len
        inputs = calibrate(g, pol, None if n == f.max_len else f.load(n))
    try:
        plans = assign(g, pol, inputs)
        _check_formats(g, f.target, plans)
        quantize_graph(g, plans, inputs)
    except QuantError as e:
        raise CompileError(f"{pol.source}: {e}") from None


def prefill_steps(f: Flow) -> list[int]:
    """The prefill chunks to try, largest first: as asked, or 128, 64, ... up to the max length."""
    return [f.prefill_step] if f.prefill_step else [s for s in (128, 64, 32, 16, 8, 4, 2, 1) if s <= f.max_len]


def step_layout(f: Flow) -> None:
    """Place everything in HBM, then choose the decode step (KV tiles that fit half the KV buffer)."""
    g, tgt = f.graph, f.target
    bufs = {b.name.value: b.bytes for b in tgt.buffers}
    f.engine = Engine(tgt.engine.n_chains, bufs)
    f.capacity = int(tgt.memory.capacity_gb * 1e9) // tgt.memory.channels
    try:
        f.layout = place(g, channels=tgt.memory.channels, channel_capacity=f.capacity,
                         weights=tgt.chain_layout, half_bytes=bufs["weight"] // 2, max_len=f.max_len,
                         max_rows=prefill_steps(f)[0],
                         capacity_label=f"{tgt.memory.kind.value.upper()} ({tgt.name})")
    except LayoutError as e:
        err = CompileError(str(e))
        err.any_length = e.any_length
        raise err from None
    # a key row as the cache holds it (4 + head_dim, padded to whole bytes per channel)
    row = max((h.k.row_bytes for heads in f.layout.kv.values() for h in heads), default=quant_row_bytes(1))
    kv_keys = (bufs["kv"] // 2) // row
    if kv_keys < 1:
        raise CompileError(f"target {tgt.name}: half the KV buffer ({bufs['kv'] // 2} bytes) holds no key row "
                           f"of {row} bytes")
    if f.decode_step is not None and f.decode_step > kv_keys:
        raise CompileError(f"--decode-step {f.decode_step} needs KV tiles of {f.decode_step} keys; half the KV "
                           f"buffer of {tgt.name} holds {kv_keys} keys of {row} bytes")
    f.d_step = f.decode_step or min(f.max_len, kv_keys)


def _lower(f: Flow, bucket: Bucket) -> Lowered:
    try:
        return lower_bucket(f.graph, f.layout, f.engine, bucket)
    except LayoutError as e:
        raise CompileError(str(e)) from None


def step_lower(f: Flow, *, largest_only: bool = False) -> None:
    """Lower every length bucket; the prefill chunk is as asked, or the largest of 128, 64, ...
    whose programs fit the buffers. The longest buckets (the most keys) are lowered first, so
    what does not fit fails before the rest is lowered; `largest_only` stops there."""
    steps = prefill_steps(f)
    # every program streams every weight tile (an LD and an MV at least): refuse before minutes of lowering
    n_programs, n_tiles = len(buckets(f.max_len, steps[0], f.d_step)), sum(map(len, f.layout.tiles.values()))
    require(n_programs * n_tiles * 2 * INSTRUCTION_BYTES,
            f"{f.model}: {n_programs} programs (--max-len {f.max_len}) over {n_tiles:,} weight tiles")
    for p_step in steps:
        all_buckets = buckets(f.max_len, p_step, f.d_step)
        pre = [b for b in all_buckets if b.stage is Stage.PREFILL]
        try:
            last = _lower(f, pre[-1])
            f.p_step = p_step
            break
        except CompileError:
            if p_step == steps[-1]:
                raise
    dec = [b for b in all_buckets if b.stage is Stage.DECODE]
    last_dec = _lower(f, dec[-1])
    if largest_only:
        f.prefill, f.decode = [last], [last_dec]
        return
    rest = pre[:-1] + dec[:-1]
    done = {b: _lower(f, b) for b in progress.track(rest, f"lower {len(rest) + 2} length buckets")}
    f.prefill = [done[b] for b in pre[:-1]] + [last]
    f.decode = [done[b] for b in dec[:-1]] + [last_dec]


def step_check(f: Flow) -> None:
    """Operand bounds at each bucket's shortest and longest length, and the token counters."""
    tgt = f.target
    limits = Limits(tgt.buffer_bytes, tgt.memory.channels, f.capacity, tgt.chain_layout)
    counter_max = tgt.controller.token_counter_max
    try:
        for low in f.prefill + f.decode:
            check_program(low.program, limits, (low.bucket.lo, low.bucket.hi), counter_max=counter_max)
    except ValueError as e:
        raise CompileError(f"internal error: a compiled program failed its check: {e}") from None


def step_package(f: Flow) -> None:
    """Program files, per-channel weight images and the manifest."""
    g, lay, tgt, lowered = f.graph, f.layout, f.target, f.prefill + f.decode
    entries = []
    for low in lowered:
        data = low.program.to_bytes()
        b: Bucket = low.bucket
        name = f"programs/{b.name}.bin"
        f.programs.append((name, data))
        entries.append({"stage": b.stage.value, "bucket": [b.lo, b.hi], "file": name,
                        "instructions": len(low.program.instructions), "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        # where each layer (or other top-level op) starts, for per-layer timing
                        "sections": [[start, label] for start, label in low.sections]})
    if f.has_data:
        for ch, img in enumerate(channel_images(g, lay, tgt.chain_layout)):
            f.images.append((f"weights/ch{ch:02d}.bin", bytes(img)))
    total = sum(e["bytes"] for e in entries)
    # one program per LEN served (each decode context; each prefill chunk end, a step apart)
    per_exact = sum(e["bytes"] * ((e["bucket"][1] - e["bucket"][0]) // (f.p_step if e["stage"] == "prefill" else 1) + 1)
                    for e in entries)
    kept = {"file": TARGET_FILE, "sha256": hashlib.sha256(tgt.text.encode()).hexdigest()} if tgt.text else {}
    f.manifest = {
        "llmfab_manifest": 1,
        "model": str(f.model), "family": g.meta.get("family"), "policy": f.policy.name,
        "target": {"name": tgt.name, **kept, "clock_mhz": tgt.clock_mhz, "chains": tgt.engine.n_chains,
                   "chain_len": tgt.engine.chain_len, "hbm_channels": tgt.memory.channels,
                   "bandwidth_gbps": tgt.memory.bandwidth_gbps},
        "max_len": f.max_len, "prefill_step": f.p_step, "decode_step": f.d_step,
        "programs": entries,
        "instruction_bytes_total": total,
        "instruction_bytes_per_exact_length": per_exact,
        "weights": [{"file": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in f.images],
        "hbm": {"bytes_per_channel": max(lay.used), "capacity_per_channel": f.capacity,
                "bytes_total": lay.bytes_used},
        # where the logits land: row p (prefill position p, or 0 for a decode step), int32 Q.16
        "output": {"addr": lay.output.addr, "channel": lay.output.channel, "channels": lay.output.channels,
                   "row_bytes": lay.output.row_bytes, "rows": lay.output.rows,
                   "vocab": max((n.type.shape[-1] for n in g.nodes() if n.op is OpKind.LMHEAD), default=0)},
        "weight_formats": weight_formats(g),   # the bits of every layer, for reports
        # layers whose K the packer padded with zero codes to whole scale groups and chain beats
        # (docs/integer.md): the bytes streamed grow by k_engine / k, the arithmetic does not change
        "padded_k": [{"layer": name, "k": k, "k_engine": k_hw}
                     for name, (_, k_hw) in lay.engine_k.items()
                     if k_hw != (k := g.node(g.node(name).inputs[0]).type.shape[-1])],
        "buffers_peak": {"act": max(lo.peak["act"] for lo in lowered),
                         "scratch": max(lo.peak["scratch"] for lo in lowered),
                         "weight_tile": max((t.obj.row_bytes for ts in lay.tiles.values() for t in ts), default=0)},
    }


def step_verify(f: Flow) -> None:
    """Run the programs, from the bytes written, against the integer model (llmfab/compile_check.py):
    always when asked, by default for models with weights up to CHECK_MAX_PARAMETERS."""
    if f.check is False or not f.has_data or (f.check is None and f.parameters > CHECK_MAX_PARAMETERS):
        return
    try:
        f.checked = check_build(f.load, f.graph, f.target, f.prefill + f.decode, dict(f.programs),
                                [d for _, d in f.images], max(f.layout.used), f.layout.output, f.p_step, f.max_len)
    except MiscompileError as e:
        raise CompileError(f"{f.model}: {e}") from None


STEPS = (step_load, step_quantize, step_layout, step_lower, step_check, step_package, step_verify)


def check_fit(model: str, target: str | Target, *, policy: str = "int8", length: int,
              prefill_step: int | None = None, decode_step: int | None = None) -> Flow:
    """What compile checks before lowering, at `length` tokens: the model's positions, the weight
    formats the target runs, memory (weights, parameters, KV cache) and weight and KV tiles
    against the buffers. CompileError says what does not fit and by how much (`llmfab report`,
    `llmfab explore`, which passes a derived Target and bucket steps)."""
    if length < 1:
        raise CompileError(f"the context must be positive, not {length}")
    check_steps(length, prefill_step, decode_step)
    tgt = target if isinstance(target, Target) else load_target(target)
    f = Flow(model, tgt, load_policy(policy), length, prefill_step, decode_step)
    for step in (step_load, step_quantize, step_layout):
        step(f)
    return f


def check_steps(max_len: int, prefill_step: int | None, decode_step: int | None) -> None:
    """CompileError unless each bucket step asked for is between 1 and the max length."""
    for name, v in (("--prefill-step", prefill_step), ("--decode-step", decode_step)):
        if v is not None and not 1 <= v <= max_len:
            raise CompileError(f"{name} must be between 1 and --max-len ({max_len}), not {v}")


def default_max_len(model: str) -> int:
    """`DEFAULT_MAX_LEN`, or a config's positions or attention window when it has fewer (an ONNX
    export says neither): Phi-3-mini's window is 2047."""
    if is_onnx(model):
        return DEFAULT_MAX_LEN
    meta = load_model(model, seq_len=1).meta
    limits = [n for n in (meta.get("max_position_embeddings"), meta.get("attention_window"))
              if isinstance(n, int) and n >= 1]
    return min(DEFAULT_MAX_LEN, *limits)


def compile_model(model: str, target: str, *, policy: str = "int8", max_len: int | None = None,
                  prefill_step: int | None = None, decode_step: int | None = None,
                  check: bool | None = None, graph_at: Callable[[int], Graph] | None = None) -> Compiled:
    """Run `STEPS` on the model for the target; `write_build` writes the result. `max_len`:
    longest prompt + generation (`default_max_len(model)` if None). `check`: run the programs
    against the integer model (None: for models with weights up to CHECK_MAX_PARAMETERS).
    `graph_at(seq_len)`: the fused graph at a length, for a graph built in memory (`model` then
    only names it)."""
    t0 = time.perf_counter()
    tgt = load_target(target)
    pol = load_policy(policy)
    if max_len is None:
        max_len = default_max_len(model)
    if max_len < 1:
        raise CompileError(f"--max-len must be positive, not {max_len}")
    check_steps(max_len, prefill_step, decode_step)
    f = Flow(model, tgt, pol, max_len, prefill_step, decode_step, check=check, graph_at=graph_at)
    for step in STEPS:
        try:
            with progress.phase(f"compile: {step.__name__.removeprefix('step_')}"):
                step(f)
        except CompileError as e:
            if step not in (step_layout, step_lower):
                raise
            fit = "no max length fits" if getattr(e, "any_length", False) else longest_fit(f, step is step_lower)
            raise CompileError(f"{e}; {fit}") from None
    return Compiled(f.manifest, f.programs, f.images, time.perf_counter() - t0, f.layout, f.graph,
                    tgt.text.encode(), tgt, compile_inputs(model, target, policy), f.checked)


def _fits(f: Flow, n: int, lower: bool) -> bool:
    """Whether max length `n` fits: the HBM layout and, with `lower`, the programs of the longest
    buckets (the most keys: if they fit, the shorter ones do)."""
    g = Flow(f.model, f.target, f.policy, n, f.prefill_step and min(f.prefill_step, n),
             f.decode_step and min(f.decode_step, n), graph=f.graph, has_data=f.has_data)
    try:
        step_layout(g)
        if lower:
            step_lower(g, largest_only=True)
    except CompileError:
        return False
    return True


def longest_fit(f: Flow, lowered: bool) -> str:
    """The longest max length below f.max_len that fits, for the error message: a binary search on
    the HBM layout (fast), then on the longest buckets' programs if the layout was not the problem
    or they do not fit at the length found. What fits at n fits at every shorter length."""
    def search(hi: int, lower: bool) -> int:
        lo = 0                                 # invariant: lo fits (0: nothing yet), hi + 1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _fits(f, mid, lower) else (lo, mid - 1)
        return lo
    if not _fits(f, 1, lower=lowered):        # weights or a tile too big at any length: one probe
        return "no max length fits"
    n = search(f.max_len - 1, lower=lowered)
    if n and not lowered and not _fits(f, n, True):
        n = search(n - 1, lower=True)
    return f"the longest max length that fits is {n} (--max-len {n})" if n else "no max length fits"


def compile_inputs(*sources: str) -> tuple[Path, ...]:
    """The files among a compile's model, target and policy (not bundled names)."""
    return tuple(Path(s) for s in sources if Path(s).is_file())


def write_build(c: Compiled, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Write BUILD whole or not at all (`llmfab.ir.folders.write_folder`): replaces only a BUILD
    llmfab wrote, never a folder holding the compile's inputs. `extra`: more files (BUILD/hw)."""
    files = dict(c.programs + c.images)
    if c.target_yaml:
        files[TARGET_FILE] = c.target_yaml
    files["manifest.json"] = (json.dumps(c.manifest, indent=2, sort_keys=True) + "\n").encode()
    files["summary.txt"] = summary(c).encode()
    return write_folder(out, "build", files | (extra or {}), c.inputs)


def summary(c: Compiled) -> str:
    m = c.manifest
    progs = m["programs"]
    dec = [p for p in progs if p["stage"] == "decode"]
    pre = [p for p in progs if p["stage"] == "prefill"]
    family = f" ({m['family']})" if m.get("family") else ""     # an ONNX export names none
    lines = [f"model        {m['model']}{family}, policy {m['policy']}, target {m['target']['name']}",
             f"max length   {m['max_len']}: {len(pre)} prefill programs (step {m['prefill_step']}), "
             f"{len(dec)} decode programs (step {m['decode_step']})"]
    if dec:
        lines.append(f"decode       {max(p['instructions'] for p in dec):,} instructions, "
                     f"{max(p['bytes'] for p in dec) / 1e6:.2f} MB per program")
    if pre:
        lines.append(f"prefill      {pre[0]['instructions']:,} .. {pre[-1]['instructions']:,} instructions "
                     f"({pre[0]['bytes'] / 1e6:.2f} .. {pre[-1]['bytes'] / 1e6:.2f} MB)")
    lines.append(f"storage      {m['instruction_bytes_total'] / 1e6:.1f} MB bucketed; "
                 f"{m['instruction_bytes_per_exact_length'] / 1e9:.2f} GB with one program per exact length")
    lines.append(f"HBM          {m['hbm']['bytes_total'] / 1e9:.3f} GB used "
                 f"({m['hbm']['bytes_per_channel'] / 1e6:.1f} of {m['hbm']['capacity_per_channel'] / 1e6:.0f} MB per channel)")
    if m.get("padded_k"):
        pads = sorted({(p["k"], p["k_engine"]) for p in m["padded_k"]})
        lines.append(f"padded K     {len(m['padded_k'])} layers stream zero codes to whole groups and chain beats: "
                     + ", ".join(f"K={k} as {e}" for k, e in pads))
    lines.append(f"weights      {len(m['weights'])} channel images" if m["weights"] else
                 "weights      none (config-only model: programs and layout only)")
    return "\n".join(lines) + "\n"


