"""`llmfab explore`'s space files and point targets: values and ranges, one clear line for every
bad file, each point's Target derived from the base and validated like a user's file, and the
Pareto front on a hand-checked case (no compiling here: test_explore.py runs sweeps)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from llmfab.cli import main
from llmfab.explore import pareto
from llmfab.explore_space import SpaceError, derive_target, load_space
from llmfab.ir.target import load_target, target_from_text

U280 = load_target("u280")


def _space(tmp_path, text: str, base=U280):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return load_space(p, base), str(p)


def test_values_ranges_and_points_sorted(tmp_path):
    s, _ = _space(tmp_path, "prefill: 64\naxes:\n  engine.chain_len: {from: 8, to: 32, times: 2}\n"
                            "  clock_mhz: {from: 175, to: 275, step: 25}\n  policy: [w4-2of4, int4-g128]\n")
    assert (s.prefill, s.decode) == (64, 512)
    assert s.axes == {"engine.chain_len": (8, 16, 32), "clock_mhz": (175, 200, 225, 250, 275),
                      "policy": ("w4-2of4", "int4-g128")}
    pts = s.points()
    assert len(pts) == 30
    assert pts[0] == {"engine.chain_len": 8, "clock_mhz": 175, "policy": "int4-g128"}
    assert pts == sorted(pts, key=lambda p: (p["engine.chain_len"], p["clock_mhz"], p["policy"]))


BAD = [
    ("axes:\n  engine.chian_len: [16]\n",
     r"S: axes\.engine\.chian_len is not an axis; expected one of engine\.n_chains, engine\.chain_len, .*"),
    ("axis:\n  clock_mhz: [100]\n", r"S: axis is not a key of a space file; expected one of prefill, decode, axes"),
    ("axes:\n  clock_mhz: []\n", r"S: axes\.clock_mhz: the list is empty; give at least one value"),
    ("axes:\n  clock_mhz: {from: 300, to: 200, step: 25}\n", r"S: axes\.clock_mhz: the range from 300 to 200 is empty"),
    ("axes:\n  clock_mhz: {from: 100, to: 200, step: 0}\n", r"S: axes\.clock_mhz: step must be positive, not 0"),
    ("axes:\n  engine.chain_len: [12]\n",
     r"S: axes\.engine\.chain_len: each value must be a positive power of two \(stages per chain; .*\), not 12"),
    ("axes:\n  engine.n_chains: {from: 100, to: 200, times: 1.5}\n",
     r"S: axes\.engine\.n_chains: the range gives 150\.0; this axis needs integers"),
    ("axes:\n  engine.n_chains: [192, 1024]\n",
     r"S: axes\.engine\.n_chains: 1024 cannot be held by u280 even with the smallest value of every other axis: "
     r"engine needs 32768 DSPs, device has 9024 \(1024 chains x 32 stages x 1 DSP\)"),
    ("axes:\n  engine.n_chains: [64, 1024]\n  engine.chain_len: [2, 32]\n",   # 1024 x 2 fits: no error
     None),
    ("axes:\n  memory.channels: [16, 64]\n",
     r"S: axes\.memory\.channels: 64 cannot be held by u280 even with the smallest value of every other axis: "
     r"memory\.channels 64 is more than the 32 channels u280 has"),
    ("axes:\n  buffers.act.bytes: [67108864]\n",
     r"S: axes\.buffers\.act\.bytes: 67108864 cannot be held by u280 .*: buffers need 76544 KiB of on-chip "
     r"memory, device has 43632 KiB \(block RAM 9072 \+ UltraRAM 34560\); 32912 KiB too much"),
    ("axes:\n  policy: [int5]\n", r"S: axes\.policy: int5: no such policy file or bundled policy \(bundled: .*\)"),
    ("axes:\n  clock_mhz: [100, 100]\n", r"S: axes\.clock_mhz: lists 100 twice"),
    ("decode: 0\naxes:\n  clock_mhz: [100]\n", r"S: decode must be a positive int \(decode steps timed; default 512\), not 0"),
    ("axes: !!python/object/apply:os.system ['true']\n", r"S: line 1: not valid YAML: could not determine a constructor .*"),
    ("- 1\n- 2\n", r"S: a space file must be a mapping with prefill, decode, axes, not \[1, 2\]"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_space_files_one_line(tmp_path, text, message):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    if message is None:
        assert len(load_space(p, U280).points()) == 4
        return
    with pytest.raises(SpaceError) as e:
        load_space(p, U280)
    assert re.fullmatch(message.replace("S:", re.escape(str(p)) + ":"), str(e.value)), str(e.value)
    assert "\n" not in str(e.value)


def test_bad_space_file_through_the_cli(tmp_path, capsys):
    p = tmp_path / "space.yaml"
    p.write_text("axes:\n  engine.chain_len: [16, 12]\n")
    code = main(["explore", "llama2-7b", "--target", "u280", "--space", str(p), "-o", str(tmp_path / "out"),
                 "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"llmfab: error: {p}: axes.engine.chain_len: each value must be")
    assert not (tmp_path / "out").exists()


def test_derived_target_follows_the_engine_and_reparses(tmp_path):
    t = derive_target(U280, {"engine.n_chains": 128, "engine.chain_len": 16, "memory.channels": 16,
                             "clock_mhz": 250.0, "buffers.kv.bytes": 1048576}, "u280-x")
    assert (t.engine.n_chains, t.engine.chain_len, t.clock_mhz) == (128, 16, 250.0)
    assert t.engine.pipeline_depth == 40 - 32 + 16                  # the same margin over the chain
    w = t.buffer("weight")
    assert (w.banks, w.width_bits, w.depth) == (128, 64, U280.buffer("weight").depth)   # a bank and a word per chain
    assert (t.memory.channels, t.memory.capacity_gb) == (16, 4.0)   # half the channels, half the capacity
    assert t.buffer("kv").bytes == 1048576
    again = target_from_text(t.text, "again.yaml")                  # the text is a target file like any other
    assert again == t and again.name == "u280-x"
    same = derive_target(U280, {}, "u280")                          # no axis: the base itself
    assert replace(same, description=U280.description) == U280


def _pt(pid, tps, dsp, power, status="ok"):
    return {"id": pid, "status": status, "metrics": {"tokens_per_s": tps, "dsp": dsp, "power_w": power}}


def test_pareto_hand_checked():
    pts = [_pt("a", 100, 1000, 30), _pt("b", 120, 2000, 25), _pt("c", 90, 1500, 20),   # c: slower and dearer than a
           _pt("d", 120, 2000, 40), _pt("e", 150, 4000, 50), _pt("f", 140, 4000, 28),
           _pt("g", 200, 500, 10, status="does-not-fit"), _pt("h", 100, 1000, 35)]
    # DSP: a (1000, 100) and its tie h; b and d tie at (2000, 120); e (4000, 150); c, f dominated
    assert pareto(pts, "dsp") == {"a", "h", "b", "d", "e"}
    # power: c (20 W, 90), b (25, 120), f (28, 140), e (50, 150); a, d, h dominated; g does not fit
    assert pareto(pts, "power_w") == {"c", "b", "f", "e"}
