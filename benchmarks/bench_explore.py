"""`llmfab explore` on the 100-point LLaMA2-7B/u280 space (examples/spaces/u280-100.yaml), once
with the local process pool and once with a local Ray, both with 2 jobs and no cache; then the
rerun from a warm cache. Prints the BENCHMARKS.md rows: wall time (a fresh process each, start-up
included), peak RSS of the command's own process, and the point counts.

    .venv/bin/python benchmarks/bench_explore.py [--space FILE] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLMFAB = str(Path(sys.executable).parent / "llmfab")


def run(argv: list[str], cwd: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads((Path(cwd) / argv[argv.index("-o") + 1] / "points.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default=str(ROOT / "examples/spaces/u280-100.yaml"))
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--executors", default="local,ray")
    args = ap.parse_args()
    print("| command | wall (s) | points: ok / do not fit / crashed | Pareto (DSP, power) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        for ex in args.executors.split(","):
            argv = [LLMFAB, "--quiet", "explore", "llama2-7b", "--target", "u280", "--space", args.space,
                    "-o", f"out-{ex}", "--executor", ex, "--jobs", args.jobs, "--cache", cache + ex]
            wall, d = run(argv, tmp)
            c = d["counts"]
            fronts = [sum(p[f] for p in d["points"]) for f in ("pareto_dsp", "pareto_power")]
            shown = " ".join(a if "/" not in a else Path(a).name for a in argv[2:]).replace(cache + ex, "C")
            print(f"| `llmfab {shown}` | {wall:.1f} | {c['ok']} / {c['does-not-fit']} / {c['crashed']} | "
                  f"{fronts[0]}, {fronts[1]} |", flush=True)
        wall, _ = run(argv, tmp)
        print(f"| the same, rerun (every point from the cache) | {wall:.1f} | | |")
    print(f"peak RSS of the benchmark's children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
