"""A small CNN that recognises 16×16 digits, used to score generated samples.

The classifier is trained on the train split of :mod:`zoo.data` (``python -m zoo.train classifier``) and shipped as
``assets/classifier/model.safetensors`` plus ``config.json`` (architecture and measured held-out accuracy). Inputs
are images in [0, 1] of shape (B, 1, 16, 16). :func:`predict` gives class indices; :func:`features` gives the
penultimate-layer activations used for the Fréchet distance in :mod:`zoo.metrics`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifier"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class DigitsCNN(nn.Module):
    """Two conv stages (16→8→4 pixels) and a two-layer head.

    Args:
        width: Channels of the first conv stage; the second stage has twice as many.
        feature_dim: Size of the penultimate layer returned by :meth:`features`.
        num_classes: Number of output classes.
    """

    def __init__(self, width: int = 32, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width * 4 * 4, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [0, 1], shape (B, feature_dim)."""
        return self.body(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for images in [0, 1], shape (B, num_classes)."""
        return self.head(self.features(images))


def save_classifier(model: DigitsCNN, out_dir: str | Path, extra: dict | None = None) -> None:
    """Writes ``model.safetensors`` and ``config.json`` (architecture plus ``extra`` fields) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps({**model.config, **(extra or {})}, indent=2) + "\n")


def load_classifier(path: str | Path = CLASSIFIER_DIR) -> DigitsCNN:
    """Loads a classifier folder written by :func:`save_classifier`, in eval mode.

    Raises:
        FileNotFoundError: If the folder lacks the weights or config, with the command that recreates them.
    """
    folder = Path(path)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"No classifier in {folder} (expected {WEIGHTS_NAME} and {CONFIG_NAME}). "
            "Train one with `python -m zoo.train classifier`."
        )
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = DigitsCNN(config["width"], config["feature_dim"], config["num_classes"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return model.eval()


@lru_cache(maxsize=1)
def default_classifier() -> DigitsCNN:
    """The shipped classifier, loaded once per process."""
    return load_classifier(CLASSIFIER_DIR)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1:] != (1, 16, 16):
        raise ValueError(f"Expected images of shape (B, 1, 16, 16) in [0, 1], got {tuple(images.shape)}.")
    return images.float().cpu()


@torch.no_grad()
def predict(images: torch.Tensor, model: DigitsCNN | None = None) -> torch.Tensor:
    """Predicted digit for each image.

    Args:
        images: Tensor of shape (B, 1, 16, 16) with values in [0, 1].
        model: Classifier to use; the shipped one by default.

    Returns:
        Integer tensor of shape (B,).
    """
    model = model or default_classifier()
    return model(_check_images(images)).argmax(dim=1)


@torch.no_grad()
def features(images: torch.Tensor, model: DigitsCNN | None = None) -> torch.Tensor:
    """Penultimate-layer features for each image, shape (B, feature_dim); inputs as in :func:`predict`."""
    model = model or default_classifier()
    return model.features(_check_images(images))
