"""The warm start's schedule search with its generations scored on the pipeline workers.

Every ``(setting, budget)`` search loop runs here, in the driver (:func:`reporting.setting_search.search_in_rounds`);
at each round the generations all loops ask for are scored at once on the workers (``ActorPool``), each worker
switching its pipeline to the generation's scheduler (``envs.schedulers.SchedulerSwitch``) and generating its search
samples' references at that setting once. A generation is a fixed batch of ``(table, sample)`` rows, the one the
local search runs, so the searched schedules are those of a local search, at every anchor and with any number of
workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from envs.sampling import SamplingSetting
from reporting.schedule_search import Generation, SearchResult
from reporting.setting_search import search_in_rounds
from runtime import EngineOptions

from .cluster import WorkerPool
from .tasks import SearchSamples, score_generation


def search_settings(
    pool: WorkerPool,
    settings: Sequence[SamplingSetting],
    budgets: Sequence[float],
    *,
    conditions: Sequence[int | str],
    seeds: Sequence[int],
    guidance: float,
    engine_options: EngineOptions,
    sweeps: int = 2,
    per_group: bool = True,
    log: Callable[[str], None] | None = None,
    per_sample: bool = False,
    sweeps_at: dict[SamplingSetting, int] | None = None,
    **_local: Any,
) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
    """:func:`reporting.setting_search.search_settings` on the pool's workers: same arguments, same results.

    The local-only arguments (``model``, ``workers``, ``pipe``, ``schedulers``, ``env_config``) are ignored: the
    workers hold the pipeline.

    Returns:
        Per setting, one result per budget in the order given; with ``per_sample``, one list of per-sample results
        per budget.
    """
    samples = SearchSamples(tuple(conditions), tuple(seeds), guidance, engine_options)

    def score(generations: list[tuple[SamplingSetting, Generation]]) -> list[torch.Tensor]:
        return pool.map(score_generation, [(samples, setting, generation) for setting, generation in generations])

    return search_in_rounds(
        settings,
        budgets,
        score,
        conditions=conditions,
        seeds=seeds,
        guidance=guidance,
        engine_options=engine_options,
        sweeps=sweeps,
        per_group=per_group,
        log=log,
        per_sample=per_sample,
        sweeps_at=sweeps_at,
    )


def search_schedules(
    pool: WorkerPool, budgets: Sequence[float], *, scheduler: str = "default", steps: int, **options: Any
) -> list[SearchResult] | list[list[SearchResult]]:
    """:func:`search_settings` at one setting: one result per budget, in the order given (as
    :func:`reporting.setting_search.search_schedules`)."""
    setting = SamplingSetting(scheduler, steps)
    return search_settings(pool, [setting], budgets, **options)[setting]
