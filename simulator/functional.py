"""Functional execution of compiled programs: every instruction's effect on HBM and the on-chip
buffers, exactly as docs/isa.md defines it, with the arithmetic of docs/integer.md (the kernels
of ir/integer.py). Instructions run in program order: their dependency tokens only allow
reorderings that do not change any value (passes/tokens.py), so program order is a legal
schedule. The timing model (cycles, bandwidth) is separate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmfab.ir.fixed_point import rshr, sat
from llmfab.ir.integer import (_shr_sat, int_add, int_gelu, int_softcap, int_layer_norm, int_mul, int_relu, int_rms_norm,
                               int_rope, int_silu, int_softmax_rows, quantize_activation)
from llmfab.ir.isa import BROADCAST, CAUSAL, CONTINUE, HOLD, BufferId, MiscFunc, Opcode, Program, SysFunc, quant_row_bytes, resolve_length
from llmfab.ir.ops import GeluApprox
from llmfab.ir.packing import ChainLayout, tile_streams, unpack_bits
from llmfab.ir.quant import kept


class ExecutionError(RuntimeError):
    pass


@dataclass
class Machine:
    hbm: list[bytearray]                      # one image per pseudo-channel
    buffers: dict[BufferId, bytearray]
    weights: ChainLayout = field(default_factory=ChainLayout)   # how MV/MM read weight tiles

    @classmethod
    def create(cls, images: list[bytes], channel_bytes: int, buffer_bytes: dict[BufferId, int],
               weights: ChainLayout | None = None) -> "Machine":
        hbm = [bytearray(channel_bytes) for _ in images]
        for ch, img in enumerate(images):
            hbm[ch][:len(img)] = img
        return cls(hbm, {b: bytearray(n) for b, n in buffer_bytes.items()}, weights or ChainLayout())

    @classmethod
    def for_target(cls, target, images: list[bytes], channel_bytes: int) -> "Machine":
        """The machine of `target` (its buffers and weight layout) with these HBM images."""
        return cls.create(images, channel_bytes, target.buffer_bytes, target.chain_layout)

    # -- raw access ---------------------------------------------------------------------------
    def read(self, buf: BufferId, addr: int, n: int) -> bytes:
        mem = self.buffers[buf]
        if addr < 0 or addr + n > len(mem):
            raise ExecutionError(f"read [{addr}, {addr + n}) outside the {buf.name} buffer ({len(mem)} bytes)")
        return bytes(mem[addr:addr + n])

    def write(self, buf: BufferId, addr: int, data: bytes) -> None:
        mem = self.buffers[buf]
        if addr < 0 or addr + len(data) > len(mem):
            raise ExecutionError(f"write [{addr}, {addr + len(data)}) outside the {buf.name} buffer ({len(mem)} bytes)")
        mem[addr:addr + len(data)] = data

    def i32(self, buf, addr, rows, cols, stride=0) -> np.ndarray:
        stride = stride or 4 * cols
        return np.stack([np.frombuffer(self.read(buf, addr + r * stride, 4 * cols), "<i4") for r in range(rows)]
                        ).astype(np.int64).reshape(rows, cols)

    def put_i32(self, buf, addr, values, stride=0) -> None:
        v = np.asarray(values, np.int64)
        stride = stride or 4 * v.shape[1]
        for r in range(v.shape[0]):
            self.write(buf, addr + r * stride, v[r].astype("<i4").tobytes())

    def qrows(self, buf, addr, rows, cols, stride=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quantized rows: (codes [rows, cols], m [rows], e [rows]) from scale records + int8 codes."""
        stride = stride or quant_row_bytes(cols)
        codes, m, e = [], [], []
        for r in range(rows):
            raw = self.read(buf, addr + r * stride, quant_row_bytes(cols))
            m.append(int.from_bytes(raw[0:2], "little"))
            e.append(int.from_bytes(raw[2:3], "little", signed=True))
            codes.append(np.frombuffer(raw[4:], np.int8))
        return np.array(codes, np.int64).reshape(rows, cols), np.array(m, np.int64), np.array(e, np.int64)

    def put_qrows(self, buf, addr, codes, m, e, stride=0) -> None:
        cols = codes.shape[1]
        stride = stride or quant_row_bytes(cols)
        for r in range(codes.shape[0]):
            rec = int(m[r]).to_bytes(2, "little") + int(e[r]).to_bytes(1, "little", signed=True) + b"\0"
            self.write(buf, addr + r * stride, rec + codes[r].astype(np.int8).tobytes())

    # -- execution ----------------------------------------------------------------------------
    def read_row(self, obj, row: int) -> bytes:
        """Row `row` of a striped HBM object (ir/memory.Region): its channel slices joined."""
        at = obj.addr + row * obj.pitch
        return b"".join(bytes(self.hbm[obj.channel + c][at:at + obj.pitch]) for c in range(obj.channels))

    def run(self, program: Program, length: int, after=None) -> None:
        """Run `program` at LEN `length`; `after(n)`, if given, is called once n instructions have run."""
        self.held = None
        for idx, inst in enumerate(program.instructions):
            if after is not None and idx:
                after(idx)
            i = resolve_length(inst, length)
            try:
                if i.op is Opcode.SYS:
                    if i["func"] is SysFunc.END:
                        return
                    if i["func"] is SysFunc.SET_LEN:
                        length = i["imm"]
                    continue
                EXEC[i.op](self, i)
            except ExecutionError as e:
                raise ExecutionError(f"program {program.name!r} instruction {idx} ({i.op.name}): {e}") from None
        raise ExecutionError(f"program {program.name!r} has no END")


