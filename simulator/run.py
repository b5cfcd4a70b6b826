"""`llmfab simulate BUILD --prefill L --decode N`: time to first token and decode speed of a build.

The prefill program of L's bucket is timed at LEN = L. Decode steps at contexts L+1 .. L+N are
timed at three contexts (first, middle, last: every instruction of each is timed) and integrated
piecewise linearly in between, since a step's work grows linearly with its context.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llmfab.ir.isa import Program
from llmfab.ir.target import load_target

from .timing import Timing, TimingModel


class SimulateError(ValueError):
    pass


@dataclass(frozen=True)
class SimReport:
    target: str
    prefill: int
    decode: int
    ttft_s: float
    decode_tokens_per_s: float
    decode_s_per_token: dict            # context -> seconds
    hbm_utilization: float              # decode, of peak bandwidth
    dsp_utilization: float              # decode
    roofline_decode_tokens_per_s: float  # peak bandwidth / bytes one decode step moves (mid context)
    decode_instructions: int

    def to_json(self) -> dict:
        return asdict(self)


def program_for(build: Path, manifest: dict, stage: str, length: int) -> Program:
    """The program of `build` that serves `length` in `stage` (its bucket)."""
    for e in manifest["programs"]:
        if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
            return Program.from_bytes((build / e["file"]).read_bytes())
    raise SimulateError(f"{build}: no {stage} program for length {length} (max_len {manifest['max_len']})")


def simulate(build: str | Path, prefill: int, decode: int) -> SimReport:
    build = Path(build)
    try:
        manifest = json.loads((build / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SimulateError(f"{build}: not a build folder with a manifest.json ({e})") from None
    if prefill < 1 or decode < 1 or prefill + decode > manifest["max_len"]:
        raise SimulateError(f"--prefill {prefill} + --decode {decode} must be positive and fit max_len "
                            f"{manifest['max_len']} of {build}")
    target = load_target(manifest["target"]["name"])
    model = TimingModel(target)
    ttft = model.run(program_for(build, manifest, "prefill", prefill), prefill).seconds
    contexts = sorted({prefill + 1, prefill + (decode + 1) // 2, prefill + decode})
    steps: dict[int, Timing] = {c: model.run(program_for(build, manifest, "decode", c), c) for c in contexts}
    # integrate seconds per step over contexts L+1 .. L+N, linear between the timed ones
    total = 0.0
    for ctx in range(prefill + 1, prefill + decode + 1):
        lo = max(c for c in contexts if c <= ctx)
        hi = min(c for c in contexts if c >= ctx)
        a, b = steps[lo].seconds, steps[hi].seconds
        total += a if hi == lo else a + (b - a) * (ctx - lo) / (hi - lo)
    mid = steps[contexts[len(contexts) // 2]]
    peak = target.memory.peak_gbps * 1e9
    return SimReport(target.name, prefill, decode, ttft, decode / total, {c: s.seconds for c, s in steps.items()},
                     mid.hbm_utilization(target), mid.dsp_utilization(target), peak / mid.hbm_bytes,
                     mid.instructions)


def format_report(r: SimReport) -> str:
    lines = [f"target       {r.target}: prefill {r.prefill} tokens, then {r.decode} decode steps",
             f"TTFT         {r.ttft_s * 1e3:.2f} ms",
             f"decode       {r.decode_tokens_per_s:.1f} tokens/s (bandwidth roofline for the same build "
             f"{r.roofline_decode_tokens_per_s:.1f})",
             f"utilisation  HBM {r.hbm_utilization:.0%}, DSP {r.dsp_utilization:.0%} (decode, mid context)"]
    lines += [f"  context {c:5d}: {s * 1e3:.2f} ms per token" for c, s in r.decode_s_per_token.items()]
    return "\n".join(lines) + "\n"
