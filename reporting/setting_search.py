"""The warm start's teacher: a static schedule searched per anchor setting (scheduler and step count) and budget.

Every ``(setting, budget)`` pair is one search (:class:`~reporting.schedule_search.ScheduleSearch` at that setting's
step count, its pipeline switched to that setting's scheduler). :func:`search_settings` runs them here, one after
another, or in a pool of worker processes, one search per process at a time. :func:`search_in_rounds` runs every
search loop here side by side and has the generations they ask for scored by a given function, a round at a time:
``distributed`` scores them on Ray workers. A generation's make-up depends only on its search, so all three give the
same schedules.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import diffusers
import torch

from envs.config import EnvConfig
from envs.pipelines import make_sampler, prepare_pipeline
from envs.sampling import SamplingSetting
from envs.schedulers import SchedulerSwitch
from runtime import EngineOptions

from . import process_guard
from .schedule_search import Generation, ScheduleSearch, SearchResult, SearchSteps

Job = tuple[SamplingSetting, float]
"""One search: its setting and budget."""

ScoreRound = Callable[[list[tuple[SamplingSetting, Generation]]], list[torch.Tensor]]
"""Scores a round of generations, each at its setting: one capped-PSNR vector (one value per row) per generation, in
order (see :meth:`SettingSearches.score`)."""


class SettingSearches:
    """The searches of one process: a :class:`ScheduleSearch` per sampling setting, on one pipeline.

    Args:
        pipe: An unhooked pipeline or ``envs.pipelines.Sampler``.
        schedulers: Switches ``pipe`` between the settings' schedulers.
        arguments: ``conditions``, ``seeds``, ``guidance`` and ``engine_options`` of every search.
    """

    def __init__(self, pipe: Any, schedulers: SchedulerSwitch, arguments: dict[str, Any]) -> None:
        self.pipe, self.schedulers, self.arguments = pipe, schedulers, arguments
        self.searches: dict[SamplingSetting, ScheduleSearch] = {}

    def at(self, setting: SamplingSetting) -> ScheduleSearch:
        """The search at ``setting``, its pipeline switched to the setting's scheduler (references made on first
        use)."""
        self.schedulers.use(setting.scheduler)
        if setting not in self.searches:
            self.searches[setting] = ScheduleSearch(self.pipe, steps=setting.steps, **self.arguments)
        return self.searches[setting]

    def run(
        self,
        setting: SamplingSetting,
        budget: float,
        options: dict[str, Any],
        per_sample: bool,
        log: Callable[[str], None] | None,
    ) -> SearchResult | list[SearchResult]:
        """Searches ``budget``'s schedule at ``setting``."""
        search = self.at(setting)
        method = search.search_per_sample if per_sample else search.search
        return method(budget, **options, log=_prefixed(log, setting))

    def score(self, setting: SamplingSetting, generation: Generation) -> torch.Tensor:
        """One generation of a search at ``setting``, run here: the capped PSNR of each of its rows."""
        return self.at(setting).score(generation)


_WORKER: dict[str, SettingSearches] = {}


def _start_worker(model: str, arguments: dict[str, Any], env_config: EnvConfig | None = None) -> None:
    """Loads the pipeline in a worker (started by :func:`reporting.process_guard.start`, which ends the worker when
    the training process is gone)."""
    torch.set_num_threads(1)  # one process per core beats two threads on these small batches
    diffusers.utils.logging.set_verbosity_error()
    pipe = make_sampler(env_config, scheduler="default") if env_config is not None else prepare_pipeline(model)
    _WORKER["search"] = SettingSearches(pipe, SchedulerSwitch(getattr(pipe, "pipe", pipe)), arguments)


def _search_in_worker(
    setting: SamplingSetting, budget: float, options: dict[str, Any], per_sample: bool
) -> SearchResult | list[SearchResult]:
    return _WORKER["search"].run(setting, budget, options, per_sample, lambda line: print(line, flush=True))


