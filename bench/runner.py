"""Measuring every method at every knob against the uncached pipeline, in one process.

First, for each knob, an untimed warm-up with the method attached (and, for methods without their own FLOP
counters, one generation under ``FlopCounterMode``). Then ``repeats`` timing rounds over all knobs, each in the
order ``U M M M U M M M U ...``: ``U`` a generation of the plain, unhooked pipeline, ``M`` one of a method, timed the
same way. A method run's ratio is the mean of the two uncached runs around it over its own time, and its wall
speedup is the median of its ratios over the rounds. Rounds alternate their order, so a method's timings are spread
over the whole run. The images of a method's first timed run are scored against the uncached images of the same
seeds.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from reporting.evaluation import class_accuracy, fidelity, timed_generation
from zoo.metrics import capped_psnr

from .adaptivity import adaptivity_summary, tenth_percentile
from .config import BenchmarkConfig
from .methods import EngineMethod, Method, Settings
from .report import summarize

FLOPS_CHECK_TOLERANCE = 0.03
"""Largest relative difference between the engine's FLOP speedup and FlopCounterMode's that passes the check."""


@dataclass
class Reference:
    """The uncached generation every method is compared with.

    Attributes:
        images: Uncached images of the benchmark's seeds and conditions.
        flops: FLOPs of that generation, counted with ``FlopCounterMode``.
    """

    images: torch.Tensor
    flops: int


def pipeline_default(pipe: Any, name: str) -> Any:
    """The default of argument ``name`` of the pipeline's ``__call__`` (e.g. ``num_inference_steps``)."""
    pipe = getattr(pipe, "pipe", pipe)  # an envs.pipelines.Sampler: its pipeline's
    parameter = inspect.signature(pipe.__call__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{type(pipe).__name__}.__call__ has no default {name}; set it in the benchmark config.")
    return parameter.default


def make_settings(pipe: Any, config: BenchmarkConfig) -> Settings:
    """The generation settings of ``config`` for ``pipe`` (its default steps and guidance where not set)."""
    steps = config.steps if config.steps is not None else int(pipeline_default(pipe, "num_inference_steps"))
    guidance = config.guidance if config.guidance is not None else float(pipeline_default(pipe, "guidance_scale"))
    return Settings(tuple(config.conditions), tuple(config.seed_list), steps, guidance, config.warmup_steps)


def count_flops(pipe: Any, settings: Settings) -> tuple[int, torch.Tensor]:
    """FLOPs of one full generation, counted with ``FlopCounterMode``, and its images."""
    counter = FlopCounterMode(display=False)
    with counter:
        images = settings.run(pipe)
    return counter.get_total_flops(), images


def uncached_reference(pipe: Any, settings: Settings) -> Reference:
    """The uncached images and FLOPs (the pipeline must have no cache attached)."""
    flops, images = count_flops(pipe, settings)
    return Reference(images=images, flops=flops)


def _timed(pipe: Any, settings: Settings) -> tuple[torch.Tensor, float]:
    return timed_generation(pipe, settings.conditions, settings.seeds, settings.steps, settings.guidance)


METHODS_PER_UNCACHED_RUN = 3
"""Method runs between two uncached runs in a timing round; each is timed against the mean of those two."""


@dataclass
class _Timing:
    """What the timing rounds collect for one method at one knob."""

    method: Method
    counted_speedup: float | None = None
    images: torch.Tensor | None = None
    own_speedup: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    uncached_seconds: list[float] = field(default_factory=list)
    failed: bool = False


def prepare_method(pipe: Any, method: Method, settings: Settings, reference: Reference) -> _Timing:
    """One-off, untimed work for a method: its preparation, a warm-up and, without own counters, its FLOPs.

    The method is detached again afterwards, also when it fails.
    """
    method.prepare(pipe, settings)
    timing = _Timing(method)
    try:  # detach also after a failed attach: whatever it hooked must not stay on the transformer
        method.attach(pipe, settings)
        with method.generation():
            settings.run(pipe, steps=settings.warmup_steps)
        if not method.counts_own_flops:
            with method.generation():
                flops, _ = count_flops(pipe, settings)
            timing.counted_speedup = reference.flops / flops
    finally:
        method.detach(pipe)
    return timing


def time_method(pipe: Any, timing: _Timing, settings: Settings) -> float:
    """Attaches the method, times one generation with it (keeping the first one's images and counters), detaches."""
    method = timing.method
    try:
        method.attach(pipe, settings)
        with method.generation():
            output, seconds = _timed(pipe, settings)
        if timing.images is None:
            timing.images, timing.own_speedup, timing.details = output, method.flops_speedup(), method.info()
    finally:
        method.detach(pipe)
    return seconds


def timing_round(
    pipe: Any,
    timings: Sequence[_Timing],
    settings: Settings,
    on_failure: Callable[[_Timing, Exception], None],
    tick: Callable[[], None],
) -> None:
    """One timing round: uncached runs with :data:`METHODS_PER_UNCACHED_RUN` method runs between each two.

    A method run's ratio is the mean of the uncached runs just before and just after it over its own time, so
    drift of the machine's speed within that window cancels to first order.

    Args:
        pipe: The pipeline, without any cache attached.
        timings: The methods of this round, in the order to run them.
        settings: Generation settings.
        on_failure: Called with a method's timing and the exception when its run raises; it gets no ratio.
        tick: Called after each method run.
    """
    _, before = _timed(pipe, settings)
    for start in range(0, len(timings), METHODS_PER_UNCACHED_RUN):
        batch: list[tuple[_Timing, float]] = []
        for timing in timings[start : start + METHODS_PER_UNCACHED_RUN]:
            try:
                batch.append((timing, time_method(pipe, timing, settings)))
            except Exception as error:  # one method failing (e.g. a cache's bug) must not lose the others
                on_failure(timing, error)
            tick()
        if not batch:
            continue
        _, after = _timed(pipe, settings)
        plain = (before + after) / 2
        for timing, seconds in batch:
            timing.ratios.append(plain / seconds)
            timing.seconds.append(seconds)
            timing.uncached_seconds.append(plain)
        before = after


def make_row(timing: _Timing, settings: Settings, reference: Reference, psnr_cap: float) -> dict[str, Any]:
    """The results row of a method whose timing rounds are done."""
    method = timing.method
    psnr_value, ssim_value = fidelity(timing.images, reference.images, psnr_cap)
    speedup = timing.own_speedup if timing.own_speedup is not None else timing.counted_speedup
    per_sample = [float(value) for value in capped_psnr(timing.images, reference.images, psnr_cap)]
    return {
        "method": method.name,
        "family": method.family,
        "knob": method.knob,
        "flops_speedup": float(speedup),
        "wall_speedup": float(statistics.median(timing.ratios)),
        "wall_speedups": [float(ratio) for ratio in timing.ratios],
        "psnr": psnr_value,
        "psnr_p10": tenth_percentile(per_sample),
        "psnr_per_sample": per_sample,
        "ssim": ssim_value,
        "class_acc": class_accuracy(timing.images, settings.conditions),
        "fd": fd(timing.images),
        "flops_source": "engine" if timing.own_speedup is not None else "FlopCounterMode",
        "seconds": float(statistics.median(timing.seconds)),
        "uncached_seconds": float(statistics.median(timing.uncached_seconds)),
        **timing.details,
    }


def measure_all(
    pipe: Any,
    methods: Sequence[Method],
    settings: Settings,
    reference: Reference,
    repeats: int,
    psnr_cap: float,
    on_failure: Callable[[Method, Exception], None],
    tick: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Measures every method at every knob; returns their rows, in the order of ``methods``.

    Each method is first prepared (see :func:`prepare_method`). Then come ``repeats`` timing rounds over all of
    them (:func:`timing_round`), in the given order and reversed in every other round, so a method's timings are
    spread over the whole run rather than taken back to back, and no method always runs right after an uncached
    run. The images and the engine's counters of a method's first timed run are the ones scored.

    Args:
        pipe: The pipeline, without any cache attached.
        methods: Every method at every knob.
        settings: Generation settings.
        reference: Uncached images and FLOPs.
        repeats: Timing rounds; the wall speedup is the median of a method's ratios.
        psnr_cap: PSNR given to identical images.
        on_failure: Called with a method and the exception it raised; a failed method has no row.
        tick: Called after each preparation and each timed method run (for a progress bar).

    Returns:
        The rows: ``method``, ``family``, ``knob``, ``flops_speedup``, ``wall_speedup``, ``psnr`` (the mean over
        the samples), ``psnr_p10`` (their 10th percentile), ``psnr_per_sample``, ``ssim``, ``class_acc``, ``fd``,
        plus ``wall_speedups`` (the ratio of each round), ``flops_source``, ``seconds``, ``uncached_seconds`` and
        method details.
    """
    timings: list[_Timing] = []
    for method in methods:
        try:
            timings.append(prepare_method(pipe, method, settings, reference))
        except Exception as error:
            on_failure(method, error)
        tick()

    def fail(timing: _Timing, error: Exception) -> None:
        timing.failed = True
        on_failure(timing.method, error)

    for repeat in range(repeats):
        active = [timing for timing in timings if not timing.failed]
        timing_round(pipe, active if repeat % 2 == 0 else active[::-1], settings, fail, tick)
    return [make_row(timing, settings, reference, psnr_cap) for timing in timings if not timing.failed]


def fd(images: torch.Tensor) -> float | None:
    """``zoo.metrics.fd_digits`` of 16×16 digit images (``None`` for other images or fewer than two)."""
    if images.shape[1:] != (1, 16, 16) or images.shape[0] < 2:
        return None
    from zoo.metrics import fd_digits

    return float(fd_digits(images))


def flops_cross_check(pipe: Any, method: EngineMethod, settings: Settings, reference: Reference) -> dict[str, Any]:
    """Counts an engine method's FLOPs with ``FlopCounterMode`` and compares with the engine's own counters.

    Returns:
        ``method``, ``knob``, ``engine`` and ``flop_counter`` speedups of the same generation, and their
        ``relative_difference``.
    """
    method.attach(pipe, settings)  # the engine measures its block costs here, outside the counter below
    try:
        with method.generation():
            flops, _ = count_flops(pipe, settings)
        engine = method.flops_speedup()
    finally:
        method.detach(pipe)
    counter = reference.flops / flops
    return {
        "method": method.name,
        "knob": method.knob,
        "engine": engine,
        "flop_counter": counter,
        "relative_difference": abs(engine - counter) / counter,
    }


def pick_cross_check(methods: Sequence[Method]) -> EngineMethod | None:
    """The engine method whose FLOPs are cross-checked: the first FORA with N > 1, else any engine baseline."""
    engine = [m for m in methods if isinstance(m, EngineMethod) and m.family == "baseline"]
    fora = [m for m in engine if m.name == "FORA" and m.knob != "N=1"]
    others = [m for m in engine if m.name != "AlwaysCompute"]
    return (fora or others or [None])[0]


def run_benchmark(
    pipe: Any,
    config: BenchmarkConfig,
    methods: Sequence[Method],
    *,
    model_name: str,
    progress: bool = True,
    notes: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
    upper_bounds: Sequence[Any] = (),
    measure: Callable[..., list[dict[str, Any]]] = measure_all,
) -> dict[str, Any]:
    """Runs the whole benchmark and returns the results (as written to ``results.json``).

    Args:
        pipe: The pipeline (progress bar off, no cache attached).
        config: The benchmark config.
        methods: Every method at every knob (see ``grid.build_methods``).
        model_name: Name recorded in the results.
        progress: Show a tqdm bar over methods × knobs.
        notes: Remarks added to the results.
        echo: Where per-row lines go (default: ``tqdm.write``).
        upper_bounds: Untimed rows measured after the timed ones, e.g. ``oracle.PerSampleOracle``: objects with
            ``name``, ``family``, ``knob`` and ``rows(pipe, settings, reference, psnr_cap, echo)``.
        measure: Measures the methods' rows, as :func:`measure_all` (the default, in ``pipe``) does; e.g.
            ``distributed.measure_on(pool)`` measures each method on a Ray worker.

    Returns:
        ``{"model", "scheduler", "steps", "guidance", "n_samples", "seeds", "classes", "rows", "summary",
        "adaptivity", ...}``; ``failures`` lists the methods that raised (method, family, knob, error), which have
        no row.
    """
    echo = echo or tqdm.write
    started = time.perf_counter()
    settings = make_settings(pipe, config)
    reference = uncached_reference(pipe, settings)
    failures: list[dict[str, str]] = []

    def record_failure(method: Method, error: Exception) -> None:
        failures.append(
            {
                "method": method.name,
                "family": method.family,
                "knob": method.knob,
                "error": f"{type(error).__name__}: {error}",
            }
        )
        echo(f"{method.name:<26} {method.knob:<18} FAILED: {failures[-1]['error']}")

    bar = tqdm(
        total=len(methods) * (1 + config.repeats),
        desc="benchmark",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    rows = measure(
        pipe, methods, settings, reference, config.repeats, config.psnr_cap, record_failure, lambda: bar.update()
    )
    for row in rows:
        echo(
            f"{row['method']:<26} {row['knob']:<18} FLOPs {row['flops_speedup']:5.2f}×  "
            f"wall {row['wall_speedup']:5.2f}×  PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.3f}"
        )
    bar.close()
    for bound in upper_bounds:
        try:  # the timed rows are measured: a failing bound must not lose them
            found = bound.rows(pipe, settings, reference, config.psnr_cap, echo)
        except Exception as error:
            record_failure(bound, error)
            continue
        rows += found
        for row in found:
            echo(
                f"{row['method']:<26} {row['knob']:<18} FLOPs {row['flops_speedup']:5.2f}×  (untimed)  "
                f"PSNR {row['psnr']:6.2f} dB  p10 {row['psnr_p10']:6.2f} dB  on {row['samples']} samples"
            )

    check = None
    measured = {(row["method"], row["knob"]) for row in rows}
    checked = pick_cross_check([m for m in methods if (m.name, m.knob) in measured]) if config.flops_check else None
    if checked is not None:
        try:  # the rows are measured: a failing check must not lose them
            check = flops_cross_check(pipe, checked, settings, reference)
            check["passed"] = check["relative_difference"] <= FLOPS_CHECK_TOLERANCE
        except Exception as error:
            check = {"method": checked.name, "knob": checked.knob, "passed": False}
            check["error"] = f"{type(error).__name__}: {error}"
            echo(f"warning: the FLOP cross-check of {checked.name} ({checked.knob}) failed: {check['error']}")
        else:
            if not check["passed"]:
                echo(
                    f"warning: FLOP speedup of {check['method']} ({check['knob']}) is {check['engine']:.3f}× by the "
                    f"engine's counters but {check['flop_counter']:.3f}× by FlopCounterMode."
                )

    return {
        "model": model_name,
        "scheduler": type(pipe.scheduler).__name__,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "n_samples": len(settings.seeds),
        "seeds": list(settings.seeds),
        "classes": list(dict.fromkeys(config.conditions)),  # the ones drawn: fewer seeds than classes drop some
        "repeats": config.repeats,
        "methods_per_uncached_run": METHODS_PER_UNCACHED_RUN,
        "threads": torch.get_num_threads(),
        "psnr_cap": config.psnr_cap,
        "rows": rows,
        "failures": failures,
        "summary": summarize(rows, config.targets),
        "adaptivity": adaptivity_summary(rows, config.targets),
        "flops_check": check,
        "notes": list(notes),
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
