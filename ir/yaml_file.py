"""YAML files the user writes (targets, policies, design spaces): read with `yaml.safe_load` only,
every failure one line naming the file (and the line, where YAML knows it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["parse_yaml", "read_yaml"]


def parse_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """The data of YAML `text`; `error(message)` if it is not valid YAML (`source` names it)."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise error(f"{source}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}:" if mark is not None else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())   # yaml's own text spans lines
        raise error(f"{source}:{at} not valid YAML: {why}") from None


def read_yaml(path: Path | str, what: str, error: type[Exception], source: str | None = None) -> tuple[str, Any]:
    """(text, data) of the YAML file at `path`, the `what` (e.g. "policy") it holds; `error(message)`
    if it cannot be read or parsed."""
    source = source or str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{source}: cannot read the {what} ({e})") from None
    return text, parse_yaml(text, source, error)
