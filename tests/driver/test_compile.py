"""`llmfab compile`: programs, weight images and manifest; every program checked; atomic, deterministic."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from llmfab.compile import CompileError, compile_model, write_build
from llmfab.ir.isa import BufferId, Opcode, Program, resolve_length
from llmfab.ir.target import load_target
from llmfab.passes.program_check import Limits, ProgramCheckError, check_program


def _limits(target: str) -> Limits:
    t = load_target(target)
    return Limits(t.buffer_bytes, t.memory.channels,
                  int(t.memory.capacity_gb * 1e9) // t.memory.channels, t.chain_layout)


def _check_all(c, target):
    lim = _limits(target)
    for e, (name, data) in zip(c.manifest["programs"], c.programs):
        prog = Program.from_bytes(data)
        assert len(prog.instructions) == e["instructions"] and len(data) == e["bytes"]
        assert prog.instructions[-1].op is Opcode.SYS
        check_program(prog, lim, (e["bucket"][0], e["bucket"][1]))


@pytest.mark.parametrize("fixture", ["llama_ts_op14", "gpt2_dynamo_op18", "opt_ts_op14", "qwen2_ts_op14"])
def test_compile_fixture_on_sim_small(tmp_path, fixture):
    c = compile_model(str(FIXTURES / f"{fixture}.onnx"), "sim-small", policy="int8", max_len=64)
    m = c.manifest
    assert m["target"]["name"] == "sim-small" and m["max_len"] == 64
    stages = {p["stage"] for p in m["programs"]}
    assert stages == {"prefill", "decode"}
    for p in m["programs"]:
        assert p["bucket"][0] <= p["bucket"][1] and p["instructions"] > 0 and p["bytes"] > 0
    step = m["prefill_step"]
    covered = sorted((p["bucket"][0], p["bucket"][1]) for p in m["programs"] if p["stage"] == "prefill")
    assert covered[0][0] == step and covered[-1][1] == -(-64 // step) * step  # every chunk end has a program
    assert all(b[0] == a[1] + step for a, b in zip(covered, covered[1:]))
    decode = sorted((p["bucket"][0], p["bucket"][1]) for p in m["programs"] if p["stage"] == "decode")
    assert decode[0][0] == 1 and decode[-1][1] == 64 and all(b[0] == a[1] + 1 for a, b in zip(decode, decode[1:]))
    assert m["instruction_bytes_total"] == sum(p["bytes"] for p in m["programs"])
    assert m["instruction_bytes_per_exact_length"] == sum(
        p["bytes"] * ((p["bucket"][1] - p["bucket"][0]) // (step if p["stage"] == "prefill" else 1) + 1)
        for p in m["programs"])
    assert m["instruction_bytes_per_exact_length"] > m["instruction_bytes_total"]
    _check_all(c, "sim-small")
    write_build(c, tmp_path / "build")
    saved = json.loads((tmp_path / "build" / "manifest.json").read_text())
    for w in saved["weights"]:
        data = (tmp_path / "build" / w["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == w["sha256"]
    for p in saved["programs"]:
        assert hashlib.sha256((tmp_path / "build" / p["file"]).read_bytes()).hexdigest() == p["sha256"]


def test_weight_image_holds_the_packed_tiles():
    """A tile in the image: chain c's rows (c, c + chains, ...) packed back to back, its word j at
    word j * chains + c of each per-row stream; the shifts row by row; the mantissas from a word."""
    from llmfab.flow import load_model
    from llmfab.ir.packing import ChainLayout, pack, pack_bits
    from llmfab.ir.quant import QuantizedWeight
    from llmfab.passes import PASSES, parse_pipeline, run_pipeline
    from llmfab.passes.hbm_layout import channel_images, place

    g = load_model(str(FIXTURES / "llama_ts_op14.onnx"), seq_len=32)
    run_pipeline(g, parse_pipeline("quantize{policy=w4-2of4}", PASSES))
    nc, wb = 4, 8
    lay = place(g, channels=4, channel_capacity=1 << 20, weights=ChainLayout(nc, wb), half_bytes=1 << 12,
                max_len=32, max_rows=8, capacity_label="HBM")
    images = channel_images(g, lay, ChainLayout(nc, wb))
    user = "layers.0.down_proj"
    t = lay.tiles[user][0]
    qw = g.node(g.node(user).inputs[1]).data
    r0, r1 = t.rows
    assert (r1 - r0) % nc == 0 and r1 - r0 > nc
    got = b"".join(bytes(images[t.obj.channel + c][t.obj.addr:t.obj.addr + t.obj.pitch]) for c in range(t.obj.channels))
    words = np.frombuffer(got, np.uint8)
    at_codes, at_idx, at_shift, at_mant, _ = t.streams
    assert all(a % wb == 0 for a in (at_codes, at_idx, at_mant))
    for c in range(nc):
        rows = range(r0 + c, r1, nc)
        sub = pack(QuantizedWeight(qw.scheme, (len(rows), qw.shape[1]), qw.codes[rows.start:r1:nc],
                                   qw.mant[rows.start:r1:nc], qw.shift[rows.start:r1:nc], qw.mask[rows.start:r1:nc]))
        for base, stream in ((at_codes, sub.values), (at_idx, sub.indices), (at_mant, sub.mant)):
            n_words = -(-len(stream) // wb)
            mine = b"".join(words[base + (j * nc + c) * wb:base + (j * nc + c + 1) * wb].tobytes() for j in range(n_words))
            assert mine[:len(stream)] == stream
    assert got[at_shift:at_shift + r1 - r0] == pack_bits(qw.shift[r0:r1], 8)


def test_compile_is_deterministic_and_atomic(tmp_path):
    model = str(FIXTURES / "llama_ts_op14.onnx")
    a = compile_model(model, "sim-small", max_len=32)
    b = compile_model(model, "sim-small", max_len=32)
    assert a.programs == b.programs and a.images == b.images and a.manifest == b.manifest
    out = tmp_path / "build"
    write_build(a, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    p = subprocess.run([sys.executable, "-m", "llmfab.cli", "compile", "llama2-7b", "--target", "ecp5-85k",
                        "--max-len", "32", "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 2
    assert {q.relative_to(out): q.read_bytes() for q in out.rglob("*") if q.is_file()} == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["build"]  # no temporary folder left


def test_model_too_big_for_memory_says_by_how_much():
    with pytest.raises(CompileError, match=r"^weights, parameters and a KV cache of 32 tokens need \d+\.\d\d GB of "
                                           r"DDR \(ecp5-85k\), which holds 0\.12 GB: the fullest channel needs "
                                           r"\d+\.\d MB of its 125\.0 MB \(\d+\.\d MB too much\); "
                                           r"no max length fits$"):
        compile_model("llama2-7b", "ecp5-85k", max_len=32, policy="int4-g128")


def test_buffer_too_small_says_which_and_by_how_much(tmp_path):
    import yaml
    from llmfab.ir.target import _bundled_dir
    data = yaml.safe_load((_bundled_dir() / "sim-small.yaml").read_text())
    for b in data["buffers"]:
        if b["name"] == "act":
            b["bytes"] = 512  # far too small for even one token's activations
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(CompileError, match=r"act buffer \(\d+ bytes\) is too small: activation '.*' needs \d+ "
                                           r"bytes, \d+ are in use and the largest free block is \d+ \(\d+ short\)"):
        compile_model(str(FIXTURES / "llama_ts_op14.onnx"), str(f), max_len=16)


def test_unsupported_weight_format():
    with pytest.raises(CompileError, match=r"^target ecp5-85k does not run int[23]-g128 weights \(layers\."):
        compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "ecp5-85k", max_len=16, policy="mixed-3.5")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.integers(1, 2), heads=st.sampled_from([2, 4]), kv=st.sampled_from([1, 2]),
       head_dim=st.sampled_from([8, 16]), family=st.sampled_from(["llama", "gpt2", "opt"]),
       max_len=st.sampled_from([8, 24, 40]), bits=st.sampled_from([4, 8]))
def test_every_program_passes_the_checker(tmp_path_factory, layers, heads, kv, head_dim, family, max_len, bits):
    """Random small models: every operand inside its buffer/channels, no token deadlock."""
    hidden = heads * head_dim
    if family == "llama":
        cfg = dict(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=min(kv, heads), intermediate_size=2 * hidden, vocab_size=64)
    elif family == "gpt2":
        cfg = dict(model_type="gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_inner=2 * hidden,
                   n_positions=64, vocab_size=64)
    else:
        cfg = dict(model_type="opt", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                   ffn_dim=2 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=64, vocab_size=64)
    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "p.yaml").write_text(f"default: {{bits: {bits}, group: 0}}\n")
    c = compile_model(str(d / "config.json"), "sim-small", policy=str(d / "p.yaml"), max_len=max_len)
    _check_all(c, "sim-small")
    assert not c.images  # config-only: programs and layout, no weight images


def test_checker_catches_out_of_bounds():
    from llmfab.ir.isa import ProgramBuilder
    b = ProgramBuilder("bad")
    b.ld(channel=0, channels=1, buf=BufferId.ACT, hbm_addr=0, buf_addr=16000, rows=2, row_bytes=512, buf_stride=512)
    b.end()
    with pytest.raises(ProgramCheckError, match=r"^program 'bad' instruction 0 \(LD\): buffer \[16000, 17024\) "
                                                r"outside the act buffer \(16384 bytes\)$"):
        check_program(b.build(), _limits("sim-small"), ())


def test_checker_catches_weight_streams_off_a_word_and_past_the_buffer():
    """sim-small: 2 chains, 4-byte weight words. An int8 tile of 5 rows of 32: the codes stream
    is 2 chains x (3 rows x 256 bits / 32) words x 4 bytes = 192 bytes (not 5 * 32)."""
    from llmfab.ir.isa import Group, ProgramBuilder, Sparsity, WeightBits

    def mv(wbuf):
        b = ProgramBuilder("mv")
        b.emit(Opcode.MV, n=5, k=32, bits=WeightBits.INT8, sparsity=Sparsity.DENSE, group=Group.CHANNEL,
               abuf=BufferId.SCRATCH, obuf=BufferId.ACT, wbuf_addr=wbuf, scale_addr=4096, a_addr=0, o_addr=0)
        b.end()
        return b.build()
    check_program(mv(8192 - 192), _limits("sim-small"), ())
    with pytest.raises(ProgramCheckError, match=r"instruction 0 \(MV\): codes \[8100, 8292\) outside the weight "):
        check_program(mv(8100), _limits("sim-small"), ())
    with pytest.raises(ProgramCheckError, match=r"the codes stream at 4098 does not start on a weight buffer word "
                                                r"\(4 bytes\)"):
        check_program(mv(4098), _limits("sim-small"), ())


def test_kv_objects_each_in_one_channel_balanced_and_merged():
    """On sim-medium (4 channels): every K and V object of the tiny LLaMA (2 layers, 4 KV heads: 16
    objects) is one channel's back-to-back rows, the channels hold KV evenly, and the decode
    step's KV LDs are the transfers the DMA merges into one slice."""
    from llmfab.backend_hw.dma.unit import merges_rows
    c = compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-medium", max_len=32)
    objs = [o for heads in c.layout.kv.values() for kv in heads for o in (kv.k, kv.v)]
    assert len(objs) >= 8 and all(o.channels == 1 and o.pitch == o.row_bytes for o in objs)
    per = [sum(o.rows * o.row_bytes for o in objs if o.channel == ch) for ch in range(4)]
    assert max(per) - min(per) <= max(o.rows * o.row_bytes for o in objs), per
    e = next(e for e in c.manifest["programs"] if e["stage"] == "decode")
    lds = [resolve_length(i, e["bucket"][1]) for i in Program.from_bytes(dict(c.programs)[e["file"]]).instructions
           if i.op is Opcode.LD and i["buf"] == BufferId.KV]
    assert lds and all(merges_rows(i) and i["rows"] > 1 for i in lds)


