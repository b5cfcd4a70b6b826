"""Digest of everything llmfab writes, to show that a refactor changed no output.

    python benchmarks/output_digest.py --out /tmp/digest-before        # on the old tree
    python benchmarks/output_digest.py --out /tmp/digest-after         # on the new tree
    python benchmarks/output_digest.py --compare /tmp/digest-before /tmp/digest-after

Each case runs the `llmfab` CLI as a user would (a subprocess of this interpreter) and records the
sha256 of every file it wrote (programs, weight images, manifests, Verilog, TCL, cores, traces,
logits) and of its standard output (`--json` reports). `--compare` lists every difference; it exits
non-zero if there is one. `--quick` leaves out the LLaMA2-7B builds and the large RTL.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = Path("..") / "fixtures"   # the case folders see a copy of tests/fixtures: paths in manifests match


def cases(quick: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, llmfab arguments, output folder or file the command writes, relative to the case dir)."""
    out: list[tuple[str, list[str], str | None]] = [
        ("targets", ["targets", "--json"], None),
        ("inspect-llama", ["inspect", str(FIX / "llama_ts_op14.onnx"), "--json"], None),
        ("inspect-llama2-7b", ["inspect", "llama2-7b", "--json"], None),
        ("quantize-llama-int4", ["quantize", str(FIX / "llama_ts_op14.onnx"), "--policy", "int4-g128", "--json"], None),
        ("report-llama2-7b-u280", ["report", "llama2-7b", "--target", "u280", "--policy", "int4-g128", "--json"], None),
        ("report-llama2-7b-u280-text", ["report", "llama2-7b", "--target", "u280", "--policy", "w4-2of4"], None),
    ]
    builds = [(f, "sim-small", "int8", "16") for f in ("llama_ts_op14", "gpt2_ts_op14", "qwen2_dynamo_op18",
                                                     "opt_ts_op14", "mistral_ts_op14", "llama_dynamo_op18",
                                                     "gpt2_dynamo_op18_kvcache")]
    builds += [("llama_ts_op14", "sim-small", "int4-g128", "16"), ("llama_ts_op14", "sim-small", "w4-2of4", "16"),
               ("gpt2_ts_op14", "sim-small", "w4-2of4", "32"), ("llama_ts_op14", "u280", "int8", "128"),
               ("llama_ts_op14", "ecp5-85k", "int8", "16"), ("qwen2_ts_op14", "vhk158", "int4-g128", "32")]
    for fixture, target, policy, max_len in builds:
        name = f"{fixture}-{target}-{policy}-{max_len}"
        out.append((f"compile-{name}", ["compile", str(FIX / f"{fixture}.onnx"), "--target", target, "--policy",
                                        policy, "--max-len", max_len, "-o", "B"], "B"))
        pre, dec = ("8", "8") if max_len == "16" else ("16", "16")
        out.append((f"simulate-{name}", ["simulate", f"../compile-{name}/B", "--prefill", pre, "--decode", dec,
                                         "--json", "--trace", "trace.csv"], "trace.csv"))
        out.append((f"simulate-text-{name}", ["simulate", f"../compile-{name}/B", "--prefill", pre, "--decode", dec], None))
        if target == "sim-small":
            out.append((f"simulate-rtl-{name}", ["simulate", f"../compile-{name}/B", "--prefill", pre, "--decode",
                                                 dec, "--json", "--model", "rtl"], None))
            out.append((f"execute-{name}", ["execute", f"../compile-{name}/B", "--tokens", "1 2 3 4 5",
                                            "--generate", "3", "--out", "logits.npy"], "logits.npy"))
    out.append(("disasm", ["disasm", "../compile-llama_ts_op14-sim-small-int8-16/B/programs/decode_00001_00016.bin"], None))
    out.append(("rtl-sim-small", ["rtl", "--target", "sim-small", "-o", "R"], "R"))
    out.append(("rtl-ecp5-engine", ["rtl", "--target", "ecp5-85k", "--part", "engine", "-o", "R"], "R"))
    out.append(("compile-rtl-w4", ["compile", str(FIX / "llama_ts_op14.onnx"), "--target", "sim-small", "--policy",
                                   "w4-2of4", "--max-len", "16", "--rtl", "-o", "B"], "B"))
    if not quick:
        out.append(("rtl-ecp5", ["rtl", "--target", "ecp5-85k", "-o", "R"], "R"))
        for policy in ("int4-g128", "w4-2of4"):
            name = f"llama2-7b-u280-{policy}"
            out.append((f"compile-{name}", ["compile", "llama2-7b", "--target", "u280", "--policy", policy, "-o", "B"], "B"))
            out.append((f"simulate-{name}", ["simulate", f"../compile-{name}/B", "--json"], None))
            out.append((f"simulate-ctx-{name}", ["simulate", f"../compile-{name}/B", "--prefill", "1024",
                                                 "--decode", "1000", "--json"], None))
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(out: Path, quick: bool) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(ROOT / "tests" / "fixtures", out / "fixtures")
    digest: dict[str, dict[str, str]] = {}
    for name, args, wrote in cases(quick):
        d = out / name
        d.mkdir()
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "llmfab.cli", *args], cwd=d, capture_output=True)
        entry = {"exit": str(p.returncode), "stdout": sha(_stable(p.stdout, name)), "stderr": sha(p.stderr)}
        if wrote:
            target = d / wrote
            files = sorted(target.rglob("*")) if target.is_dir() else [target]
            for f in files:
                if f.is_file():
                    entry[str(f.relative_to(d))] = sha(f.read_bytes())
        digest[name] = entry
        print(f"{name:60s} exit {p.returncode} {time.perf_counter() - t0:6.1f} s {len(entry) - 3} files", flush=True)
        if p.returncode:
            print("   " + p.stderr.decode(errors="replace").strip()[-300:], flush=True)
    (out / "digest.json").write_text(json.dumps(digest, indent=2, sort_keys=True) + "\n")


def _stable(stdout: bytes, name: str) -> bytes:
    """stdout without what legitimately differs between runs (compile prints its wall time)."""
    lines = stdout.decode(errors="replace").splitlines(keepends=True)
    return "".join(l for l in lines if not l.startswith("time ")).encode()


def compare(a: Path, b: Path) -> int:
    da, db = (json.loads((p / "digest.json").read_text()) for p in (a, b))
    bad = 0
    for case in sorted(set(da) | set(db)):
        ea, eb = da.get(case, {}), db.get(case, {})
        for key in sorted(set(ea) | set(eb)):
            if ea.get(key) != eb.get(key):
                print(f"differs: {case}: {key}")
                bad += 1
    print(f"{sum(len(e) for e in da.values())} digests compared, {bad} differ")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the outputs and digest.json here")
    p.add_argument("--quick", action="store_true", help="skip LLaMA2-7B and the large RTL")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    a = p.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not a.out:
        p.error("give --out DIR or --compare BEFORE AFTER")
    run(a.out, a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
