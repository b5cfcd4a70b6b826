"""`llmfab compile llama2-7b --target u280 --max-len 2048` (config only): wall time, peak memory,
instructions per program, instruction storage with and without bucketing.

    .venv/bin/python benchmarks/bench_compile.py [--policy int4-g128]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="int4-g128")
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--target", default="u280")
    ap.add_argument("--max-len", type=int, default=2048)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "build"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "llmfab.cli", "compile", a.model, "--target", a.target,
                            "--max-len", str(a.max_len), "--policy", a.policy, "-o", str(out)],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(p.stderr)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        m = json.loads((out / "manifest.json").read_text())
    print(f"`llmfab compile {a.model} --target {a.target} --max-len {a.max_len} --policy {a.policy}`: "
          f"{wall:.1f} s wall, {rss:.0f} MB peak RSS\n")
    print("| stage | bucket | instructions | bytes |\n|---|---|---|---|")
    for e in m["programs"]:
        print(f"| {e['stage']} | {e['bucket'][0]}-{e['bucket'][1]} | {e['instructions']:,} | {e['bytes']:,} |")
    print(f"\ninstruction storage: {m['instruction_bytes_total'] / 1e6:.1f} MB bucketed "
          f"({len(m['programs'])} programs); {m['instruction_bytes_per_exact_length'] / 1e9:.2f} GB with one "
          f"program per exact length; HBM used {m['hbm']['bytes_total'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
