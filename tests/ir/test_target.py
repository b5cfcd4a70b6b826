"""Target: bundled targets, derived numbers, and every validation error (whole messages)."""
import copy
import importlib.resources

import pytest
import yaml

from llmfab.ir.target import (BufferKind, BufferName, DeviceFamily, DSPPrimitive, EngineMode, MemoryKind,
                              TargetError, bundled_targets, format_targets, load_target, parse_target)

BUNDLED = ["ecp5-85k", "sim-medium", "sim-small", "u280", "vhk158"]


def raw(name: str = "u280") -> dict:
    """The bundled YAML as a fresh dict, to break one field at a time."""
    text = (importlib.resources.files("llmfab.targets") / f"{name}.yaml").read_text()
    return copy.deepcopy(yaml.safe_load(text))


def parse(data: dict, source: str = "u280.yaml"):
    return parse_target(data, source)


def buf(data: dict, name: str) -> dict:
    return next(b for b in data["buffers"] if b["name"] == name)


# --- bundled targets -----------------------------------------------------------------------------

def test_bundled_names():
    assert bundled_targets() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_loads(name):
    t = load_target(name)
    assert t.name == name
    assert t.source == f"{name}.yaml"
    assert [b.name for b in t.buffers] == list(BufferName)
    assert t.dsp_used <= t.device.dsp
    assert sum(b.bytes for b in t.buffers) <= t.device.on_chip_kb * 1024
    assert t.engine.pipeline_depth >= t.engine.chain_len
    assert t.memory.bandwidth_gbps <= t.memory.peak_gbps
    assert t.description and "\n" not in t.description


def test_u280_numbers():
    t = load_target("u280")
    d, e, m = t.device, t.engine, t.memory
    assert (d.family, d.part) == (DeviceFamily.XILINX_ULTRASCALE_PLUS, "xcu280-fsvh2892-2L-e")
    assert (d.dsp, d.lut, d.ff, d.bram36, d.uram) == (9024, 1303680, 2607360, 2016, 960)
    assert d.bram_kb == 2016 * 4.5 and d.on_chip_kb == 9072 + 960 * 36
    assert (e.n_chains, e.chain_len, e.dsp_primitive) == (192, 32, DSPPrimitive.DSP48E2)
    assert t.dsp_used == 6144 <= d.dsp
    assert t.clock_mhz == 225
    assert m.kind is MemoryKind.HBM and m.capacity_gb == 8
    assert m.peak_gbps == pytest.approx(460.0)                   # 32 x 14.375
    assert m.port_gbps == pytest.approx(14.4)                    # 256 bits x 450 MHz
    assert m.bandwidth_gbps == pytest.approx(32 * min(14.375, m.port_gbps) * m.efficiency)
    assert m.bandwidth_gbps == pytest.approx(414.0)


def test_port_bounds_the_channel():
    """A 256-bit port at 225 MHz carries 7.2 GB/s, half a U280 pseudo-channel: the port is the bound."""
    data = raw()
    data["memory"]["port_width_bits"], data["memory"]["port_clock_mhz"] = 256, 225
    m = parse(data).memory
    assert m.port_gbps == pytest.approx(7.2)
    assert m.port_gbps == pytest.approx(14.375 / 2, rel=0.01)
    assert m.effective_channel_gbps == pytest.approx(7.2 * 0.9)
    assert m.bandwidth_gbps == pytest.approx(32 * 7.2 * 0.9)
    assert m.peak_gbps == pytest.approx(460.0)                   # the memory's own peak is unchanged


def test_vhk158_and_ecp5_numbers():
    v = load_target("vhk158")
    assert v.device.dsp == 7392 and v.dsp_used == 6144
    assert v.memory.peak_gbps == pytest.approx(819.2) and v.memory.capacity_gb == 32
    assert v.memory.bandwidth_gbps == pytest.approx(32 * 25.6 * 0.9)
    e = load_target("ecp5-85k")
    assert (e.device.dsp, e.device.lut, e.device.ebr, e.device.bram_kb) == (156, 83640, 208, 468)
    assert e.dsp_used == 32 and e.engine.dsp_primitive is DSPPrimitive.MULT18X18D
    assert e.engine.weight_bits == (4, 8) and e.engine.sparsity == ((2, 4),)
    assert e.memory.peak_gbps == pytest.approx(1.6)
    s = load_target("sim-small")
    assert (s.engine.n_chains, s.engine.chain_len, s.memory.channels) == (2, 4, 1)
    assert s.buffer("kv").bytes >= 2 * 2 * 128 * 16             # the tiny models' whole KV cache, int8


