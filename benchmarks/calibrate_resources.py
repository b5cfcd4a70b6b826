"""Synthesize each unit of the accelerator alone, at two or three sizes, fit the per-unit cost
formulas the resource analysis uses, and write them to passes/resource_costs.yaml.

    nice -n 5 .venv/bin/python benchmarks/calibrate_resources.py [--flow xilinx|ecp5 ...] [--out FILE]
        [--shape-from xilinx]                  # one run per unit, growth from the xilinx fit
    .venv/bin/python benchmarks/calibrate_resources.py --refit      # fit the file's runs again, no synthesis
    .venv/bin/python benchmarks/calibrate_resources.py --whole TARGET SYNTH_JSON   # record a whole design
    .venv/bin/python benchmarks/calibrate_resources.py --compare TARGET [SYNTH_JSON] # BENCHMARKS.md table

Per flow (xilinx: synth_xilinx -family xcup on the sim-small units; ecp5: synth_ecp5 alone on the
ecp5-85k units, no place-and-route) every unit is built by the class the Accelerator uses, at the
flow's base target and at variants with one Target number halved (chain_len, weight word bits,
n_chains, SFU lanes, memory port width) or doubled (ATTN's attn_bytes). Each unit's LUT, FF and DSP counts are then solved for the coefficients of its features (passes/resource_model.py
FEATURES: cost = sum(coefficient * feature)), one sample per feature, so the formula goes through
every run. A unit is synthesized on the signals that are live in the Accelerator (`ports`): the
load DMA's read channels, the store DMA's write channels, the bank's read-only clients without
their write signals. The requantizer is synthesized once and taken out of the engine's
per-chain cost (the rest is the MAC array: chains, operand window and weight unpackers); the
matrix unit's sequencer is the matrix unit less its engine and ATTN datapath. Block RAM: the bytes
one block held in the bank's run; block RAM inside a unit (the SFU's tables on ECP5) is that
unit's `block_rams`. The xilinx flow's 18 runs took 25 minutes beside four other jobs on 2 cores;
`--shape-from` needs 10 (12 minutes for ecp5).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from amaranth.hdl import Value

from llmfab.backend_hw.accelerator import DEFAULT_FORMATS, Accelerator
from llmfab.backend_hw.buffers import BufferBank
from llmfab.backend_hw.control.controller import Controller
from llmfab.backend_hw.control.fetch import FetchUnit
from llmfab.backend_hw.dma.unit import DMA
from llmfab.backend_hw.engine.matrix_engine import MatrixEngine
from llmfab.backend_hw.engine.requant import Requantizer
from llmfab.backend_hw.matrix.attn import AttnSequencer, attn_lanes
from llmfab.backend_hw.matrix.unit import MatrixUnit
from llmfab.backend_hw.sfu.unit import SfuUnit
from llmfab.backend_hw.toolflow import synth
from llmfab.ir.target import load_target
from llmfab.passes.resource_model import COSTS_FILE, FEATURES, METRICS, flow_of

FLOW_BASE = {"xilinx": "sim-small", "ecp5": "ecp5-85k"}
FLOW_SYNTH = {"xilinx": "synth_xilinx -family xcup -flatten -noiopad", "ecp5": "synth_ecp5 (no place-and-route)"}


# ---- Target variants: one number changed --------------------------------------------------------

def _engine(t, **kw):
    return dataclasses.replace(t, engine=dataclasses.replace(t.engine, **kw))


def half_chain_len(t):
    return _engine(t, chain_len=t.engine.chain_len // 2)


def double_attn_bytes(t):
    return _engine(t, attn_bytes=t.engine.attn_bytes * 2)


def half_chains(t):
    return _engine(t, n_chains=t.engine.n_chains // 2)


def half_weight_word(t):
    return dataclasses.replace(t, buffers=tuple(dataclasses.replace(b, width_bits=b.width_bits // 2)
                                                if b.name.value == "weight" else b for b in t.buffers))


def half_lanes(t):
    return dataclasses.replace(t, sfu=dataclasses.replace(t.sfu, lanes=t.sfu.lanes // 2))


def half_port_width(t):
    return dataclasses.replace(t, memory=dataclasses.replace(t.memory, port_width_bits=t.memory.port_width_bits // 2))


def base(t):
    return t


SIZES = {f.__name__: f for f in (base, half_chain_len, double_attn_bytes, half_chains, half_weight_word, half_lanes,
                                  half_port_width)}


# ---- The units: (build(target) -> (design, ports or None), features, variants) -------------------

def _live(component, drop=lambda path: False):
    """The component's port signals except those `drop(path)` names (they stay constant, as in the
    Accelerator, where nothing drives or reads them)."""
    return [Value.cast(v) for path, _, v in component.signature.flatten(component) if not drop(path)]


def _dma(side):
    dead = {"load": ("aw", "w", "b"), "store": ("ar", "r")}[side]

    def build(t):
        d = DMA(t)
        return d, _live(d, lambda path: len(path) > 2 and path[0] == "axi" and path[2] in dead)
    return build


def _bank(t):
    """The bank with the Accelerator's clients; read-only clients without write signals, the
    write-only one without `re` (what the Accelerator leaves constant)."""
    acc = Accelerator(t)
    read_only = [acc.fetch.port, *acc.matrix.aports, *acc.matrix.wports, acc.sfu.src, acc.sfu.src2]
    write_only = [acc.sfu.dst]
    roles = ["both"] + ["read" if any(c is r for r in read_only) else "write" if any(c is w for w in write_only)
                        else "both" for c in acc.clients]
    bank = BufferBank(t, len(roles))
    dead = {"both": (), "read": ("we", "be", "wdata"), "write": ("re",)}
    return bank, _live(bank, lambda path: path[0] == "clients" and path[2] in dead[roles[path[1]]])


UNITS = {
    # name: (build, features, variants)
    "engine": (lambda t: (MatrixEngine(t, weight_bits=DEFAULT_FORMATS[0][0], pattern=DEFAULT_FORMATS[0][1],
                                       group=DEFAULT_FORMATS[0][2]), None),
               ["chains", "stages", "chain_word_bits"], [base, half_chain_len, half_weight_word]),
    "requant": (lambda t: (Requantizer(), None), ["one"], [base]),   # one of them (one per chain)
    "attn": (lambda t: (AttnSequencer(t.engine.attn_bytes, t.word_bytes, 1024, attn_lanes(t)), None),
             ["one", "attn_bytes"], [base, double_attn_bytes]),
    "matrix_unit": (lambda t: (MatrixUnit(t, DEFAULT_FORMATS), None), ["one", "chains"], [base, half_chains]),
    "sfu": (lambda t: (SfuUnit(t), None), ["one", "lanes"], [base, half_lanes]),
    # the DMA's size follows its gearbox (port and buffer word bits) far more than its channel count
    "dma_load": (_dma("load"), ["one", "port_bits"], [base, half_port_width]),
    "dma_store": (_dma("store"), ["one", "port_bits"], [base, half_port_width]),
    "controller": (lambda t: (Controller(t), None), ["one"], [base]),
    "fetch": (lambda t: (FetchUnit(t), None), ["one"], [base]),
    "buffers": (_bank, ["bank_port_bits", "client_port_bits"], [base, half_chains]),
}

WHAT = {
    "mac_array": "the matrix engine less its requantizers: DSP chains, operand window, weight unpackers",
    "requant": "a chain's requantizer (group sum x mantissa, x activation scale)",
    "attn": "ATTN_QK / ATTN_PV datapath (AttnSequencer)",
    "matrix_control": "the matrix unit less engine and ATTN: MV/MM sequencer, readers, weight FIFOs",
    "sfu_lanes": "the SFU unit's per-lane part (datapath lanes, EMBED lanes, gearbox bytes)",
    "sfu_unit": "the SFU unit's fixed part (row scalars: dividers, square root; control)",
    "dma_load": "load DMA (AXI read channels)",
    "dma_store": "store DMA (AXI write channels)",
    "controller": "instruction queues and dependency tokens",
    "fetch": "instruction fetch",
    "buffers": "buffer bank arbiters and read multiplexers (the memories are counted as block RAM)",
}


def _run(flow, t, design, ports, name):
    if flow == "xilinx":
        return synth.xilinx(design, name, family="xcup", ports=ports)
    return synth.ecp5(design, name, target=t, ports=ports, pnr=False)


def _solve(samples, feats):
    """Coefficients of `feats` through every sample (least squares if over-determined)."""
    x = np.array([[s["features"][f] for f in feats] for s in samples], dtype=float)
    out = {}
    for m in METRICS:
        y = np.array([s[m] for s in samples], dtype=float)
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        out[m] = [round(float(c), 3) for c in coef]
    return out


def _scaled(shape: dict, sample: dict, feats: list[str]) -> dict:
    """One run: the `shape` flow's coefficients scaled so the formula goes through `sample` (all
    on the first feature where the shape predicts nothing)."""
    out = {}
    for m in METRICS:
        pred = sum(a * sample["features"][f] for a, f in zip(shape[m], feats))
        out[m] = ([round(a * sample[m] / pred, 3) for a in shape[m]] if pred > 0 else
                  [round(sample[m] / sample["features"][feats[0]], 3)] + [0.0] * (len(feats) - 1))
    return out


def _flow_head(flow: str, t0) -> dict:
    fc = {"synth": FLOW_SYNTH[flow], "base_target": t0.name}
    # the bank's clients as the Accelerator builds them: a fixed set plus a weight port per chain
    n0, n1 = len(Accelerator(t0).clients) + 1, len(Accelerator(half_chains(t0)).clients) + 1
    per_chain = (n0 - n1) // (t0.engine.n_chains - half_chains(t0).engine.n_chains)
    fc["bank_clients"] = {"fixed": n0 - per_chain * t0.engine.n_chains, "per_chain": per_chain}
    return fc


def synthesize(flow: str, one_size: bool, log=print) -> dict[str, list[dict]]:
    """Every unit through the flow at its sizes (only the base target with `one_size`): unit ->
    samples, each the size's name, the cell counts and the seconds."""
    t0 = load_target(FLOW_BASE[flow])
    samples_of = {}
    for unit, (build, feats, variants) in UNITS.items():
        samples_of[unit] = []
        for v in ([base] if one_size else variants):
            t = v(t0)
            design, ports = build(t)
            r = _run(flow, t, design, ports, unit)
            log(f"{flow} {unit} {v.__name__}: lut {r.lut} ff {r.ff} dsp {r.dsp} bram {r.bram:g} ({r.seconds:.0f} s)")
            samples_of[unit].append({"size": v.__name__, "lut": r.lut, "ff": r.ff, "dsp": r.dsp, "bram": r.bram,
                                     "seconds": round(r.seconds, 1)})
    return samples_of


