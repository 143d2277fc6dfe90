"""Quality of the shipped models, scored by the shipped classifier (few steps, small batches)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler

from zoo import MiniDiTPipeline, MiniFlowPipeline, class_accuracy, fd_digits
from zoo.registry import model_path
from zoo.sampling import balanced_labels, sample_digits, scheduler_from_config, use_scheduler


def _dit() -> MiniDiTPipeline:
    pipe = MiniDiTPipeline.from_pretrained(str(model_path("mini-dit-digits")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dit_guided_samples_show_the_requested_digit() -> None:
    labels = balanced_labels(3)
    images = sample_digits(_dit(), labels, list(range(30)), num_inference_steps=20)
    assert class_accuracy(images, labels) >= 0.9


def test_dit_dpm_solver_20_steps() -> None:
    pipe = use_scheduler(_dit(), "dpm")
    labels = balanced_labels(3)
    images = sample_digits(pipe, labels, list(range(100, 130)), num_inference_steps=20)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert class_accuracy(images, labels) >= 0.9


def test_dit_fd_digits_far_below_random_weights() -> None:
    trained = _dit()
    torch.manual_seed(0)
    random_transformer = DiTTransformer2DModel.from_config(trained.transformer.config)
    random_pipe = MiniDiTPipeline(transformer=random_transformer, scheduler=trained.scheduler)
    random_pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(10)
    seeds = list(range(len(labels)))
    fd_trained = fd_digits(sample_digits(trained, labels, seeds, num_inference_steps=10))
    fd_random = fd_digits(sample_digits(random_pipe, labels, seeds, num_inference_steps=10))
    assert fd_trained < 0.25 * fd_random


def test_flow_guided_samples_show_the_requested_digit() -> None:
    pipe = MiniFlowPipeline.from_pretrained(str(model_path("mini-flow-digits")))
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(3)
    images = sample_digits(pipe, labels, list(range(30)), num_inference_steps=20)
    assert class_accuracy(images, labels) >= 0.8


def test_dit_scheduler_clips_the_predicted_image_and_carries_it_to_dpm_solver() -> None:
    """DDIM's ``clip_sample`` equals thresholding capped at 1 (without its quantile); DPM-Solver++ keeps the clip."""
    config = _dit().scheduler.config
    assert config.clip_sample and config.clip_sample_range == 1.0 and not config.thresholding
    thresholding = DDIMScheduler.from_config(config, thresholding=True, sample_max_value=1.0)
    clipping = DDIMScheduler.from_config(config)
    generator = torch.Generator().manual_seed(0)
    sample, noise = torch.randn(4, 1, 16, 16, generator=generator), 3 * torch.randn(4, 1, 16, 16, generator=generator)
    for scheduler in (thresholding, clipping):
        scheduler.set_timesteps(20)
    for t in clipping.timesteps[:5]:
        expected = thresholding.step(noise, t, sample).prev_sample
        assert torch.equal(clipping.step(noise, t, sample).prev_sample, expected)

    dpm = scheduler_from_config(DPMSolverMultistepScheduler, config)
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0
    assert not scheduler_from_config(DPMSolverMultistepScheduler, config, thresholding=False).config.thresholding
    assert not scheduler_from_config(DPMSolverMultistepScheduler, {**config, "clip_sample": False}).config.thresholding