@pytest.mark.parametrize("name", ["u280", "vhk158"])
def test_int4_decode_is_memory_bound(name):
    """The engine sizes are chosen so the engine outruns the HBM on int4 weights."""
    t = load_target(name)
    assert t.weights_per_cycle(4) * 0.5 * t.clock_hz / 1e9 > t.memory.peak_gbps
    assert t.mv_weight_gbps(4) > t.memory.peak_gbps
    assert t.mv_weight_gbps(4, "2:4") == pytest.approx(t.engine.macs * 6 / 8 * t.clock_hz / 1e9)


@pytest.mark.parametrize("sparsity, factor", [(None, 1), ("2:4", 2), ("1:4", 4), ("4:8", 2), ("2:8", 4), ((2, 4), 2)])
def test_weights_per_cycle(sparsity, factor):
    t = load_target("u280")
    assert t.weights_per_cycle(4, sparsity) == 192 * 32 * factor


def test_peak_macs():
    t = load_target("u280")
    assert t.peak_macs_per_s == t.peak_macs(EngineMode.MV) == 6144 * 225e6
    assert t.peak_macs("mm") == 2 * 6144 * 225e6
    assert load_target("ecp5-85k").peak_macs(EngineMode.MM) == 32 * 100e6   # no packing on MULT18X18D


def test_buffer_geometry():
    t = load_target("u280")
    w = t.buffer(BufferName.WEIGHT)
    assert (w.banks, w.width_bits, w.depth, w.kind) == (192, 128, 1536, BufferKind.URAM)
    assert t.buffer("inst").depth == 65536


def test_unsupported_weights():
    t = load_target("ecp5-85k")
    with pytest.raises(TargetError, match=r"^ecp5-85k\.yaml: the engine does not run int3 weights "
                                          r"\(engine\.weight_bits: 4, 8\)$"):
        t.weights_per_cycle(3)
    with pytest.raises(TargetError, match=r"^ecp5-85k\.yaml: the engine does not run 1:4 sparsity "
                                          r"\(engine\.sparsity: 2:4\)$"):
        t.mv_weight_gbps(4, "1:4")
    with pytest.raises(TargetError, match=r"^a sparsity pattern must be None, \(n, m\) or \"n:m\", not '2/4'$"):
        t.weights_per_cycle(4, "2/4")


# --- validation errors ---------------------------------------------------------------------------

