"""Image-quality metrics for comparing cached against uncached generations, and for scoring the zoo's models.

All image inputs are torch tensors of shape (B, C, H, W) with values in [0, 1], of any floating dtype (bfloat16 and
float16 included) and on any device; videos (B, F, C, H, W) are scored frame by frame, averaged per video.
:func:`psnr` and :func:`ssim` compute in float64 and return float32. Per-image metrics return a tensor of shape (B,);
report their mean.

* :func:`psnr` — peak signal-to-noise ratio with data range 1 (``inf`` for identical images).
* :func:`ssim` — structural similarity with a Gaussian window (σ = 1.5) and the standard constants
  ``C1 = (0.01)^2``, ``C2 = (0.03)^2``. The standard window is 11×11; on the zoo's 16×16 images that leaves only a
  6×6 valid region, so the default here is 7×7 (a 10×10 valid region). Pass ``window_size=11`` for larger images.
* :func:`class_accuracy` — fraction of images the digits classifier assigns to the requested class.
* :func:`frechet_distance` — Fréchet distance between two Gaussian-fitted feature sets; :func:`fd_digits` applies it
  to classifier features of generated images against the held-out real digits ("FD-digits", lower is better).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from zoo import classifier
from zoo.data import held_out_digits

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1] (data range 1); identical images give ``inf``."""
    _check_pair(x, ref)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse)).float()


def capped_psnr(x: torch.Tensor, ref: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-image PSNR in dB, capped at ``cap`` (so identical images give ``cap``, not ``inf``)."""
    return torch.clamp(torch.nan_to_num(psnr(x, ref), posinf=cap), max=cap)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, ref: torch.Tensor, window_size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (mean over the valid region and channels) for images in [0, 1].

    Args:
        x: Images (B, C, H, W).
        ref: Reference images of the same shape.
        window_size: Side of the Gaussian window; must not exceed H or W. 7 suits 16×16 images, 11 is standard.
        sigma: Standard deviation of the Gaussian window.

    Returns:
        Tensor (B,); identical images give 1.0.
    """
    _check_pair(x, ref)
    if x.ndim == 5:  # videos: the mean over frames
        frames = ssim(x.flatten(0, 1), ref.flatten(0, 1), window_size, sigma)
        return frames.view(x.shape[0], x.shape[1]).mean(dim=1)
    if window_size > min(x.shape[-2:]):
        raise ValueError(f"window_size {window_size} exceeds the image size {tuple(x.shape[-2:])}; use a smaller one.")
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma, channels).to(x.device)
    a, b = x.double(), ref.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (num / den).flatten(1).mean(dim=1).float()


def class_accuracy(images: torch.Tensor, labels: torch.Tensor | list[int]) -> float:
    """Fraction of 16×16 images in [0, 1] that the shipped classifier assigns to ``labels``."""
    labels = torch.as_tensor(labels).reshape(-1)
    return (classifier.predict(images) == labels).float().mean().item()


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets of shape (N, D).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``. The matrix square root uses ``scipy.linalg.sqrtm``
    when SciPy is installed, otherwise the eigenvalues of ``S_a S_b`` (same trace, numerically stable).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"Expected two feature sets (N, D) with equal D and N >= 2, got {a.shape} and {b.shape}.")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * _trace_sqrt(cov_a, cov_b))


def _trace_sqrt(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``Tr((cov_a cov_b)^{1/2})``."""
    try:
        from scipy import linalg
    except ImportError:
        eigvals = np.linalg.eigvals(cov_a @ cov_b)
        return float(np.sqrt(np.clip(eigvals.real, 0.0, None)).sum())
    offset = np.eye(cov_a.shape[0]) * 1e-6
    root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(np.real(np.trace(root)))


@lru_cache(maxsize=1)
def _held_out_features() -> np.ndarray:
    images, _ = held_out_digits()
    return classifier.features(images).numpy()


def fd_digits(images: torch.Tensor) -> float:
    """FD-digits: Fréchet distance of the classifier features of ``images`` to those of the held-out real digits.

    Args:
        images: Generated images (B, 1, 16, 16) in [0, 1]; use a few hundred for a stable figure.
    """
    return frechet_distance(classifier.features(images).numpy(), _held_out_features())


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape or x.ndim not in (4, 5):
        raise ValueError(
            "Expected two image batches of equal shape (B, C, H, W), or videos (B, F, C, H, W), got "
            f"{tuple(x.shape)} and {tuple(ref.shape)}."
        )
