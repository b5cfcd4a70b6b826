"""Fuzz: Hugging Face configs, policy and target YAML, and the command line (issue 14, item 6).
Every case: success, or one `llmfab: error:` line naming what is wrong; see fuzz_case.py."""
import json
import shutil

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import FIXTURES, ROOT
from fuzz_case import FUZZ, World, run

pytestmark = pytest.mark.fuzz
TINY = FIXTURES / "llama_ts_op14.onnx"
BASES = {   # tiny configs of each family: compile and report in well under a second
    "llama": {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "torch_dtype": "float32"},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 128},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_layer": 2, "vocab_size": 128, "n_positions": 128},
    "opt": {"model_type": "opt", "hidden_size": 32, "num_attention_heads": 4, "ffn_dim": 64, "num_hidden_layers": 2,
            "vocab_size": 128, "max_position_embeddings": 128},
}
EXTRA_KEYS = ["head_dim", "rope_scaling", "rope_parameters", "sliding_window", "use_sliding_window",
              "tie_word_embeddings", "hidden_act", "activation_function", "n_inner", "attention_bias", "dtype",
              "word_embed_proj_dim", "do_layer_norm_before", "_name_or_path", "num_key_value_heads"]
INTS = st.sampled_from([-64, -1, 0, 1, 2, 3, 4, 7, 8, 16, 64, 1024, 1025, 4096, 2**31 - 1, 2**31, 2**40, 10**9])
SCALARS = st.one_of(INTS, st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=20),
                    st.sampled_from(["silu", "gelu_new", "relu", "float16", "bfloat16", "llama", "../outside/x"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(
                                                             ["rope_type", "type", "factor", "low_freq_factor",
                                                              "high_freq_factor", "original_max_position_embeddings",
                                                              "rope_theta"]), inner, max_size=4)), max_leaves=6)
DELETE = object()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@st.composite
def configs(draw):
    family = draw(st.sampled_from(sorted(BASES)))
    cfg = dict(BASES[family])
    for key in draw(st.lists(st.sampled_from(sorted(cfg) + EXTRA_KEYS), min_size=1, max_size=3, unique=True)):
        value = draw(st.one_of(st.just(DELETE), VALUES))
        if value is DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


@given(cfg=configs(), command=st.sampled_from(["inspect", "compile", "report"]))
@FUZZ
def test_hf_configs(root, cfg, command):
    w = World(root)
    path = w.model / "config.json"
    path.write_text(json.dumps(cfg))   # NaN and Infinity too, as json.dumps writes them
    argv = {"inspect": ["inspect", path],
            "compile": ["compile", path, "--target", "sim-small", "--max-len", "16", "-o", "B"],
            "report": ["report", path, "--target", "sim-small", "--prefill", "4", "--decode", "4"]}[command]
    run(w, *argv)


def _paths(tree, at=()):
    """Every key path of a parsed YAML/JSON tree (dict keys and list indices)."""
    yield at
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield from _paths(v, (*at, k))


@st.composite
def mutated_yaml(draw, text: str):
    """A bundled YAML with a few fields replaced or deleted, or one of the YAML attacks."""
    attack = draw(st.sampled_from(["fields", "fields", "fields", "python-tag", "alias-bomb", "text", "bytes"]))
    if attack == "python-tag":
        return b'name: !!python/object/apply:os.system ["touch ../outside/pwned"]\n' + text.encode()
    if attack == "alias-bomb":
        lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
        lines += [f"a{i}: &a{i} [*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},"
                  f"*a{i - 1}]" for i in range(1, 10)]
        return ("\n".join(lines) + "\n").encode()
    if attack == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if attack == "bytes":
        return draw(st.binary(max_size=200))
    tree = yaml.safe_load(text)
    paths = [p for p in _paths(tree) if p]
    for p in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        parent = tree
        try:
            for k in p[:-1]:
                parent = parent[k]
            if draw(st.booleans()):
                parent[p[-1]] = draw(VALUES)
            elif isinstance(parent, dict):
                parent.pop(p[-1], None)
            else:
                parent.pop(p[-1])
        except (KeyError, IndexError, TypeError, AttributeError):   # an earlier change removed the path
            pass
    return yaml.safe_dump(tree, allow_unicode=True).encode()


TARGET = (ROOT / "llmfab" / "targets" / "sim-small.yaml").read_text()


def _model_with_file(root, name: str, data: bytes):
    """A world whose model folder holds the tiny model as m.onnx and `data` as `name`."""
    w = World(root)
    shutil.copy(TINY, w.model / "m.onnx")
    path = w.model / name
    path.write_bytes(data)
    return w, path