def fit(flow: str, samples_of: dict[str, list[dict]], shape: dict | None = None) -> dict:
    """The cost entry of `flow` from its runs (`synthesize`; each run's features are worked out
    again from its size's name). `shape` (another flow's entry): one run per unit, the other
    flow's formulas scaled through it (how costs grow with the Target is that flow's)."""
    t0 = load_target(FLOW_BASE[flow])
    fc = _flow_head(flow, t0)
    if shape:
        fc["shape_from"] = shape["base_target"] + " (" + shape["synth"] + "): one run per unit here"
        raw = {u: _solve(ss, UNITS[u][1]) for u, ss in shape["samples"].items()}
    fits = {}
    for unit, (build, feats, variants) in UNITS.items():
        samples = samples_of[unit] = [{"size": s["size"], "features": {
            f: FEATURES[f](SIZES[s["size"]](t0), fc) for f in feats}} | {k: s[k] for k in (*METRICS, "bram", "seconds")}
            for s in samples_of[unit]]
        fits[unit] = (_scaled(raw[unit], samples[0], feats) if shape else _solve(samples, feats)) | {"features": feats}
    # the bank's run: bytes of buffer per block RAM
    bank_base = samples_of["buffers"][0]
    bram_bytes = sum(b.bytes for b in t0.buffers if b.kind.value != "uram")
    fc["block_ram_bytes"] = int(round(bram_bytes / bank_base["bram"])) if bank_base["bram"] else bram_bytes
    units = {}
    rq = fits["requant"]    # one requantizer: its `one` is per chain
    eng = fits["engine"]
    units["mac_array"] = {"features": eng["features"]} | {
        m: [eng[m][0] - rq[m][0]] + eng[m][1:] for m in METRICS}
    units["requant"] = {"features": ["chains"]} | {m: rq[m] for m in METRICS}
    units["attn"] = fits["attn"]
    # the matrix unit less the engine and ATTN at each of its sizes
    ctl = []
    for s, v in zip(samples_of["matrix_unit"], UNITS["matrix_unit"][2]):
        t = v(t0)
        rest = dict(s)
        for sub in ("engine", "attn"):
            f = fits[sub]
            x = [FEATURES[n](t, fc) for n in f["features"]]
            for m in METRICS:
                rest[m] = rest[m] - sum(a * b for a, b in zip(f[m], x))
        ctl.append(rest)
    units["matrix_control"] = (_scaled(shape["units"]["matrix_control"], ctl[0] | {"features": {
        f: FEATURES[f](t0, fc) for f in ("one", "chains")}}, ["one", "chains"]) if shape
        else _solve(ctl, ["one", "chains"])) | {"features": ["one", "chains"]}
    sfu = fits["sfu"]
    units["sfu_unit"] = {"features": ["one"]} | {m: [sfu[m][0]] for m in METRICS}
    units["sfu_lanes"] = {"features": ["lanes"]} | {m: [sfu[m][1]] for m in METRICS}
    for u in ("dma_load", "dma_store", "controller", "fetch", "buffers"):
        units[u] = fits[u]
    # block RAM inside the units (the SFU's tables on ECP5), as in the base run
    b0 = {u: ss[0]["bram"] for u, ss in samples_of.items()}
    inside = {"mac_array": b0["engine"] - b0["requant"] * t0.engine.n_chains, "requant": b0["requant"] * t0.engine.n_chains,
              "attn": b0["attn"], "matrix_control": b0["matrix_unit"] - b0["engine"] - b0["attn"], "sfu_unit": b0["sfu"],
              "sfu_lanes": 0, "buffers": 0} | {u: b0[u] for u in ("dma_load", "dma_store", "controller", "fetch")}
    fc["units"] = {u: {"what": WHAT[u], "features": units[u]["features"], **{m: units[u][m] for m in METRICS},
                       "block_rams": max(0.0, inside[u])} for u in WHAT}
    fc["samples"] = samples_of
    return fc


