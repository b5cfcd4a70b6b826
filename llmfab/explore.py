"""`llmfab explore MODEL --target T --space SPACE.yaml -o DIR`: design-space exploration.

Every point of the space (explore_space.py) gets its own Target, derived from the base target and
validated like a user's file; it is checked against the device, compiled config-only and timed
on the design timing model (explore_point.py) by a local process pool or Ray tasks
(explore_exec.py). Results are cached by content (`cache_key`: the model's config, the point's
target text and compile options, and a digest of the code that computes them), so a rerun or an
extended space only runs the new points. DIR gets points.json (the dict `--json` prints, with the
Pareto flags), points.csv, report.html and `best-<id>.yaml` for every Pareto-optimal point.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import os
import tempfile
import time
from pathlib import Path

from . import progress
from .explore_point import CRASHED, NO_FIT, OK, Task
from .explore_space import AXES, Space, derive_target, load_space, point_id

METRICS = ("tokens_per_s", "ttft_s", "dsp", "lut", "ff", "bram", "uram", "power_w", "j_per_token", "hbm_bytes",
           "hbm_utilization", "instruction_bytes", "programs", "prefill_step", "decode_step")
FRONTS = {"pareto_dsp": "dsp", "pareto_power": "power_w"}   # tokens/s (higher) against each (lower)
CODE = ("ir", "frontend", "passes", "simulator")   # the packages a point's figures come from, with:
DRIVER_CODE = ("compile.py", "flow.py", "report.py", "explore_point.py", "explore_space.py")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmfab" / "explore"


def code_digest() -> str:
    """The llmfab version and every source file a point's figures depend on: a change to any of
    them is a new cache key, so a cached figure is never one the current code would not give."""
    import llmfab
    import llmfab.ir
    h = hashlib.sha256(importlib.metadata.version("llmfab").encode())
    root = Path(llmfab.ir.__file__).parent.parent     # the checkout or site-packages holding the stages
    files = [Path(llmfab.__file__).parent / f for f in DRIVER_CODE]
    for pkg in CODE:
        mod = __import__(f"llmfab.{pkg}", fromlist=["_"])
        files += sorted(Path(mod.__file__).parent.rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(root) if root in f.parents else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _file_digest(spec: str, bundled: Path) -> str:
    """A model or policy's content: the file given, or the bundled file of that name."""
    p = Path(spec) if Path(spec).is_file() else bundled
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else f"name:{spec}"


def model_digest(model: str) -> str:
    from llmfab.frontend.config import PRESET_DIR, PRESETS
    return _file_digest(model, PRESET_DIR / PRESETS.get(model, "-"))


def cache_key(task: Task, code: str, model: str) -> str:
    from llmfab.passes.policy import POLICY_DIR
    fields = {"code": code, "model": model, "policy": _file_digest(task.policy, POLICY_DIR / f"{task.policy}.yaml"),
              "target": task.target_text, "max_len": task.max_len, "prefill_step": task.prefill_step,
              "decode_step": task.decode_step, "prefill": task.prefill, "decode": task.decode}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class Cache:
    """One JSON file per point result under `root` (None: no cache); crashes are never kept, so
    a rerun tries them again."""

    def __init__(self, root: Path | None):
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("result"), dict)
        return entry["result"] if ok and entry["result"].get("status") in (OK, NO_FIT) else None

    def put(self, key: str, result: dict) -> None:
        if self.root is None or result["status"] == CRASHED:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".entry.", dir=path.parent)   # whole or absent, even if killed
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "result": result}, f, sort_keys=True)
        os.replace(tmp, path)


def pareto(points: list[dict], cost: str) -> set[str]:
    """Ids of the ok points no other ok point beats on tokens/s (higher) and `cost` (lower) at
    once: by cost ascending, a point is on the front when it is the fastest of its cost and faster
    than every cheaper point."""
    ok = sorted((p for p in points if p["status"] == OK), key=lambda p: p["metrics"][cost])
    front, best, i = set(), float("-inf"), 0
    while i < len(ok):
        j = i
        while j < len(ok) and ok[j]["metrics"][cost] == ok[i]["metrics"][cost]:
            j += 1
        top = max(p["metrics"]["tokens_per_s"] for p in ok[i:j])
        if top > best:
            front |= {p["id"] for p in ok[i:j] if p["metrics"]["tokens_per_s"] == top}
            best = top
        i = j
    return front


def compile_command(model: str, yaml_name: str, task: Task, params: dict) -> str:
    """The `llmfab compile` line that builds a point (its policy and the compile options the space set)."""
    opts = [f"--policy {task.policy}"] + [f"--{k.replace('_', '-')} {params[k]}" for k in
                                          ("max_len", "prefill_step", "decode_step") if k in params]
    return f"llmfab compile {model} --target {yaml_name} {' '.join(opts)} -o BUILD"