def _stores_inside_objects(c):
    """Every ST of every program, at its bucket's shortest and longest LEN, writes inside one KV
    object (or the output region) of its channels."""
    lay = c.layout
    objs = [o for heads in lay.kv.values() for kv in heads for o in (kv.k, kv.v)] + [lay.output]
    for (name, data), e in zip(c.programs, c.manifest["programs"]):
        for inst in Program.from_bytes(data).instructions:
            for i in {resolve_length(inst, n) for n in e["bucket"]} if inst.op is Opcode.ST else ():
                lo = i["hbm_addr"]
                hi = lo + (i["rows"] - 1) * i["hbm_stride"] + i["row_bytes"]
                assert any(o.channel == i["channel"] and o.channels == i["channels"] and o.addr <= lo
                           and hi <= o.addr + o.rows * o.pitch for o in objs), (name, lo, hi)


def test_prefill_chunks_read_their_own_token_ids_and_padding_stays_in_the_cache():
    """A prefill program runs one chunk whatever the max length: its ids at act[0] (the host writes
    them), its rows at [LEN - step, LEN); the padded last chunk (LEN 40 of max_len 36) stays inside
    the cache and the logits region."""
    c = compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", max_len=36, prefill_step=8)
    pre = [(e, Program.from_bytes(d)) for (_, d), e in zip(c.programs, c.manifest["programs"]) if e["stage"] == "prefill"]
    assert [e["bucket"][0] for e, _ in pre][0] == 8 and pre[-1][0]["bucket"][1] == 40
    sizes = {len(p.instructions) for _, p in pre}
    assert max(sizes) < 2 * min(sizes)   # a chunk's program grows only by its KV tiles
    for _, p in pre:
        assert [i["ids_addr"] for i in p.instructions if i.op is Opcode.LD and i["indirect"]] == [0]
    dec = Program.from_bytes(c.programs[[p["stage"] for p in c.manifest["programs"]].index("decode")][1])
    assert [i["ids_addr"] for i in dec.instructions if i.op is Opcode.LD and i["indirect"]] == [0]
    _stores_inside_objects(c)


