"""ir/isa.py: the field tables, encode/decode round trips, error messages, the program format,
the disassembler, the length register and the token deadlock check."""
from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfab.ir.isa import (ATTN_FUNCS, BARRIERS, BROADCAST, CAUSAL, CONTINUE, FIELDS, HEADER, HEADER_BITS, HOLD, INST_BITS,
                           INST_BYTES, MISC_FLAGS, QUEUE_OF, BufferId, Group, Instruction, IsaError, MiscFunc,
                           Opcode, Program, ProgramBuilder, Queue, Sparsity, SysFunc, WeightBits, check_tokens,
                           decode, disassemble, encode, field_table, is_barrier, lookup_field, make, queue_of,
                           resolve_length, weight_fields)
from llmfab.ir.quant import BITS, GROUPS, PATTERNS, QuantScheme

from conftest import ROOT

L, M, F, S = Queue.LOAD, Queue.MATRIX, Queue.SFU, Queue.STORE
DOCS = ROOT / "docs" / "isa.md"


def word(inst: Instruction) -> int:
    return int.from_bytes(encode(inst), "little")


def legalize(op: Opcode, wait: int, release: int, len_reg: bool, fields: dict) -> Instruction:
    """Bend arbitrary in-range values into an instruction that satisfies the rules between fields."""
    f = dict(fields)
    q = QUEUE_OF[op]
    if q is None:
        wait = release = 0
    else:
        wait, release = wait & ~q & 15, release & ~q & 15
    if op in (Opcode.MV, Opcode.SYS):
        len_reg = False
    if "len_pos" in f and not len_reg:
        f["len_pos"] = 0
    if op in (Opcode.LD, Opcode.ST):
        f["channels"] = max(1, min(f["channels"], 64))
        f["channel"] = min(f["channel"], 64 - f["channels"])
        if not f["indirect"]:
            f["ids_buf"], f["ids_addr"] = BufferId.WEIGHT, 0
    if op in (Opcode.MM, Opcode.MV):
        f["idx_addr"] = f["idx_addr"] if f["sparsity"] else 0
        f["bias_addr"] = f["bias_addr"] if f["has_bias"] else 0
    if op in (Opcode.MISC, Opcode.ATTN):
        funcs = ATTN_FUNCS if op is Opcode.ATTN else [m for m in MiscFunc if m not in ATTN_FUNCS]
        f["func"] = funcs[f["func"] % len(funcs)]
        f["flags"] &= MISC_FLAGS.get(f["func"], 0)
    return Instruction(op, wait, release, len_reg, f)


def value_strategy(fld):
    if fld.enum is not None:
        return st.sampled_from(list(fld.enum))
    return st.one_of(st.just(fld.lo), st.just(fld.hi), st.integers(fld.lo, fld.hi))


@st.composite
def instructions(draw, op=None):
    op = draw(st.sampled_from(list(Opcode))) if op is None else op
    fields = {fld.name: draw(value_strategy(fld)) for fld in FIELDS[op]}
    return legalize(op, draw(st.integers(0, 15)), draw(st.integers(0, 15)), draw(st.booleans()), fields)


# =============================================================================================
# the field tables


@pytest.mark.parametrize("op", list(Opcode))
def test_field_table_fits_and_does_not_overlap(op):
    used = 0
    for f in HEADER + FIELDS[op]:
        assert f.bits >= 1 and 0 <= f.offset and f.offset + f.bits <= INST_BITS, f
        bits = ((1 << f.bits) - 1) << f.offset
        assert not used & bits, f"{op.name}.{f.name} overlaps"
        used |= bits
    assert min(f.offset for f in FIELDS[op]) >= HEADER_BITS
    names = [f.name for f in FIELDS[op]]
    assert len(names) == len(set(names)) and not set(names) & {"op", "wait", "release", "len_reg"}
    assert [f.offset for f in FIELDS[op]] == sorted(f.offset for f in FIELDS[op])


