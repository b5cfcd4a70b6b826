"""`llmfab simulate BUILD --prefill L --decode N`: time to first token and decode speed of a build.

The prefill of L tokens is timed chunk by chunk as the host runs it (each chunk's program at its
LEN, one after the other; ir/isa.py `prompt_chunks`). Decode steps at contexts L+1 .. L+N are
timed at three contexts (first, middle, last: every instruction of each is timed) and integrated
piecewise linearly in between, since a step's work grows linearly with its context.

Where the time goes, for the prefill and the middle decode step: busy seconds per unit (load,
matrix, sfu, store), unit seconds per opcode or function, and seconds per section of the program
(`layers.N`, the embedding, the LM head: what each adds to the critical path, from the build's
manifest). `--trace FILE` writes every instruction of the middle decode step with its queue and
its begin and end cycle.

The walk is `schedule.py`'s; the `Units` say what each instruction costs: `--model design` (the
default) the pipelined design the Target describes (`design.DesignUnits`), `--model rtl` the
accelerator RTL that `llmfab rtl` emits today (`llmfab.backend_hw.RtlUnits`, held within 2% of
Verilator on whole programs). The driver (llmfab/flow.py) wires the name to the units.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

from llmfab.ir.isa import prompt_chunks

from .schedule import UNIT_NAMES, Timing, Units, schedule

CURVE_POINTS = 8   # decode contexts timed for the curve of speed against context (curve_contexts)


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
    breakdown: dict                     # "prefill" / "decode" -> {"units", "ops", "sections"} in seconds,
                                        # "macs", "hbm_bytes"
    curves: dict                        # "ttft_s": prompt length -> s; "decode_s_per_token": context -> s

    def to_json(self) -> dict:
        return asdict(self)


def _breakdown(t: Timing, sections: list) -> dict:
    return {"seconds": t.seconds,
            "units": {UNIT_NAMES[q]: s for q, s in t.busy.items()},
            "ops": dict(sorted(t.per_op.items(), key=lambda kv: -kv[1])),
            "sections": t.sections([(s, label) for s, label in sections]),
            "macs": t.macs, "hbm_bytes": t.hbm_bytes}


def _add(total: dict, b: dict) -> None:
    """Add breakdown `b` (one prefill chunk) into `total`."""
    for part in ("seconds", "macs", "hbm_bytes"):
        total[part] += b[part]
    for part in ("units", "ops", "sections"):
        for k, v in b[part].items():
            total[part][k] = total[part].get(k, 0.0) + v


def curve_contexts(max_len: int, points: int = CURVE_POINTS) -> list[int]:
    """Decode contexts for the curve of speed against context: `points` evenly over 1 .. max_len."""
    return sorted({round(1 + (max_len - 1) * i / max(points - 1, 1)) for i in range(points)})


def _identity(items, label):
    return items


def write_trace(t: Timing, clock_mhz: float, path: str | Path) -> None:
    """One CSV row per instruction: index, queue, opcode or function, begin and end cycle."""
    hz = clock_mhz * 1e6
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "queue", "op", "begin_cycle", "end_cycle", "cycles"])
        for idx, q, key, b, e in t.spans:
            w.writerow([idx, UNIT_NAMES[q], key, round(b * hz), round(e * hz), round(e * hz) - round(b * hz)])


def simulate(build, prefill: int, decode: int, units: Units, trace: str | Path | None = None,
             track=_identity, curves: bool = True) -> SimReport:
    """Time `build` (a `llmfab.build.Build`: `.target`, `.max_len`, `.manifest`, `.program_for(stage,
    length)`, `.sections(stage, length)`) on `units`: the prefill of `prefill` tokens, then `decode`
    steps; and, with `curves`, the curves over the whole build: TTFT at every chunk end, decode
    speed at `curve_contexts` (`llmfab explore` leaves them out: they cost most of the time and
    change neither TTFT nor tokens/s). `track(items, label)`: iterates `items`, showing progress."""
    if prefill < 1 or decode < 1 or prefill + decode > build.max_len:
        raise SimulateError(f"--prefill {prefill} + --decode {decode} must be positive and fit max_len "
                            f"{build.max_len} of {build.path}")
    target = build.target
    step = build.manifest["prefill_step"]
    # every chunk a prompt of this build can run in: the prompt's chunks give TTFT and its breakdown
    ends = [end for _, end in prompt_chunks(build.max_len, step)]
    mine = {end for _, end in prompt_chunks(prefill, step)}
    pre = {"seconds": 0.0, "units": {}, "ops": {}, "sections": {}, "macs": 0, "hbm_bytes": 0}
    ttft_curve, elapsed = {}, 0.0
    if not curves:
        ends = sorted(mine)
    for end in track(ends, f"simulate {len(ends)} prefill chunks"):
        t = schedule(build.program_for("prefill", end), end, units)
        elapsed += t.seconds
        ttft_curve[min(end, build.max_len)] = elapsed
        if end in mine:
            _add(pre, _breakdown(t, build.sections("prefill", end)))
    pre["ops"] = dict(sorted(pre["ops"].items(), key=lambda kv: -kv[1]))
    ttft = pre["seconds"]
    contexts = sorted({prefill + 1, prefill + (decode + 1) // 2, prefill + decode})
    mid_ctx = contexts[len(contexts) // 2]
    seconds, mid = {}, None
    curve_ctx = curve_contexts(build.max_len) if curves else []
    for c in track(sorted(set(contexts) | set(curve_ctx)), "simulate decode contexts"):
        t = schedule(build.program_for("decode", c), c, units)
        seconds[c] = t.seconds
        if c == mid_ctx:
            mid = t
    # integrate seconds per step over contexts L+1 .. L+N, linear between the timed ones
    total = 0.0
    for ctx in range(prefill + 1, prefill + decode + 1):
        lo = max(c for c in contexts if c <= ctx)
        hi = min(c for c in contexts if c >= ctx)
        a, b = seconds[lo], seconds[hi]
        total += a if hi == lo else a + (b - a) * (ctx - lo) / (hi - lo)
    if trace is not None:
        write_trace(mid, target.clock_mhz, trace)
    peak = target.memory.peak_gbps * 1e9
    breakdown = {"prefill": pre,
                 "decode": _breakdown(mid, build.sections("decode", mid_ctx))}
    curves = {"ttft_s": ttft_curve if curves else {}, "decode_s_per_token": {c: seconds[c] for c in curve_ctx}}
    return SimReport(target.name, units.name, prefill, decode, ttft, decode / total, {c: seconds[c] for c in contexts},
                     mid.hbm_utilization(target), mid.dsp_utilization(target), peak / mid.hbm_bytes,
                     mid.instructions, breakdown, curves)


def format_report(r: SimReport) -> str:
    what = ("a what-if: the pipelined design the target describes, which the RTL does not implement"
            if r.model == "design" else "the accelerator RTL as emitted (backend_hw; validated in Verilator)")
    lines = [f"target       {r.target}: prefill {r.prefill} tokens, then {r.decode} decode steps; timing of {what}",
             f"TTFT         {r.ttft_s * 1e3:.2f} ms",
             f"decode       {r.decode_tokens_per_s:.1f} tokens/s (bandwidth roofline for the same build "
             f"{r.roofline_decode_tokens_per_s:.1f})",
             f"utilisation  HBM {r.hbm_utilization:.0%}, DSP {r.dsp_utilization:.0%} (decode, mid context)"]
    lines += [f"  context {int(c):5d}: {s * 1e3:.2f} ms per token" for c, s in r.decode_s_per_token.items()]
    lines.append("TTFT by prompt  " + ", ".join(f"{n}: {s * 1e3:.2f}" for n, s in r.curves["ttft_s"].items()) + " ms")
    lines.append("decode by context  " + ", ".join(f"{c}: {s * 1e3:.2f}" for c, s in r.curves["decode_s_per_token"].items())
                 + " ms per token")
    for stage, b in r.breakdown.items():
        total = b["seconds"] or 1.0
        lines.append(f"{stage} breakdown ({b['seconds'] * 1e3:.2f} ms; unit busy time, then the top functions):")
        lines.append("  units      " + ", ".join(f"{u} {s * 1e3:.2f} ms ({s / total:.0%})" for u, s in b["units"].items()))
        top = sorted(b["ops"].items(), key=lambda kv: (-kv[1], kv[0]))[:6]
        lines.append("  functions  " + ", ".join(f"{k} {s * 1e3:.2f}" for k, s in top) + " ms")
        layers = [s for k, s in b["sections"].items() if k.startswith("layers.")]
        other = {k: s for k, s in b["sections"].items() if not k.startswith("layers.")}
        if layers:
            lines.append(f"  layers     {len(layers)}: {min(layers) * 1e3:.3f} .. {max(layers) * 1e3:.3f} ms each, "
                         f"{sum(layers) * 1e3:.2f} ms in all; " + ", ".join(f"{k} {s * 1e3:.3f}" for k, s in other.items()) + " ms")
    return "\n".join(lines) + "\n"
