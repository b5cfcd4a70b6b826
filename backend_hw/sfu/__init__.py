"""The special-function unit: the fixed-point datapath (`datapath.py` with `arith.py`, `lut.py`,
`scalars.py`), the instruction unit that runs MISC on the buffers (`unit.py` with `ports.py`,
`embed.py`), and its cycle formula (`cycles.py`)."""
from .cycles import sfu_cycles
from .datapath import FUNCS, SFU, SWEEPS
from .unit import SfuUnit

__all__ = ["FUNCS", "SWEEPS", "SFU", "SfuUnit", "sfu_cycles"]
