"""`Valid`: a payload qualified by `valid`, for pipelines that never stall."""
from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import Out


class Valid(wiring.Signature):
    """A payload qualified by `valid`, without `ready`: the chain never stalls, so a stream's
    ready would be a constant (and constants cannot be Verilog ports)."""

    def __init__(self, layout):
        self.layout = layout
        super().__init__({"valid": Out(1), "payload": Out(layout)})

    def __eq__(self, other):
        return isinstance(other, Valid) and self.layout == other.layout

    def __repr__(self):
        return f"Valid({self.layout!r})"
