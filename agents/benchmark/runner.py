"""Measuring every method at every knob against the uncached pipeline, in one process.

For each knob: an untimed warm-up with the method attached (and, for methods without their own FLOP counters, one
generation under ``FlopCounterMode``), then ``repeats`` interleaved pairs — the plain, unhooked pipeline, then the
method — timed the same way. The wall speedup is the median of the pairs' time ratios; the images of the first
method run are scored against the uncached images of the same seeds.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from agents.evaluation import class_accuracy, fidelity, timed_generation

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


def measure(
    pipe: Any, method: Method, settings: Settings, reference: Reference, repeats: int, psnr_cap: float
) -> dict[str, Any]:
    """Measures one method at one knob; returns its row.

    Args:
        pipe: The pipeline, without any cache attached.
        method: The method at its knob.
        settings: Generation settings.
        reference: Uncached images and FLOPs.
        repeats: Interleaved (uncached, method) timing pairs.
        psnr_cap: PSNR given to identical images.

    Returns:
        The row: ``method``, ``family``, ``knob``, ``flops_speedup``, ``wall_speedup``, ``psnr``, ``ssim``,
        ``class_acc``, ``fd``, plus ``flops_source``, ``seconds``, ``uncached_seconds`` and method details.
    """
    method.prepare(pipe, settings)
    counted_speedup = None
    try:  # detach also after a failed attach: whatever it hooked must not stay on the transformer
        method.attach(pipe, settings)
        with method.generation():
            settings.run(pipe, steps=settings.warmup_steps)
        if not method.counts_own_flops:
            with method.generation():
                flops, _ = count_flops(pipe, settings)
            counted_speedup = reference.flops / flops
    finally:
        method.detach(pipe)

    images, own_speedup, details = None, None, {}
    ratios, seconds, uncached_seconds = [], [], []
    for repeat in range(repeats):
        _, plain = _timed(pipe, settings)
        try:
            method.attach(pipe, settings)
            with method.generation():
                output, cached = _timed(pipe, settings)
            if repeat == 0:
                images, own_speedup, details = output, method.flops_speedup(), method.info()
        finally:
            method.detach(pipe)
        ratios.append(plain / cached)
        seconds.append(cached)
        uncached_seconds.append(plain)

    psnr_value, ssim_value = fidelity(images, reference.images, psnr_cap)
    return {
        "method": method.name,
        "family": method.family,
        "knob": method.knob,
        "flops_speedup": float(own_speedup if own_speedup is not None else counted_speedup),
        "wall_speedup": float(statistics.median(ratios)),
        "psnr": psnr_value,
        "ssim": ssim_value,
        "class_acc": class_accuracy(images, settings.conditions),
        "fd": fd(images),
        "flops_source": "engine" if own_speedup is not None else "FlopCounterMode",
        "seconds": float(statistics.median(seconds)),
        "uncached_seconds": float(statistics.median(uncached_seconds)),
        **details,
    }


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
) -> dict[str, Any]:
    """Runs the whole benchmark and returns the results (as written to ``results.json``).

    Args:
        pipe: The pipeline (progress bar off, no cache attached).
        config: The benchmark config.
        methods: Every method at every knob (see ``methods.build_methods``).
        model_name: Name recorded in the results.
        progress: Show a tqdm bar over methods × knobs.
        notes: Remarks added to the results.
        echo: Where per-row lines go (default: ``tqdm.write``).

    Returns:
        ``{"model", "scheduler", "steps", "guidance", "n_samples", "seeds", "classes", "rows", "summary", ...}``;
        ``failures`` lists the methods that raised (method, family, knob, error), which have no row.
    """
    echo = echo or tqdm.write
    started = time.perf_counter()
    settings = make_settings(pipe, config)
    reference = uncached_reference(pipe, settings)
    rows, failures = [], []
    bar = tqdm(methods, desc="benchmark", unit="knob", disable=not progress, dynamic_ncols=True)
    for method in bar:
        bar.set_postfix_str(f"{method.name} {method.knob}")
        try:
            row = measure(pipe, method, settings, reference, config.repeats, config.psnr_cap)
        except Exception as error:  # one method failing on a model (e.g. a cache's bug) must not lose the others
            failure = {"method": method.name, "family": method.family, "knob": method.knob}
            failures.append({**failure, "error": f"{type(error).__name__}: {error}"})
            echo(f"{method.name:<26} {method.knob:<18} FAILED: {failures[-1]['error']}")
            continue
        rows.append(row)
        echo(
            f"{row['method']:<26} {row['knob']:<18} FLOPs {row['flops_speedup']:5.2f}×  "
            f"wall {row['wall_speedup']:5.2f}×  PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.3f}"
        )
    bar.close()

    check = None
    checked = pick_cross_check(methods) if config.flops_check else None
    if checked is not None:
        check = flops_cross_check(pipe, checked, settings, reference)
        check["passed"] = check["relative_difference"] <= FLOPS_CHECK_TOLERANCE
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
        "threads": torch.get_num_threads(),
        "psnr_cap": config.psnr_cap,
        "rows": rows,
        "failures": failures,
        "summary": summarize(rows, config.targets),
        "flops_check": check,
        "notes": list(notes),
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