def _dma(m: Machine, i) -> None:
    p, c = i["row_bytes"], i["channels"]
    for r in range(i["rows"]):
        row = r
        if i["indirect"]:
            row = int(np.frombuffer(m.read(i["ids_buf"], i["ids_addr"] + 4 * r, 4), "<i4")[0])
        h = i["hbm_addr"] + row * i["hbm_stride"]
        b = i["buf_addr"] + r * i["buf_stride"]
        for k in range(c):
            ch = m.hbm[i["channel"] + k]
            if h < 0 or h + p > len(ch):
                raise ExecutionError(f"HBM [{h}, {h + p}) outside channel {i['channel'] + k}")
            if i.op is Opcode.LD:
                m.write(i["buf"], b + k * p, bytes(ch[h:h + p]))
            else:
                ch[h:h + p] = m.read(i["buf"], b + k * p, p)


def _matrix(m: Machine, i) -> None:
    n, k = i["n"], i["k"]
    rows = i["m"] if i.op is Opcode.MM else 1
    pat = i["sparsity"].pattern
    g = min(i["group"].size or k, k)
    n_kept = kept(k, pat)
    ts = tile_streams(i, m.weights)

    def fields(name: str, per_row: int, signed: bool = False) -> np.ndarray:
        """The `per_row` fields of every row of stream `name`, read in the tile's chain layout."""
        t = ts[name]
        data = m.weights.deinterleave(m.read(BufferId.WEIGHT, t.addr, t.nbytes), n, t.row_bits)
        return unpack_bits(data, t.row_bits // per_row, n * per_row, signed)

    codes_k = fields("codes", n_kept, signed=True)
    codes = np.zeros((n, k), np.int64)
    if pat:
        idx = fields("indices", n_kept)
        j = np.arange(n * n_kept) % n_kept                       # kept code j of its row: block j // N
        codes[np.repeat(np.arange(n), n_kept), j // pat[0] * pat[1] + idx] = codes_k
    else:
        codes[:] = codes_k.reshape(n, k)
    mant = fields("mantissas", k // g).reshape(n, k // g)
    shift = np.frombuffer(m.read(BufferId.WEIGHT, ts["shifts"].addr, n), np.int8).astype(np.int64)
    xq, mx, ex = m.qrows(i["abuf"], i["a_addr"], rows, k)
    p = np.einsum("rjg,njg->rnj", xq.reshape(rows, k // g, g), codes.reshape(n, k // g, g))
    acc = np.sum(p * mant[None], axis=-1)
    y = _shr_sat(acc * mx[:, None], shift[None, :] + ex[:, None], 32)
    if i["has_bias"]:
        y = sat(y + np.frombuffer(m.read(BufferId.WEIGHT, i["bias_addr"], 4 * n), "<i4").astype(np.int64), 32)
    stride = i["o_stride"] if i.op is Opcode.MM else 0
    if i["accumulate"]:
        y = sat(y + m.i32(i["obuf"], i["o_addr"], rows, n, stride), 32)
    m.put_i32(i["obuf"], i["o_addr"], y, stride)


def _misc(m: Machine, i) -> None:
    f, rows, cols = i["func"], i["rows"], i["cols"]
    src = (i["src_buf"], i["src_addr"])
    dst = (i["dst_buf"], i["dst_addr"])
    ss, ds = i["src_stride"], i["dst_stride"]
    if f is MiscFunc.COPY:
        for r in range(rows):
            m.write(*dst[:1], dst[1] + r * (ds or cols), m.read(src[0], src[1] + (i["imm"] + r) * (ss or cols), cols))
        return
    if f is MiscFunc.QUANT_ROWS:
        codes, mm, e = quantize_activation(m.i32(*src, rows, cols, ss))
        m.put_qrows(*dst, codes, mm, e, ds)
        return
    if f is MiscFunc.EMBED:
        bits, g = i["imm"], i["depth"] or cols
        pitch = ss or (-(-cols * bits // 8) + 2 * (cols // g) + 1)
        out = []
        for r in range(rows):
            raw = m.read(src[0], src[1] + r * pitch, pitch)
            nb = -(-cols * bits // 8)
            codes = unpack_bits(raw[:nb], bits, cols)
            mant = np.frombuffer(raw[nb:nb + 2 * (cols // g)], "<u2").astype(np.int64)
            shift = int(np.frombuffer(raw[nb + 2 * (cols // g):nb + 2 * (cols // g) + 1], np.int8)[0])
            out.append(_shr_sat(codes * np.repeat(mant, g), shift - 16, 32))
        m.put_i32(*dst, np.array(out), ds)
        return
    if f is MiscFunc.ATTN_QK:
        d = i["depth"]
        q, mq, eq = m.qrows(*src, rows, d, ss)
        k, mk, ek = m.qrows(i["src2_buf"], i["src2_addr"], cols, d, 4 + d + i["src2_pad"])
        dot = q @ k.T
        t1 = rshr(dot * mk[None, :], ek[None, :])
        t2 = _shr_sat(t1 * mq[:, None], eq[:, None], 47)
        m.put_i32(*dst, _shr_sat(t2 * i["imm"], 32, 32), ds)
        return
    if f is MiscFunc.ATTN_PV:
        d = i["depth"]
        p = m.i32(*src, rows, cols, ss)
        v, mv, ev = m.qrows(i["src2_buf"], i["src2_addr"], cols, d, 4 + d + i["src2_pad"])
        part = rshr(p * mv[None, :], ev[None, :]) @ v
        acc = (m.held if i["flags"] & CONTINUE else 0) + part
        if i["flags"] & HOLD:
            m.held = acc
        else:
            m.held = None
            m.put_i32(*dst, _shr_sat(acc, 16, 32), ds)
        return
    x = m.i32(*src, rows, cols, ss)
    if f is MiscFunc.SOFTMAX:
        vis = None
        if i["flags"] & CAUSAL:
            period = i["period"] or rows
            vis = np.arange(cols)[None, :] <= (np.arange(rows) % period)[:, None] + i["imm"]
        y = int_softmax_rows(x, vis)
    elif f in (MiscFunc.ADD, MiscFunc.MUL):
        if i["flags"] & BROADCAST:                       # src2 is one row, combined with every row
            b = np.broadcast_to(m.i32(i["src2_buf"], i["src2_addr"], 1, cols), (rows, cols))
        else:
            b = m.i32(i["src2_buf"], i["src2_addr"], rows, cols)
        y = int_add(x, b) if f is MiscFunc.ADD else int_mul(x, b)
    elif f is MiscFunc.RMSNORM:
        y = int_rms_norm(x, m.i32(i["src2_buf"], i["src2_addr"], 1, cols)[0], i["imm"] / 2 ** 32)
    elif f is MiscFunc.LAYERNORM:
        wb = m.i32(i["src2_buf"], i["src2_addr"], 1, 2 * cols)[0]
        y = int_layer_norm(x, wb[:cols], wb[cols:], i["imm"] / 2 ** 32)
    elif f is MiscFunc.ROPE:
        d = i["depth"]
        period = i["period"] or rows
        table = m.i32(i["src2_buf"], i["src2_addr"], i["imm"] + period, 2 * d)
        pos = i["imm"] + np.arange(rows) % period
        heads = x.reshape(rows, cols // d, d)           # rotate_half within each head of `depth`
        y = int_rope(heads, table[pos, None, :d], table[pos, None, d:]).reshape(rows, cols)
    elif f is MiscFunc.RELU:
        y = int_relu(x)
    elif f is MiscFunc.SILU:
        y = int_silu(x)
    elif f in (MiscFunc.GELU, MiscFunc.GELU_TANH):
        y = int_gelu(x, GeluApprox.TANH if f is MiscFunc.GELU_TANH else GeluApprox.NONE)
    elif f is MiscFunc.SOFTCAP:
        y = int_softcap(x, i["imm"])
    else:
        raise ExecutionError(f"MISC {f.name} is not executable")
    m.put_i32(*dst, y, ds)


EXEC = {Opcode.LD: _dma, Opcode.ST: _dma, Opcode.MM: _matrix, Opcode.MV: _matrix, Opcode.MISC: _misc,
        Opcode.ATTN: _misc}