def test_header_layout_and_shared_offsets():
    assert [(f.name, f.offset, f.bits) for f in HEADER] == [("op", 0, 3), ("wait", 3, 4), ("release", 7, 4),
                                                            ("len_reg", 11, 1)]
    assert FIELDS[Opcode.LD] == FIELDS[Opcode.ST]
    # MM is MV plus m and o_stride: the matrix queue decodes their shared fields at the same offsets
    assert FIELDS[Opcode.MM][:len(FIELDS[Opcode.MV])] == FIELDS[Opcode.MV]
    assert [f.name for f in FIELDS[Opcode.MM][len(FIELDS[Opcode.MV]):]] == ["m", "o_stride"]
    assert "m" not in {f.name for f in FIELDS[Opcode.MV]}
    for op in Opcode:   # 32-bit fields on words, addresses on bytes
        for f in FIELDS[op]:
            if f.bits == 32:
                assert f.offset % 32 == 0, f
            if f.name.endswith("addr"):
                assert f.offset % 8 == 0, f


def test_enums_match_the_rest_of_ir():
    from llmfab.ir.target import BufferName
    assert [b.name for b in BufferId] == [b.name for b in BufferName]
    assert tuple(w.bits for w in WeightBits) == BITS
    assert tuple(g.size for g in Group) == GROUPS
    assert tuple(s.pattern for s in Sparsity)[1:] == PATTERNS
    assert len(MiscFunc) <= 1 << lookup_field(Opcode.MISC, "func").bits
    assert len(SysFunc) <= 1 << lookup_field(Opcode.SYS, "func").bits


def test_docs_hold_every_field_table():
    text = DOCS.read_text()
    for op in Opcode:
        assert field_table(op) in text, f"docs/isa.md is missing the current {op.name} table"


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("sparsity", (None,) + PATTERNS)
def test_weight_fields_from_a_scheme(bits, group, sparsity):
    k = 4096
    got = weight_fields(QuantScheme(bits=bits, group=group, sparsity=sparsity), k)
    assert got["bits"].bits == bits and got["sparsity"].pattern == sparsity
    assert got["group"].size == group
    inst = make(Opcode.MV, n=8, k=k, **got)
    assert decode(encode(inst)) == inst
    # a group as long as K (or longer) is one group per row
    assert weight_fields(QuantScheme(bits=bits, group=group, sparsity=sparsity), 32)["group"] is Group.CHANNEL


# =============================================================================================
# encode / decode


@settings(max_examples=150, deadline=None)
@given(st.data())
@pytest.mark.parametrize("op", list(Opcode))
def test_round_trip_every_opcode(op, data):
    inst = data.draw(instructions(op))
    raw = encode(inst)
    assert len(raw) == INST_BYTES
    assert decode(raw) == inst and hash(decode(raw)) == hash(inst)
    w = int.from_bytes(raw, "little")   # the layout, read back independently of decode
    assert w & 7 == op and w >> 3 & 15 == inst.wait and w >> 7 & 15 == inst.release
    assert w >> 11 & 1 == inst.len_reg and w >> 12 & 15 == 0
    for f in FIELDS[op]:
        assert w >> f.offset & ((1 << f.bits) - 1) == inst[f.name] & ((1 << f.bits) - 1), f.name


@pytest.mark.parametrize("op", list(Opcode))
@pytest.mark.parametrize("extreme", ["lo", "hi"])
def test_round_trip_all_fields_at_an_extreme(op, extreme):
    def at(f):
        if f.enum is not None:
            return list(f.enum)[0 if extreme == "lo" else -1]
        return getattr(f, extreme)
    for wait, release, len_reg in ((0, 0, False), (15, 15, True)):
        inst = legalize(op, wait, release, len_reg, {f.name: at(f) for f in FIELDS[op]})
        assert decode(encode(inst)) == inst


