"""Static checks of a compiled program: every operand inside its buffer and its HBM channels, at
the shortest and the longest length of the bucket, and no dependency-token deadlock.

Extents follow docs/isa.md: a transfer's rows at `addr + r * stride`; matrix tiles by their
streams; MISC operands by each function's row format (Q.16 rows, quantized rows of 4 + depth
bytes, scores rows).
"""
from __future__ import annotations

from dataclasses import dataclass

from llmfab.ir.isa import (BufferId, Instruction, IsaError, MiscFunc, Opcode, Program, check_tokens, quant_row_bytes,
                           resolve_length)
from llmfab.ir.packing import ChainLayout, tile_streams


class ProgramCheckError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    buffers: dict[BufferId, int]       # bytes of each on-chip buffer
    channels: int                      # HBM pseudo-channels
    channel_bytes: int                 # capacity of one
    weights: ChainLayout = ChainLayout()   # how weight tiles sit in the weight buffer


WORD_ALIGNED = ("codes", "indices", "mantissas")   # the chain-interleaved weight streams (MV, MM)


def _span(addr: int, rows: int, stride: int, row: int) -> tuple[int, int]:
    return addr, addr + max(rows - 1, 0) * stride + row if rows else addr


def _extents(i: Instruction, weights: ChainLayout) -> list[tuple[str, BufferId | None, int, int]]:
    """(operand, buffer or None for HBM, start, end) of every operand of `i`."""
    f = i.fields
    if i.op in (Opcode.LD, Opcode.ST):
        row = f["row_bytes"] * f["channels"]
        out = [("buffer", f["buf"], *_span(f["buf_addr"], f["rows"], f["buf_stride"] or row, row)),
               ("hbm", None, *_span(f["hbm_addr"], f["rows"], f["hbm_stride"] or f["row_bytes"], f["row_bytes"]))]
        if f["indirect"]:
            out[1] = ("hbm", None, f["hbm_addr"], f["hbm_addr"])  # rows picked at run time (table checked at layout)
            out.append(("ids", f["ids_buf"], f["ids_addr"], f["ids_addr"] + 4 * f["rows"]))
        return out
    if i.op in (Opcode.MM, Opcode.MV):
        n, k = f["n"], f["k"]
        m = f.get("m", 1)
        out = [(name, BufferId.WEIGHT, s.addr, s.addr + s.nbytes) for name, s in tile_streams(f, weights).items()]
        out += [("activations", f["abuf"], f["a_addr"], f["a_addr"] + m * quant_row_bytes(k)),
                ("outputs", f["obuf"], *_span(f["o_addr"], m, f.get("o_stride", 0) or 4 * n, 4 * n))]
        if f["has_bias"]:
            out.append(("bias", BufferId.WEIGHT, f["bias_addr"], f["bias_addr"] + 4 * n))
        return out
    if i.op in (Opcode.MISC, Opcode.ATTN):
        fn, rows, cols, depth = f["func"], f["rows"], f["cols"], f["depth"]
        src_row = {MiscFunc.COPY: cols, MiscFunc.ATTN_QK: quant_row_bytes(depth), MiscFunc.EMBED: f["src_stride"]}.get(fn, 4 * cols)
        dst_row = {MiscFunc.COPY: cols, MiscFunc.QUANT_ROWS: quant_row_bytes(cols), MiscFunc.ATTN_PV: 4 * depth}.get(fn, 4 * cols)
        out = [("src", f["src_buf"], *_span(f["src_addr"], rows, f["src_stride"] or src_row, src_row)),
               ("dst", f["dst_buf"], *_span(f["dst_addr"], rows, f["dst_stride"] or dst_row, dst_row))]
        src2 = {MiscFunc.ADD: rows * 4 * cols, MiscFunc.MUL: rows * 4 * cols, MiscFunc.RMSNORM: 4 * cols,
                MiscFunc.LAYERNORM: 8 * cols, MiscFunc.ATTN_QK: cols * (quant_row_bytes(depth) + f["src2_pad"]),
                MiscFunc.ATTN_PV: cols * (quant_row_bytes(depth) + f["src2_pad"]),
                MiscFunc.ROPE: 8 * depth * (f["imm"] + (f["period"] or rows))}.get(fn)
        if src2 is not None:
            out.append(("src2", f["src2_buf"], f["src2_addr"], f["src2_addr"] + src2))
        return out
    return []


def check_program(program: Program, limits: Limits, lengths: tuple[int, ...], counter_max: int | None = None) -> None:
    """Raise ProgramCheckError naming the instruction and operand that falls outside its space."""
    size = {b: s for b, s in limits.buffers.items()}
    for idx, inst in enumerate(program.instructions):
        for length in (lengths if inst.len_reg else (0,)):
            i = resolve_length(inst, length) if inst.len_reg else inst
            if i.op in (Opcode.LD, Opcode.ST) and i["channel"] + i["channels"] > limits.channels:
                raise ProgramCheckError(f"program {program.name!r} instruction {idx} ({i.op.name}): channels "
                                        f"{i['channel']}..{i['channel'] + i['channels'] - 1} beyond the target's "
                                        f"{limits.channels}")
            for what, buf, lo, hi in _extents(i, limits.weights):
                if what in WORD_ALIGNED and lo % limits.weights.word_bytes:
                    raise ProgramCheckError(f"program {program.name!r} instruction {idx} ({i.op.name}): the "
                                            f"{what} stream at {lo} does not start on a weight buffer word "
                                            f"({limits.weights.word_bytes} bytes)")
                cap = limits.channel_bytes if buf is None else size.get(buf, 0)
                if lo < 0 or hi > cap:
                    where = "HBM channel" if buf is None else f"{buf.name.lower()} buffer"
                    at = f" at LEN={length}" if inst.len_reg else ""
                    raise ProgramCheckError(f"program {program.name!r} instruction {idx} ({i.op.name}{at}): {what} "
                                            f"[{lo}, {hi}) outside the {where} ({cap} bytes)")
    try:
        check_tokens(program, counter_max=counter_max)
    except IsaError as e:
        raise ProgramCheckError(f"program {program.name!r}: {e}") from None
