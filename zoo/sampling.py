"""Helpers to draw labelled samples from a zoo pipeline, shared by the grid, evaluation and tests."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

SchedulerName = Literal["default", "dpm"]


def scheduler_from_config(scheduler_class: type, config: Any, **options: Any) -> Any:
    """``scheduler_class.from_config(config, **options)``, keeping the config's clipping of the predicted image.

    The DiT's shipped DDIM config clips the predicted image to the data range [-1, 1] with ``clip_sample``.
    Schedulers without that option (DPM-Solver++) clip through dynamic thresholding capped at 1
    (``thresholding=True, sample_max_value=1``: the percentile is clamped to [1, 1], so it is plain clipping),
    which keeps the cosine schedule's first steps stable. ``options`` override both.
    """
    accepted = inspect.signature(scheduler_class.__init__).parameters
    clipping: dict[str, Any] = {}
    if (
        config.get("clip_sample", False)
        and not config.get("thresholding", False)
        and config.get("clip_sample_range", 1.0) == 1.0
        and "clip_sample" not in accepted
        and "thresholding" in accepted
    ):
        clipping = {"thresholding": True, "sample_max_value": 1.0}
    return scheduler_class.from_config(config, **{**clipping, **options})


def use_scheduler(pipe: DiffusionPipeline, name: SchedulerName) -> DiffusionPipeline:
    """Swaps in DPM-Solver++ (``"dpm"``, built from the shipped scheduler config) or keeps the shipped one."""
    if name == "dpm":
        pipe.scheduler = scheduler_from_config(DPMSolverMultistepScheduler, pipe.scheduler.config)
    elif name != "default":
        raise ValueError(f"Unknown scheduler {name!r}; use 'default' or 'dpm'.")
    return pipe


@torch.no_grad()
def sample_digits(
    pipe: DiffusionPipeline,
    labels: list[int],
    seeds: list[int],
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Generates one image per ``(label, seed)`` pair, each from its own seeded generator.

    Args:
        pipe: A ``MiniDiTPipeline`` or ``MiniFlowPipeline``.
        labels: Requested digits.
        seeds: One seed per label (same length).
        num_inference_steps: Steps; the pipeline's default if None.
        guidance_scale: CFG scale; the pipeline's default if None.
        batch_size: Images per pipeline call.

    Returns:
        Images (N, 1, 16, 16) in [0, 1].
    """
    from envs.pipelines import Sampler  # the one layer every caller generates through (envs imports zoo)

    if len(labels) != len(seeds):
        raise ValueError(f"labels and seeds must have equal length, got {len(labels)} and {len(seeds)}.")
    sampler = Sampler(pipe)
    steps = num_inference_steps if num_inference_steps is not None else sampler.default("num_inference_steps")
    guidance = guidance_scale if guidance_scale is not None else sampler.default("guidance_scale")
    out = []
    for start in range(0, len(labels), batch_size):
        chunk = slice(start, start + batch_size)
        out.append(sampler(labels[chunk], seeds[chunk], steps, guidance))
    return torch.cat(out)


def balanced_labels(per_class: int, num_classes: int = 10) -> list[int]:
    """``per_class`` copies of each digit, interleaved (0, 1, ..., 9, 0, 1, ...)."""
    return [c for _ in range(per_class) for c in range(num_classes)]