def test_known_encoding():
    """A vector worked out by hand from docs/isa.md, for the RTL decoder's tests."""
    inst = make(Opcode.LD, wait=M, release=F, channel=3, channels=2, buf=BufferId.KV, hbm_addr=0x11223344,
                rows=5, row_bytes=64)
    assert encode(inst).hex() == "11028340" "44332211" "00000000" "000000" "000000" "0500" "400000" + "00" * 9
    sys = make(Opcode.SYS, func=SysFunc.SET_LEN, imm=0xABCDEF01)
    assert encode(sys).hex() == "00000200" "01efcdab" + "00" * 24


def test_all_zero_word_is_sys_nop():
    inst = decode(bytes(INST_BYTES))
    assert inst == make(Opcode.SYS) and inst["func"] is SysFunc.NOP and not is_barrier(inst)
    assert all(is_barrier(make(Opcode.SYS, func=f)) for f in BARRIERS)


def test_decoded_enums_and_signed_values():
    inst = decode(encode(make(Opcode.MISC, func=MiscFunc.ROPE, imm=-5, src_buf=BufferId.KV)))
    assert inst["func"] is MiscFunc.ROPE and inst["imm"] == -5 and inst["src_buf"] is BufferId.KV
    assert word(inst) >> 32 & 0xFFFFFFFF == 0xFFFFFFFB
    assert lookup_field(Opcode.MISC, "imm").wrap(1 << 31) == -(1 << 31)
    assert lookup_field(Opcode.LD, "rows").wrap(-3) == 65533


def test_misc_flags_per_function():
    for func in MiscFunc:
        allowed = MISC_FLAGS.get(func, 0)
        op = Opcode.ATTN if func in ATTN_FUNCS else Opcode.MISC
        assert make(op, func=func, flags=allowed)["flags"] == allowed


def test_attention_functions_run_on_the_matrix_engine():
    for func in ATTN_FUNCS:
        assert make(Opcode.ATTN, func=func).queue is Queue.MATRIX
        with pytest.raises(IsaError, match=rf"^MISC: func {func.name} runs on the matrix engine: use ATTN, not MISC$"):
            make(Opcode.MISC, func=func)
    with pytest.raises(IsaError, match=r"^ATTN: func must be ATTN_QK or ATTN_PV, not SOFTMAX \(the SFU runs it: use MISC\)$"):
        make(Opcode.ATTN, func=MiscFunc.SOFTMAX)
    assert make(Opcode.MISC, func=MiscFunc.SOFTMAX).queue is Queue.SFU
    assert MISC_FLAGS[MiscFunc.ATTN_PV] == CONTINUE | HOLD and MISC_FLAGS[MiscFunc.SOFTMAX] == CAUSAL
    assert MISC_FLAGS[MiscFunc.ADD] == MISC_FLAGS[MiscFunc.MUL] == BROADCAST


def test_indirect_rows():
    inst = make(Opcode.LD, channels=2, indirect=1, ids_buf=BufferId.ACT, ids_addr=0x40, rows=3, row_bytes=8)
    assert decode(encode(inst)) == inst
    assert word(inst) >> lookup_field(Opcode.LD, "ids_addr").offset & 0xFFFFFF == 0x40


def test_instruction_is_immutable_and_hashable():
    inst = make(Opcode.LD, channels=1, rows=3)
    with pytest.raises(TypeError):
        inst.fields["rows"] = 4
    with pytest.raises(AttributeError):
        inst.wait = 1
    assert {inst, make(Opcode.LD, channels=1, rows=3)} == {inst}
    assert inst.evolve(rows=4)["rows"] == 4 and inst["rows"] == 3
    assert inst.evolve(wait=M).wait == 2 and inst.queue is Queue.LOAD


