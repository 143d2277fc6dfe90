"""Joining or starting Ray, and a pool of pipeline workers: one actor per GPU (or per CPU core here).

A :class:`WorkerPool` starts ``workers`` :class:`~distributed.worker.PipelineWorker` actors, each building its own
pipeline with ``build``. Ray restarts an actor whose process dies (``max_restarts``) and retries the tasks it was
running on the restarted actor (``max_task_retries``); every task is a pure function of its arguments (the
environment's episodes replay their actions, see :mod:`distributed.worker`), so the redone work gives the same
results. :meth:`WorkerPool.map` runs a task over work items with Ray's ``ActorPool`` and returns the results in
item order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.util import ActorPool

from .worker import PipelineWorker


def connect(address: str | None = None, num_cpus: float | None = None) -> bool:
    """Joins the Ray cluster at ``address`` (``"auto"``: the one ``ray start`` runs on this machine), or starts a
    Ray instance here with ``num_cpus`` cores; does nothing when Ray is already up.

    Returns:
        Whether this call started Ray (and the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=True)
    else:
        cores = max(float(os.cpu_count() or 1), float(num_cpus or 0))
        ray.init(num_cpus=int(round(cores)), include_dashboard=False, log_to_driver=True)
    return True


class WorkerPool:
    """``workers`` Ray actors, each holding the pipeline ``build()`` returns, with the cache engine.

    Args:
        build: Builds the pipeline (an ``envs.pipelines.Sampler``) in each actor; it travels pickled, so a module
            function or a ``functools.partial`` of one.
        workers: Number of actors.
        address: Ray cluster to join (see :func:`connect`); ``None``: the running one, or a new one here.
        cpus_per_worker: CPU cores reserved for each actor (and its torch threads).
        gpus_per_worker: GPUs reserved for each actor (1 puts one pipeline on each GPU).
        max_restarts: Times Ray restarts an actor whose process died (``-1``: always).
        max_task_retries: Times Ray retries a task of a dead actor on its restarted self (``-1``: always).
    """

    def __init__(
        self,
        build: Callable[[], Any],
        workers: int,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        max_restarts: int = 3,
        max_task_retries: int = 3,
    ) -> None:
        self.started_ray = connect(address, workers * cpus_per_worker)
        actor = ray.remote(PipelineWorker).options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        threads = max(1, int(cpus_per_worker))
        self.actors = [actor.remote(build, threads) for _ in range(workers)]
        self.info = ray.get([a.ready.remote() for a in self.actors])

    def __len__(self) -> int:
        return len(self.actors)

    def imap(self, task: Callable[[PipelineWorker, Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Runs ``task(worker, item)`` for every item on the actors; yields the results in item order."""
        pool = ActorPool(self.actors)
        return pool.map(lambda actor, item: actor.run.remote(task, item), list(items))

    def map(self, task: Callable[[PipelineWorker, Any], Any], items: Sequence[Any]) -> list[Any]:
        """:meth:`imap` as a list."""
        return list(self.imap(task, items)) if items else []

    def close(self) -> None:
        """Ends the actors, and Ray itself when this pool started it."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
