"""The work items the pipeline workers run, each a pure function of its item (so Ray may run it again anywhere).

Each task takes the worker (its pipeline ``worker.pipe``, its ``worker.schedulers`` and a ``worker.cache`` for what
it reuses, such as the uncached images of a sample set) and one item, and returns the same result on any worker:
the item fixes the batch it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from agents.schedule_search import Generation, ScheduleSearch
from bench.methods import Method, Settings
from bench.runner import measure_all, uncached_reference
from envs.sampling import SamplingSetting
from reporting.evaluation import EvaluationPoint, evaluate_policy, timed_generation


@dataclass(frozen=True)
class SearchSamples:
    """The samples and settings a schedule search scores its tables on (one :class:`ScheduleSearch` per worker).

    Attributes:
        scheduler: Scheduler name (``"default"``: the pipeline's own).
        conditions: One condition per search sample.
        seeds: One seed per search sample.
        steps: Denoising steps.
        guidance: Guidance scale.
        engine_options: ``groups``, ``probe_blocks`` and ``forecast_order``.
    """

    scheduler: str
    conditions: tuple[Any, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    engine_options: tuple[tuple[str, Any], ...]


def score_generation(worker: Any, item: tuple[SearchSamples, Generation]) -> torch.Tensor:
    """The capped PSNR of each row of one search generation (the search samples' references made once here)."""
    samples, generation = item
    worker.schedulers.use(samples.scheduler)
    key = ("search", samples)
    if key not in worker.cache:
        worker.cache[key] = ScheduleSearch(
            worker.pipe,
            samples.conditions,
            samples.seeds,
            samples.steps,
            samples.guidance,
            dict(samples.engine_options),
        )
    return worker.cache[key].score(generation)


@dataclass
class ValidationPoint:
    """One budget of a validation: ``evaluate_policy`` of ``policy`` at ``setting``.

    Attributes:
        setting: Scheduler and step count.
        policy: The policy (or an exported policy's path).
        budget: The budget (``None``: the policy's own behaviour).
        options: The other arguments of :func:`reporting.evaluation.evaluate_policy` (conditions, seeds, guidance,
            engine options, repeats, replay); ``reference`` is made here, once per worker and setting.
    """

    setting: SamplingSetting
    policy: Any
    budget: float | None
    options: dict[str, Any] = field(default_factory=dict)


def evaluate_point(worker: Any, item: ValidationPoint) -> EvaluationPoint:
    """Evaluates the policy at one budget against the uncached generation of the same samples."""
    options = {k: v for k, v in item.options.items() if k not in ("reference", "steps", "budgets")}
    conditions, seeds, guidance = options["conditions"], options["seeds"], options["guidance"]
    worker.schedulers.use(item.setting.scheduler)
    key = ("validation", item.setting, tuple(conditions), tuple(seeds), guidance)
    if key not in worker.cache:
        worker.cache[key] = timed_generation(worker.pipe, conditions, seeds, item.setting.steps, guidance)
    (point,) = evaluate_policy(
        worker.pipe,
        item.policy,
        steps=item.setting.steps,
        budgets=[item.budget],
        reference=worker.cache[key],
        **options,
    )
    return point


@dataclass
class BenchmarkRows:
    """Benchmark methods measured together on one worker, against its own uncached timings.

    Attributes:
        methods: The methods (each at one knob).
        settings: The generation settings.
        repeats: Timing rounds.
        psnr_cap: PSNR given to identical images.
    """

    methods: list[Method]
    settings: Settings
    repeats: int
    psnr_cap: float


def measure_rows(worker: Any, item: BenchmarkRows) -> tuple[list[dict[str, Any]], list[tuple[int, Exception]]]:
    """``bench.runner.measure_all`` of the item's methods here; their rows, and ``(method index, error)`` of each
    method that raised."""
    key = ("benchmark", item.settings)
    if key not in worker.cache:
        worker.cache[key] = uncached_reference(worker.pipe, item.settings)
    failures: list[tuple[int, Exception]] = []
    index = {id(method): i for i, method in enumerate(item.methods)}
    rows = measure_all(
        worker.pipe,
        item.methods,
        item.settings,
        worker.cache[key],
        item.repeats,
        item.psnr_cap,
        lambda method, error: failures.append((index[id(method)], error)),
    )
    return rows, failures
