"""`llmfab simulate BUILD --prefill L --decode N`: time to first token and decode speed of a build.

The prefill program of L's bucket is timed at LEN = L. Decode steps at contexts L+1 .. L+N are
timed at three contexts (first, middle, last: every instruction of each is timed) and integrated
piecewise linearly in between, since a step's work grows linearly with its context.

Where the time goes, for the prefill and the middle decode step: busy seconds per unit (load,
matrix, sfu, store), unit seconds per opcode or function, and seconds per section of the program
(`layers.N`, the embedding, the LM head: what each adds to the critical path, from the build's
manifest). `--trace FILE` writes every instruction of the middle decode step with its queue and
its begin and end cycle.

`--model design` (the default) times the pipelined design the Target describes
(simulator/timing.py); `--model rtl` times the accelerator RTL that `llmfab rtl` emits today
(backend_hw/cycle_model.py, held within 2% of Verilator on whole programs).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llmfab.ir.isa import Program
from llmfab.ir.target import load_target

from .timing import LOAD, MATRIX, SFU, STORE, Timing, TimingModel

UNITS = {LOAD: "load", MATRIX: "matrix", SFU: "sfu", STORE: "store"}
MODELS = ("design", "rtl")


class SimulateError(ValueError):
    pass


@dataclass(frozen=True)
class SimReport:
    target: str
    model: str                          # "design" or "rtl" (module docstring)
    prefill: int
    decode: int
    ttft_s: float
    decode_tokens_per_s: float
    decode_s_per_token: dict            # context -> seconds
    hbm_utilization: float              # decode, of peak bandwidth
    dsp_utilization: float              # decode
    roofline_decode_tokens_per_s: float  # peak bandwidth / bytes one decode step moves (mid context)
    decode_instructions: int
    breakdown: dict                     # "prefill" / "decode" -> {"units", "ops", "sections"}, seconds

    def to_json(self) -> dict:
        return asdict(self)


def _breakdown(t: Timing, sections: list) -> dict:
    return {"seconds": t.seconds,
            "units": {UNITS[q]: s for q, s in t.busy.items()},
            "ops": dict(sorted(t.per_op.items(), key=lambda kv: -kv[1])),
            "sections": t.sections([(s, label) for s, label in sections])}


def _entry(manifest: dict, stage: str, length: int) -> dict:
    return next(e for e in manifest["programs"] if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1])


def write_trace(t: Timing, clock_mhz: float, path: str | Path) -> None:
    """One CSV row per instruction: index, queue, opcode or function, begin and end cycle."""
    hz = clock_mhz * 1e6
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "queue", "op", "begin_cycle", "end_cycle", "cycles"])
        for idx, q, key, b, e in t.spans:
            w.writerow([idx, UNITS[q], key, round(b * hz), round(e * hz), round(e * hz) - round(b * hz)])


def program_for(build: Path, manifest: dict, stage: str, length: int) -> Program:
    """The program of `build` that serves `length` in `stage` (its bucket)."""
    for e in manifest["programs"]:
        if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
            return Program.from_bytes((build / e["file"]).read_bytes())
    raise SimulateError(f"{build}: no {stage} program for length {length} (max_len {manifest['max_len']})")


def timing_model(target, model: str = "design", programs: list[Program] = ()):
    """The timing model `model` ("design" or "rtl") of `target`: `.run(program, length) -> Timing`.
    The RTL is the accelerator built for the weight formats of `programs` (the build's)."""
    if model == "design":
        return TimingModel(target)
    if model == "rtl":
        from llmfab.backend_hw.accelerator import formats_of     # imports amaranth: only when asked
        from llmfab.backend_hw.cycle_model import RtlCycleModel
        return RtlCycleModel(target, formats_of(programs))
    raise SimulateError(f"--model must be one of {', '.join(MODELS)}, not {model!r}")


def simulate(build: str | Path, prefill: int, decode: int, trace: str | Path | None = None,
             model: str = "design") -> SimReport:
    build = Path(build)
    try:
        manifest = json.loads((build / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SimulateError(f"{build}: not a build folder with a manifest.json ({e})") from None
    if prefill < 1 or decode < 1 or prefill + decode > manifest["max_len"]:
        raise SimulateError(f"--prefill {prefill} + --decode {decode} must be positive and fit max_len "
                            f"{manifest['max_len']} of {build}")
    target = load_target(manifest["target"]["name"])
    programs = [Program.from_bytes((build / e["file"]).read_bytes()) for e in manifest["programs"]] if model == "rtl" else []
    name, model = model, timing_model(target, model, programs)
    pre = model.run(program_for(build, manifest, "prefill", prefill), prefill)
    ttft = pre.seconds
    contexts = sorted({prefill + 1, prefill + (decode + 1) // 2, prefill + decode})
    steps: dict[int, Timing] = {c: model.run(program_for(build, manifest, "decode", c), c) for c in contexts}
    # integrate seconds per step over contexts L+1 .. L+N, linear between the timed ones
    total = 0.0
    for ctx in range(prefill + 1, prefill + decode + 1):
        lo = max(c for c in contexts if c <= ctx)
        hi = min(c for c in contexts if c >= ctx)
        a, b = steps[lo].seconds, steps[hi].seconds
        total += a if hi == lo else a + (b - a) * (ctx - lo) / (hi - lo)
    mid_ctx = contexts[len(contexts) // 2]
    mid = steps[mid_ctx]
    if trace is not None:
        write_trace(mid, target.clock_mhz, trace)
    peak = target.memory.peak_gbps * 1e9
    breakdown = {"prefill": _breakdown(pre, _entry(manifest, "prefill", prefill).get("sections", [])),
                 "decode": _breakdown(mid, _entry(manifest, "decode", mid_ctx).get("sections", []))}
    return SimReport(target.name, name, prefill, decode, ttft, decode / total, {c: s.seconds for c, s in steps.items()},
                     mid.hbm_utilization(target), mid.dsp_utilization(target), peak / mid.hbm_bytes,
                     mid.instructions, breakdown)


def format_report(r: SimReport) -> str:
    what = "the pipelined design" if r.model == "design" else "the accelerator RTL as emitted (backend_hw)"
    lines = [f"target       {r.target}: prefill {r.prefill} tokens, then {r.decode} decode steps; timing of {what}",
             f"TTFT         {r.ttft_s * 1e3:.2f} ms",
             f"decode       {r.decode_tokens_per_s:.1f} tokens/s (bandwidth roofline for the same build "
             f"{r.roofline_decode_tokens_per_s:.1f})",
             f"utilisation  HBM {r.hbm_utilization:.0%}, DSP {r.dsp_utilization:.0%} (decode, mid context)"]
    lines += [f"  context {c:5d}: {s * 1e3:.2f} ms per token" for c, s in r.decode_s_per_token.items()]
    for stage, b in r.breakdown.items():
        total = b["seconds"] or 1.0
        lines.append(f"{stage} breakdown ({b['seconds'] * 1e3:.2f} ms; unit busy time, then the top functions):")
        lines.append("  units      " + ", ".join(f"{u} {s * 1e3:.2f} ms ({s / total:.0%})" for u, s in b["units"].items()))
        lines.append("  functions  " + ", ".join(f"{k} {s * 1e3:.2f}" for k, s in list(b["ops"].items())[:6]) + " ms")
        layers = [s for k, s in b["sections"].items() if k.startswith("layers.")]
        other = {k: s for k, s in b["sections"].items() if not k.startswith("layers.")}
        if layers:
            lines.append(f"  layers     {len(layers)}: {min(layers) * 1e3:.3f} .. {max(layers) * 1e3:.3f} ms each, "
                         f"{sum(layers) * 1e3:.2f} ms in all; " + ", ".join(f"{k} {s * 1e3:.3f}" for k, s in other.items()) + " ms")
    return "\n".join(lines) + "\n"
