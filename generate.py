"""Generate with a cache policy in an unmodified pipeline; print speedup and quality against uncached; save a grid.

Examples:
    python generate.py --model mini-dit-digits --budget 0.3 --out grid.png
    python generate.py --model mini-dit-digits --policy runs/my-run/policy.safetensors --budget 0.25
    python generate.py --model mini-flow-digits --classes 0,1,2,3 --seeds 2
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from agents.evaluation import evaluate_policy, timed_generation
from agents.plots import image_grid
from envs.pipelines import prepare_pipeline

POLICIES = Path(__file__).resolve().parent / "assets" / "policies"


def parse_list(text: str, flag: str, kind: type = int) -> list:
    """Parses ``"1,2,3"``; a bad item is an error naming the flag."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: give comma-separated values, e.g. 0,1,2") from None


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and writes the grid."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="mini-dit-digits", help="shipped name, local folder or hub id")
    parser.add_argument("--policy", type=Path, help="exported policy (default: assets/policies/<model>.safetensors)")
    parser.add_argument("--budget", type=float, default=0.3, help="target compute fraction in (0, 1] (the speed knob)")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="class labels to draw")
    parser.add_argument("--seeds", type=int, default=1, help="samples per class")
    parser.add_argument("--first-seed", type=int, default=1_000_000, help="seed of the first sample")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's: 50 DiT, 28 flow)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"))
    args = parser.parse_args(argv)

    if not 0.0 < args.budget <= 1.0:
        parser.error(f"--budget {args.budget}: a compute fraction must lie in (0, 1].")
    policy = args.policy or POLICIES / f"{args.model}.safetensors"
    if args.policy is None and not policy.is_file():
        names = (path.name.removesuffix(".safetensors") for path in POLICIES.glob("*.safetensors"))
        shipped = sorted(name for name in names if not name.endswith(".schedule"))
        parser.error(
            f"no policy ships for --model {args.model} (shipped: {', '.join(shipped)}); train one with "
            f"`python train_agent.py --set env.model={args.model}` and pass it as --policy."
        )
    if not policy.is_file():
        parser.error(f"--policy {policy}: no such file; train one with `python train_agent.py` or pass --policy.")
    classes = parse_list(args.classes, "--classes")
    if not classes:
        parser.error("--classes: give at least one class label, e.g. 0,1,2.")
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be at least 1.")
    conditions = [c for c in classes for _ in range(args.seeds)]
    seeds = [args.first_seed + i for i in range(len(conditions))]
    pipe = prepare_pipeline(args.model)
    num_classes = getattr(pipe, "num_classes", None)
    if num_classes is not None and not all(0 <= c < num_classes for c in classes):
        parser.error(f"--classes {args.classes}: {args.model} draws classes 0..{num_classes - 1}.")
    defaults = inspect.signature(pipe.__call__).parameters
    steps = args.steps or defaults["num_inference_steps"].default
    guidance = args.guidance if args.guidance is not None else defaults["guidance_scale"].default

    reference = timed_generation(pipe, conditions, seeds, steps, guidance)
    (point,) = evaluate_policy(
        pipe,
        str(policy),
        conditions=conditions,
        seeds=seeds,
        steps=steps,
        guidance=guidance,
        budgets=[args.budget],
        reference=reference,
        repeats=3,
    )
    accuracy = "" if point.class_acc is None else f", class accuracy {100 * point.class_acc:.0f}%"
    print(f"{args.model}, {steps} steps, policy {policy.name} at budget {args.budget}:")
    print(f"  {point.flops_speedup:.2f}x fewer FLOPs, {point.wall_speedup:.2f}x faster (wall clock, median of 3)")
    print(f"  against uncached: PSNR {point.psnr:.1f} dB, SSIM {point.ssim:.3f}{accuracy}")
    grid = image_grid(
        [reference[0], point.images],
        ["uncached", f"cached\n{point.flops_speedup:.1f}x"],
        [str(c) for c in conditions],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(args.out, grid)
    print(f"grid: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