@pytest.mark.parametrize("op", list(Opcode))
def test_every_field_rejects_one_past_each_end(op):
    for f in FIELDS[op]:
        for bad in (f.lo - 1, f.hi + 1):
            kind = "signed" if f.signed else "unsigned"
            msg = (rf"^{op.name} field {f.name}={bad} is out of range \[{f.lo}, {f.hi}\] "
                   rf"\({f.bits}-bit {kind}\)$")
            with pytest.raises(IsaError, match=msg):
                encode(make(op, **{f.name: bad}))


@pytest.mark.parametrize("call, msg", [
    (lambda: make(Opcode.LD, channels=1, rows=1 << 16),
     r"^LD field rows=65536 is out of range \[0, 65535\] \(16-bit unsigned\)$"),
    (lambda: make(Opcode.MISC, imm=1 << 31),
     r"^MISC field imm=2147483648 is out of range \[-2147483648, 2147483647\] \(32-bit signed\)$"),
    (lambda: make(Opcode.MV, sparsity=5),
     r"^MV field sparsity=5 is not a Sparsity \(0=DENSE, 1=S2_4, 2=S1_4, 3=S4_8, 4=S2_8\)$"),
    (lambda: make(Opcode.LD, channels=1, buf=Sparsity.S2_4),
     r"^LD field buf takes a BufferId, not <Sparsity.S2_4: 1>$"),
    (lambda: make(Opcode.MV, m=4),
     (r"^MV has no field 'm'; its fields: n, k, bits, sparsity, group, has_bias, accumulate, abuf, obuf, "
      r"wbuf_addr, idx_addr, scale_addr, bias_addr, a_addr, o_addr$")),
    (lambda: make(Opcode.LD, channels=1, rows=1.5), r"^LD field rows must be an integer, not 1\.5$"),
    (lambda: make(Opcode.LD, channels=1, wait=16), r"^LD wait=16 is out of range \[0, 15\] \(4-bit queue mask\)$"),
    (lambda: make(Opcode.LD, channels=1, release=True),
     r"^LD release=True is out of range \[0, 15\] \(4-bit queue mask\)$"),
    (lambda: make(Opcode.LD, channels=1, len_reg=2), r"^LD len_reg must be 0 or 1, not 2$"),
    (lambda: Instruction(7), r"^op must be an Opcode, not 7$"),
    (lambda: make(Opcode.MV, wait=M), r"^MV: may not wait on its own queue MATRIX$"),
    (lambda: make(Opcode.ST, channels=1, release=S), r"^ST: may not release to its own queue STORE$"),
    (lambda: make(Opcode.SYS, func=SysFunc.SYNC, wait=L),
     r"^SYS: takes no tokens \(it is executed by the controller\), not wait=1 release=0$"),
    (lambda: make(Opcode.MV, len_reg=True), r"^MV: has no length-parametric field: len_reg must be 0$"),
    (lambda: make(Opcode.LD, channels=1, len_pos=1), r"^LD: len_pos=1 needs len_reg=1$"),
    (lambda: make(Opcode.LD), r"^LD: channels must be at least 1, not 0$"),
    (lambda: make(Opcode.ST, channel=60, channels=8),
     r"^ST: channel \+ channels must be at most 64, not 60 \+ 8$"),
    (lambda: make(Opcode.LD, channels=3, ids_buf=BufferId.ACT),
     r"^LD: ids_buf and ids_addr must be 0 without indirect, not ACT and 0$"),
    (lambda: make(Opcode.MM, idx_addr=64), r"^MM: idx_addr must be 0 for a dense weight, not 64$"),
    (lambda: make(Opcode.MV, bias_addr=64), r"^MV: bias_addr must be 0 without has_bias, not 64$"),
    (lambda: make(Opcode.MISC, func=MiscFunc.SILU, flags=1),
     r"^MISC: flags=0x1 are not defined for SILU \(allowed mask 0x0\)$"),
    (lambda: make(Opcode.MISC, func=MiscFunc.SOFTMAX, flags=CAUSAL | 2),
     r"^MISC: flags=0x3 are not defined for SOFTMAX \(allowed mask 0x1\)$"),
])
def test_rejections_name_the_problem(call, msg):
    with pytest.raises(IsaError, match=msg):
        call()


