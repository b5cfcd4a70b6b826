"""Instruction-word fields as Amaranth slices, at the positions `llmfab.ir.isa` gives them.

Every unit that decodes an instruction word uses these, so no bit position is typed in the RTL.
"""
from __future__ import annotations

from amaranth import Value

from llmfab.ir.isa import HEADER, Opcode, lookup_field

_HEADER = {f.name: f for f in HEADER}


def header(word: Value, name: str) -> Value:
    """Header field `name` (op, wait, release, len_reg) of an instruction word."""
    f = _HEADER[name]
    return word[f.offset:f.offset + f.bits]


def field(word: Value, op: Opcode, name: str) -> Value:
    """Field `name` of opcode `op` in an instruction word, sliced where `FIELDS[op]` puts it."""
    f = lookup_field(op, name)
    v = word[f.offset:f.offset + f.bits]
    return v.as_signed() if f.signed else v