def _set(path: str, value):
    """A mutation of the u280 dict: 'engine.chain_len' or 'buffers[2].name'."""
    def apply(data):
        node = data
        parts = path.replace("]", "").replace("[", ".").split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})   # controller is optional
        last = parts[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return apply


_DELETE = object()

ERRORS = [
    ("engine.chain_len", _DELETE, r"engine\.chain_len is missing; expected a positive power of two"),
    ("memory", _DELETE, r"memory is missing; expected a mapping"),
    ("engine.chain_len", 12, r"engine\.chain_len must be a positive power of two, not 12"),
    ("engine.chain_len", 0, r"engine\.chain_len must be a positive power of two, not 0"),
    ("engine.n_chains", "192", r"engine\.n_chains must be a positive int, not '192'"),
    ("engine.n_chains", True, r"engine\.n_chains must be a positive int, not True"),
    ("engine.n_chains", 192.0, r"engine\.n_chains must be a positive int, not 192\.0"),
    ("engine.attn_bytes", 48, r"engine\.attn_bytes must be a power of two >= 4 \(K/V bytes ATTN takes a cycle; "
                              r"optional, chain_len rounded up\), not 48"),
    ("clock_mhz", "fast", r"clock_mhz must be a positive number \(kernel clock, MHz\), not 'fast'"),
    ("name", "U280 board", r"name must be a name of lowercase letters, digits, '-' and '_', not 'U280 board'"),
    ("engine", [1, 2], (r"engine must be a mapping with n_chains, chain_len, mac_bits, weight_bits, sparsity, "
                        r"operand_packing, pipeline_depth, dsp_per_mac, dsp_primitive, attn_bytes, not \[1, 2\]")),
    ("engine.chian_len", 32, (r"engine\.chian_len is not a field of engine; expected one of n_chains, chain_len, "
                              r"mac_bits, weight_bits, sparsity, operand_packing, pipeline_depth, dsp_per_mac, "
                              r"dsp_primitive, attn_bytes")),
    ("clocks", 1, (r"clocks is not a field of a target; expected one of name, description, clock_mhz, device, "
                   r"engine, sfu, buffers, memory, power, controller")),
    ("engine.mac_bits", 16, r"engine\.mac_bits must be 8 \(int8 activations\), not 16"),
    ("engine.weight_bits", [4, 5], r"engine\.weight_bits\[1\] must be one of 2, 3, 4, 8, not 5"),
    ("engine.weight_bits", [], (r"engine\.weight_bits must be a non-empty list of weight widths from 2, 3, 4, 8, "
                                r"not \[\]")),
    ("engine.weight_bits", [4, 4], r"engine\.weight_bits lists a value twice"),
    ("engine.sparsity", ["2:4", "3:4"], r"engine\.sparsity\[1\] must be one of 2:4, 1:4, 4:8, 2:8, not '3:4'"),
    ("engine.sparsity", "2:4", (r"engine\.sparsity must be a list of quoted N:M patterns from 2:4, 1:4, 4:8, 2:8, "
                                r"not '2:4'")),
    ("engine.operand_packing", 3, r"engine\.operand_packing must be 1 or 2, not 3"),
    ("engine.pipeline_depth", 10, (r"engine\.pipeline_depth must be at least chain_len \(32\) cycles, one per "
                                   r"cascaded stage, not 10")),
    ("engine.dsp_primitive", "DSP58", (r"engine\.dsp_primitive must be one of DSP48E2, behavioural on a "
                                       r"xilinx-ultrascale\+ device, not 'DSP58'")),
    ("engine.dsp_primitive", "DSP99", (r"engine\.dsp_primitive must be one of DSP48E2, DSP58, MULT18X18D, "
                                       r"behavioural, not 'DSP99'")),
    ("device.family", "intel", (r"device\.family must be one of xilinx-ultrascale\+, xilinx-versal, lattice-ecp5, "
                                r"generic, not 'intel'")),
    ("device.bram_kb", 9000, r"device\.bram_kb must be bram36 x 4\.5 = 9072 KiB, not 9000"),
    ("sfu.lanes", 0, r"sfu\.lanes must be a positive int \(elements per cycle\), not 0"),
    ("buffers", {"weight": 1}, r"buffers must be a list of the 5 on-chip buffers, not \{'weight': 1\}"),
    ("buffers[2].name", "cache", r"buffers\[2\]\.name must be one of weight, act, kv, scratch, inst, not 'cache'"),
    ("buffers[2].name", "act", r"buffers\[2\]\.name 'act' repeats buffers\[1\]; each buffer appears once"),
    ("buffers[0].width_bits", 100, r"buffers\[0\]\.width_bits must be a positive multiple of 8, not 100"),
    ("buffers[0].bytes", 1000, (r"buffers\[0\]\.bytes must be a multiple of banks x width_bits / 8 = 3072 \(one "
                                r"row across all banks\), not 1000")),
    ("buffers[0].kind", "sram", r"buffers\[0\]\.kind must be one of bram, uram, lutram, not 'sram'"),
    ("memory.kind", "gddr6", r"memory\.kind must be one of hbm, ddr, not 'gddr6'"),
    ("memory.efficiency", 1.5, r"memory\.efficiency must be a number in \(0, 1\], not 1\.5"),
    ("memory.efficiency", 0, r"memory\.efficiency must be a number in \(0, 1\], not 0"),
    ("memory.efficiency", -0.2, r"memory\.efficiency must be a number in \(0, 1\], not -0\.2"),
    ("memory.port_width_bits", 300, r"memory\.port_width_bits must be a power of two >= 8, not 300"),
    ("memory.channel_gbps", float("inf"), (r"memory\.channel_gbps must be a positive number \(GB/s per channel, "
                                           r"peak\), not inf")),
    ("power.static_w", -1, r"power\.static_w must be a number >= 0 \(W\), not -1"),
    ("controller.token_counter_bits", 1, (r"controller\.token_counter_bits must be an int in 2\.\.16 \(bits per "
                                          r"dependency-token counter\), not 1")),
    ("controller.queue_depth", 0, r"controller\.queue_depth must be a positive int \(instructions per queue FIFO\), not 0"),
    ("controller.depth", 4, r"controller\.depth is not a field of controller; expected one of queue_depth, token_counter_bits"),
    ("memory.burst_setup_ns", -1, r"memory\.burst_setup_ns must be a number >= 0 \(ns per AXI burst; optional, 20\), not -1"),
    ("engine.n_chains", 320, r"engine needs 10240 DSPs, device has 9024 \(320 chains x 32 stages x 1 DSP\)"),
    ("buffers[0].bytes", 48 << 20, (r"buffers need 80128 KiB of on-chip memory, device has 43632 KiB \(block RAM "
                                    r"9072 \+ UltraRAM 34560\); 36496 KiB too much")),
    ("buffers[0].bytes", 12 << 20, (r"uram buffers \(weight, act, kv\) need 38912 KiB, device has 34560 KiB of "
                                    r"UltraRAM; 4352 KiB too much")),
]


@pytest.mark.parametrize("path, value, message", ERRORS, ids=[f"{p}={'<deleted>' if v is _DELETE else repr(v)}"[:40] for p, v, _ in ERRORS])
def test_error(path, value, message):
    data = raw()
    _set(path, value)(data)
    with pytest.raises(TargetError, match=rf"^u280\.yaml: {message}$"):
        parse(data)


def test_efficiency_one_is_allowed():
    data = raw()
    data["memory"]["efficiency"] = 1
    assert parse(data).memory.bandwidth_gbps == pytest.approx(460.0)


def test_missing_buffer():
    data = raw()
    data["buffers"] = [b for b in data["buffers"] if b["name"] != "kv"]
    with pytest.raises(TargetError, match=r"^u280\.yaml: buffers has no kv buffer; expected one each of "
                                          r"weight, act, kv, scratch, inst$"):
        parse(data)


def test_ecp5_rules():
    data = raw("ecp5-85k")
    data["engine"]["operand_packing"] = 2
    with pytest.raises(TargetError, match=r"^ecp5-85k\.yaml: engine\.operand_packing must be 1 with MULT18X18D "
                                          r"\(its 18-bit ports cannot hold two int8 activations\), not 2$"):
        parse(data, "ecp5-85k.yaml")
    data = raw("ecp5-85k")
    buf(data, "act")["kind"] = "uram"
    with pytest.raises(TargetError, match=r"^ecp5-85k\.yaml: uram buffers \(act\) need 64 KiB, device has 0 KiB "
                                          r"of UltraRAM; 64 KiB too much$"):
        parse(data, "ecp5-85k.yaml")
    data = raw("ecp5-85k")
    data["device"]["bram_kb"] = 500
    with pytest.raises(TargetError, match=r"^ecp5-85k\.yaml: device\.bram_kb must be ebr x 2\.25 = 468 KiB, "
                                          r"not 500$"):
        parse(data, "ecp5-85k.yaml")


def test_unquoted_sparsity_is_explained():
    """YAML 1.1 reads a bare 2:4 as the base-60 number 124."""
    data = raw()
    data["engine"]["sparsity"] = yaml.safe_load("[2:4]")
    with pytest.raises(TargetError, match=r"^u280\.yaml: engine\.sparsity\[0\] must be one of 2:4, 1:4, 4:8, 2:8, "
                                          r"not 124 \(YAML reads an unquoted N:M as a base-60 number: "
                                          r"write \"2:4\"\)$"):
        parse(data)


def test_not_a_mapping():
    with pytest.raises(TargetError, match=r"^t\.yaml: the file must be a mapping with name, description, "
                                          r"clock_mhz, device, engine, sfu, buffers, memory, power, controller, not None$"):
        parse_target(None, "t.yaml")


# --- loading -------------------------------------------------------------------------------------

def test_unknown_target():
    with pytest.raises(TargetError, match=r"^nope: not a target file nor a bundled target "
                                          r"\(bundled: ecp5-85k, sim-medium, sim-small, u280, vhk158\)$"):
        load_target("nope")


def test_load_path(tmp_path):
    data = raw()
    data["name"] = "my-u280"
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(data))
    assert load_target(p).name == "my-u280"
    data["engine"]["chain_len"] = 12
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(TargetError, match=rf"^{p!s}: engine\.chain_len must be a positive power of two, "
                                          rf"not 12$"):
        load_target(str(p))


