"""Typed, checked reading of a Hugging Face config.json: every error names the file and the field."""
from __future__ import annotations

import math
from typing import Mapping


class ConfigError(ValueError):
    """A config.json llmfab cannot build a graph from; the message names the file and the field."""


_REQUIRED = object()
MAX_INT = 2**31 - 1   # no size llmfab handles is larger (ISA fields, numpy shapes stay far from int64)

class _Fields:
    """Reads typed fields from a parsed config; every error names the file and the field."""

    def __init__(self, cfg: Mapping, label: str):
        self.cfg, self.label = cfg, label

    def fail(self, msg: str):
        raise ConfigError(f"{self.label}: {msg}")

    def get(self, key: str, default=_REQUIRED, aliases: tuple[str, ...] = ()):
        for k in (key, *aliases):
            if self.cfg.get(k) is not None:
                return k, self.cfg[k]
        if default is _REQUIRED:
            self.fail(f"missing required field {key!r}")
        return key, default

    def int(self, key: str, default=_REQUIRED, aliases=(), minimum: int = 1, maximum: int = MAX_INT) -> int:
        """The int field `key` in [minimum, maximum]; a default of None makes it optional (None)."""
        k, v = self.get(key, default, aliases)
        if v is None and default is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= maximum:
            what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            self.fail(f"field {k!r} must be {what} of at most {maximum:,}, not {v!r:.40}")
        return v

    def float(self, key: str, default=_REQUIRED, aliases=()) -> float:
        k, v = self.get(key, default, aliases)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            self.fail(f"field {k!r} must be a positive number, not {v!r:.40}")
        return float(v)

    def bool(self, key: str, default=_REQUIRED) -> bool:
        k, v = self.get(key, default)
        if not isinstance(v, bool):
            self.fail(f"field {k!r} must be true or false, not {v!r:.40}")
        return v

    def choice(self, key: str, choices, default=_REQUIRED) -> str:
        k, v = self.get(key, default)
        if v not in choices:
            self.fail(f"field {k!r} must be one of {', '.join(map(str, choices))}, not {v!r:.40}")
        return v

    def heads(self, key: str, dividing: int, dividing_name: str, default=_REQUIRED, aliases=()) -> int:
        k, v = self.get(key, default, aliases)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_INT or dividing % v:
            self.fail(f"field {k!r} must be a positive int dividing {dividing_name}={dividing}, not {v!r:.40}")
        return v
