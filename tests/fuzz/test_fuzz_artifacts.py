"""Fuzz: tampered BUILD folders (simulate, execute, disasm) and mutated ONNX models (byte and
structure mutation of tests/fixtures, external data pointing out of the model's folder)."""
import hashlib
import json
import shutil

import onnx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import FIXTURES
from fuzz_case import FUZZ, World, run
from llmfab.compile import compile_model, write_build

pytestmark = pytest.mark.fuzz
TINY = FIXTURES / "llama_ts_op14.onnx"
JUNK = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([-1, 0, 1, 2**31, 10**15]), st.text(max_size=12),
                 st.none(), st.booleans(), st.lists(st.integers(-3, 10), max_size=3), st.floats(),
                 st.sampled_from(["../outside/ch00.bin", "/etc/passwd", "/proc/self/mem", "weights/ch00.bin",
                                  "programs", "manifest.json", "prefill", "decode"]))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def good(root):
    out = root / "good"
    write_build(compile_model(str(TINY), "sim-small", max_len=8), out)
    return out


def _leaves(tree, at=()):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield (*at, k)
        yield from _leaves(v, (*at, k))


@st.composite
def build_tamperings(draw, files: list[str], fields: list[tuple]):
    """A list of edits: manifest fields set to junk, files truncated, bit-flipped, extended,
    deleted or made symlinks out of the folder; `rehash` then records the new sizes and hashes,
    so the deeper checks (headers, decoding, execution) get the tampered bytes."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "truncate", "flip", "extend", "delete", "symlink", "dir"]))
        if kind == "field":
            edits.append((kind, draw(st.sampled_from(fields)), draw(JUNK)))
        else:
            edits.append((kind, draw(st.sampled_from(files)), draw(st.integers(0, 2**20))))
    return edits, draw(st.booleans())


def _apply(w: World, b, edits, rehash: bool):
    m = json.loads((b / "manifest.json").read_text())
    for kind, what, arg in edits:
        if kind == "field":
            parent = m
            try:
                for k in what[:-1]:
                    parent = parent[k]
                parent[what[-1]] = arg
            except (KeyError, IndexError, TypeError):
                pass
            continue
        p = b / what
        if not p.is_file() or p.is_symlink():
            continue
        data = p.read_bytes()
        if kind == "truncate":
            p.write_bytes(data[:arg % (len(data) + 1)])
        elif kind == "flip" and data:
            i = arg % len(data)
            p.write_bytes(data[:i] + bytes([data[i] ^ (1 << (arg % 8))]) + data[i + 1:])
        elif kind == "extend":
            p.write_bytes(data + bytes(arg % 4096))
        elif kind == "delete":
            p.unlink()
        elif kind == "symlink":   # the same bytes, planted outside: reading it would pass every hash
            p.unlink()
            p.symlink_to(w.plant(p.name, data))
        elif kind == "dir":
            p.unlink()
            p.mkdir()
    if rehash:
        for e in m.get("programs", []) + m.get("weights", []) + [m.get("target")]:
            f = b / e["file"] if isinstance(e, dict) and isinstance(e.get("file"), str) else None
            if f is not None and f.is_file() and not f.is_symlink() and b in f.resolve().parents:
                data = f.read_bytes()
                e.update(sha256=hashlib.sha256(data).hexdigest(), **({"bytes": len(data)} if "bytes" in e else {}))
    (b / "manifest.json").write_text(json.dumps(m))


@given(data=st.data(), command=st.sampled_from(["simulate", "execute", "disasm", "simulate-rtl"]))
@FUZZ
def test_tampered_builds(root, good, data, command):
    w = World(root)
    b = w.model / "B"
    shutil.copytree(good, b, symlinks=True)
    files = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "manifest.json")
    fields = list(_leaves(json.loads((b / "manifest.json").read_text())))
    edits, rehash = data.draw(build_tamperings(files, fields))
    _apply(w, b, edits, rehash)
    program = data.draw(st.sampled_from([f for f in files if f.startswith("programs/")]))
    # disasm reads the file it is given, as cat does: a symlink the user names is theirs to follow
    assume(command != "disasm" or not any(k == "symlink" and f == program for k, f, _ in edits))
    argv = {"simulate": ["simulate", b, "--prefill", "4", "--decode", "3"],
            "simulate-rtl": ["simulate", b, "--prefill", "2", "--decode", "2", "--model", "rtl"],
            "execute": ["execute", b, "--tokens", "1 2 3", "--out", "l.npy", "--generate", "2"],
            "disasm": ["disasm", b / program]}[command]
    run(w, *argv)   # a symlink out is caught by the open() record even when the bytes match


# the random-initialised exports; the trained fixture (1 M parameters) would make each compile case slow
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.onnx") if not p.name.startswith("trained_"))


@given(name=st.sampled_from(FIXTURE_FILES), flips=st.lists(st.tuples(st.integers(0, 2**24), st.integers(0, 255)),
                                                          min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 2**24)))
@FUZZ
def test_onnx_byte_mutation(root, name, flips, cut):
    w = World(root)
    data = bytearray((FIXTURES / name).read_bytes())
    for at, v in flips:
        data[at % len(data)] = v
    if cut is not None:
        data = data[:cut % len(data)]
    (w.model / "m.onnx").write_bytes(bytes(data))
    run(w, "inspect", w.model / "m.onnx", "--seq-len", "4")


STRUCTURE = ["op_type", "drop_node", "swap_inputs", "attribute", "dims", "dtype", "input_dim", "rename_input"]


@given(name=st.sampled_from(FIXTURE_FILES), edits=st.lists(st.tuples(st.sampled_from(STRUCTURE),
                                                                     st.integers(0, 2**16), JUNK), min_size=1, max_size=3),
       command=st.sampled_from(["inspect", "compile"]))
@FUZZ
def test_onnx_structure_mutation(root, name, edits, command):
    w = World(root)
    m = onnx.load(str(FIXTURES / name))
    g = m.graph
    for kind, i, junk in edits:
        node = g.node[i % len(g.node)]
        ints = junk if isinstance(junk, int) and not isinstance(junk, bool) else i - 2**15
        if kind == "op_type":
            node.op_type = ["Add", "MatMul", "Reshape", "Softmax", "Gather", "Concat", "Foo", ""][i % 8]
        elif kind == "drop_node":
            g.node.remove(node)
        elif kind == "swap_inputs" and len(node.input) > 1:
            node.input[0], node.input[1] = node.input[1], node.input[0]
        elif kind == "attribute" and node.attribute:
            a = node.attribute[i % len(node.attribute)]
            if a.type == onnx.AttributeProto.INT:
                a.i = max(-2**63, min(2**63 - 1, ints))
            elif a.type == onnx.AttributeProto.INTS:
                a.ints[:] = [max(-2**63, min(2**63 - 1, ints))] * (i % 4)
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = float(i) * (-1) ** i
        elif kind == "dims" and g.initializer:
            t = g.initializer[i % len(g.initializer)]
            t.dims[:] = [abs(ints) % 2**40 if i % 3 else ints % 7 for _ in t.dims] or [i % 5]
        elif kind == "dtype" and g.initializer:
            g.initializer[i % len(g.initializer)].data_type = i % 17
        elif kind == "input_dim" and g.input:
            dims = g.input[i % len(g.input)].type.tensor_type.shape.dim
            if dims:
                dims[i % len(dims)].dim_value = abs(ints) % 2**40
        elif kind == "rename_input" and g.input:
            g.input[i % len(g.input)].name = ["input_ids", "past_key_values.0.key", "x", "attention_mask"][i % 4]
    (w.model / "m.onnx").write_bytes(m.SerializeToString())
    argv = (["inspect", w.model / "m.onnx", "--seq-len", "4"] if command == "inspect" else
            ["compile", w.model / "m.onnx", "--target", "sim-small", "--max-len", "8", "-o", "B"])
    run(w, *argv)


@given(where=st.sampled_from(["dotdot", "absolute", "symlink", "symlinked-folder", "proc", "etc", "missing"]),
       offset=st.sampled_from([None, 0, 4, -1, 2**40]), length=st.sampled_from([None, 0, 16, -5, 2**40]))
@FUZZ
def test_onnx_external_data_stays_in_the_model_folder(root, where, offset, length):
    w = World(root)
    src = FIXTURES / "llama_dynamo_extdata"
    folder = w.model / "ext"
    shutil.copytree(src, folder)
    planted = w.plant("model.onnx.data", (src / "model.onnx.data").read_bytes())   # the real bytes, outside
    location = {"dotdot": "../../outside/model.onnx.data", "absolute": str(planted), "symlink": "model.onnx.data",
                "symlinked-folder": "sub/model.onnx.data", "proc": "/proc/self/mem", "etc": "/etc/passwd",
                "missing": "nope.data"}[where]
    if where == "symlink":
        (folder / "model.onnx.data").unlink()
        (folder / "model.onnx.data").symlink_to(planted)
    if where == "symlinked-folder":
        (folder / "sub").symlink_to(w.outside)
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            entries["location"] = location
            for k, v in (("offset", offset), ("length", length)):
                if v is not None and t.name.endswith("weight"):
                    entries[k] = str(v)
            del t.external_data[:]
            for k, v in entries.items():
                t.external_data.add(key=k, value=v)
    (folder / "model.onnx").write_bytes(m.SerializeToString())
    o = run(w, "inspect", folder / "model.onnx", "--seq-len", "4")
    assert o.rc == 2, f"external data at {location} was accepted"
