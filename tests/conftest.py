"""Shared by every test folder (tests/<stage>/ mirror the packages; tests/hw/{unit,cycles,system,toolflow}):
paths, the ONNX fixtures' manifest, onnxruntime helpers and the tiny compiled build most hardware tests use."""
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "llama_ts_op14.onnx"     # the tiny LLaMA (2 layers) the hardware tests run


def manifest() -> list[dict]:
    return json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


def fixture_ids(pred=lambda f: True) -> list[str]:
    return [f["file"] for f in manifest() if pred(f)]


def fixture_entry(file: str) -> dict:
    return next(f for f in manifest() if f["file"] == file)


def ort_run(path, feeds: dict) -> dict:
    """onnxruntime, the golden model, on the same ONNX file."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def ort_feeds(path, ids: np.ndarray, past: dict | None = None, past_len: int = 0) -> dict:
    """Feeds for an exported decoder: ids, all-ones mask, positions, and the past KV values."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    B, S = ids.shape
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = ids.astype(np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((B, past_len + S), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(past_len, past_len + S, dtype=np.int64)[None].repeat(B, 0)
        elif past is not None and i.name in past:
            feeds[i.name] = past[i.name]
        else:
            raise KeyError(f"no feed for {i.name}")
    return feeds


def integer_logits(c, path, ids: np.ndarray) -> np.ndarray:
    """The integer model's logits (`run_integer_raw`) of the model at `path` on `ids`, with the
    compiled build `c`'s quantized weights: what the programs must reproduce bit for bit."""
    import dataclasses

    from llmfab.flow import load_model
    from llmfab.ir import ConstAttrs, OpKind, TensorType
    from llmfab.ir.integer import run_integer_raw
    from llmfab.ir.quant import QuantizedWeight
    g = load_model(str(path), seq_len=len(ids))
    for n in g.nodes():
        if n.op is OpKind.CONST and n.name in c.graph and isinstance(c.graph.node(n.name).data, QuantizedWeight):
            qw = c.graph.node(n.name).data
            g.set_node(dataclasses.replace(n, attrs=ConstAttrs(qw, True), type=TensorType(qw.dtype, qw.shape)))
    feeds = {n.name: ids[None] if n.attrs.role.value == "tokens" else np.zeros(n.type.shape, np.float32)
             for n in g.inputs()}
    return run_integer_raw(g, feeds)["logits"][0]


def tolerance(entry: dict) -> float:
    """Relative logits bound against onnxruntime: 1e-4 (the issue's bound) for float32 exports;
    fp16 exports are compared at fp16 precision (onnxruntime computes in half, llmfab in fp32)."""
    return 1e-4 if entry["dtype"] == "float32" else 2e-3


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


@functools.cache
def tiny_compiled(policy: str = "int8", target: str = "sim-small", max_len: int = 16):
    """The tiny LLaMA compiled once per session and weight policy; callers must not modify it."""
    from llmfab.compile import compile_model
    return compile_model(str(TINY), target, max_len=max_len, policy=policy)


@pytest.fixture(scope="session")
def tiny_build():
    """`tiny_compiled` as a fixture: `tiny_build()` is the int8 sim-small build, `tiny_build("int4-g128")` another."""
    return tiny_compiled


@pytest.fixture
def tmp_fixture_copy(tmp_path):
    def copy(name: str) -> Path:
        src = FIXTURES / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
        return tmp_path / name
    return copy


def run_per_cycle(dut, inputs: list, outputs: dict, n: int) -> dict[str, list[int]]:
    """amaranth.sim in Verilator's cycle convention (backend_hw/toolflow/verilator.py): each cycle set the
    inputs (`inputs`: (signal, one value per cycle) pairs), read the settled outputs (`outputs`:
    name -> signal; unsigned), tick."""
    from amaranth.sim import Simulator
    got = {o: [] for o in outputs}

    async def tb(ctx):
        for k in range(n):
            for sig, values in inputs:
                ctx.set(sig, int(values[k]))
            for name, sig in outputs.items():
                got[name].append(ctx.get(sig) & ((1 << len(sig)) - 1))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got
