"""Trains the digits classifier that scores generated samples (``python -m zoo.train classifier``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from zoo.classifier import CLASSIFIER_DIR, DigitsCNN, save_classifier
from zoo.data import held_out_digits, load_digits16


@dataclass
class ClassifierArgs:
    """Training settings for the digits classifier."""

    out: Path = CLASSIFIER_DIR
    """Folder to write ``model.safetensors`` and ``config.json`` to."""
    steps: int = 3000
    """Optimiser steps (batch 128)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay)."""
    seed: int = 0
    """Seed for initialisation, batching and augmentation."""


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel and mild contrast jitter, so generated digits are judged fairly."""
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    images = torch.roll(images, shifts=shifts, dims=(2, 3))
    gain = 0.8 + 0.4 * torch.rand(images.shape[0], 1, 1, 1, generator=generator)
    return (images * gain).clamp(0.0, 1.0)


@torch.no_grad()
def _accuracy(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    acc = (model(images).argmax(1) == labels).float().mean().item()
    model.train()
    return acc


def train_classifier(args: ClassifierArgs) -> float:
    """Trains the CNN, saves it to ``args.out`` and returns its held-out accuracy."""
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = load_digits16("train")
    test_images, test_labels = held_out_digits()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    bar = tqdm(range(args.steps), desc="classifier")
    for step in bar:
        idx = torch.randint(0, len(images), (128,), generator=generator)
        loss = F.cross_entropy(model(_augment(images[idx], generator)), labels[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", held_out=f"{_accuracy(model, test_images, test_labels):.4f}")
    accuracy = _accuracy(model, test_images, test_labels)
    save_classifier(model.eval(), args.out, extra={"held_out_accuracy": round(accuracy, 4), "seed": args.seed})
    print(f"held-out accuracy {accuracy:.4f}; saved to {args.out}")
    return accuracy
