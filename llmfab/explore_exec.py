"""Where `llmfab explore` runs its points: a local process pool (the default) or Ray tasks.

Both take the same `Task`s, run `explore_point.evaluate` on each and hand every result to
`done(task, result)` as it arrives, in whatever order the points finish (the driver sorts).
A worker process that dies (killed, out of memory) breaks a process pool: the points it was
running are run again one at a time, and the one that dies alone is recorded as crashed.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .explore_point import Task, crashed, evaluate

EXECUTORS = ("local", "ray")
RAY_PIP = "pip install 'llmfab[explore]' (or pip install ray)"


class ExecutorError(RuntimeError):
    pass


def run_local(tasks: list[Task], jobs: int, done: Callable[[Task, dict], None],
              fn: Callable[[Task], dict] = evaluate) -> None:
    """`--jobs 1` runs the points in this process; more, in a pool of `jobs` spawned processes
    (spawned, not forked: the progress display runs a thread). `fn`: what runs a point (a
    module-level function: the pool pickles it by name)."""
    if jobs == 1:
        for t in tasks:
            done(t, fn(t))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    queue, suspects = deque(tasks), deque()
    while queue or suspects:
        alone = bool(suspects)               # after a break: each suspect on its own
        source, width = (suspects, 1) if alone else (queue, jobs)
        with ProcessPoolExecutor(max_workers=width, mp_context=ctx) as pool:
            running, broken = {}, False
            while (source or running) and not broken:
                while source and len(running) < width:   # no more in flight than workers: a break names few
                    t = source.popleft()
                    running[pool.submit(fn, t)] = t
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    t = running.pop(fut)
                    try:
                        done(t, fut.result())
                    except BrokenProcessPool:
                        broken = True
                        if alone:
                            done(t, crashed("the worker process died while running this point"))
                        else:
                            suspects.append(t)
            if broken:
                suspects.extend(running.values())


def run_ray(tasks: list[Task], jobs: int, address: str | None, done: Callable[[Task, dict], None]) -> None:
    """The points as Ray tasks: on the cluster at `address`, or on a local Ray of `jobs` CPUs that
    this call starts and stops. The cluster's workers need the same llmfab installed."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray: {RAY_PIP}") from None
    import logging
    started = not ray.is_initialized()
    if started:
        kw = dict(address=address) if address else dict(num_cpus=jobs, include_dashboard=False,
                                                         object_store_memory=200 * 1024 * 1024)
        ray.init(**kw, logging_level=logging.ERROR, log_to_driver=False)
    try:
        remote = ray.remote(max_retries=0)(evaluate)   # a crash is recorded, not retried
        refs = {remote.remote(t): t for t in tasks}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as e:   # noqa: BLE001 - the worker died or the task could not run
                    result = crashed(f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                done(refs[ref], result)
    finally:
        if started:
            ray.shutdown()