def search_settings(
    model: str,
    settings: Sequence[SamplingSetting],
    budgets: Sequence[float],
    *,
    conditions: Sequence[int | str],
    seeds: Sequence[int],
    guidance: float,
    engine_options: EngineOptions,
    sweeps: int = 2,
    per_group: bool = True,
    workers: int = 1,
    pipe: Any = None,
    schedulers: SchedulerSwitch | None = None,
    log: Callable[[str], None] | None = None,
    per_sample: bool = False,
    env_config: EnvConfig | None = None,
    sweeps_at: dict[SamplingSetting, int] | None = None,
) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
    """Searches one schedule per setting and budget, in ``workers`` processes (one torch thread each) when above 1.

    Every ``(setting, budget)`` pair is one job; the costliest (most steps, largest budget) start first.

    Args:
        model: Zoo model name or pipeline folder (loaded by each worker process).
        settings: Schedulers and step counts to search at.
        budgets: Compute budgets, searched at every setting.
        conditions / seeds: The search samples.
        guidance: Classifier-free guidance scale.
        engine_options: As for :class:`ScheduleSearch`.
        sweeps / per_group: As in :meth:`ScheduleSearch.search`.
        workers: Processes; 1 searches here, in ``pipe`` (or a pipeline loaded from ``model``).
        pipe: An unhooked pipeline to search in when ``workers == 1``.
        schedulers: The switch of ``pipe``'s schedulers (made from ``pipe`` when not given: ``pipe`` must then hold
            its original scheduler).
        log: Progress lines (worker processes print theirs).
        per_sample: Search a schedule for each sample on its own (:meth:`ScheduleSearch.search_per_sample`).
        env_config: The environment configuration the worker processes build their sampler from (prompts, device,
            dtype, call arguments); ``None``: ``model`` only.
        sweeps_at: Settings searched with another number of sweeps (0: the best evenly spaced start only).

    Returns:
        Per setting, one result per budget in the order given; with ``per_sample``, one list of per-sample results
        per budget.
    """
    arguments = {
        "conditions": list(conditions),
        "seeds": list(seeds),
        "guidance": guidance,
        "engine_options": engine_options,
    }
    jobs, options = _plan(settings, budgets, sweeps, per_group, sweeps_at)
    found: dict[Job, Any] = {}
    if workers <= 1:
        if pipe is None:
            pipe = make_sampler(env_config, scheduler="default") if env_config is not None else prepare_pipeline(model)
        if schedulers is None:
            schedulers = SchedulerSwitch(getattr(pipe, "pipe", pipe))
        searches = SettingSearches(pipe, schedulers, arguments)
        for job in jobs:
            found[job] = searches.run(*job, options[job[0]], per_sample, log)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=process_guard.start,
            initargs=process_guard.initializer_arguments(f"{__name__}:_start_worker", model, arguments, env_config),
        ) as pool:
            # A search costs about sweeps * steps^2 (more steps to move, each a longer generation) * budget.
            ordered = sorted(jobs, key=lambda job: -(job[0].steps ** 2) * job[1] * (options[job[0]]["sweeps"] + 0.1))
            futures = {job: pool.submit(_search_in_worker, *job, options[job[0]], per_sample) for job in ordered}
            found = {job: futures[job].result() for job in jobs}
    return {setting: [found[(setting, float(budget))] for budget in budgets] for setting in settings}


def search_in_rounds(
    settings: Sequence[SamplingSetting],
    budgets: Sequence[float],
    score: ScoreRound,
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
) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
    """:func:`search_settings` with every generation scored by ``score``: the same results, wherever it runs them.

    Every ``(setting, budget)`` search loop (:meth:`ScheduleSearch.search_steps`) runs here. In each round the
    generations that all unfinished loops ask for go to ``score`` at once, each with its setting (whose scheduler
    and step count it must run with), and every loop gets its own scores back; the next round starts when all
    are scored.

    Args:
        settings / budgets: As for :func:`search_settings`.
        score: Runs a round's generations, e.g. on Ray workers (:data:`ScoreRound`).
        conditions / seeds / guidance / engine_options / sweeps / per_group / log / per_sample / sweeps_at: As for
            :func:`search_settings`.

    Returns:
        As :func:`search_settings`.
    """
    jobs, options = _plan(settings, budgets, sweeps, per_group, sweeps_at)
    logic = {  # the loops' logic only: no pipeline here
        s: ScheduleSearch(None, conditions, seeds, s.steps, guidance, engine_options) for s in settings
    }
    loops: dict[Job, SearchSteps] = {}
    for setting, budget in jobs:
        method = logic[setting].search_per_sample_steps if per_sample else logic[setting].search_steps
        loops[(setting, budget)] = method(budget, **options[setting], log=_prefixed(log, setting))
    found: dict[Job, Any] = {}
    pending: dict[Job, list[Generation]] = {}
    for job, loop in loops.items():
        _advance(job, loop, None, pending, found)
    while pending:
        asked = list(pending.items())
        scores = score([(job[0], generation) for job, generations in asked for generation in generations])
        for job, generations in asked:
            mine, scores = scores[: len(generations)], scores[len(generations) :]
            _advance(job, loops[job], mine, pending, found)
    return {setting: [found[(setting, float(budget))] for budget in budgets] for setting in settings}


def search_schedules(
    model: str,
    budgets: Sequence[float],
    *,
    scheduler: str = "default",
    steps: int,
    **kwargs: Any,
) -> list[SearchResult] | list[list[SearchResult]]:
    """:func:`search_settings` at one setting: one result per budget, in the order given."""
    setting = SamplingSetting(scheduler, steps)
    return search_settings(model, [setting], budgets, **kwargs)[setting]


def _plan(
    settings: Sequence[SamplingSetting],
    budgets: Sequence[float],
    sweeps: int,
    per_group: bool,
    sweeps_at: dict[SamplingSetting, int] | None,
) -> tuple[list[Job], dict[SamplingSetting, dict[str, Any]]]:
    """The jobs (setting by setting, budgets in order) and each setting's search options."""
    sweeps_at = sweeps_at or {}
    options = {s: {"sweeps": sweeps_at.get(s, sweeps), "per_group": per_group} for s in settings}
    return [(setting, float(budget)) for setting in settings for budget in budgets], options


def _prefixed(log: Callable[[str], None] | None, setting: SamplingSetting) -> Callable[[str], None] | None:
    """``log`` with each line led by the setting's label."""
    return None if log is None else lambda line: log(f"{setting.label}: {line}")


def _advance(
    job: Job, loop: SearchSteps, scores: list[torch.Tensor] | None, pending: dict[Job, list[Generation]], found: dict
) -> None:
    """Starts a loop (``scores`` ``None``) or sends it its scores; keeps what it asks for next, or its result."""
    pending.pop(job, None)
    try:
        pending[job] = next(loop) if scores is None else loop.send(scores)
    except StopIteration as stop:
        found[job] = stop.value