@pytest.mark.parametrize("code", [7])
def test_decode_rejects_unknown_opcodes(code):
    with pytest.raises(IsaError, match=r"^unknown opcode \d \(known: SYS=0, LD=1, ST=2, MM=3, MV=4, MISC=5, ATTN=6\)$"):
        decode(bytes([code]) + bytes(INST_BYTES - 1))


@pytest.mark.parametrize("op, bit", [(Opcode.LD, 255), (Opcode.LD, 12), (Opcode.ST, 185), (Opcode.LD, 216),
                                     (Opcode.MV, 63), (Opcode.MV, 208), (Opcode.MM, 244), (Opcode.MISC, 131),
                                     (Opcode.ATTN, 133), (Opcode.SYS, 20)])
def test_decode_rejects_reserved_bits(op, bit):
    w = word(legalize(op, 0, 0, False, {f.name: 0 for f in FIELDS[op]})) | 1 << bit
    with pytest.raises(IsaError, match=rf"^{op.name} instruction has nonzero reserved bits \({bit}\)$"):
        decode(w.to_bytes(INST_BYTES, "little"))


@settings(max_examples=60, deadline=None)
@given(instructions(), st.integers(1, (1 << INST_BITS) - 1))
def test_decode_rejects_any_reserved_bit(inst, noise):
    used = 0
    for f in HEADER + FIELDS[inst.op]:
        used |= ((1 << f.bits) - 1) << f.offset
    reserved = noise & ~used
    if reserved:
        with pytest.raises(IsaError, match=rf"^{inst.op.name} instruction has nonzero reserved bits \("):
            decode((word(inst) | reserved).to_bytes(INST_BYTES, "little"))


def test_decode_rejects_bad_values_and_lengths():
    w = word(make(Opcode.MV)) | 7 << lookup_field(Opcode.MV, "sparsity").offset
    with pytest.raises(IsaError, match=r"^MV field sparsity=7 is not a Sparsity "):
        decode(w.to_bytes(INST_BYTES, "little"))
    with pytest.raises(IsaError, match=r"^LD: channels must be at least 1, not 0$"):
        decode(bytes([Opcode.LD]) + bytes(31))
    with pytest.raises(IsaError, match=r"^an instruction is 32 bytes, not 31$"):
        decode(bytes(31))


# =============================================================================================
# programs and the disassembler


def tiny_program() -> Program:
    b = ProgramBuilder("tiny-decode")
    b.set_len(17)
    b.ld(release=M, channel=0, channels=4, buf=BufferId.WEIGHT, hbm_addr=0x1000, hbm_stride=256,
         buf_addr=0, buf_stride=4096, rows=64, row_bytes=1024)
    b.mv(wait=L, release=F, n=64, k=2048, bits=WeightBits.INT4, group=Group.G128, abuf=BufferId.ACT,
         obuf=BufferId.SCRATCH, scale_addr=65536, o_addr=256)
    b.misc(MiscFunc.SOFTMAX, wait=M, release=S, len_reg=True, rows=1, cols=0,
           src_buf=BufferId.SCRATCH, src_addr=256, dst_buf=BufferId.SCRATCH, dst_addr=512)
    b.st(wait=F, len_reg=True, len_pos=1, channel=8, channels=1, buf=BufferId.SCRATCH,
         hbm_addr=0x10000 - 132, hbm_stride=132, buf_addr=512, rows=1, row_bytes=132)
    b.end()
    return b.build()


