"""Quality of the shipped models, scored by the shipped classifier (few steps, small batches)."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel

from zoo import MiniDiTPipeline, MiniFlowPipeline, class_accuracy, fd_digits
from zoo.registry import model_path
from zoo.sampling import balanced_labels, sample_digits, use_scheduler


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
