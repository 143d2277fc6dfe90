"""The digits data: shapes, ranges and the fixed held-out split."""

import numpy as np
import torch

from zoo.data import held_out_digits, load_digits16, split_indices, train_digits


def test_split_is_fixed_disjoint_and_stratified() -> None:
    train_idx, test_idx = split_indices()
    again_train, again_test = split_indices()
    assert np.array_equal(train_idx, again_train) and np.array_equal(test_idx, again_test)
    assert len(train_idx) + len(test_idx) == 1797
    assert not set(train_idx) & set(test_idx)
    assert abs(len(test_idx) / 1797 - 0.2) < 0.01
    _, labels = held_out_digits()
    assert torch.bincount(labels).min() >= 30


def test_shapes_and_ranges() -> None:
    images, labels = train_digits()
    assert images.shape[1:] == (1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.99
    unit, _ = load_digits16("train")
    torch.testing.assert_close(unit * 2 - 1, images)
    test_images, _ = held_out_digits()
    assert test_images.min() >= 0.0 and test_images.max() <= 1.0
    assert labels.min() == 0 and labels.max() == 9
