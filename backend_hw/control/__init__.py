"""Control: the instruction fetch unit and the controller (decode, queues, dependency tokens,
barriers)."""
from .controller import Controller
from .fetch import FetchUnit, fetch_cycles

__all__ = ["Controller", "FetchUnit", "fetch_cycles"]