def test_sparse_weights_compile_and_check():
    c = compile_model(str(FIXTURES / "gpt2_ts_op14.onnx"), "sim-small", max_len=16, policy="w4-2of4")
    _check_all(c, "sim-small")
    for _, d in c.programs:
        patterns = [i["sparsity"].pattern for i in Program.from_bytes(d).instructions if i.op in (Opcode.MV, Opcode.MM)]
        assert patterns.count((2, 4)) == len(patterns) - 1  # every linear layer; the tied LM head stays dense


@pytest.mark.parametrize("kw,message", [
    (dict(prefill_step=0), r"^--prefill-step must be between 1 and --max-len \(16\), not 0$"),
    (dict(decode_step=17), r"^--decode-step must be between 1 and --max-len \(16\), not 17$"),
    (dict(max_len=0), r"^--max-len must be positive, not 0$"),
])
def test_bad_steps(kw, message):
    args = dict(max_len=16) | kw
    with pytest.raises(CompileError, match=message):
        compile_model(str(FIXTURES / "llama_ts_op14.onnx"), "sim-small", **args)


def test_whole_build_folder_is_byte_identical(tmp_path):
    model = str(FIXTURES / "opt_ts_op14.onnx")
    for name in ("a", "b"):
        write_build(compile_model(model, "sim-small", max_len=24), tmp_path / name)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_default_max_len_is_the_models_positions_when_fewer(tmp_path):
    """`--max-len` left out: 2048, or the config's max_position_embeddings when smaller (a 128-position
    model used to be refused at the default 2048)."""
    from llmfab.compile import DEFAULT_MAX_LEN, default_max_len
    from llmfab.frontend.config import PRESET_DIR
    c = json.loads((PRESET_DIR / "llama2-7b.json").read_text())
    c.update(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=128, vocab_size=256, max_position_embeddings=128)
    (tmp_path / "config.json").write_text(json.dumps(c))
    model = str(tmp_path / "config.json")
    assert default_max_len(model) == 128 and default_max_len("llama2-7b") == DEFAULT_MAX_LEN == 2048
    assert default_max_len(str(FIXTURES / "llama_ts_op14.onnx")) == DEFAULT_MAX_LEN
    assert compile_model(model, "sim-small").manifest["max_len"] == 128
    with pytest.raises(CompileError, match="exceeds the model's 128 positions"):
        compile_model(model, "sim-small", max_len=129)


@pytest.mark.parametrize("preset,layers", [("phi-3-mini", 32), ("qwen3-8b", 36), ("llama-3.2-1b", 16),
                                           ("llama-3.2-3b", 28), ("smollm-360m", 32)])
def test_new_family_presets_compile_config_only(preset, layers):
    """The presets of issue 15's families compile from their config alone (no weights, so no images and no
    check): one prefill and one decode program over every layer, each program valid for the target."""
    c = compile_model(preset, "vhk158", max_len=32)
    m = c.manifest
    assert c.images == [] and c.checked == ()
    assert {p["stage"] for p in m["programs"]} == {"prefill", "decode"}
    _check_all(c, "vhk158")
    assert c.graph.meta["num_layers"] == layers and c.graph.meta["source"] == "config"


def test_phi3_default_max_len_is_its_attention_window():
    """Phi-3-mini attends within a 2047-token window: compile's default length stops there, not at 2048."""
    from llmfab.compile import default_max_len
    assert default_max_len("phi-3-mini") == 2047
    with pytest.raises(Exception, match=r"field 'sliding_window' is 2047 but seq_len \+ past_len = 2048"):
        compile_model("phi-3-mini", "vhk158", max_len=2048)