def explore(model: str, target: str, space_path: str, *, executor: str = "local", jobs: int = 1,
            ray_address: str | None = None, cache: Path | None = None) -> tuple[dict, dict[str, bytes], dict]:
    """Run the sweep: (the points.json dict, the best points' YAML files by name, run statistics)."""
    from llmfab.compile import default_max_len
    from llmfab.ir.target import TargetError, load_target

    from .explore_exec import run_local, run_ray

    base = load_target(target)
    space = load_space(space_path, base)
    max_len = None if "max_len" in space.axes else default_max_len(model)
    code, mdig, store = code_digest(), model_digest(model), Cache(cache)
    points, tasks, keys = [], {}, {}
    for params in space.points():
        pid = point_id(params)
        point = {"id": pid, "params": params}
        points.append(point)
        try:
            t = derive_target(base, params, f"{base.name}-{pid}")
        except TargetError as e:    # a combination the device cannot hold: recorded, never run
            point |= {"status": NO_FIT, "error": str(e)}
            continue
        tasks[pid] = Task(pid, model, t.text, f"best-{pid}.yaml", params.get("policy", "int8"),
                          params.get("max_len", max_len), params.get("prefill_step"), params.get("decode_step"),
                          space.prefill, space.decode)
        keys[pid] = cache_key(tasks[pid], code, mdig)
    by_id = {p["id"]: p for p in points}
    todo, cached = [], 0
    for pid, task in tasks.items():
        hit = store.get(keys[pid])
        if hit is None:
            todo.append(task)
        else:
            by_id[pid] |= hit
            cached += 1
    t0 = time.perf_counter()
    with progress.counter(len(todo), f"explore {len(todo)} points ({executor})") as advance:
        def done(task: Task, result: dict) -> None:
            by_id[task.id] |= result
            store.put(keys[task.id], result)
            advance()
        if todo and executor == "ray":   # all from the cache: no Ray to start
            run_ray(todo, jobs, ray_address, done)
        elif todo:
            run_local(todo, jobs, done)
    fronts = {flag: pareto(points, cost) for flag, cost in FRONTS.items()}
    best = {}
    for p in points:
        for flag, ids in fronts.items():
            p[flag] = p["id"] in ids
        if p["pareto_dsp"] or p["pareto_power"]:
            name, task = f"best-{p['id']}.yaml", tasks[p["id"]]
            p["yaml"], p["compile"] = name, compile_command(model, name, task, p["params"])
            best[name] = (f"# {p['compile']}\n" + task.target_text).encode()
    counts = {s: sum(p["status"] == s for p in points) for s in (OK, NO_FIT, CRASHED)}
    data = {"llmfab_explore": 1, "kind": "explore", "model": str(model), "target": base.name,
            "space": str(space_path), "prefill": space.prefill, "decode": space.decode,
            "axes": {k: list(v) for k, v in space.axes.items()}, "counts": counts,
            "max_len": max_len, "points": points}
    stats = {"seconds": time.perf_counter() - t0, "cached": cached, "run": len(todo)}
    return json.loads(json.dumps(data, sort_keys=True)), best, stats


def points_csv(data: dict) -> str:
    """One row per point: its axes, status, figures, Pareto flags, best YAML and error."""
    axes = [k for k in AXES if k in data["axes"]]   # the order points are sorted in (JSON sorts keys)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *axes, "status", *METRICS, *FRONTS, "yaml", "error"])
    for p in data["points"]:
        m = p.get("metrics", {})
        w.writerow([p["id"], *(p["params"][k] for k in axes), p["status"], *(m.get(k, "") for k in METRICS),
                    *(str(p[f]).lower() for f in FRONTS), p.get("yaml", ""), p.get("error", "")])
    return buf.getvalue()


def format_summary(data: dict, stats: dict, out: str, n_best: int) -> str:
    c = data["counts"]
    lines = [f"explored {len(data['points'])} points of {data['space']} for {data['model']} on {data['target']}: "
             f"{c[OK]} ok, {c[NO_FIT]} do not fit, {c[CRASHED]} crashed ({stats['run']} run in "
             f"{stats['seconds']:.1f} s, {stats['cached']} from the cache)"]
    front = [p for p in data["points"] if p.get("yaml")]
    if front:
        lines.append("Pareto-optimal (tokens/s against DSP: D, against power: P):")
        lines.append(f"  {'point':10s} {'tok/s':>7s} {'TTFT ms':>8s} {'DSP':>6s} {'W':>6s} {'J/tok':>6s}  "
                     f"front  axes")
        for p in sorted(front, key=lambda p: -p["metrics"]["tokens_per_s"]):
            m = p["metrics"]
            flags = ("D" if p["pareto_dsp"] else "-") + ("P" if p["pareto_power"] else "-")
            axes = ", ".join(f"{k} {p['params'][k]}" for k in AXES if k in p["params"])
            lines.append(f"  {p['id']:10s} {m['tokens_per_s']:7.1f} {m['ttft_s'] * 1e3:8.1f} {m['dsp']:6.0f} "
                         f"{m['power_w']:6.1f} {m['j_per_token']:6.3f}  {flags:5s}  {axes}")
    for p in data["points"]:
        if p["status"] == CRASHED:
            lines.append(f"crashed   {p['id']}: {p['error']}")
    lines.append(f"wrote {out}/ (points.json, points.csv, report.html, {n_best} best-*.yaml: "
                 f"llmfab compile ... --target {out}/best-<point>.yaml)")
    return "\n".join(lines) + "\n"


__all__ = ["AXES", "Space", "explore", "points_csv", "format_summary", "pareto", "default_cache"]
