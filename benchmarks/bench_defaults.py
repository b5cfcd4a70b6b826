"""`llmfab compile` of every bundled preset (and one tiny fixture per family) on every bundled
target at the default max length: wall time, peak RSS and the outcome, each in a fresh process
under an address-space cap and a timeout (issue 14: defaults must not blow up).

    .venv/bin/python benchmarks/bench_defaults.py [--cap-gb 4] [--timeout 300] [--only u280,llama2-7b]

Each row runs `prlimit --as=CAP -- /usr/bin/time -v llmfab compile MODEL --target T -o TMP`
from a temporary folder; `killed` means the timeout, `out of memory` the cap.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLMFAB = Path(sys.executable).with_name("llmfab")
PRESETS = sorted(p.stem for p in (ROOT / "llmfab" / "presets").glob("*.json"))
TARGETS = sorted(p.stem for p in (ROOT / "llmfab" / "targets").glob("*.yaml"))
TINY = [f"tests/fixtures/{f}_ts_op14.onnx" for f in ("llama", "qwen2", "mistral", "gpt2", "opt")]


def run(llmfab: str, model: str, target: str, cap: int, timeout: float) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, outcome) of one compile in a fresh process."""
    with tempfile.TemporaryDirectory() as d:
        cmd = ["prlimit", f"--as={cap}", "--", "/usr/bin/time", "-v", llmfab, "compile",
               model, "--target", target, "-o", str(Path(d) / "build")]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)   # the session this compile alone runs in
            out, err = p.communicate()
        wall = time.perf_counter() - t0
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
        rss = int(m.group(1)) / 1024 if m else float("nan")
        if wall >= timeout:
            return wall, rss, f"killed after {timeout:.0f} s"
        msg = [ln for ln in err.splitlines() if ln.startswith("llmfab") or "Error" in ln]
        if p.returncode == 0:
            return wall, rss, "ok"
        if "MemoryError" in err or "Cannot allocate" in err:
            return wall, rss, "out of memory"
        line = (msg[-1] if msg else err.strip().splitlines()[0]).removeprefix("llmfab: error: ")
        what, _, fit = line.rpartition("; ")     # the reason (shortened) and what fits
        return wall, rss, f"failed: {what[:110]}{'...' if len(what) > 110 else ''}; **{fit}**"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap-gb", type=float, default=4.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--llmfab", default=str(LLMFAB), help="the llmfab to run (default: this venv's)")
    ap.add_argument("--only", default="", help="comma-separated names; a row runs when its model or target is named")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    rows = [(m, t) for t in TARGETS for m in PRESETS] + [(str(ROOT / f), "sim-small") for f in TINY]
    print("| target | model | wall (s) | peak RSS (MB) | outcome |\n|---|---|---|---|---|")
    for model, target in rows:
        name = Path(model).name
        if only and not ({name, Path(model).stem, target} & only):
            continue
        wall, rss, outcome = run(a.llmfab, model, target, int(a.cap_gb * 1e9), a.timeout)
        print(f"| {target} | {name} | {wall:.1f} | {rss:.0f} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
