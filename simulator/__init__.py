"""The simulator: times compiled programs and executes them bit-exactly.

- `schedule.py`: the one walk over queues, dependency tokens and barriers, behind `Units`;
- `design.py`: the design's cost model (`DesignUnits`); the RTL's is `llmfab.backend_hw.RtlUnits`;
- `run.py`: `simulate`, time to first token and decode speed of a build, with breakdowns;
- `functional.py`: the bit-exact machine (`Machine`), `execute.py`: a build's prompt -> logits.

Nothing here imports `llmfab.passes` or `llmfab.backend_hw`: builds arrive as objects from the
driver (`llmfab.build.Build`), unit costs as `Units`.
"""
from .design import DesignUnits
from .schedule import Timing, Units, hbm_bytes, macs, schedule

__all__ = ["DesignUnits", "Timing", "Units", "hbm_bytes", "macs", "schedule"]
