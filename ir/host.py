"""The host's memory, and the one check every stage makes before allocating what a model,
config or build declares: refuse, with how much is needed and how much there is, instead of
being killed (or dying in MemoryError) minutes later.

The budget is the smallest of the machine's physical memory, the process's address-space limit
(`ulimit -v`, `prlimit --as`) and, for tests and shared machines, `LLMFAB_MEMORY_LIMIT` (bytes).
Estimates are of what the work certainly allocates, so a refusal is never wrong; work that passes
may still use somewhat more.
"""
from __future__ import annotations

import os
import resource


class ResourceError(ValueError):
    """The work asked for needs more memory than this machine gives the process."""


def memory_budget() -> int:
    """Bytes this process may use: physical memory, capped by RLIMIT_AS and LLMFAB_MEMORY_LIMIT."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        budget = min(budget, soft)
    env = os.environ.get("LLMFAB_MEMORY_LIMIT", "").strip()
    if env:
        try:
            budget = min(budget, int(env))
        except ValueError:
            raise ResourceError(f"LLMFAB_MEMORY_LIMIT must be a number of bytes, not {env!r}") from None
    return budget


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def require(nbytes: int, what: str) -> None:
    """ResourceError unless `nbytes` fit the budget; `what` names the file/field/node and the cause."""
    budget = memory_budget()
    if nbytes > budget:
        raise ResourceError(f"{what} needs at least {_size(nbytes)} of memory; this machine allows "
                            f"{_size(budget)} (physical memory, ulimit -v and LLMFAB_MEMORY_LIMIT)")
