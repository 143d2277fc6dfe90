"""Writes a labelled sample grid: one row per digit, one column per seed.

Usage::

    python -m zoo.grid --model mini-dit-digits --out docs/images/samples-mini-dit-digits.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from zoo.registry import load_pipeline  # noqa: E402
from zoo.sampling import sample_digits, use_scheduler  # noqa: E402


def save_grid(images: torch.Tensor, rows: int, cols: int, out: Path, title: str) -> None:
    """Saves ``rows × cols`` images (row-major, (N, 1, H, W) in [0, 1]) as a PNG with a title per row."""
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols + 0.9, 0.9 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r * cols + c, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(f"digit {r}", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Parses arguments, samples, and writes the grid."""
    parser = argparse.ArgumentParser(prog="python -m zoo.grid", description="Write a labelled sample grid PNG.")
    parser.add_argument("--model", default="mini-dit-digits", help="shipped name or pipeline folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=8, help="columns (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=None, help="inference steps (pipeline default if omitted)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (pipeline default if omitted)")
    parser.add_argument("--scheduler", choices=["default", "dpm"], default="default")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = use_scheduler(load_pipeline(args.model), args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    labels = [d for d in range(10) for _ in range(args.seeds)]
    seeds = [s for _ in range(10) for s in range(args.seeds)]
    images = sample_digits(pipe, labels, seeds, args.steps, args.guidance)
    steps = args.steps or pipe.num_timesteps
    title = f"{args.model}: {type(pipe.scheduler).__name__}, {steps} steps, guidance {pipe.guidance_scale:g}"
    save_grid(images, 10, args.seeds, args.out, title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