GOLDEN = """\
     0  SYS  wait=-    release=-         func=SET_LEN imm=17
     1  LD   wait=-    release=M         channel=0 channels=4 buf=WEIGHT hbm_addr=4096 hbm_stride=256 \
buf_addr=0 buf_stride=4096 rows=64 row_bytes=1024 len_pos=0 indirect=0 ids_buf=WEIGHT ids_addr=0
     2  MV   wait=L    release=F         n=64 k=2048 bits=INT4 sparsity=DENSE group=G128 has_bias=0 \
accumulate=0 abuf=ACT obuf=SCRATCH wbuf_addr=0 idx_addr=0 scale_addr=65536 bias_addr=0 a_addr=0 o_addr=256
     3  MISC wait=M    release=S    len  func=SOFTMAX flags=0 len_pos=0 src_buf=SCRATCH src2_buf=WEIGHT \
imm=0 rows=1 cols=0 depth=0 period=0 dst_buf=SCRATCH src_addr=256 src2_addr=0 dst_addr=512 src_stride=0 \
dst_stride=0 src2_pad=0
     4  ST   wait=F    release=-    len  channel=8 channels=1 buf=SCRATCH hbm_addr=65404 hbm_stride=132 \
buf_addr=512 buf_stride=0 rows=1 row_bytes=132 len_pos=1 indirect=0 ids_buf=WEIGHT ids_addr=0
     5  SYS  wait=-    release=-         func=END imm=0
"""


def test_disassembly_golden_and_deterministic():
    p = tiny_program()
    assert disassemble(p) == GOLDEN
    assert disassemble(tiny_program()) == disassemble(Program.from_bytes(p.to_bytes())) == GOLDEN
    assert str(p.instructions[2]) == GOLDEN.splitlines()[2][8:]


def test_program_binary_format():
    p = tiny_program()
    raw = p.to_bytes()
    assert raw[:4] == b"LLMF" and int.from_bytes(raw[4:6], "little") == 1
    assert int.from_bytes(raw[6:8], "little") == 32 and int.from_bytes(raw[8:12], "little") == len(p) == 6
    assert raw[16:27] == b"tiny-decode" and len(raw) == p.storage_bytes == 32 + 6 * 32
    assert raw[32:64] == encode(p.instructions[0])
    assert Program.from_bytes(raw) == p


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40), st.lists(instructions(), max_size=12))
def test_program_round_trip(name, insts):
    p = Program(name, tuple(insts))
    raw = p.to_bytes()
    assert len(raw) % INST_BYTES == 0 and len(raw) == p.storage_bytes
    assert Program.from_bytes(raw) == p


@pytest.mark.parametrize("mutate, msg", [
    (lambda r: r[:10], r"^a program starts with a 16-byte header, got 10 bytes$"),
    (lambda r: b"ELF\0" + r[4:], r"^not an llmfab program: magic b'ELF\\x00', expected b'LLMF'$"),
    (lambda r: r[:4] + b"\x02\x00" + r[6:], r"^program format version 2 is not supported \(this is version 1\)$"),
    (lambda r: r[:6] + b"\x40\x00" + r[8:],
     r"^malformed program header: 64 header bytes for a 11-byte name \(expected 32, reserved bytes zero\)$"),
    (lambda r: r[:-1], r"^program 'tiny-decode' declares 6 instructions \(32 \+ 32 \* 6 bytes\) but has 223 bytes$"),
    (lambda r: r + bytes(32), r"^program 'tiny-decode' declares 6 instructions \(32 \+ 32 \* 6 bytes\) but has 256 bytes$"),
    (lambda r: r[:31] + b"\x01" + r[32:], r"^program 'tiny-decode' has nonzero header padding$"),
    (lambda r: r[:32 * 3] + b"\x07" + r[32 * 3 + 1:],
     r"^program 'tiny-decode' instruction 2: unknown opcode 7 \(known: "),
])
def test_program_from_bytes_rejects(mutate, msg):
    with pytest.raises(IsaError, match=msg):
        Program.from_bytes(mutate(tiny_program().to_bytes()))