POLICIES = [(ROOT / "examples" / "policies" / f"{n}.yaml").read_text() for n in ("int4-g128", "w4-2of4", "mixed-3.5")]


@given(data=mutated_yaml(TARGET), command=st.sampled_from(["targets", "compile", "report"]))
@FUZZ
def test_target_yaml(root, data, command):
    w, path = _model_with_file(root, "t.yaml", data)
    argv = {"targets": ["targets", path],
            "compile": ["compile", w.model / "m.onnx", "--target", path, "--max-len", "8", "-o", "B"],
            "report": ["report", "llama2-7b", "--target", path]}[command]
    run(w, *argv)
    assert not (w.outside / "pwned").exists()


@given(data=st.sampled_from(POLICIES).flatmap(mutated_yaml), command=st.sampled_from(["quantize", "compile"]))
@FUZZ
def test_policy_yaml(root, data, command):
    w, path = _model_with_file(root, "p.yaml", data)
    argv = {"quantize": ["quantize", w.model / "m.onnx", "--policy", path, "--seq-len", "8"],
            "compile": ["compile", w.model / "m.onnx", "--target", "sim-small", "--policy", path, "--max-len", "8",
                        "-o", "B"]}[command]
    run(w, *argv)
    assert not (w.outside / "pwned").exists()


# the command line: every command with generated values for its options (outputs only in work/)
NUMBERS = st.one_of(st.sampled_from(["-1", "0", "1", "2", "8", "16", "1000000000", "99999999999999999999", "1e3", "x", ""]),
                    st.integers(-10, 300).map(str))
MODELS = st.sampled_from(["M", "llama2-7b", "gpt2", "../model/config.json", "../model", "nope.onnx", "", "-"])
OUTS = st.sampled_from(["B", "B/sub", "../model", ".", "out.npy", "../model/m.onnx"])
OPTIONS = {
    "inspect": {"--seq-len": NUMBERS, "--past-len": NUMBERS, "--json": None, "--print-ir": None,
                "--passes": st.sampled_from(["fuse-linear", "nope", "canonical-names{x=1}", "", ",,"])},
    "compile": {"--target": st.sampled_from(["sim-small", "u280", "nope", "../model/m.onnx"]),
                "--policy": st.sampled_from(["int8", "w4-2of4", "nope", "../model/m.onnx"]), "--max-len": NUMBERS,
                "--prefill-step": NUMBERS, "--decode-step": NUMBERS, "-o": OUTS},
    "report": {"--target": st.sampled_from(["sim-small", "u280", "vhk158"]), "--prefill": NUMBERS,
               "--decode": NUMBERS, "--json": None},
    "interpret": {"--tokens": st.sampled_from(["1 2 3", "", "x", "-1", "99999", "1,2"]), "--out": OUTS},
    "quantize": {"--policy": st.sampled_from(["int8", "nope"]), "--seq-len": NUMBERS,
                 "--calibration": st.sampled_from(["../model/m.onnx", "nope.txt", "tok.txt"])},
    "targets": {}, "disasm": {},
}


@st.composite
def command_lines(draw):
    cmd = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [cmd]
    if cmd not in ("targets",):
        argv.append(draw(MODELS))
    for opt in draw(st.lists(st.sampled_from(sorted(OPTIONS[cmd]) or ["--json"]), max_size=4, unique=True)):
        strat = OPTIONS[cmd].get(opt)
        argv += [opt] if strat is None else [opt, draw(strat)]
    return argv


@given(argv=command_lines())
@FUZZ
def test_command_lines(root, argv):
    w = World(root)
    shutil.copy(TINY, w.model / "m.onnx")
    (w.model / "config.json").write_text(json.dumps(BASES["llama"]))
    (w.work / "tok.txt").write_text("1 2 3 4 5 6 7 8")
    run(w, *[str(w.model / "m.onnx") if a == "M" else a for a in argv])


def test_the_harness_sees_a_read_outside_and_a_bad_error(root):
    """The checks could fail: reading a planted file, a write outside work/, a non-naming error."""
    w = World(root)
    planted = w.plant("planted.onnx", TINY.read_bytes())
    with pytest.raises(AssertionError, match="opened"):
        run(w, "inspect", planted)
    with pytest.raises(AssertionError, match="opened|changed files outside the working folder"):
        run(w, "interpret", TINY, "--tokens", "1 2", "--out", w.outside / "l.npy")
    assert run(w, "inspect", "nope").rc == 2
