"""The matrix instruction unit (MV, MM, ATTN on the buffers) and its cycle formula.

`unit.py` is the unit; `mm.py` sequences MV/MM passes through the engine; `attn.py` runs ATTN
QK/PV; `buffer_io.py` reads and writes buffer records; `cycles.py` counts the unit's cycles
from the same FSM constants."""
from .cycles import matrix_cycles
from .unit import MatrixUnit

__all__ = ["MatrixUnit", "matrix_cycles"]
