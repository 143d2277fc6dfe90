"""The vector environment's shards in Ray actors: ``envs.CacheScheduleVecEnv(..., shards=RayShards(...))``.

Shard ``i`` lives in worker ``i % workers``; each step sends every shard its actions at once and waits for all
(``ray.get``), so the shards' generations run in parallel. The driver keeps what an episode is: its start (in
Ray's object store, with its references) and the actions taken so far; a worker that lost the episode (restarted by
Ray, or unhooked by a task in between) replays it (see :mod:`distributed.worker`). References come from the store of
the driver's own episode batch (the one the warm start's demonstrations fill), one generation per shard as
:class:`envs.shards.LocalShards` fills shard 0's, the generations run on the workers at once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from envs.config import EnvConfig
from envs.episodes import EpisodeBatch, StepResult
from envs.sampling import SamplingSetting
from envs.shards import ShardStart

from .cluster import WorkerPool


class RayShards:
    """Runs ``count`` shards of a vector environment on the pool's workers.

    Args:
        pool: The workers (their pipelines are the configuration's model).
        config: Environment configuration.
        count: Number of shards.
        episodes: A local episode batch of the same configuration (spaces, feature names, demonstrations); ``None``
            loads one.
    """

    def __init__(self, pool: WorkerPool, config: EnvConfig, count: int, episodes: EpisodeBatch | None = None):
        self.pool, self.config, self.count = pool, config, count
        self.episodes = episodes if episodes is not None else EpisodeBatch(config)
        self._name, self._episode = uuid.uuid4().hex, 0  # episodes are (name, count): unique on every worker
        self._starts: list[list[ray.ObjectRef]] = []
        self._numbers: list[tuple[str, int]] = []
        self._history: list[list[np.ndarray]] = [[] for _ in range(count)]
        self._pending: tuple[list[ray.ObjectRef], Sequence[np.ndarray]] | None = None

    def actor(self, index: int) -> Any:
        """The worker shard ``index`` runs on."""
        return self.pool.actors[index % len(self.pool.actors)]

    def begin(self, starts: Sequence[ShardStart]) -> list[tuple[np.ndarray, np.ndarray]]:
        setting = starts[0].setting
        references = self.episodes.reference_store(setting).get_parts(
            [(s.conditions, s.seeds) for s in starts], lambda batches: self._generate(setting, batches)
        )
        self._starts, self._numbers = [], []
        for start, found in zip(starts, references, strict=True):
            self._episode += 1
            self._numbers.append((self._name, self._episode))
            self._starts.append([ray.put(dataclasses.replace(start, references=tuple(found)))])
        self._history = [[] for _ in range(self.count)]
        return ray.get(
            [
                self.actor(i).env_advance.remote(i, self.config, self._starts[i], self._numbers[i], [], None)
                for i in range(self.count)
            ]
        )

    def step_async(self, actions: Sequence[np.ndarray]) -> None:
        calls = [
            self.actor(i).env_advance.remote(
                i, self.config, self._starts[i], self._numbers[i], self._history[i], np.asarray(actions[i])
            )
            for i in range(self.count)
        ]
        self._pending = (calls, actions)

    def step_wait(self) -> list[tuple[StepResult, np.ndarray | None]]:
        calls, actions = self._pending
        self._pending = None
        results = ray.get(calls)
        for history, taken in zip(self._history, actions, strict=True):
            history.append(np.asarray(taken))
        return results

    def close(self) -> None:
        self.episodes.close()

    def _generate(self, setting: SamplingSetting, batches: list[tuple[Sequence[Any], Sequence[int]]]) -> list[Any]:
        """The uncached generations of ``batches``, each on a worker, all at once."""
        return ray.get(
            [
                self.actor(i).env_references.remote(self.config, setting, list(conditions), list(seeds))
                for i, (conditions, seeds) in enumerate(batches)
            ]
        )
