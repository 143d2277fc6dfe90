"""PSNR, SSIM and Fréchet distance against known values."""

import math
import sys

import numpy as np
import pytest
import torch

from zoo import metrics


def test_psnr_identical_is_inf_and_known_value() -> None:
    x = torch.rand(3, 1, 16, 16)
    assert torch.isinf(metrics.psnr(x, x)).all()
    ref = torch.zeros(2, 1, 16, 16)
    noisy = ref + 0.1  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(metrics.psnr(noisy, ref), torch.full((2,), 20.0))


def test_ssim_identical_is_one_and_constant_images_match_closed_form() -> None:
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(4))
    a, b = 0.2, 0.6  # constant images: zero variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    expected = (2 * a * b + metrics.SSIM_C1) / (a * a + b * b + metrics.SSIM_C1)
    got = metrics.ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ssim_drops_with_noise_and_rejects_oversized_window() -> None:
    x = torch.rand(2, 1, 16, 16)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert (metrics.ssim(noisy, x) < 0.9).all()
    with pytest.raises(ValueError, match="window_size"):
        metrics.ssim(x, x, window_size=17)


def test_frechet_distance_known_values(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)
    # Mean shift of 1 in every one of 4 dims, same covariance: FD = 4.
    assert metrics.frechet_distance(a, a + 1.0) == pytest.approx(4.0, abs=1e-3)
    # Pure scale: N(0, I) vs N(0, 4I) in 4 dims gives 4 * (1 + 4 - 2 * 2) = 4.
    b = rng.normal(size=(200000, 4)) * 2.0
    with_scipy = metrics.frechet_distance(rng.normal(size=(200000, 4)), b)
    assert with_scipy == pytest.approx(4.0, abs=0.1)
    monkeypatch.setitem(sys.modules, "scipy", None)  # force the eigenvalue fallback
    assert metrics.frechet_distance(a, a + 1.0) == pytest.approx(4.0, abs=1e-3)
    assert not math.isnan(metrics.frechet_distance(a, b[:2000]))