def compare(target: str, synth_json: Path | None) -> str:
    """A markdown table: the analysis' per-unit estimate for `target` and its totals against the
    whole-design synthesis `synth_json` (`llmfab synth --json`), if given."""
    from llmfab.passes.roofline import resource_units, resources
    t = load_target(target)
    units, res = resource_units(t), resources(t)
    rows = ["| unit | LUT | FF | DSP | BRAM |", "|---|---:|---:|---:|---:|"]
    rows += [f"| {n} | {u['lut']:,.0f} | {u['ff']:,.0f} | {u['dsp']:,.0f} | {u['bram']:,.0f} |" for n, u in units.items()]
    rows.append(f"| **estimate** | {res['lut'].used:,.0f} | {res['ff'].used:,.0f} | {res['dsp'].used:,.0f} | "
                f"{res['bram'].used:,.0f} |")
    if synth_json is not None:
        s = json.loads(Path(synth_json).read_text())
        rows.append(f"| **synthesis** | {s['lut']:,} | {s['ff']:,} | {s['dsp']:,} | {s['bram']:g} |")
        rows.append("| error | " + " | ".join(f"{(res[m].used - s[m]) / s[m]:+.1%}" if s[m] else "-"
                                               for m in ("lut", "ff", "dsp", "bram")) + " |")
    rows.append("| device use | " + " | ".join(f"{res[m].fraction:.1%}" for m in ("lut", "ff", "dsp", "bram")) + " |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", action="append", choices=tuple(FLOW_BASE), help="default: both")
    p.add_argument("--out", type=Path, default=COSTS_FILE)
    p.add_argument("--shape-from", choices=tuple(FLOW_BASE),
                   help="one run per unit at the flow's base target, and the growth with the Target from this "
                        "flow's calibration in the file (a quicker, less exact calibration)")
    p.add_argument("--compare", nargs="+", metavar=("TARGET", "SYNTH_JSON"),
                   help="no synthesis: print the analysis' per-unit table for TARGET against a whole-design "
                        "`llmfab synth --json` output")
    p.add_argument("--refit", action="store_true",
                   help="no synthesis: fit the formulas again to the runs the file holds")
    p.add_argument("--whole", nargs=2, metavar=("TARGET", "SYNTH_JSON"),
                   help="no synthesis: record a whole-design `llmfab synth --json` output of TARGET in the file")
    p.add_argument("--whole-command", default="", help="with --whole: the commands that produced SYNTH_JSON")
    args = p.parse_args(argv)
    if args.compare:
        print(compare(args.compare[0], Path(args.compare[1]) if len(args.compare) > 1 else None), end="")
        return 0
    old = yaml.safe_load(args.out.read_text()) if args.out.is_file() else {}
    data = {"flows": dict(old.get("flows", {}))}
    if args.whole:
        target, path = args.whole
        flow = flow_of(load_target(target))
        s = json.loads(Path(path).read_text())
        data["flows"].setdefault(flow, {})["whole_design"] = {
            "target": target, "command": args.whole_command, "date": datetime.date.today().isoformat(),
            **{m: s[m] for m in ("lut", "ff", "dsp", "bram")}, "seconds": s["seconds"]}
    else:
        # the flow others take their shape from first
        for flow in sorted(args.flow or list(FLOW_BASE), key=lambda f: f == args.shape_from, reverse=True):
            entry = data["flows"].get(flow, {})
            other = data["flows"].get(args.shape_from) if args.shape_from and args.shape_from != flow else None
            if args.shape_from and args.shape_from != flow and not (other and "samples" in other):
                raise SystemExit(f"--shape-from {args.shape_from}: {args.out} has no calibration of that flow yet")
            if args.refit:    # the runs in the file, fitted again (after a change to the formulas)
                samples, stamp = entry["samples"], {k: entry[k] for k in ("date", "seconds", "command") if k in entry}
            else:
                t0 = time.monotonic()
                samples = synthesize(flow, other is not None, log=lambda s: print(s, file=sys.stderr, flush=True))
                stamp = {"date": datetime.date.today().isoformat(), "seconds": round(time.monotonic() - t0),
                         "command": "nice -n 5 .venv/bin/python benchmarks/calibrate_resources.py"
                                    f" --flow {flow}" + (f" --shape-from {args.shape_from}" if other else "")}
            data["flows"][flow] = stamp | fit(flow, samples, shape=other)
            if entry.get("whole_design"):
                data["flows"][flow]["whole_design"] = entry["whole_design"]
    head = ("# Per-unit resource costs of the accelerator, fitted to synthesis of each unit alone by\n"
            "# benchmarks/calibrate_resources.py (each flow records its command, date and runs in `samples`);\n"
            "# read by passes/resource_model.py. Re-run the script after RTL changes.\n"
            "# cost = sum(coefficient * feature of the Target) for lut, ff and dsp; `whole_design`: the\n"
            "# whole accelerator's synthesis the estimate is checked against (tests/passes/test_resource_model.py).\n")
    args.out.write_text(head + yaml.safe_dump(data, sort_keys=False, width=120))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
