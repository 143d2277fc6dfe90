"""Where a training run's pipeline work runs: the one interface between the trainer and its workers.

The trainer asks its :class:`Workers` for the vector environment, the warm start's searched schedules (every anchor
setting and budget) and each validation point. :class:`LocalWorkers`, the default, does all of it in this process
(the search in ``warm_start.workers`` processes), as the project always has. ``distributed.RayWorkers`` does the
same work, split the same way, on Ray actors, each holding one pipeline (``--workers N``). Every kind of work is split
into units whose make-up depends on the configuration only (an environment shard of whole rollout groups, a search
generation at its setting, a validation budget), and results are put back in unit order, so the same seeds give the
same results wherever the units run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from stable_baselines3.common.vec_env import VecEnv

from envs import CacheScheduleVecEnv, EnvConfig
from envs.sampling import SamplingSetting
from reporting.evaluation import EvaluationPoint, evaluate_policy
from reporting.schedule_search import SearchResult
from reporting.setting_search import search_settings


class Workers(Protocol):
    """What the trainer needs of its workers."""

    def vec_env(self, num_envs: int, config: EnvConfig, seed: int) -> VecEnv:
        """The training environment: ``num_envs`` samples in the configured number of shards."""

    def search_settings(
        self, model: str, settings: Sequence[SamplingSetting], budgets: Sequence[float], **options: Any
    ) -> dict[SamplingSetting, list[Any]]:
        """:func:`reporting.setting_search.search_settings` with the same arguments and results."""

    def evaluate_policy(self, pipe: Any, policy: Any, *, setting: SamplingSetting, **options: Any) -> list[Any]:
        """:func:`reporting.evaluation.evaluate_policy` at ``setting`` (``pipe`` switched to it), one point per
        budget."""

    def close(self) -> None:
        """Releases the workers."""


class LocalWorkers:
    """Everything in this process: the default, and the reference every other :class:`Workers` must match.

    Args:
        env_shards: Sub-batches of the environment (``ray.env_shards``; 1: the plain batched environment).
    """

    def __init__(self, env_shards: int = 1) -> None:
        self.env_shards = env_shards

    def vec_env(self, num_envs: int, config: EnvConfig, seed: int) -> CacheScheduleVecEnv:
        return CacheScheduleVecEnv(num_envs, config, seed=seed, shards=self.env_shards)

    def search_settings(
        self, model: str, settings: Sequence[SamplingSetting], budgets: Sequence[float], **options: Any
    ) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
        return search_settings(model, settings, budgets, **options)

    def evaluate_policy(
        self, pipe: Any, policy: Any, *, setting: SamplingSetting, **options: Any
    ) -> list[EvaluationPoint]:
        return evaluate_policy(pipe, policy, **options)

    def close(self) -> None:
        pass
