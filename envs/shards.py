"""Sub-batches of the vector environment: each one batched generation, run here or elsewhere.

:class:`~envs.vec_env.CacheScheduleVecEnv` splits its ``num_envs`` samples into ``count`` contiguous sub-batches
(shards). A shard is one :class:`~envs.episodes.EpisodeBatch`: one batched generation through its own cache engine.
:class:`LocalShards` runs them in this process, one after another; ``distributed.RayShards`` runs each in a Ray
actor, all at once. Both take their uncached references from one store, filled one generation per shard
(:meth:`envs.references.ReferenceStore.get_parts`), so the same shards give the same episodes wherever they run.
With one shard, this is the plain batched environment.

With ``group_rollouts = G > 1`` every shard holds whole groups (:func:`check_shard_split`): a draw's ``G`` rollouts,
whose rewards are compared with their group's mean, always run in the same batched generation, so a shard count
never changes what a group's rollouts are compared against.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .conditions import Condition
from .config import EnvConfig
from .episodes import EpisodeBatch, StepResult
from .pipelines import make_sampler
from .sampling import SamplingSetting


@dataclass(frozen=True)
class ShardStart:
    """What a shard's episodes generate: one condition, seed and budget per sample, and the batch's setting.

    Attributes:
        conditions: One condition per sample of the shard.
        seeds: One seed per sample.
        budgets: One budget per sample, or ``None``.
        setting: Scheduler and step count of the whole batch.
        references: The samples' uncached trajectories at ``setting`` (filled in by the shards' runner).
    """

    conditions: tuple[Condition, ...]
    seeds: tuple[int, ...]
    budgets: tuple[float, ...] | None
    setting: SamplingSetting
    references: tuple[Any, ...] | None = None


def check_shard_split(num_envs: int, count: int, group_rollouts: int = 1) -> None:
    """Checks that ``num_envs`` samples split into ``count`` equal shards of whole groups of ``group_rollouts``.

    Raises:
        ValueError: Naming the shard counts that fit, when a shard would be uneven or cut a group in two.
    """
    if count >= 1 and num_envs % (count * group_rollouts) == 0:
        return
    draws = num_envs // group_rollouts if num_envs % group_rollouts == 0 else 0
    fits = [n for n in range(1, draws + 1) if draws % n == 0]
    raise ValueError(
        f"num_envs={num_envs} does not split into {count} shards of whole groups of group_rollouts={group_rollouts} "
        f"(a group's rollouts are compared with each other, so they run in one shard): use a shard count that "
        f"divides num_envs / group_rollouts, one of {fits}, or another num_envs."
    )


class EpisodeShards(Protocol):
    """Runs the shards of a vector environment (here, or on workers); every method takes or returns one entry per
    shard, in shard order.

    Attributes:
        count: Number of shards.
        episodes: A local :class:`EpisodeBatch` of the same configuration (spaces, feature names, and the warm
            start's demonstrations run in it).
    """

    count: int
    episodes: EpisodeBatch

    def begin(self, starts: Sequence[ShardStart]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Starts every shard's episodes; returns each shard's first observations and action masks."""

    def step_async(self, actions: Sequence[np.ndarray]) -> None:
        """Sends each shard its ``(samples, groups)`` actions."""

    def step_wait(self) -> list[tuple[StepResult, np.ndarray | None]]:
        """Each shard's step result and next action masks (``None`` once its episodes are done)."""

    def close(self) -> None:
        """Abandons the episodes and unhooks the engines."""


class LocalShards:
    """Shards run in this process, one after another: shard 0 in ``pipe`` (or the configured model), the others each
    in a copy of it (a shard's engine owns its transformer for the whole episode).

    Args:
        config: Environment configuration.
        count: Number of shards.
        pipe: A loaded pipeline (or ``envs.pipelines.Sampler``) for shard 0, ``None`` to load ``config.model``.
    """

    def __init__(self, config: EnvConfig, count: int, pipe: Any = None) -> None:
        self.count = count
        sampler = make_sampler(config, pipe, scheduler="default")
        copies = [copy.deepcopy(sampler) for _ in range(1, count)]  # before the engine hooks the transformer
        self.episodes = EpisodeBatch(config, sampler)
        self.batches = [self.episodes, *(EpisodeBatch(config, c) for c in copies)]
        self._pending: list[StepResult] | None = None

    def begin(self, starts: Sequence[ShardStart]) -> list[tuple[np.ndarray, np.ndarray]]:
        setting = starts[0].setting
        references = self.episodes.reference_store(setting).get_parts([(s.conditions, s.seeds) for s in starts])
        out = []
        for batch, start, found in zip(self.batches, starts, references, strict=True):
            observations = batch.begin(start.conditions, start.seeds, start.budgets, setting, references=found)
            out.append((observations, batch.action_masks()))
        return out

    def step_async(self, actions: Sequence[np.ndarray]) -> None:
        self._pending = [batch.step(a) for batch, a in zip(self.batches, actions, strict=True)]

    def step_wait(self) -> list[tuple[StepResult, np.ndarray | None]]:
        results, self._pending = self._pending, None
        return [(r, None if r.done else b.action_masks()) for r, b in zip(results, self.batches, strict=True)]

    def close(self) -> None:
        for batch in self.batches:
            batch.close()
