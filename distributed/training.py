"""A training run's workers on Ray: :class:`RayWorkers`, the ``agents.workers.Workers`` of ``--workers N``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from agents.config import TrainConfig
from envs import CacheScheduleVecEnv, EnvConfig
from envs.pipelines import make_sampler
from envs.sampling import SamplingSetting
from reporting.evaluation import EvaluationPoint
from reporting.schedule_search import SearchResult

from . import search
from .cluster import WorkerPool
from .tasks import ValidationPoint, evaluate_point
from .vec_env import RayShards


def worker_options(config: TrainConfig) -> dict[str, Any]:
    """The pool's keyword arguments from the ``ray`` section (one GPU per worker on CUDA unless it says)."""
    ray = config.ray
    gpus = ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if torch.device(config.env.device).type == "cuda" else 0.0
    return {
        "address": ray.address,
        "cpus_per_worker": ray.cpus_per_worker,
        "gpus_per_worker": gpus,
        "max_restarts": ray.max_restarts,
        "max_task_retries": ray.max_task_retries,
    }


class RayWorkers:
    """``ray.workers`` Ray actors, each holding the environment's pipeline; the same work as
    ``agents.workers.LocalWorkers``, split into the same units, with the same results.

    * environment: ``ray.env_shards`` sub-batches, one per worker by default (:class:`~distributed.vec_env.RayShards`);
    * warm start: the search generations of every anchor setting and budget scored on the workers
      (:mod:`distributed.search`);
    * validation: one point per budget, each on a worker, against that worker's uncached generation.

    Args:
        config: The run's configuration (its ``env`` builds the workers' pipelines, its ``ray`` section the pool).
        pool: Workers to use instead of starting them (closed by their owner).
    """

    def __init__(self, config: TrainConfig, pool: WorkerPool | None = None) -> None:
        self.env_shards = config.ray.shards
        self.own_pool = pool is None
        if pool is None:
            build = functools.partial(make_sampler, config.env, scheduler="default")
            pool = WorkerPool(build, config.ray.workers, **worker_options(config))
        self.pool = pool

    def vec_env(self, num_envs: int, config: EnvConfig, seed: int) -> CacheScheduleVecEnv:
        return CacheScheduleVecEnv(num_envs, config, seed=seed, shards=RayShards(self.pool, config, self.env_shards))

    def search_settings(
        self, model: str, settings: Sequence[SamplingSetting], budgets: Sequence[float], **options: Any
    ) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
        return search.search_settings(self.pool, settings, budgets, **options)

    def evaluate_policy(
        self, pipe: Any, policy: Any, *, setting: SamplingSetting, budgets: Sequence[float | None] = (None,), **options
    ) -> list[EvaluationPoint]:
        options.pop("reference", None)  # each worker makes its own, from the same batch
        points = [ValidationPoint(setting, policy, budget, options) for budget in budgets]
        return self.pool.map(evaluate_point, points)

    def close(self) -> None:
        if self.own_pool:
            self.pool.close()
