"""Run a per-part function over many parts: in-process, on a local process pool, or on Ray.

Every stage is written as ``fn(task, shared) -> result`` where ``task`` is small and picklable
and ``shared`` is read-only data all tasks need (the evaluation n-gram index, for example). The
same function runs unchanged on each executor; only the coordinating process writes the catalog.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from aquila.errors import UserError

EXECUTORS = ("local", "ray")
_SHARED: Any = None


def _init_worker(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _call(args: tuple[Callable, Any]) -> Any:
    fn, task = args
    return fn(task, _SHARED)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_tasks(
    fn: Callable[[Any, Any], Any],
    tasks: list[Any],
    shared: Any = None,
    executor: str = "local",
    workers: int | None = None,
) -> Iterator[Any]:
    """Yield ``fn(task, shared)`` for every task, in completion order."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not tasks:
        return
    if executor == "ray":
        yield from _run_ray(fn, tasks, shared)
        return
    workers = min(workers or default_workers(), len(tasks))
    if workers <= 1:
        for t in tasks:
            yield fn(t, shared)
        return
    # fork shares the already-imported modules with the workers (no re-import per process);
    # elsewhere spawn is the only safe choice.
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(shared,)) as pool:
        yield from pool.imap_unordered(_call, [(fn, t) for t in tasks])


def _run_ray(fn: Callable, tasks: list[Any], shared: Any) -> Iterator[Any]:
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError("--executor ray needs the 'ray' package (pip install ray)") from None
    if not ray.is_initialized():
        # Joins the cluster named by RAY_ADDRESS when set, else starts a local one.
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    remote = ray.remote(fn)
    shared_ref = ray.put(shared)
    pending = [remote.remote(t, shared_ref) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
