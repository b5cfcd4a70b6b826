"""Per-unit LUT / FF / DSP / block-RAM estimates of the accelerator a Target describes, from the
costs that synthesis measured (passes/resource_costs.yaml, written by
benchmarks/calibrate_resources.py; re-run it when the RTL changes).

The cost file holds, per synthesis flow (`xilinx`: synth_xilinx -family xcup, for every non-ECP5
target; `ecp5`: synth_ecp5) and per unit of the accelerator, a linear formula
`cost = sum(coefficient[f] * feature f of the Target)` for each of lut, ff and dsp, fitted to
runs of that unit alone at several sizes. The features are the Target numbers a unit's size
follows (FEATURES below): chains, chain stages, weight word bits, SFU lanes, memory channels and
their port bits, buffer banks and the clients in front of them. Block RAM is the buffers': every
bank of a `bram` buffer takes ceil(bank bytes / the block bytes synthesis showed) blocks
(Xilinx BRAM36, ECP5 EBR), and a unit's `block_rams` (tables Yosys put in block RAM) add to them;
`uram` buffers take UltraRAM288s by capacity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from llmfab.ir.target import URAM_KB, BufferKind, DeviceFamily, Target
from llmfab.ir.yaml_file import read_yaml

COSTS_FILE = Path(__file__).with_name("resource_costs.yaml")
METRICS = ("lut", "ff", "dsp")


class CostFileError(ValueError):
    pass


def _port_bits(t: Target) -> int:
    """Bits of every memory port of the buffers: the data the arbiters steer."""
    return sum(b.banks * b.width_bits for b in t.buffers)


# feature name -> its value for a Target (the cost file's formulas name these)
FEATURES = {
    "one": lambda t, c: 1,
    "chains": lambda t, c: t.engine.n_chains,
    "stages": lambda t, c: t.engine.n_chains * t.engine.chain_len,
    "chain_len": lambda t, c: t.engine.chain_len,
    "attn_bytes": lambda t, c: t.engine.attn_bytes,
    "chain_word_bits": lambda t, c: t.engine.n_chains * t.buffer("weight").width_bits,
    "lanes": lambda t, c: t.sfu.lanes,
    "channels": lambda t, c: t.memory.channels,
    "port_bits": lambda t, c: t.memory.port_width_bits,
    "bank_port_bits": lambda t, c: _port_bits(t),
    "client_port_bits": lambda t, c: bank_clients(t, c) * _port_bits(t),
}


def bank_clients(t: Target, flow_costs: dict) -> int:
    """The buffer bank's client ports (host, fetch, DMAs, matrix and SFU ports: a weight port per chain)."""
    n = flow_costs["bank_clients"]
    return n["fixed"] + n["per_chain"] * t.engine.n_chains


def flow_of(t: Target) -> str:
    """The cost file's flow for a target: ECP5 parts use synth_ecp5's costs, every other device
    (UltraScale+, Versal, the generic simulation device) synth_xilinx -family xcup's."""
    return "ecp5" if t.device.family is DeviceFamily.LATTICE_ECP5 else "xilinx"


@cache
def load_costs(path: Path = COSTS_FILE) -> dict:
    """The cost file, checked: every flow has its block size, bank clients and units, every unit
    a formula over known features for each metric."""
    _, data = read_yaml(path, "resource cost file", CostFileError)
    where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("flows"), dict):
        raise CostFileError(f"{where}: expected a mapping with 'flows'")
    for flow, fc in data["flows"].items():
        if not isinstance(fc, dict) or not isinstance(fc.get("units"), dict) or "block_ram_bytes" not in fc \
                or "bank_clients" not in fc:
            raise CostFileError(f"{where}: flow {flow!r} needs units, block_ram_bytes and bank_clients")
        for unit, u in fc["units"].items():
            feats = u.get("features") if isinstance(u, dict) else None
            if not isinstance(feats, list) or any(f not in FEATURES for f in feats):
                raise CostFileError(f"{where}: flows.{flow}.units.{unit}.features must list names of "
                                    f"{', '.join(FEATURES)}, not {feats!r}")
            for m in METRICS:
                c = u.get(m)
                if not (isinstance(c, list) and len(c) == len(feats) and all(isinstance(x, (int, float)) for x in c)):
                    raise CostFileError(f"{where}: flows.{flow}.units.{unit}.{m} must be {len(feats)} numbers "
                                        f"(one per feature), not {c!r}")
    return data


@dataclass(frozen=True)
class UnitCost:
    lut: float
    ff: float
    dsp: float
    bram: float    # block RAM inside the unit (not the buffers')


def unit_costs(t: Target, costs: dict | None = None) -> dict[str, UnitCost]:
    """Each unit's estimated LUT, FF and DSP for `t`, in the cost file's order."""
    fc = (costs or load_costs())["flows"][flow_of(t)]
    out = {}
    for unit, u in fc["units"].items():
        x = [FEATURES[f](t, fc) for f in u["features"]]
        out[unit] = UnitCost(*(max(0.0, sum(a * v for a, v in zip(u[m], x))) for m in METRICS),
                             bram=u.get("block_rams", 0))
    return out


def block_rams(t: Target, costs: dict | None = None) -> tuple[int, int]:
    """(block RAMs, UltraRAMs): per bank of a bram (or lutram) buffer, its bytes over the bytes a
    block held in synthesis, rounded up, plus the units' own (`block_rams`: the SFU's tables on
    ECP5, as synthesized at the base target); uram buffers by capacity."""
    fc = (costs or load_costs())["flows"][flow_of(t)]
    bram = sum(b.banks * math.ceil(b.bytes / b.banks / fc["block_ram_bytes"])
               for b in t.buffers if b.kind is not BufferKind.URAM)
    bram += math.ceil(sum(u.get("block_rams", 0) for u in fc["units"].values()))
    uram = sum(math.ceil(b.bytes / 1024 / URAM_KB) for b in t.buffers if b.kind is BufferKind.URAM)
    return bram, uram
