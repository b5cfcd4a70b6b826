"""`llmfab report` and `llmfab simulate` as data: the one dict `--json` prints and `--html` draws.

`report_data` analyses a model on a target without writing a build: the capacity check, the
per-op roofline of prefill and decode, resources, power, and (compiling every length bucket in
memory) instruction storage and the design timing model's TTFT and decode speed over the whole
context. `simulate_data` is a BUILD's timing with the build's resources, storage and weight
formats beside it. `format_report` prints the dict as text.
"""
from __future__ import annotations

import json

from . import progress


class _FlowBuild:
    """A compile `Flow` that has run `step_package`, read like a `Build` folder by the simulator."""

    def __init__(self, f):
        self.path, self.manifest, self.target, self.max_len = f"{f.model} (in memory)", f.manifest, f.target, f.max_len
        self._programs = {low.bucket.name: low for low in f.prefill + f.decode}

    def entry(self, stage: str, length: int) -> dict:
        """The manifest entry of the program that serves `length` in `stage` (its bucket)."""
        for e in self.manifest["programs"]:
            if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
                return e
        raise ValueError(f"{self.path}: no {stage} program for length {length} (max_len {self.max_len})")

    def program_for(self, stage: str, length: int):
        return self._programs[self.entry(stage, length)["file"].removeprefix("programs/").removesuffix(".bin")].program

    def sections(self, stage: str, length: int) -> list:
        return self.entry(stage, length)["sections"]


def _storage(manifest: dict) -> dict:
    return {"programs": len(manifest["programs"]), "bytes_bucketed": manifest["instruction_bytes_total"],
            "bytes_per_exact_length": manifest["instruction_bytes_per_exact_length"],
            "prefill_step": manifest["prefill_step"], "decode_step": manifest["decode_step"]}


def _resources(t) -> dict:
    from llmfab.passes.roofline import resources
    return {k: {"used": v.used, "capacity": v.capacity} for k, v in resources(t).items()}


def _plain(d: dict) -> dict:
    """The dict exactly as `--json` prints it (integer keys become strings, keys sorted): what the
    page is drawn from, so the page never depends on anything --json does not show."""
    return json.loads(json.dumps(d, sort_keys=True))


def report_data(model: str, target: str, policy: str, prefill: int, decode: int) -> dict:
    from llmfab.compile import CompileError, check_fit, step_lower, step_package
    from llmfab.flow import load_model
    from llmfab.ir.target import load_target
    from llmfab.passes import PASSES, parse_pipeline, run_pipeline
    from llmfab.passes.roofline import resource_units, resources, roofline, roofs, to_json
    from llmfab.simulator import DesignUnits
    from llmfab.simulator.run import simulate

    t = load_target(target)
    context = prefill + decode
    head = {"kind": "report", "model": str(model), "target": t.name, "policy": policy, "prefill": prefill,
            "decode_context": context}
    try:   # capacity first, as compile checks it: no figures for a configuration that does not fit
        with progress.phase("report: load, quantize, lay out"):
            # at least one decode step is timed, so the build holds context L+1 when --decode is 0
            fit = check_fit(model, target, policy=policy, length=max(context, prefill + 1))
    except CompileError as e:
        return head | {"fits": False, "reason": str(e)}
    with progress.phase("report: lower every length bucket"):
        step_lower(fit)
        step_package(fit)
    stages, graphs = [], {}
    with progress.phase("report: roofline"):
        for stage, tokens, ctx in (("prefill", prefill, prefill), ("decode", 1, context)):
            g = graphs[stage] = load_model(model, seq_len=tokens)
            run_pipeline(g, parse_pipeline(f"quantize{{policy={policy}}}", PASSES))
            stages.append(roofline(g, t, stage, tokens, ctx))
    res = resources(t)
    units = DesignUnits(t)
    build = _FlowBuild(fit)
    sim = simulate(build, prefill, max(decode, 1), units, track=progress.track)
    # the bucket holding the context: a bucket's program runs the KV tiles of its own longest context
    pw = decode_power(t, res, build.program_for("decode", context), context, units)
    # no schedule beats the roofline bound: the same curves at each op's peak, for comparison
    bounds = {"ttft_s": {n: roofline(graphs["prefill"], t, "prefill", int(n), int(n)).bound_seconds(t)
                         for n in sim.curves["ttft_s"]},
              "decode_s_per_token": {c: roofline(graphs["decode"], t, "decode", 1, int(c)).bound_seconds(t)
                                     for c in sim.curves["decode_s_per_token"]}}
    return _plain(head | {
        "fits": True,
        "hbm": {"bytes_total": fit.layout.bytes_used, "bytes_per_channel": max(fit.layout.used),
                "capacity_per_channel": fit.capacity, "channels": t.memory.channels},
        "roofline": to_json(stages[0]) + to_json(stages[1]),
        "roofs": roofs(t),
        "stages": {r.stage: {"ideal_s": r.seconds, "bound_s": r.bound_seconds(t), "bytes": r.bytes} for r in stages},
        "resources": _resources(t),
        "resource_units": resource_units(t),
        "power": pw,
        "simulate": sim.to_json(),
        "bounds": bounds,
        "storage": _storage(fit.manifest),
        "weight_formats": fit.manifest["weight_formats"],
    })