def test_safe_load_refuses_tags(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text('!!python/object/apply:os.system ["echo pwned"]\n')
    with pytest.raises(TargetError, match=rf"^{p!s}: line 1: not valid YAML: could not determine a "
                                          r"constructor for the tag 'tag:yaml\.org,2002:python/object/apply:"
                                          r"os\.system'$"):
        load_target(p)


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(TargetError, match=rf"^{p!s}: line 2: not valid YAML: expected ',' or '\]', "
                                          r"but got '<stream end>'$"):
        load_target(p)


def test_deterministic():
    a = [load_target(n) for n in bundled_targets()]
    b = [load_target(n) for n in bundled_targets()]
    assert a == b and [hash(t) for t in a] == [hash(t) for t in b]
    assert format_targets(a) == format_targets(b)


def test_format_targets():
    text = format_targets([load_target(n) for n in bundled_targets()])
    lines = text.splitlines()
    assert len(lines) == len(BUNDLED) + 1
    assert lines[0].split() == ["target", "device", "clock", "chains", "x", "len", "DSPs", "used/avail", "memory",
                                "GB/s", "eff", "(peak)", "capacity", "weights;", "N:M"]
    assert [line.split()[0] for line in lines[1:]] == BUNDLED
    u280 = next(line for line in lines if line.startswith("u280"))
    assert u280.split() == ["u280", "xcu280-fsvh2892-2L-e", "225", "MHz", "192", "x", "32", "6144/9024", "(68%)",
                            "hbm", "414", "(460)", "8", "GB", "int2", "int3", "int4", "int8;", "2:4", "1:4", "4:8",
                            "2:8"]
    assert "ddr 1.12 (1.6)" in next(line for line in lines if line.startswith("ecp5-85k"))


def test_controller_and_burst_fields_are_optional_and_read():
    t = parse_target(raw(), "u280.yaml")
    assert (t.controller.queue_depth, t.controller.token_counter_max) == (4, 31)
    assert (t.memory.burst_setup_ns, t.memory.dma_issue_cycles) == (20.0, 4)
    data = raw()
    data["controller"] = {"queue_depth": 8, "token_counter_bits": 6}
    data["memory"]["burst_setup_ns"] = 12.5
    t = parse_target(data, "u280.yaml")
    assert (t.controller.queue_depth, t.controller.token_counter_max, t.memory.burst_setup_ns) == (8, 63, 12.5)


def test_attn_bytes_defaults_to_chain_len_rounded_up():
    """`engine.attn_bytes` (ATTN's K/V bytes a cycle): chain_len rounded up to a power of two, at
    least 4, unless the target says; the bundled u280 takes a 128-dim head's K/V record a cycle."""
    assert load_target("sim-small").engine.attn_bytes == 4          # chain_len 4
    assert load_target("ecp5-85k").engine.attn_bytes == max(4, load_target("ecp5-85k").engine.chain_len)
    assert load_target("sim-medium").engine.attn_bytes == 16
    assert load_target("u280").engine.attn_bytes == 256
