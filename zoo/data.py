"""The digits data set used to train and evaluate the model zoo.

scikit-learn ships 1,797 handwritten digits as 8×8 grey images with values 0–16. The zoo works at 16×16: images
are upsampled bilinearly, scaled to [0, 1] (evaluation, classifier) or [-1, 1] (diffusion training), and split
once into a fixed, stratified train / held-out partition. Held-out digits are never seen by any model; they serve
as the reference for classifier accuracy and for the Fréchet distance of generated samples.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

IMAGE_SIZE = 16
NUM_CLASSES = 10
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0

Split = Literal["train", "test", "all"]


def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Loads every digit at 16×16 in [0, 1].

    Returns:
        Images of shape (1797, 1, 16, 16) as float32 in [0, 1] and integer labels of shape (1797,).
    """
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images.clamp(0.0, 1.0), labels


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Returns the fixed, class-stratified train and held-out indices into the full digits set.

    Returns:
        A pair ``(train_idx, test_idx)``; 20% of the digits are held out, chosen with seed 0.
    """
    labels = load_digits().target
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return np.sort(train_idx), np.sort(test_idx)


def load_digits16(split: Split = "train", signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads 16×16 digits for one split.

    Args:
        split: ``"train"`` (80%, used for training), ``"test"`` (20% held out) or ``"all"``.
        signed: If True, pixel values are scaled to [-1, 1] (the diffusion models' data range); otherwise [0, 1].

    Returns:
        Images of shape (N, 1, 16, 16), float32, and labels of shape (N,), int64.

    Raises:
        ValueError: If ``split`` is not one of the three names.
    """
    images, labels = _all_digits()
    if split != "all":
        train_idx, test_idx = split_indices()
        if split == "train":
            idx = train_idx
        elif split == "test":
            idx = test_idx
        else:
            raise ValueError(f"Unknown split {split!r}; use 'train', 'test' or 'all'.")
        images, labels = images[idx], labels[idx]
    if signed:
        images = images * 2.0 - 1.0
    return images, labels


def train_digits(signed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Training digits, by default in [-1, 1] for diffusion training."""
    return load_digits16("train", signed=signed)


def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits in [0, 1], the reference for accuracy and Fréchet distance."""
    return load_digits16("test", signed=False)
