"""Analyses: per-op roofline of a stage, accelerator resources, power and energy per token.

Resources are per unit, from the costs synthesis measured (passes/resource_model.py).

Each is a function of the fused (quantized) graph and the Target, returning dataclasses whose
rows add up. The roofline of an op: `ops` (2 per multiply-accumulate; one per element for
special functions), `bytes` moved to or from memory (weights in their stored format, KV-cache
rows, and for prefill the activations that leave the chip: none), intensity = ops / bytes, and
the ideal time max(ops / peak ops of the unit that runs it, bytes / peak bandwidth); `bound` says
which term wins. Matrix ops run on the engine (MV in decode, MM with operand packing in prefill),
so do attention's QK and PV products (ATTN, no operand packing; its softmax is not counted), the
rest on the special-function unit, as the lowering does (passes/lower.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from llmfab.ir import Graph, OpKind
from llmfab.ir.isa import quant_row_bytes
from llmfab.ir.quant import QuantizedWeight, kept
from llmfab.ir.target import BRAM36_KB, URAM_KB, EngineMode, Target

from .resource_model import block_rams, unit_costs

MATRIX_OPS = (OpKind.LINEAR, OpKind.LMHEAD)


@dataclass(frozen=True)
class RooflineRow:
    op: str
    kind: str
    stage: str
    ops: float
    bytes: float
    intensity: float
    bound: str            # "memory" or "compute"
    seconds: float        # ideal time on this unit


@dataclass(frozen=True)
class Roofline:
    stage: str
    tokens: int
    context: int
    rows: list[RooflineRow]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    @property
    def bytes(self) -> float:
        return sum(r.bytes for r in self.rows)

    def bound_seconds(self, t: Target) -> float:
        """No schedule beats this: memory, engine and special-function unit each at their peak,
        all three overlapping perfectly."""
        bw = t.memory.peak_gbps * 1e9
        mode = EngineMode.MM if self.stage == "prefill" else EngineMode.MV
        engine = (sum(r.ops for r in self.rows if r.kind in ("linear", "lm_head")) / (2 * t.peak_macs(mode))
                  + sum(r.ops for r in self.rows if r.kind == "attention") / (2 * t.peak_macs(EngineMode.MV)))
        sfu_peak = t.sfu.lanes * t.clock_mhz * 1e6
        sfu = sum(r.ops for r in self.rows if r.kind not in ("linear", "lm_head", "attention")) / sfu_peak
        return max(self.bytes / bw, engine, sfu)


def _weight_bytes(g: Graph, const: str) -> float:
    d = g.node(const).data
    if isinstance(d, QuantizedWeight):
        return d.storage_bits() / 8
    return g.node(const).type.nbytes


def roofline(g: Graph, t: Target, stage: str, tokens: int, context: int) -> Roofline:
    """Ideal per-op times of one prefill of `tokens` tokens or one decode step at `context` keys."""
    bw = t.memory.peak_gbps * 1e9
    mode = EngineMode.MM if stage == "prefill" else EngineMode.MV
    engine_ops = 2 * t.peak_macs(mode)
    sfu_ops = t.sfu.lanes * t.clock_mhz * 1e6
    seq = g.meta.get("seq_len", 1)
    rows = []
    for n in g.nodes():
        if n.op in (OpKind.CONST, OpKind.INPUT, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.CONCAT):
            continue
        per_token = math.prod(n.type.shape[:-1]) // max(seq, 1)
        elems = per_token * tokens * n.type.shape[-1]
        if n.op in MATRIX_OPS:
            k = g.node(n.inputs[0]).type.shape[-1]
            w = g.node(n.inputs[1]).data
            n_kept = kept(k, w.scheme.sparsity) if isinstance(w, QuantizedWeight) else k
            ops, nbytes, peak = 2.0 * elems * n_kept, _weight_bytes(g, n.inputs[1]), engine_ops
        elif n.op is OpKind.ATTENTION:
            a = n.attrs
            d = g.node(n.inputs[0]).type.shape[-1]
            keys = context if stage == "decode" else (tokens + 1) / 2    # causal prefill: half the keys
            ops = 2.0 * 2 * a.num_heads * tokens * keys * d               # QK and PV
            kv_rows = context if stage == "decode" else tokens
            nbytes = 2.0 * a.num_kv_heads * kv_rows * quant_row_bytes(d) * (1 if stage == "decode" else 2)  # read (+ write)
            peak = 2 * t.peak_macs(EngineMode.MV)                         # ATTN: no operand packing
        elif n.op is OpKind.EMBEDDING:
            table = g.node(n.inputs[0])
            ops, nbytes, peak = float(elems), _weight_bytes(g, table.name) / table.type.shape[0] * tokens, sfu_ops
        else:
            params = sum(g.node(i).type.numel * 4 for i in n.inputs if g.node(i).op is OpKind.CONST)
            ops, nbytes, peak = float(elems) * (5 if n.op in (OpKind.RMSNORM, OpKind.LAYERNORM) else 1), float(params), sfu_ops
        tc, tm = ops / peak, nbytes / bw
        rows.append(RooflineRow(n.name, n.op.value, stage, ops, nbytes, ops / nbytes if nbytes else math.inf,
                                "memory" if tm >= tc else "compute", max(tc, tm)))
    return Roofline(stage, tokens, context, rows)


@dataclass(frozen=True)
class Resource:
    used: float
    capacity: float

    @property
    def fraction(self) -> float:
        return self.used / self.capacity if self.capacity else math.inf


def engine_dsp(t: Target) -> int:
    """DSP blocks of the matrix engine: its multiply-accumulate stages plus a requantizer per chain,
    at the costs synthesis measured (passes/resource_costs.yaml)."""
    u = unit_costs(t)
    return round(u["mac_array"].dsp + u["requant"].dsp)


def block_kb(t: Target) -> float:
    """KiB of one block RAM of the device: a Xilinx BRAM36, an ECP5 EBR."""
    return t.device.bram_kb / t.device.ebr if t.device.ebr else BRAM36_KB


def resource_units(t: Target) -> dict[str, dict[str, float]]:
    """Each unit's LUT, FF and DSP estimate (passes/resource_model.py), and the buffers' block RAM."""
    out = {name: {"lut": u.lut, "ff": u.ff, "dsp": u.dsp, "bram": u.bram} for name, u in unit_costs(t).items()}
    out["buffers"]["bram"] = block_rams(t)[0] - sum(u["bram"] for n, u in out.items() if n != "buffers")
    return out


def resources(t: Target) -> dict[str, Resource]:
    """Totals of `resource_units` against the device; block RAM in the device's blocks (BRAM36 or
    EBR), UltraRAM in URAM288s."""
    units = resource_units(t)
    bram, uram = block_rams(t)
    dev = t.device
    total = {m: round(sum(u[m] for u in units.values())) for m in ("lut", "ff", "dsp")}
    return {
        "dsp": Resource(total["dsp"], dev.dsp),
        "lut": Resource(total["lut"], dev.lut),
        "ff": Resource(total["ff"], dev.ff),
        "bram": Resource(bram, dev.bram_kb / block_kb(t)),
        "uram": Resource(uram, dev.uram),
    }


@dataclass(frozen=True)
class Power:
    static_w: float
    dynamic_w: float
    joules_per_token: float


def power(t: Target, res: dict[str, Resource], seconds_per_token: float, bytes_per_token: float,
          dsp_activity: float) -> Power:
    p = t.power
    mhz = t.clock_mhz
    dyn = (p.dsp_mw_per_mhz * res["dsp"].used * dsp_activity + p.lut_mw_per_mhz * res["lut"].used * 0.1
           + p.bram_mw_per_mhz * (res["bram"].used * block_kb(t) + res["uram"].used * URAM_KB) * 0.5) * mhz / 1e3
    hbm_w = p.hbm_pj_per_bit * 1e-12 * bytes_per_token * 8 / seconds_per_token if seconds_per_token else 0.0
    total = p.static_w + dyn + hbm_w
    return Power(p.static_w, dyn + hbm_w, total * seconds_per_token)


def to_json(r: Roofline) -> list[dict]:
    return [asdict(x) | {"intensity": None if math.isinf(x.intensity) else x.intensity} for x in r.rows]


def roofs(t: Target) -> dict[str, float]:
    """The peaks `roofline` places ops under: memory bytes/s, and ops/s of the engine in MM mode
    (prefill), in MV mode (decode and attention) and of the special-function unit."""
    return {"memory_bytes_per_s": t.memory.peak_gbps * 1e9,
            "engine_mm_ops_per_s": 2 * t.peak_macs(EngineMode.MM),
            "engine_mv_ops_per_s": 2 * t.peak_macs(EngineMode.MV),
            "sfu_ops_per_s": t.sfu.lanes * t.clock_mhz * 1e6}
