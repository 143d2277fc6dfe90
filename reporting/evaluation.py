"""Measuring a cache policy inside an unmodified pipeline: FLOP and wall-clock speedup, fidelity, class accuracy."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import runtime
from envs.pipelines import generate
from policies import ActionRecorder, StaticSchedulePolicy, load_policy
from policies.schedule import replay_options
from runtime import EngineOptions


@dataclass
class EvaluationPoint:
    """A policy at one knob setting, against the uncached pipeline on the same conditions and seeds.

    Attributes:
        budget: The budget the policy was given (``None`` for policies without one).
        flops_speedup: Uncached transformer FLOPs over executed FLOPs (engine counters).
        wall_speedup: Median ratio of uncached to cached generation time, timed interleaved.
        compute_fraction: Executed over uncached FLOPs (``1 / flops_speedup``).
        psnr: Mean PSNR (dB) of the images against the uncached images (inf-free: capped at ``psnr_cap``).
        ssim: Mean SSIM against the uncached images.
        class_acc: Fraction of images the digits classifier assigns to the requested class (``None`` if the
            pipeline is not a digits model).
        replay_psnr: Mean PSNR of the policy's static replay (the majority schedule of its own decisions on these
            samples, played for all of them), when asked for: what the policy is worth as a fixed table.
        disagreement: Share of step × group cells where the samples' decisions differed, with ``replay_psnr``.
        scheduler: The scheduler's name (``EnvConfig.scheduler``) when a training run evaluates several settings.
        num_inference_steps: The step count it was measured at, with ``scheduler``.
        images: The cached images (not part of :meth:`to_dict`).
    """

    budget: float | None
    flops_speedup: float
    wall_speedup: float
    compute_fraction: float
    psnr: float
    ssim: float
    class_acc: float | None
    replay_psnr: float | None = None
    disagreement: float | None = None
    scheduler: str | None = None
    num_inference_steps: int | None = None
    images: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for logging (without the images)."""
        data = asdict(self)
        data.pop("images")
        return data


def trained_steps_notice(policy: Any, steps: int) -> str | None:
    """A notice when this run's number of denoising steps lies outside those the learned policy was trained on."""
    trained = getattr(policy, "trained_steps_range", None)  # LearnedPolicy reads it from its manifest
    if trained is None or trained[0] <= steps <= trained[1]:
        return None
    low, high = trained
    if low == high:
        return (
            f"the learned policy was trained with {low} denoising steps and this run uses {steps}, so it acts "
            f"outside what it learned (--steps {low} matches its training)."
        )
    return (
        f"the learned policy was trained with {low} to {high} denoising steps and this run uses {steps}, so it "
        f"acts outside what it learned (--steps {low if steps < low else high} is the nearest it was trained on)."
    )


def trained_scheduler_notice(policy: Any, scheduler: Any) -> str | None:
    """A notice when this run's scheduler is not one the learned policy was trained with.

    Args:
        policy: The policy (only a manifest's ``trained_on.schedulers``, or its ``scheduler``, is compared).
        scheduler: The pipeline's scheduler, or its class name.
    """
    trained = getattr(policy, "trained_schedulers", None)
    name = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
    if not trained or name in trained:
        return None
    return (
        f"the learned policy was trained with {', '.join(trained)} and this run samples with {name}, so it acts "
        "outside what it learned."
    )


def timed_generation(
    pipe: Any, conditions: Sequence[int | str], seeds: Sequence[int], steps: int, guidance: float
) -> tuple[torch.Tensor, float]:
    """Generates and returns ``(images, seconds)``."""
    started = time.perf_counter()
    with torch.inference_mode():
        images = generate(pipe, conditions, seeds, steps, guidance)
    return images, time.perf_counter() - started


