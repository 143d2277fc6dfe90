"""Measures a zoo model: sampling time, class accuracy and FD-digits (the figures quoted in the docs).

Usage::

    python -m zoo.evaluate --model mini-dit-digits [--steps 50] [--scheduler dpm] [--per-class 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DiffusionPipeline

from zoo import metrics
from zoo.data import train_digits
from zoo.registry import load_pipeline
from zoo.sampling import balanced_labels, sample_digits, use_scheduler


def time_batch(pipe: DiffusionPipeline, steps: int, batch: int = 16, repeats: int = 3) -> float:
    """Median seconds for one guided call generating ``batch`` images (2 × batch through the transformer)."""
    labels = [i % 10 for i in range(batch)]
    pipe(labels, num_inference_steps=2, output_type="pt")  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(labels, num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate(
    pipe: DiffusionPipeline, steps: int | None, guidance: float | None, per_class: int, seed: int = 0
) -> dict[str, float]:
    """Class accuracy and FD-digits of ``10 * per_class`` guided samples (seeds ``seed``, ``seed + 1``, ...)."""
    labels = balanced_labels(per_class)
    images = sample_digits(pipe, labels, list(range(seed, seed + len(labels))), steps, guidance)
    return {"accuracy": metrics.class_accuracy(images, labels), "fd_digits": metrics.fd_digits(images)}


def main(argv: list[str] | None = None) -> None:
    """Parses arguments and prints the figures."""
    parser = argparse.ArgumentParser(prog="python -m zoo.evaluate", description="Measure a zoo model.")
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--steps", type=int, default=None, help="inference steps (pipeline default if omitted)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (pipeline default if omitted)")
    parser.add_argument("--scheduler", choices=["default", "dpm"], default="default")
    parser.add_argument("--per-class", type=int, default=50, help="samples per digit for accuracy / FD")
    parser.add_argument("--no-timing", action="store_true", help="skip the batch-16 timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = use_scheduler(load_pipeline(args.model), args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    scores = evaluate(pipe, args.steps, args.guidance, args.per_class)
    name = (
        f"{args.model} ({type(pipe.scheduler).__name__}, {pipe.num_timesteps} steps, guidance {pipe.guidance_scale:g})"
    )
    print(
        f"{name}: accuracy {scores['accuracy']:.4f}, FD-digits {scores['fd_digits']:.2f} "
        f"over {10 * args.per_class} samples"
    )
    real, _ = train_digits(signed=False)
    reference = metrics.fd_digits(real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))][:500])
    print(f"reference: FD-digits of 500 real training digits {reference:.2f}")
    if not args.no_timing:
        seconds = time_batch(pipe, pipe.num_timesteps)
        print(f"{name}: batch of 16 with CFG (32 through the transformer): {seconds:.2f} s (median of 3)")


if __name__ == "__main__":
    main()
