"""The schedule search with its generations scored on the pipeline workers.

Every budget's search loop (:meth:`agents.schedule_search.ScheduleSearch.search_steps`) runs here, in the driver;
at each round the generations all loops ask for are scored at once on the workers (``ActorPool``), and each loop
gets its own scores back. A generation is a fixed batch of ``(table, sample)`` rows, the one the local search runs,
so the searched schedules are those of a local search, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agents.schedule_search import Generation, ScheduleSearch, SearchResult, SearchSteps

from .cluster import WorkerPool
from .tasks import SearchSamples, score_generation


def search_schedules(
    pool: WorkerPool,
    budgets: Sequence[float],
    *,
    scheduler: str = "default",
    conditions: Sequence[int | str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    engine_options: dict[str, Any],
    sweeps: int = 2,
    per_group: bool = True,
    log: Callable[[str], None] | None = None,
    per_sample: bool = False,
    **_local: Any,
) -> list[SearchResult] | list[list[SearchResult]]:
    """:func:`agents.schedule_search.search_schedules` on the pool's workers: same arguments, same results.

    The local-only arguments (``model``, ``workers``, ``pipe``, ``env_config``) are ignored: the workers hold the
    pipeline.

    Returns:
        One result per budget, in the order given; with ``per_sample``, one list of per-sample results per budget.
    """
    samples = SearchSamples(
        scheduler, tuple(conditions), tuple(seeds), steps, guidance, tuple(sorted(engine_options.items()))
    )
    search = ScheduleSearch(None, conditions, seeds, steps, guidance, engine_options)  # the loops' logic only
    method = search.search_per_sample_steps if per_sample else search.search_steps
    loops: dict[int, SearchSteps] = {
        i: method(budget, sweeps=sweeps, per_group=per_group, log=log) for i, budget in enumerate(budgets)
    }
    results: dict[int, Any] = {}
    pending: dict[int, list[Generation]] = {}
    for i, loop in loops.items():
        _advance(i, loop, None, pending, results)
    while pending:
        order = sorted(pending)
        items = [(samples, generation) for i in order for generation in pending[i]]
        scores = pool.map(score_generation, items)
        for i in order:
            count = len(pending.pop(i))
            mine, scores = scores[:count], scores[count:]
            _advance(i, loops[i], mine, pending, results)
    return [results[i] for i in range(len(budgets))]


def _advance(
    index: int, loop: SearchSteps, scores: list[Any] | None, pending: dict[int, list[Generation]], results: dict
) -> None:
    """Sends a loop its scores (or starts it); keeps what it asks for next, or its result."""
    try:
        pending[index] = next(loop) if scores is None else loop.send(scores)
    except StopIteration as stop:
        results[index] = stop.value
