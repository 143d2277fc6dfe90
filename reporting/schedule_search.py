"""Searches static cache schedules on training samples: the teacher a learned policy is warm-started from.

A schedule is a ``(steps, groups)`` table of COMPUTE / FORECAST actions. For a compute budget ``b`` the search starts
from the best of a few schedules that compute every group at ``round(b * steps)`` steps, evenly spaced (TaylorSeer's
schedule) or packed towards the first steps, and improves it by local search at a constant cost: it moves one
computed step (then one group's computed cell) a few steps earlier or later and keeps the move that raises the mean
PSNR against the uncached images the most. Every candidate of a round is evaluated in one batched generation, one
table per block of samples.

The search loops (:meth:`ScheduleSearch.search_steps`, :meth:`ScheduleSearch.search_per_sample_steps`) are generators:
they yield the generations they need scored (:class:`Generation`, a fixed unit of ``(table, sample)`` pairs whose
make-up depends only on the search, never on where it runs) and receive their PSNRs. :meth:`ScheduleSearch.search`
scores them here; :func:`reporting.setting_search.search_in_rounds` runs the loops of every anchor setting and budget
side by side and has each round's generations scored elsewhere (``distributed``: on Ray workers), with the same
results. :mod:`reporting.setting_search` runs the searches of a teacher (every setting and budget).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import runtime
from envs.pipelines import generate
from policies import Policy
from runtime import Action, EngineOptions, Observation
from zoo.metrics import capped_psnr


class _TablePolicy(Policy):
    """Plays one ``(steps, groups)`` table per sample, by step index."""

    def __init__(self, tables: torch.Tensor, forecast_order: int) -> None:
        self.tables = tables
        self.forecast_order = forecast_order

    def act(self, observation: Observation) -> torch.Tensor:
        step = min(int(observation.step_index), self.tables.shape[1] - 1)
        return self.tables[:, step].clone()


@dataclass(frozen=True)
class Generation:
    """One batched generation of a search: ``tables[i]`` played on search sample ``samples[i]``.

    Attributes:
        tables: ``(steps, groups)`` action tables, one per row of the batch.
        samples: Index of the search sample each row generates.
    """

    tables: tuple[np.ndarray, ...]
    samples: tuple[int, ...]


SearchSteps = Generator[list[Generation], list[torch.Tensor], Any]
"""A search loop: yields the generations it needs, receives one capped-PSNR vector (one value per row) for each, and
returns its result."""


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
            after); ``None`` for a search whose generations are scored elsewhere (see :meth:`search_steps`).
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
        self._reference: torch.Tensor | None = None
        if pipe is not None:
            self._reference = self.reference

    @property
    def reference(self) -> torch.Tensor:
        """The uncached images of the search samples (generated in one batch, on first use)."""
        if self._reference is None:
            if self.pipe is None:
                raise RuntimeError("This ScheduleSearch has no pipeline: its generations are scored elsewhere.")
            with torch.inference_mode():
                self._reference = generate(self.pipe, self.conditions, self.seeds, self.steps, self.guidance)
        return self._reference

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
        return self.run(self._evaluate_steps(tables))

    def evaluate_per_sample(self, tables: Sequence[np.ndarray], samples: Sequence[int]) -> np.ndarray:
        """PSNR of each ``(table, sample)`` pair: ``tables[i]`` played on search sample ``samples[i]`` alone.

        Pairs are evaluated ``tables_per_batch * samples`` to a generation, the batch :meth:`evaluate` runs.
        """
        return self.run(self._evaluate_per_sample_steps(tables, samples))

    def score(self, generation: Generation) -> torch.Tensor:
        """Runs one generation here; the capped PSNR of each of its rows."""
        return self._psnr_of_pairs(generation.tables, generation.samples)

    def run(self, steps: SearchSteps) -> Any:
        """Drives a search loop, scoring each generation it asks for here, in order; returns its result."""
        try:
            request = next(steps)
            while True:
                request = steps.send([self.score(generation) for generation in request])
        except StopIteration as stop:
            return stop.value

    def _evaluate_steps(self, tables: Sequence[np.ndarray]) -> SearchSteps:
        """Mean PSNR of each schedule: one generation of ``tables_per_batch`` tables × all samples per chunk."""
        n = len(self.seeds)
        chunks = [
            tables[start : start + self.tables_per_batch] for start in range(0, len(tables), self.tables_per_batch)
        ]
        request = [
            Generation(tuple(t for t in chunk for _ in range(n)), tuple(range(n)) * len(chunk)) for chunk in chunks
        ]
        scored = yield request
        scores: list[float] = []
        for chunk, pairs in zip(chunks, scored, strict=True):
            scores.extend(float(v) for v in pairs.view(len(chunk), n).mean(dim=1))
        self.evaluations += len(tables)
        return np.asarray(scores)

    def _evaluate_per_sample_steps(self, tables: Sequence[np.ndarray], samples: Sequence[int]) -> SearchSteps:
        if len(tables) != len(samples):
            raise ValueError(f"Give one search sample per table: got {len(tables)} tables, {len(samples)} samples.")
        rows = self.tables_per_batch * len(self.seeds)
        request = [
            Generation(tuple(tables[i : i + rows]), tuple(int(s) for s in samples[i : i + rows]))
            for i in range(0, len(tables), rows)
        ]
        scores = (yield request) if request else []
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

    def search(self, budget: float, **options: Any) -> SearchResult:
        """:meth:`search_steps` run here: every generation it asks for is scored in this pipeline."""
        return self.run(self.search_steps(budget, **options))

    def search_per_sample(self, budget: float, **options: Any) -> list[SearchResult]:
        """:meth:`search_per_sample_steps` run here: every generation it asks for is scored in this pipeline."""
        return self.run(self.search_per_sample_steps(budget, **options))

    def search_steps(
        self,
        budget: float,
        sweeps: int = 3,
        moves: Sequence[int] = (-2, -1, 1, 2),
        cell_moves: Sequence[int] = (-1, 1),
        per_group: bool = True,
        warps: Sequence[float] = (0.9, 1.0, 1.1, 1.2, 1.3),
        log: Callable[[str], None] | None = None,
    ) -> SearchSteps:
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

        Returns:
            (As the generator's value.) The searched schedule; ``evaluations`` counts this search's schedules only.
        """
        evaluations = len(warps)
        starts = [self.evenly_spaced(budget, warp) for warp in warps]
        scores = yield from self._evaluate_steps(starts)
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
                    scores = yield from self._evaluate_steps(candidates)
                    evaluations += len(candidates)
                    top = int(np.argmax(scores))
                    if scores[top] > best + 1e-4:
                        best_table, best, improved = candidates[top], float(scores[top]), True
                if log is not None:
                    kind = "cells" if cells else "steps"
                    log(f"budget {budget:g}: {kind} pass {sweep + 1}: {best:.2f} dB (start {start_psnr:.2f} dB)")
                if not improved:
                    break
        return SearchResult(budget, best_table, best, start_psnr, evaluations)

    def search_per_sample_steps(
        self,
        budget: float,
        sweeps: int = 3,
        moves: Sequence[int] = (-2, -1, 1, 2),
        cell_moves: Sequence[int] = (-1, 1),
        per_group: bool = True,
        warps: Sequence[float] = (0.9, 1.0, 1.1, 1.2, 1.3),
        log: Callable[[str], None] | None = None,
    ) -> SearchSteps:
        """:meth:`search_steps` run for each search sample on its own, all samples' candidates in the same generations.

        The result for sample ``i`` is, up to rounding, the schedule :meth:`search` finds on a search set of sample
        ``i`` alone: a per-sample oracle, chosen against that sample's uncached output. It costs what :meth:`search`
        costs on all samples: each candidate is played on one sample instead of all of them.

        Returns:
            (As the generator's value.) One result per search sample, in order; ``psnr`` and ``start_psnr`` are that
            sample's.
        """
        n = len(self.seeds)
        evaluations = np.full(n, len(warps), dtype=np.int64)
        starts = [self.evenly_spaced(budget, warp) for warp in warps]
        scores = yield from self._evaluate_per_sample_steps(
            [t for t in starts for _ in range(n)], list(range(n)) * len(starts)
        )
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
                    values = yield from self._evaluate_per_sample_steps(candidates, owners)
                    np.add.at(evaluations, np.asarray(owners, dtype=np.int64), 1)
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
