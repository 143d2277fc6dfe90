"""Figures: uncached-vs-cached image grids and the speed/quality Pareto plot (for training and generate.py)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def image_grid(
    rows: Sequence[torch.Tensor], row_labels: Sequence[str], column_labels: Sequence[str] = ()
) -> np.ndarray:
    """Draws rows of images (each ``(N, C, H, W)`` in [0, 1]; of videos ``(N, F, C, H, W)`` the middle frame) with a
    label per row; returns an RGB array."""
    rows = [images[:, images.shape[1] // 2] if images.ndim == 5 else images for images in rows]
    count = rows[0].shape[0]
    figure, axes = plt.subplots(len(rows), count, figsize=(1.1 * count + 1.2, 1.2 * len(rows)), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c in range(count):
            axis = axes[r][c]
            image = images[c].detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
            axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0 and c < len(column_labels):
                axis.set_title(column_labels[c], fontsize=7)
    figure.tight_layout()
    return _to_array(figure)


def pareto_plot(series: dict[str, list[tuple[float, float]]], title: str = "") -> np.ndarray:
    """PSNR against FLOP speedup, one line per series of ``(speedup, psnr)`` points; returns an RGB array."""
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, points in series.items():
        ordered = sorted(points)
        axis.plot([p[0] for p in ordered], [p[1] for p in ordered], marker="o", label=label)
    axis.set_xlabel("FLOP speedup (×)")
    axis.set_ylabel("PSNR vs uncached (dB)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _to_array(figure)


def _to_array(figure: plt.Figure) -> np.ndarray:
    figure.canvas.draw()
    array = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return array
