"""Loading the pipeline an environment denoises with, and calling it for given conditions and seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from zoo import load_pipeline
from zoo.sampling import scheduler_from_config

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


def prepare_pipeline(model: str | DiffusionPipeline, scheduler: str = "default") -> DiffusionPipeline:
    """Loads ``model`` (or takes a loaded pipeline), switches its scheduler, and silences its progress bar."""
    pipe = load_pipeline(model) if isinstance(model, str) else model
    if scheduler != "default":
        options = {"algorithm_type": "dpmsolver++"} if scheduler == "dpmsolver++" else {}
        pipe.scheduler = scheduler_from_config(SCHEDULERS[scheduler], pipe.scheduler.config, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(pipe: DiffusionPipeline) -> dict[str, Any]:
    """What identifies a pipeline's trajectories: transformer and scheduler class and config."""
    return {
        "transformer": type(pipe.transformer).__name__,
        "transformer_config": dict(pipe.transformer.config),
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": dict(pipe.scheduler.config),
    }


def weights_fingerprint(module: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes, dtypes and an evenly spaced sample of values.

    Tells apart checkpoints that share a config (a retrained or fine-tuned model) without reading every weight
    of a large model.
    """
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // samples_per_tensor)][:samples_per_tensor]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def generate(
    pipe: DiffusionPipeline,
    conditions: Sequence[int],
    seeds: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Runs an unmodified class-conditional pipeline (the zoo's, or diffusers' ``DiTPipeline``).

    Each sample's noise comes from its own seed. ``callback`` (``callback_on_step_end``) is needed by the
    environment only; pipelines without that argument still work for evaluation.

    Returns:
        Images ``(samples, C, H, W)`` in [0, 1].
    """
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    extra = {} if callback is None else {"callback_on_step_end": callback}  # DiTPipeline takes no callback
    output = pipe(
        class_labels=list(conditions),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="pt",
        **extra,
    )
    return output.images
