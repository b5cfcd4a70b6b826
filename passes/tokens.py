"""Dependency tokens from data hazards: who must wait for whom, and no more.

Each instruction runs in one of four in-order queues and names the buffer regions it reads and
writes. When it touches a region whose last writer (read-after-write / write-after-write) or
whose readers since then (write-after-read) ran in another queue, it must wait for a token from
that queue, released by the latest such instruction. Tokens are counting semaphores per (source,
destination) queue pair, so releases and waits must pair one to one in order: an instruction
waits at most once per source queue (for the latest producer it needs), and a producer already
released to that queue for an earlier consumer orders this one too (the consumer queue is in
order), so no second token is needed. Every wait then refers to an earlier instruction, and
issuing in emission order always satisfies it: no deadlock by construction (and
`isa.check_tokens` verifies it independently).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Region:
    writer: tuple[int, int] | None = None          # (queue, instruction index)
    readers: dict[int, int] = field(default_factory=dict)  # queue -> latest reading instruction


class TokenTracker:
    def __init__(self, n_queues: int = 4):
        self.n = n_queues
        self.queue: list[int] = []
        self.wait: list[int] = []
        self.release: list[int] = []
        self._regions: dict[object, _Region] = {}
        # latest instruction of queue s that released to queue d: orders every later consumer in d
        self._released: dict[tuple[int, int], int] = {}

    def add(self, queue: int, reads=(), writes=()) -> int:
        """Record an instruction; returns its index. `reads`/`writes`: hashable region names."""
        idx = len(self.queue)
        need: dict[int, int] = {}  # source queue -> latest producer index this instruction needs

        def depend(q: int, i: int):
            if q != queue:
                need[q] = max(need.get(q, -1), i)

        for r in reads:
            reg = self._regions.get(r)
            if reg and reg.writer:
                depend(*reg.writer)
        for r in writes:
            reg = self._regions.get(r)
            if reg:
                if reg.writer:
                    depend(*reg.writer)
                for q, i in reg.readers.items():
                    depend(q, i)
        wait = 0
        for src, producer in need.items():
            if self._released.get((src, queue), -1) >= producer:
                continue  # an earlier token from `src` to this queue already orders it
            self.release[producer] |= 1 << queue
            self._released[(src, queue)] = producer
            wait |= 1 << src
        self.queue.append(queue)
        self.wait.append(wait)
        self.release.append(0)
        for r in reads:
            self._regions.setdefault(r, _Region()).readers[queue] = idx
        for r in writes:
            self._regions[r] = _Region(writer=(queue, idx))
        return idx