def fidelity(images: torch.Tensor, reference: torch.Tensor, psnr_cap: float = 60.0) -> tuple[float, float]:
    """Mean PSNR (each image capped at ``psnr_cap`` dB, so identical images do not give infinity) and SSIM."""
    from zoo.metrics import capped_psnr, ssim

    psnr_values = capped_psnr(images, reference, psnr_cap)
    return float(psnr_values.mean()), float(ssim(images, reference).mean())


def class_accuracy(images: torch.Tensor, conditions: Sequence[int | str]) -> float | None:
    """Digits-classifier accuracy on 16×16 single-channel images of class labels, or ``None`` for other images."""
    if images.shape[1:] != (1, 16, 16) or any(isinstance(c, str) for c in conditions):
        return None
    from zoo.metrics import class_accuracy as digits_accuracy

    return float(digits_accuracy(images, list(conditions)))


def evaluate_policy(
    pipe: Any,
    policy: Any,
    *,
    conditions: Sequence[int | str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    budgets: Sequence[float | None] = (None,),
    engine_options: EngineOptions | None = None,
    repeats: int = 1,
    reference: tuple[torch.Tensor, float] | None = None,
    replay: bool = False,
) -> list[EvaluationPoint]:
    """Runs ``policy`` through the engine in ``pipe`` at each budget and compares with the uncached pipeline.

    Args:
        pipe: A pipeline or ``envs.pipelines.Sampler`` without a cache engine on its transformer.
        policy: A policy object or the path of an exported policy.
        conditions / seeds: One generation per pair, all in one batch.
        steps / guidance: Sampling settings.
        budgets: Budgets to evaluate at (``None``: the policy's own behaviour).
        engine_options: Options for ``runtime.enable_cache`` (``None``: the policy's own).
        repeats: Timed repetitions; the wall speedup is the median of interleaved uncached/cached pairs.
        reference: Already computed uncached ``(images, seconds)`` for these settings (its images are the
            fidelity reference; the timing is always taken afresh, interleaved with the cached runs).
        replay: Also measure the policy's static replay and how often its samples disagree (one more generation
            per budget, untimed).

    Returns:
        One point per budget.
    """
    if reference is None:
        timed_generation(pipe, conditions[:1], seeds[:1], 2, guidance)  # warm-up
        reference = timed_generation(pipe, conditions, seeds, steps, guidance)
    reference_images = reference[0]
    points = []
    if isinstance(policy, (str, Path)):
        policy = load_policy(policy)
    for budget in budgets:
        ratios, images, summary = [], None, {}
        recorder = ActionRecorder(policy)
        for _ in range(repeats):
            _, uncached_seconds = timed_generation(pipe, conditions, seeds, steps, guidance)
            with runtime.cached(pipe, recorder, engine_options, budget=budget) as engine:
                timed_generation(pipe, conditions, seeds, 2, guidance)  # measures FLOPs, outside the timing
                engine.reset()
                recorder.actions.clear()  # the replay is of the timed generation's decisions only
                images, cached_seconds = timed_generation(pipe, conditions, seeds, steps, guidance)
                summary = engine.summary()
            ratios.append(uncached_seconds / cached_seconds)
        psnr_value, ssim_value = fidelity(images, reference_images)
        replay_psnr = disagreement = None
        if replay:
            ran_with = replay_options(policy, engine_options)
            static = StaticSchedulePolicy(recorder.static_replay(), engine_options=ran_with)
            with runtime.cached(pipe, static, engine_options):
                replay_images, _ = timed_generation(pipe, conditions, seeds, steps, guidance)
            replay_psnr, disagreement = fidelity(replay_images, reference_images)[0], recorder.disagreement()
        points.append(
            EvaluationPoint(
                budget=budget,
                flops_speedup=summary["flops_speedup"],
                wall_speedup=statistics.median(ratios),
                compute_fraction=1.0 / summary["flops_speedup"],
                psnr=psnr_value,
                ssim=ssim_value,
                class_acc=class_accuracy(images, conditions),
                replay_psnr=replay_psnr,
                disagreement=disagreement,
                images=images,
            )
        )
    return points
