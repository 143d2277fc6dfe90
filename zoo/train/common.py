"""Pieces shared by the diffusion trainers: arguments, EMA, and the budgeted training loop."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from zoo.data import train_digits


@dataclass
class TrainArgs:
    """Settings common to both diffusion trainers."""

    out: Path
    """Folder the pipeline is saved to with ``save_pretrained``."""
    steps: int = 6000
    """Maximum number of optimiser steps."""
    minutes: float | None = None
    """Optional wall-clock budget; training stops at whichever of ``steps`` / ``minutes`` comes first."""
    batch_size: int = 128
    """Images per optimiser step."""
    lr: float = 1e-3
    """AdamW learning rate after a linear warm-up; decays with a cosine to 10% over the budget (steps or minutes)."""
    warmup: int = 200
    """Warm-up steps."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (the shipped weights are the EMA)."""
    label_dropout: float = 0.1
    """Probability of replacing a label by the null condition, for classifier-free guidance."""
    seed: int = 0
    """Seed for initialisation, batching, noise and label dropout."""


class EMA:
    """Exponential moving average of a module's parameters, with the usual ``(1 + n) / (10 + n)`` warm-up.

    Args:
        model: The module being trained.
        decay: Final decay.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the averaged parameters towards ``model``'s."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p, 1.0 - decay)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def train_loop(model: nn.Module, loss_fn: LossFn, args: TrainArgs, desc: str) -> nn.Module:
    """Trains ``model`` on the train digits in [-1, 1] and returns the EMA copy.

    Args:
        model: The transformer to train (modified in place).
        loss_fn: ``loss_fn(model, images, labels, generator)`` returning a scalar loss for one batch.
        args: Budget, optimiser and seed settings.
        desc: Label for the progress bar.

    Returns:
        The EMA model, in eval mode.
    """
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = train_digits(signed=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    start = time.monotonic()
    budget_s = 60.0 * args.minutes if args.minutes else float("inf")

    def lr_lambda(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = min(1.0, max(step / args.steps, (time.monotonic() - start) / budget_s))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(progress * math.pi))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ema = EMA(model, args.ema_decay)
    model.train()
    bar = tqdm(range(args.steps), desc=desc)
    running = None
    for step in bar:
        idx = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        loss = loss_fn(model, images[idx], labels[idx], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if time.monotonic() - start > budget_s:
            print(f"time budget reached after {step + 1} steps")
            break
    return ema.model


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Replaces each label by ``null_label`` with probability ``p`` (classifier-free guidance training)."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)
