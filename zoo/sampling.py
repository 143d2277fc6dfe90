"""Helpers to draw labelled samples from a zoo pipeline, shared by the grid, evaluation and tests."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

SchedulerName = Literal["default", "dpm"]


def use_scheduler(pipe: DiffusionPipeline, name: SchedulerName) -> DiffusionPipeline:
    """Swaps in DPM-Solver++ (``"dpm"``, built from the shipped scheduler config) or keeps the shipped one."""
    if name == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
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
    if len(labels) != len(seeds):
        raise ValueError(f"labels and seeds must have equal length, got {len(labels)} and {len(seeds)}.")
    kwargs = {}
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    out = []
    for start in range(0, len(labels), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        out.append(pipe(labels[chunk], generator=generators, output_type="pt", **kwargs).images)
    return torch.cat(out)


def balanced_labels(per_class: int, num_classes: int = 10) -> list[int]:
    """``per_class`` copies of each digit, interleaved (0, 1, ..., 9, 0, 1, ...)."""
    return [c for _ in range(per_class) for c in range(num_classes)]
