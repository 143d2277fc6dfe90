"""The per-sample oracle: an upper bound on what deciding per sample could add over one shared schedule.

For each budget, :meth:`reporting.schedule_search.ScheduleSearch.search_per_sample` searches a schedule for each of the
first ``oracle.samples`` benchmark samples on its own, against that sample's uncached output. No causal policy can
see that output, so its rows (family ``"oracle"``, ``causal: False``) bound from above what a policy reading the
sample's own trajectory can reach with the engine's moves. Every per-sample schedule keeps the computed cells per
group of the shared schedule the search starts from, so the FLOPs are the shared schedule's; they are measured
through the engine, playing every sample's own schedule in one generation. The oracle is not timed (no wall
speedup): it is a bound on quality, not a method to deploy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from policies import Policy
from reporting.evaluation import class_accuracy
from reporting.setting_search import search_schedules
from runtime import EngineOptions, Observation
from zoo.metrics import capped_psnr, ssim

from .config import BenchmarkConfig, OracleConfig
from .methods import EngineMethod, Settings
from .runner import Reference, fd

ORACLE_NAME = "per-sample oracle (not causal)"
"""Method name of the oracle's rows."""


class PerSampleSchedulePolicy(Policy):
    """Plays one ``(steps, groups)`` schedule per sample, by step index (the first ones for a smaller batch).

    Args:
        schedules: One ``(steps, groups)`` action table per sample.
        engine_options: The options the schedules were searched with (``groups`` and ``forecast_order`` set).
    """

    def __init__(self, schedules: Sequence[np.ndarray], engine_options: EngineOptions) -> None:
        self.tables = torch.as_tensor(np.stack(schedules), dtype=torch.int64)  # (samples, steps, groups)
        self.num_groups = int(self.tables.shape[2])
        self.trained_options = engine_options
        self.forecast_order = engine_options.forecast_order or 1

    def act(self, observation: Observation) -> torch.Tensor:
        if observation.num_samples > self.tables.shape[0]:
            raise ValueError(f"{observation.num_samples} samples but schedules for {self.tables.shape[0]}.")
        step = min(max(int(observation.step_index), 0), self.tables.shape[1] - 1)
        return self.tables[: observation.num_samples, step].clone()


class PerSampleOracle:
    """The oracle's rows at each budget on the benchmark's first samples.

    Args:
        oracle: Samples, budgets, sweeps and workers of the search.
        budgets: Compute budgets (the learned policy's, unless ``oracle.budgets`` names others).
        engine_options: The learned policy's trained options.
        model: Model name or folder (the worker processes load it; unused with one worker).
        scheduler: Scheduler name, as for the benchmark.
    """

    name = ORACLE_NAME
    family = "oracle"

    def __init__(
        self,
        oracle: OracleConfig,
        budgets: Sequence[float],
        engine_options: EngineOptions,
        model: str,
        scheduler: str,
    ) -> None:
        self.oracle = oracle
        self.budgets = list(budgets)
        self.engine_options = engine_options
        self.model, self.scheduler = model, scheduler
        self.knob = "budgets=" + ",".join(f"{b:g}" for b in self.budgets)

    def rows(
        self, pipe: Any, settings: Settings, reference: Reference, psnr_cap: float, echo: Callable[[str], None]
    ) -> list[dict[str, Any]]:
        """Searches the per-sample schedules at every budget and measures them; one row per budget."""
        count = min(self.oracle.samples, len(settings.seeds))
        started = time.perf_counter()
        searched = search_schedules(
            self.model,
            self.budgets,
            scheduler=self.scheduler,
            conditions=list(settings.conditions[:count]),
            seeds=list(settings.seeds[:count]),
            steps=settings.steps,
            guidance=settings.guidance,
            engine_options=self.engine_options,
            sweeps=self.oracle.sweeps,
            workers=self.oracle.workers,
            pipe=pipe,
            per_sample=True,
        )
        seconds = time.perf_counter() - started
        echo(f"{self.name}: searched {len(self.budgets)} budget(s) on {count} samples in {seconds:.0f} s")
        rows = []
        for budget, results in zip(self.budgets, searched, strict=True):
            schedules = [result.schedule for result in results]
            rows.append(self.measure(pipe, settings, reference, budget, schedules, psnr_cap))
            rows[-1]["search_psnr"] = float(np.mean([result.psnr for result in results]))
        return rows

    def measure(
        self,
        pipe: Any,
        settings: Settings,
        reference: Reference,
        budget: float,
        schedules: Sequence[np.ndarray],
        psnr_cap: float,
    ) -> dict[str, Any]:
        """Plays every sample's schedule through the engine on the first ``len(schedules)`` samples; their row."""
        from .adaptivity import tenth_percentile

        count = len(schedules)
        policy = PerSampleSchedulePolicy(schedules, self.engine_options)
        method = EngineMethod(self.name, self.family, f"budget={budget:g}", lambda: policy, self.engine_options)
        try:
            method.attach(pipe, settings)  # the engine measures its block costs here
            with method.generation():
                images = settings.run(pipe, samples=count)
            speedup, details = method.flops_speedup(), method.info()
        finally:
            method.detach(pipe)
        per_sample = [float(v) for v in capped_psnr(images, reference.images[:count], psnr_cap)]
        return {
            "method": self.name,
            "family": self.family,
            "knob": method.knob,
            "flops_speedup": float(speedup),
            "wall_speedup": None,
            "wall_speedups": [],
            "psnr": float(np.mean(per_sample)),
            "psnr_p10": tenth_percentile(per_sample),
            "psnr_per_sample": per_sample,
            "ssim": float(ssim(images, reference.images[:count]).mean()),
            "class_acc": class_accuracy(images, settings.conditions[:count]),
            "fd": fd(images),
            "flops_source": "engine",
            "seconds": None,
            "uncached_seconds": None,
            "causal": False,
            "samples": count,
            **details,
        }


def build_upper_bounds(config: BenchmarkConfig, policy: Any | None) -> list[PerSampleOracle]:
    """The oracle of ``config.oracle`` (none when its ``samples`` is 0, or without a learned policy to bound)."""
    budgets = config.oracle.budgets if config.oracle.budgets is not None else config.methods.learned.budgets
    if config.oracle.samples == 0 or policy is None or not budgets:
        return []
    options = policy.trained_options
    return [PerSampleOracle(config.oracle, budgets, options, str(config.model), config.scheduler)]
