"""One point of `llmfab explore`, as a worker runs it (a process of the pool or a Ray task).

`evaluate(task)` never raises: it returns the point's figures, or why it does not fit (the
errors compile and the timing model give for a configuration the device or the model cannot
hold), or, for anything else, the error that crashed it, so a sweep always finishes. The figures
come from the same code as `llmfab report`: compile's `check_fit` and lowering (config-only: no
weight images), the design timing model (`simulate` without its curves), `resources` and
`decode_power`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

OK, NO_FIT, CRASHED = "ok", "does-not-fit", "crashed"


@dataclass(frozen=True)
class Task:
    """What a worker needs, all plain data (pickled to processes and Ray tasks)."""
    id: str
    model: str
    target_text: str       # the point's target YAML (explore_space.derive_target)
    target_source: str
    policy: str
    max_len: int
    prefill_step: int | None
    decode_step: int | None
    prefill: int           # prompt tokens timed
    decode: int            # decode steps timed


class DeviceFitError(ValueError):
    pass


def _no_fit_errors() -> tuple:
    from llmfab.compile import CompileError
    from llmfab.ir.target import TargetError
    from llmfab.passes.hbm_layout import LayoutError
    from llmfab.simulator.run import SimulateError
    return CompileError, TargetError, LayoutError, SimulateError, DeviceFitError


def evaluate(task: Task) -> dict:
    """{"status": "ok", "metrics": {...}}, or {"status": "does-not-fit" | "crashed", "error": "..."}."""
    try:
        # plain JSON numbers (a numpy scalar would differ between a cached and a fresh point)
        return {"status": OK, "metrics": json.loads(json.dumps(metrics(task), default=lambda o: o.item()))}
    except _no_fit_errors() as e:
        return {"status": NO_FIT, "error": str(e)}
    except Exception as e:   # noqa: BLE001 - a crashed point is recorded, the sweep goes on
        return crashed(f"{type(e).__name__}: {e}")


def crashed(why: str) -> dict:
    return {"status": CRASHED, "error": " ".join(why.split())}


def metrics(task: Task) -> dict:
    from llmfab.compile import CompileError, check_fit, step_check, step_lower, step_package
    from llmfab.ir.target import target_from_text
    from llmfab.passes.roofline import resources
    from llmfab.simulator import DesignUnits
    from llmfab.simulator.run import simulate

    from .report import _FlowBuild, decode_power

    t = target_from_text(task.target_text, task.target_source)
    res = resources(t)
    over = [f"{k} {r.used:,.0f} of {r.capacity:,.0f}" for k, r in res.items() if r.capacity and r.used > r.capacity]
    if over:
        raise DeviceFitError(f"{t.name}: needs more than {t.device.part} has: {', '.join(over)}")
    try:
        f = check_fit(task.model, t, policy=task.policy, length=task.max_len, prefill_step=task.prefill_step,
                      decode_step=task.decode_step)
        step_lower(f)
        step_check(f)
    except CompileError as e:   # the space may not name max_len: say which one did not fit
        raise CompileError(f"at max length {task.max_len}: {e}") from None
    f.has_data = False      # timing needs programs and layout only, never the weight images
    step_package(f)
    units = DesignUnits(t)
    build = _FlowBuild(f)
    sim = simulate(build, task.prefill, task.decode, units, curves=False)
    pw = decode_power(t, res, build.program_for("decode", task.prefill + task.decode), task.prefill + task.decode,
                      units)
    m = f.manifest
    return {"tokens_per_s": sim.decode_tokens_per_s, "ttft_s": sim.ttft_s,
            "dsp": res["dsp"].used, "lut": res["lut"].used, "ff": res["ff"].used, "bram": res["bram"].used,
            "uram": res["uram"].used, "power_w": pw["static_w"] + pw["dynamic_w"],
            "j_per_token": pw["joules_per_token"], "hbm_bytes": m["hbm"]["bytes_total"],
            "hbm_utilization": sim.hbm_utilization, "instruction_bytes": m["instruction_bytes_total"],
            "programs": len(m["programs"]), "prefill_step": m["prefill_step"], "decode_step": m["decode_step"]}
