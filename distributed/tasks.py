"""The work items the pipeline workers run, each a pure function of its item (so Ray may run it again anywhere).

Each task takes the worker (its pipeline ``worker.pipe``, its ``worker.schedulers`` and a ``worker.cache`` for what
it reuses, such as the uncached images of a sample set) and one item, and returns the same result on any worker:
the item fixes the batch it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bench.methods import Method, Settings
from bench.runner import measure_all, uncached_reference
from envs.sampling import SamplingSetting
from reporting.evaluation import EvaluationPoint, evaluate_policy, timed_generation
from reporting.schedule_search import Generation
from reporting.setting_search import SettingSearches
from runtime import EngineOptions


@dataclass(frozen=True)
class SearchSamples:
    """The samples a teacher's searches score their tables on, at every anchor setting.

    Attributes:
        conditions: One condition per search sample.
        seeds: One seed per search sample.
        guidance: Guidance scale.
        engine_options: The engine options the tables are played with (``groups`` and ``forecast_order`` set).
    """

    conditions: tuple[Any, ...]
    seeds: tuple[int, ...]
    guidance: float
    engine_options: EngineOptions


def score_generation(worker: Any, item: tuple[SearchSamples, SamplingSetting, Generation]) -> torch.Tensor:
    """The capped PSNR of each row of one search generation at its setting: the worker's pipeline switched to the
    setting's scheduler, the search samples' references at that setting made once here."""
    samples, setting, generation = item
    key = ("search", samples)
    if key not in worker.cache:
        arguments = {
            "conditions": list(samples.conditions),
            "seeds": list(samples.seeds),
            "guidance": samples.guidance,
            "engine_options": samples.engine_options,
        }
        worker.cache[key] = SettingSearches(worker.pipe, worker.schedulers, arguments)
    return worker.cache[key].score(setting, generation)


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
        worker.pipe,  # the pipeline itself: a policy reading its scheduler (solver_order) sees the switched one
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
