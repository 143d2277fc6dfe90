"""Searches static cache schedules on training samples: the teacher a learned policy is warm-started from.

A schedule is a ``(steps, groups)`` table of COMPUTE / FORECAST actions. For a compute budget ``b`` the search starts
from the best of a few schedules that compute every group at ``round(b * steps)`` steps, evenly spaced (TaylorSeer's
schedule) or packed towards the first steps, and improves it by local search at a constant cost: it moves one
computed step (then one group's computed cell) a few steps earlier or later and keeps the move that raises the mean
PSNR against the uncached images the most. Every candidate of a round is evaluated in one batched generation, one
table per block of samples.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch

import runtime
from envs.config import EnvConfig
from envs.pipelines import generate, make_sampler, prepare_pipeline
from envs.sampling import SamplingSetting
from envs.schedulers import SchedulerSwitch
from policies import Policy
from runtime import Action, EngineOptions, Observation
from zoo.metrics import capped_psnr

from . import process_guard


class _TablePolicy(Policy):
    """Plays one ``(steps, groups)`` table per sample, by step index."""

    def __init__(self, tables: torch.Tensor, forecast_order: int) -> None:
        self.tables = tables
        self.forecast_order = forecast_order

    def act(self, observation: Observation) -> torch.Tensor:
        step = min(int(observation.step_index), self.tables.shape[1] - 1)
        return self.tables[:, step].clone()


@dataclass
class SearchResult:
    """A searched schedule.

    Attributes:
        budget: The compute budget it was searched for (fraction of the transformer blocks' FLOPs).
        schedule: ``(steps, groups)`` actions.
        psnr: Mean PSNR (dB) of the schedule on the search samples.
        start_psnr: Mean PSNR of the evenly spaced schedule (TaylorSeer's).
        evaluations: Schedules evaluated.
    """

    budget: float
    schedule: np.ndarray
    psnr: float
    start_psnr: float
    evaluations: int


class ScheduleSearch:
    """Evaluates and searches static schedules on a fixed set of samples.

    Args:
        pipe: A pipeline or ``envs.pipelines.Sampler`` (its transformer gets hooked for each evaluation and unhooked
            after).
        conditions: One condition (class label or prompt) per search sample.
        seeds: One seed per search sample.
        steps: Denoising steps.
        guidance: Classifier-free guidance scale.
        engine_options: The engine's options; ``groups`` and ``forecast_order`` must be set.
        psnr_cap: PSNR given to identical images.
        tables_per_batch: Candidate schedules evaluated together in one generation.
    """

    def __init__(
        self,
        pipe: Any,
        conditions: Sequence[int | str],
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        engine_options: EngineOptions,
        psnr_cap: float = 60.0,
        tables_per_batch: int = 8,
    ) -> None:
        if len(conditions) != len(seeds) or not seeds:
            raise ValueError("Give one condition per seed, and at least one seed.")
        self.pipe = pipe
        self.conditions, self.seeds = list(conditions), list(seeds)
        self.steps, self.guidance = steps, guidance
        if engine_options.num_groups is None or engine_options.forecast_order is None:
            raise ValueError(
                f"{engine_options}: set groups and forecast_order; the search plays (steps, groups) tables with them."
            )
        self.engine_options = engine_options
        self.groups = engine_options.num_groups
        self.psnr_cap = psnr_cap
        self.tables_per_batch = max(1, tables_per_batch)
        self.evaluations = 0
        self.sample_evaluations = np.zeros(len(self.seeds), dtype=np.int64)
        with torch.inference_mode():
            self.reference = generate(pipe, self.conditions, self.seeds, steps, guidance)

    def evenly_spaced(self, budget: float, warp: float = 1.0) -> np.ndarray:
        """The schedule computing every group at ``round(budget * steps)`` steps, step 0 first.

        Args:
            budget: Fraction of steps to compute.
            warp: Computed step ``i`` of ``K`` sits at ``steps * (i / K) ** warp``: 1 spaces them evenly, above 1
                packs them towards the first steps, below 1 towards the last ones.
        """
        count = int(np.clip(round(budget * self.steps), 1, self.steps))
        positions = np.floor(self.steps * (np.arange(count) / count) ** warp).astype(int)
        computed = np.zeros(self.steps, dtype=bool)
        for position in positions:  # keep `count` distinct steps: slide collisions to the next free one
            free = np.flatnonzero(~computed[position:])
            computed[position + free[0] if free.size else np.flatnonzero(~computed)[-1]] = True
        table = np.full((self.steps, self.groups), int(Action.FORECAST), dtype=np.int64)
        table[computed] = int(Action.COMPUTE)
        return table

    def evaluate(self, tables: Sequence[np.ndarray]) -> np.ndarray:
        """Mean PSNR of each schedule over the search samples."""
        n = len(self.seeds)
        scores: list[float] = []
        for start in range(0, len(tables), self.tables_per_batch):
            chunk = tables[start : start + self.tables_per_batch]
            pairs = self._psnr_of_pairs([t for t in chunk for _ in range(n)], list(range(n)) * len(chunk))
            scores.extend(float(v) for v in pairs.view(len(chunk), n).mean(dim=1))
        self.evaluations += len(tables)
        return np.asarray(scores)

    def evaluate_per_sample(self, tables: Sequence[np.ndarray], samples: Sequence[int]) -> np.ndarray:
        """PSNR of each ``(table, sample)`` pair: ``tables[i]`` played on search sample ``samples[i]`` alone.

        Pairs are evaluated ``tables_per_batch * samples`` to a generation, the batch :meth:`evaluate` runs.
        """
        if len(tables) != len(samples):
            raise ValueError(f"Give one search sample per table: got {len(tables)} tables, {len(samples)} samples.")
        rows = self.tables_per_batch * len(self.seeds)
        scores = [
            self._psnr_of_pairs(tables[i : i + rows], samples[i : i + rows]) for i in range(0, len(tables), rows)
        ]
        np.add.at(self.sample_evaluations, np.asarray(samples, dtype=np.int64), 1)
        return torch.cat(scores).double().numpy() if scores else np.zeros(0)

    def _psnr_of_pairs(self, tables: Sequence[np.ndarray], samples: Sequence[int]) -> torch.Tensor:
        """One batched generation playing ``tables[i]`` on sample ``samples[i]``; capped PSNR per pair."""
        per_row = torch.as_tensor(np.stack(tables), dtype=torch.int64)
        policy = _TablePolicy(per_row, self.engine_options.forecast_order)
        with runtime.cached(self.pipe.transformer, policy, self.engine_options), torch.inference_mode():
            images = generate(
                self.pipe,
                [self.conditions[s] for s in samples],
                [self.seeds[s] for s in samples],
                self.steps,
                self.guidance,
            )
        return capped_psnr(images, self.reference[list(samples)], self.psnr_cap)

    def search(
        self,
        budget: float,
        sweeps: int = 3,
        moves: Sequence[int] = (-2, -1, 1, 2),
        cell_moves: Sequence[int] = (-1, 1),
        per_group: bool = True,
        warps: Sequence[float] = (0.9, 1.0, 1.1, 1.2, 1.3),
        log: Callable[[str], None] | None = None,
    ) -> SearchResult:
        """Improves the evenly spaced schedule of ``budget`` by moving computed steps, then computed cells.

        Args:
            budget: Fraction of the blocks' FLOPs to spend.
            sweeps: Passes over the computed steps (and again over the computed cells); a pass without an
                improvement ends the phase early.
            moves: Shifts (in steps) tried for each computed step.
            cell_moves: Shifts tried for each computed cell (there are ``groups`` times more cells than steps).
            per_group: Also move single groups' computed cells once whole steps no longer improve.
            warps: Spacings of the starting schedules tried (see :meth:`evenly_spaced`); the search starts from
                the best. ``start_psnr`` of the result is the evenly spaced one's (warp 1).
            log: Called with a line after each pass.
        """
        first = self.evaluations
        starts = [self.evenly_spaced(budget, warp) for warp in warps]
        scores = self.evaluate(starts)
        start_psnr = float(scores[list(warps).index(1.0)]) if 1.0 in warps else float(scores[0])
        best_table, best = starts[int(np.argmax(scores))], float(np.max(scores))
        phases = [False, True] if per_group and self.groups > 1 else [False]
        for cells in phases:
            for sweep in range(sweeps):
                improved = False
                for unit in self._units(best_table, cells):
                    candidates = self._moves(best_table, unit, cell_moves if cells else moves)
                    if not candidates:
                        continue
                    scores = self.evaluate(candidates)
                    top = int(np.argmax(scores))
                    if scores[top] > best + 1e-4:
                        best_table, best, improved = candidates[top], float(scores[top]), True
                if log is not None:
                    kind = "cells" if cells else "steps"
                    log(f"budget {budget:g}: {kind} pass {sweep + 1}: {best:.2f} dB (start {start_psnr:.2f} dB)")
                if not improved:
                    break
        return SearchResult(budget, best_table, best, start_psnr, self.evaluations - first)

    def search_per_sample(
        self,
        budget: float,
        sweeps: int = 3,
        moves: Sequence[int] = (-2, -1, 1, 2),
        cell_moves: Sequence[int] = (-1, 1),
        per_group: bool = True,
        warps: Sequence[float] = (0.9, 1.0, 1.1, 1.2, 1.3),
        log: Callable[[str], None] | None = None,
    ) -> list[SearchResult]:
        """:meth:`search` run for each search sample on its own, all samples' candidates in the same generations.

        The result for sample ``i`` is, up to rounding, the schedule :meth:`search` finds on a search set of sample
        ``i`` alone: a per-sample oracle, chosen against that sample's uncached output. It costs what :meth:`search`
        costs on all samples: each candidate is played on one sample instead of all of them.

        Returns:
            One result per search sample, in order; ``psnr`` and ``start_psnr`` are that sample's.
        """
        n = len(self.seeds)
        first = self.sample_evaluations.copy()
        starts = [self.evenly_spaced(budget, warp) for warp in warps]
        scores = self.evaluate_per_sample([t for t in starts for _ in range(n)], list(range(n)) * len(starts))
        scores = scores.reshape(len(starts), n)
        start_psnr = scores[list(warps).index(1.0) if 1.0 in warps else 0]
        tables = [starts[int(i)].copy() for i in scores.argmax(axis=0)]
        best = scores.max(axis=0)
        phases = [False, True] if per_group and self.groups > 1 else [False]
        for cells in phases:
            active = np.ones(n, dtype=bool)
            for sweep in range(sweeps):
                improved = np.zeros(n, dtype=bool)
                units = [self._units(tables[s], cells) if active[s] else [] for s in range(n)]
                for k in range(max(len(u) for u in units)):
                    candidates: list[np.ndarray] = []
                    owners: list[int] = []
                    for s in range(n):
                        if k < len(units[s]):
                            found = self._moves(tables[s], units[s][k], cell_moves if cells else moves)
                            candidates += found
                            owners += [s] * len(found)
                    if not candidates:
                        continue
                    values = self.evaluate_per_sample(candidates, owners)
                    for s in set(owners):
                        mine = [i for i, owner in enumerate(owners) if owner == s]
                        top = mine[int(np.argmax(values[mine]))]
                        if values[top] > best[s] + 1e-4:
                            tables[s], best[s], improved[s] = candidates[top], float(values[top]), True
                active &= improved
                if log is not None:
                    kind = "cells" if cells else "steps"
                    log(
                        f"budget {budget:g} per sample: {kind} pass {sweep + 1}: {best.mean():.2f} dB "
                        f"(start {start_psnr.mean():.2f} dB, {int(active.sum())} of {n} samples still improving)"
                    )
                if not active.any():
                    break
        evaluations = self.sample_evaluations - first
        return [
            SearchResult(budget, tables[s], float(best[s]), float(start_psnr[s]), int(evaluations[s]))
            for s in range(n)
        ]

    def _units(self, table: np.ndarray, cells: bool) -> list[tuple[int, int | None]]:
        computed = table == int(Action.COMPUTE)
        if not cells:
            return [(int(s), None) for s in np.flatnonzero(computed.all(axis=1)) if s > 0]
        return [(int(s), int(g)) for s, g in zip(*np.nonzero(computed), strict=True) if s > 0]

    def _moves(self, table: np.ndarray, unit: tuple[int, int | None], moves: Sequence[int]) -> list[np.ndarray]:
        """The tables with ``unit`` (a whole computed step, or one group's computed cell) shifted by each move."""
        step, group = unit
        columns = slice(None) if group is None else slice(group, group + 1)
        out = []
        for shift in moves:
            target = step + shift
            if not 0 < target < self.steps:
                continue
            if (table[target, columns] == int(Action.COMPUTE)).any():
                continue
            candidate = table.copy()
            candidate[target, columns] = table[step, columns]
            candidate[step, columns] = int(Action.FORECAST)
            out.append(candidate)
        return out


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

    def run(
        self,
        setting: SamplingSetting,
        budget: float,
        options: dict[str, Any],
        per_sample: bool,
        log: Callable[[str], None] | None,
    ) -> SearchResult | list[SearchResult]:
        """Searches ``budget``'s schedule at ``setting`` (its references are generated on first use)."""
        self.schedulers.use(setting.scheduler)
        if setting not in self.searches:
            self.searches[setting] = ScheduleSearch(self.pipe, steps=setting.steps, **self.arguments)
        search = self.searches[setting]
        method = search.search_per_sample if per_sample else search.search
        prefix = f"{setting.label}: "
        return method(budget, **options, log=None if log is None else lambda line: log(prefix + line))


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
    sweeps_at = sweeps_at or {}
    options = {s: {"sweeps": sweeps_at.get(s, sweeps), "per_group": per_group} for s in settings}
    jobs = [(setting, float(budget)) for setting in settings for budget in budgets]
    found: dict[tuple[SamplingSetting, float], Any] = {}
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