def decode_power(t, res: dict, program, context: int, units) -> dict:
    """Power and J/token at one decode step as the timing model runs it (its time, HBM bytes and
    MAC activity depend on the policy), not at the roofline bound, where HBM watts are a constant
    (`llmfab report` and `llmfab explore`)."""
    from llmfab.passes.roofline import power
    from llmfab.simulator import schedule

    step = schedule(program, context, units)
    pw = power(t, res, step.seconds, step.hbm_bytes, step.dsp_utilization(t))
    return {"static_w": pw.static_w, "dynamic_w": pw.dynamic_w, "joules_per_token": pw.joules_per_token,
            "decode_step_s": step.seconds, "dsp_activity": step.dsp_utilization(t)}


def simulate_data(path, prefill: int, decode: int, model: str = "rtl", trace=None) -> dict:
    """`llmfab simulate --json`: the timing report of the build at `path`, with the build's
    resources, roofs, instruction storage and weight formats (what `--html` draws beside it)."""
    from llmfab.passes.roofline import roofs
    from llmfab.simulator.run import simulate

    from .build import Build
    from .timing import timing_units

    build = Build.open(path)
    r = simulate(build, prefill, decode, timing_units(build, model), trace, track=progress.track)
    m = build.manifest
    return _plain(r.to_json() | {
        "kind": "simulate", "model_source": m.get("model"), "policy": m.get("policy"), "max_len": build.max_len,
        "roofs": roofs(build.target), "resources": _resources(build.target), "storage": _storage(m),
        "hbm": m["hbm"] | {"channels": build.target.memory.channels},
        # builds compiled before weight formats were recorded have none
        "weight_formats": m.get("weight_formats", [])})


def format_report(d: dict) -> str:
    """`llmfab report` as text, from `report_data`'s dict."""
    where = f"{d['model']} on {d['target']} ({d['policy']}, prefill {d['prefill']}, context {d['decode_context']})"
    if not d["fits"]:
        return f"{where}: does not fit: {d['reason']}\n"
    lines = []
    rows = d["roofline"]
    for stage, tokens in (("prefill", d["prefill"]), ("decode", 1)):
        s = d["stages"][stage]
        ctx = d["prefill"] if stage == "prefill" else d["decode_context"]
        lines.append(f"{stage} ({tokens} tokens, context {ctx}): ideal {s['ideal_s'] * 1e3:.2f} ms op by op, "
                     f"bound {s['bound_s'] * 1e3:.2f} ms; {s['bytes'] / 1e9:.3f} GB moved")
        kinds = {}
        for row in (r for r in rows if r["stage"] == stage):
            k = kinds.setdefault(row["kind"], [0.0, 0.0, 0.0, set()])
            k[0] += row["ops"]
            k[1] += row["bytes"]
            k[2] += row["seconds"]
            k[3].add(row["bound"])
        lines.append(f"  {'op':12s} {'GOPs':>10s} {'MB':>10s} {'ops/byte':>9s} {'ms':>8s}  bound")
        for kind, (ops, nbytes, sec, bounds) in sorted(kinds.items(), key=lambda kv: -kv[1][2]):
            inten = f"{ops / nbytes:9.1f}" if nbytes else "      inf"
            lines.append(f"  {kind:12s} {ops / 1e9:10.3f} {nbytes / 1e6:10.2f} {inten} {sec * 1e3:8.3f}  "
                         f"{'/'.join(sorted(bounds))}")
    hbm, res, pw, sim = d["hbm"], d["resources"], d["power"], d["simulate"]
    cap = hbm["capacity_per_channel"]
    lines.append(f"memory    {hbm['bytes_total'] / 1e9:.2f} GB of {cap * hbm['channels'] / 1e9:.2f} GB "
                 f"(fullest channel {hbm['bytes_per_channel'] / 1e6:.1f} of {cap / 1e6:.1f} MB) at context "
                 f"{d['decode_context']}")
    lines.append("resources " + ", ".join(f"{k} {v['used']:,.0f}/{v['capacity']:,.0f} ({v['used'] / v['capacity']:.0%})"
                                         for k, v in res.items() if v["capacity"]))
    lines.append(f"  {'unit':15s} {'LUT':>9s} {'FF':>9s} {'DSP':>6s} {'BRAM':>6s}  (synthesis-calibrated, "
                 f"passes/resource_costs.yaml)")
    for name, u in d["resource_units"].items():
        lines.append(f"  {name:15s} {u['lut']:9,.0f} {u['ff']:9,.0f} {u['dsp']:6,.0f} {u['bram']:6,.0f}")
    lines.append(f"power     {pw['static_w'] + pw['dynamic_w']:.1f} W ({pw['static_w']:.1f} static), "
                 f"{pw['joules_per_token']:.3f} J per decode token ({pw['decode_step_s'] * 1e3:.2f} ms a step at "
                 f"context {d['decode_context']} on the design timing model, MACs {pw['dsp_activity']:.0%} busy)")
    lines.append(f"timing    TTFT {sim['ttft_s'] * 1e3:.2f} ms, decode {sim['decode_tokens_per_s']:.1f} tokens/s "
                 f"(design timing model)")
    st = d["storage"]
    lines.append(f"programs  {st['programs']}: {st['bytes_bucketed'] / 1e6:.1f} MB bucketed; "
                 f"{st['bytes_per_exact_length'] / 1e9:.2f} GB with one program per exact length")
    return "\n".join(lines) + "\n"