def test_builder_validates_at_once_and_names_the_instruction():
    b = ProgramBuilder("p")
    assert b.ld(channels=2, row_bytes=8) == 0 and len(b) == 1
    with pytest.raises(IsaError, match=r"^program 'p' instruction 1: MM field m=65536 is out of range "):
        b.mm(m=1 << 16)
    assert len(b) == 1
    b.misc(MiscFunc.ADD, flags=BROADCAST)
    b.sync()
    assert [i.op for i in b.build().instructions] == [Opcode.LD, Opcode.MISC, Opcode.SYS]


def test_queue_of():
    extra = {Opcode.LD: {"channels": 1}, Opcode.ST: {"channels": 1}, Opcode.ATTN: {"func": MiscFunc.ATTN_QK}}
    assert [queue_of(make(op, **extra.get(op, {}))) for op in Opcode] == [
        None, Queue.LOAD, Queue.STORE, Queue.MATRIX, Queue.MATRIX, Queue.SFU, Queue.MATRIX]


# =============================================================================================
# the length register


@pytest.mark.parametrize("inst, length, field, value", [
    (make(Opcode.LD, channels=1, len_reg=True, rows=0), 17, "rows", 17),
    (make(Opcode.LD, channels=1, len_reg=True, rows=(-128) % (1 << 16)), 200, "rows", 72),   # tile from row 128
    (make(Opcode.ST, channels=1, len_reg=True, len_pos=1, hbm_addr=1000 - 132, hbm_stride=132), 5, "hbm_addr",
     1000 + 4 * 132),                                                                          # row LEN - 1
    (make(Opcode.ST, channels=1, len_reg=True, len_pos=1, hbm_addr=(-132) % (1 << 32), hbm_stride=132), 1,
     "hbm_addr", 0),                                                                           # wraps
    (make(Opcode.MM, len_reg=True, m=0), 100, "m", 100),
    (make(Opcode.ATTN, func=MiscFunc.ATTN_QK, len_reg=True, cols=0), 33, "cols", 33),
    (make(Opcode.MISC, func=MiscFunc.ROPE, len_reg=True, len_pos=1, imm=-1), 33, "imm", 32),
])
def test_resolve_length(inst, length, field, value):
    r = resolve_length(inst, length)
    assert r[field] == value and not r.len_reg and r.fields.get("len_pos", 0) == 0
    assert {k: v for k, v in r.fields.items() if k not in (field, "len_pos")} == {
        k: v for k, v in inst.fields.items() if k not in (field, "len_pos")}
    plain = make(Opcode.MV, n=3)
    assert resolve_length(plain, length) is plain


def test_resolve_length_range():
    with pytest.raises(IsaError, match=r"^the length register holds 32 bits unsigned, not -1$"):
        resolve_length(make(Opcode.MM, len_reg=True), -1)


# =============================================================================================
# dependency tokens


def ld(**kw) -> Instruction:
    return make(Opcode.LD, channels=1, **kw)


def st_(**kw) -> Instruction:
    return make(Opcode.ST, channels=1, **kw)


def mv(**kw) -> Instruction:
    return make(Opcode.MV, **kw)


def sfu(**kw) -> Instruction:
    return make(Opcode.MISC, func=MiscFunc.SILU, **kw)


SYNC, END = make(Opcode.SYS, func=SysFunc.SYNC), make(Opcode.SYS, func=SysFunc.END)


def pipeline(tiles: int) -> Program:
    """Double-buffered weight tiles: LD i waits for MV i-2 to free its half; MV -> SFU -> ST."""
    insts = []
    for i in range(tiles):
        insts += [ld(wait=M if i >= 2 else 0, release=M),
                  mv(wait=L, release=L | F),
                  sfu(wait=M, release=S),
                  st_(wait=F)]
    return Program("pipeline", tuple(insts + [END]))


