"""Progress of the long steps on stderr: compile stages and buckets, RTL elaboration and writing,
synthesis and place-and-route phases, simulated contexts.

Shown only when stderr is a terminal and `--quiet` was not given, so piped output and `--json`
stay exactly as they were. Stages and libraries never import this module: the driver passes
`phase` or `track` to them (a callable, default a no-op), so the progress logic lives here alone.
One `rich` live display serves nested steps (a stage with its buckets under it); a finished
stage leaves one line with its elapsed time, a finished loop leaves nothing.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

_quiet = False
_live = None      # the rich Progress while any step is open
_open = 0         # steps open on it


def set_quiet(quiet: bool) -> None:
    """`llmfab --quiet`: no progress at all, even on a terminal."""
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


def _start():
    global _live, _open
    if _live is None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        _live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                         MofNCompleteColumn(), TimeElapsedColumn(),
                         console=Console(file=sys.stderr), transient=True)
        _live.start()
    _open += 1
    return _live


def _stop() -> None:
    global _live, _open
    _open -= 1
    if _open == 0:
        _live.stop()
        _live = None


@contextmanager
def phase(label: str) -> Iterator[None]:
    """A step of unknown length: a spinner with its elapsed time while it runs, then the line
    `label: 12.3 s` (or `label: failed after 12.3 s`)."""
    if not enabled():
        yield
        return
    live = _start()
    task = live.add_task(label, total=None)
    t0 = time.perf_counter()
    outcome = "failed after "
    try:
        yield
        outcome = ""
    finally:
        live.remove_task(task)
        live.console.print(f"[dim]{label}: {outcome}{time.perf_counter() - t0:.1f} s[/dim]", highlight=False)
        _stop()


def track(items: Iterable, label: str) -> Iterator:
    """Iterate `items` with a bar `label  3/16` (no line is left behind)."""
    if not enabled():
        yield from items
        return
    items = list(items)
    live = _start()
    task = live.add_task(label, total=len(items))
    try:
        for x in items:
            yield x
            live.advance(task)
    finally:
        live.remove_task(task)
        _stop()


@contextmanager
def counter(total: int, label: str) -> Iterator:
    """A bar `label  3/16` for work that finishes out of order (explore's points): yields a
    callable that advances it by one (no line is left behind)."""
    if not enabled():
        yield lambda: None
        return
    live = _start()
    task = live.add_task(label, total=total)
    try:
        yield lambda: live.advance(task)
    finally:
        live.remove_task(task)
        _stop()
