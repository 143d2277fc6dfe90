"""The shipped digits classifier: accuracy on held-out digits and its file format."""

import json

import pytest
import torch

from zoo import classifier
from zoo.data import held_out_digits


def test_held_out_accuracy_at_least_97_percent() -> None:
    images, labels = held_out_digits()
    accuracy = (classifier.predict(images) == labels).float().mean().item()
    assert accuracy >= 0.97


def test_features_and_files() -> None:
    images, _ = held_out_digits()
    feats = classifier.features(images[:5])
    config = json.loads((classifier.CLASSIFIER_DIR / classifier.CONFIG_NAME).read_text())
    assert feats.shape == (5, config["feature_dim"])
    assert sorted(p.name for p in classifier.CLASSIFIER_DIR.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="16, 16"):
        classifier.predict(torch.zeros(2, 1, 8, 8))