@pytest.mark.parametrize("tiles", [1, 2, 5])
def test_check_tokens_accepts_a_producer_consumer_pipeline(tiles):
    check_tokens(pipeline(tiles))                        # two MATRIX->LOAD tokens are left over: fine
    check_tokens(pipeline(tiles), counter_max=2, queue_depth=1)


def test_check_tokens_accepts_consumers_listed_before_producers():
    # queues run concurrently: an earlier MV may wait for a later LD's token
    check_tokens(Program("p", (mv(wait=L, release=F), sfu(wait=M), ld(release=M))))
    # tokens survive a barrier
    check_tokens(Program("p", (ld(release=M), SYNC, mv(wait=L), END)))


def test_check_tokens_rejects_a_deadlock():
    p = Program("deadlock", (ld(wait=M, release=M), mv(wait=L, release=L), END))
    with pytest.raises(IsaError, match=r"^program 'deadlock' deadlocks on tokens \(dispatch stopped at #2 SYS\): "
                                       r"LOAD at #0 LD \(wait=M: MATRIX->LOAD has 0\); "
                                       r"MATRIX at #1 MV \(wait=L: LOAD->MATRIX has 0\)$"):
        check_tokens(p)


def test_check_tokens_rejects_a_wait_without_a_producer():
    p = Program("orphan", (ld(release=M), mv(wait=L), sfu(wait=M | S), st_()))
    with pytest.raises(IsaError, match=r"^program 'orphan' deadlocks on tokens \(all instructions dispatched\): "
                                       r"SFU at #2 MISC \(wait=MS: MATRIX->SFU has 0, STORE->SFU has 0\)$"):
        check_tokens(p)


def test_check_tokens_barrier_blocks_a_later_producer():
    # the MV's token would come from the LD after the SYNC, but the SYNC waits for the MV
    p = Program("sync", (mv(wait=L), SYNC, ld(release=M)))
    with pytest.raises(IsaError, match=r"^program 'sync' deadlocks on tokens \(dispatch stopped at #1 SYS\): "
                                       r"MATRIX at #0 MV \(wait=L: LOAD->MATRIX has 0\)$"):
        check_tokens(p)
    check_tokens(Program("nop", (mv(wait=L), make(Opcode.SYS), ld(release=M))))   # NOP is no barrier


def test_check_tokens_finite_queues_and_counters():
    # three MVs wait for LDs listed after them: with 2 slots in MATRIX the dispatcher never reaches the LDs
    p = Program("depth", (mv(wait=L), mv(wait=L), mv(wait=L), ld(release=M), ld(release=M), ld(release=M)))
    check_tokens(p)
    check_tokens(p, queue_depth=3)
    with pytest.raises(IsaError, match=r"^program 'depth' deadlocks on tokens \(dispatch stopped at #2 MV\): "
                                       r"MATRIX at #0 MV \(wait=L: LOAD->MATRIX has 0\)$"):
        check_tokens(p, queue_depth=2)
    # three LD->MATRIX tokens are pending before the MV can run: it needs the SFU, which needs the 4th LD
    q = Program("full", (ld(release=M), ld(release=M), ld(release=M), ld(release=F), mv(wait=L | F),
                         sfu(wait=L, release=M)))
    check_tokens(q)
    check_tokens(q, counter_max=3)
    with pytest.raises(IsaError, match=r"^program 'full' deadlocks on tokens \(all instructions dispatched\): "
                                       r"LOAD at #2 LD \(wait=-: LOAD->MATRIX is full \(2\)\); "
                                       r"MATRIX at #4 MV \(wait=LF: SFU->MATRIX has 0\); "
                                       r"SFU at #5 MISC \(wait=L: LOAD->SFU has 0\)$"):
        check_tokens(q, counter_max=2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4))
def test_check_tokens_pipeline_any_depth(tiles, depth):
    check_tokens(pipeline(tiles), queue_depth=depth, counter_max=depth + 1)
