"""Train a cache policy: ``python train_agent.py`` (defaults: the shipped mini-dit-digits, configs/default.yaml).

Examples:
    python train_agent.py
    python train_agent.py --config configs/default.yaml --set agent.total_timesteps=50000 --set env.groups=4
    python train_agent.py --resume runs/mini-dit-digits-20260101-120000
    python train_agent.py --wandb-mode disabled --out runs/try
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from agents.checkpoints import read_state
from agents.config import ConfigError, load_config  # noqa: F401 (load_config is part of the CLI module API)
from agents.outputs import output_folder_problem
from agents.training import CHECKPOINTS, CONFIG_FILE, Trainer

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
RESUMABLE_FIELDS = ("agent.total_timesteps",)
RESUMABLE_SECTIONS = ("eval", "checkpoint", "wandb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Train a CachePilot cache policy with PPO / MaskablePPO, tracked in W&B.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument(
        "--wandb-mode",
        choices=["online", "offline", "disabled"],
        help="W&B mode (default: WANDB_MODE, else online when logged in, otherwise offline)",
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<model>-<date>-<time>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs training and prints where the policy went and how it does on held-out samples."""
    args = parse_args(argv)
    try:
        if args.resume is not None:
            if args.out is not None and args.out.resolve() != args.resume.resolve():
                raise ConfigError("--out and --resume name different folders; --resume continues in its own folder.")
            config_path = args.resume / CONFIG_FILE
            if not config_path.is_file():
                raise ConfigError(f"--resume {args.resume}: no {CONFIG_FILE} there; is it a training run folder?")
            check_resume_overrides(args.set)
            if read_state(args.resume / CHECKPOINTS) is None:
                raise ConfigError(
                    f"--resume {args.resume}: no complete checkpoint yet (the first one is written after the warm "
                    "start); start the run again without --resume, with another --out."
                )
            config = load_config(config_path, args.set)
            run_dir = args.resume
        else:
            config = load_config(args.config, args.set)
            run_dir = (
                args.out or Path("runs") / f"{config.env.model.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            if (run_dir / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"--out {run_dir} already holds a training run; continue it with --resume {run_dir}, or choose "
                    "another --out (nothing was changed)."
                )
            problem = output_folder_problem(run_dir)
            if problem is not None:
                raise ConfigError(f"--out {run_dir}: {problem}; give a folder for the run (nothing was changed).")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    result = Trainer(config, run_dir, wandb_mode=args.wandb_mode, resume=args.resume is not None).run()
    print(f"\ntrained {result.num_timesteps} steps; run folder: {result.run_dir}")
    if result.policy_path is None:
        print("no policy was exported (no evaluation ran)")
        return 1
    print(f"policy: {result.policy_path}")
    print(f"static schedule: {result.schedule_path}")
    print("validation (held-out classes and seeds; it picked the exported checkpoint):")
    for point in result.points:
        budget = "policy" if point.budget is None else f"budget {point.budget:.2f}"
        accuracy = "" if point.class_acc is None else f", class accuracy {100 * point.class_acc:.0f}%"
        print(
            f"  {budget}: {point.flops_speedup:.2f}x FLOPs, {point.wall_speedup:.2f}x wall, "
            f"PSNR {point.psnr:.1f} dB, SSIM {point.ssim:.3f}{accuracy}"
        )
    print(f'use it: runtime.enable_cache(pipe.transformer, "{result.policy_path}", budget=0.3)')
    return 0


def check_resume_overrides(overrides: list[str]) -> None:
    """On ``--resume``, allows only the fields that can change mid-run; the rest are fixed by the checkpoint.

    Raises:
        ConfigError: Naming the field and the ones that can change.
    """
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key not in RESUMABLE_FIELDS and key.split(".", 1)[0] not in RESUMABLE_SECTIONS:
            raise ConfigError(
                f"--set {override!r}: {key} cannot change when resuming, the checkpoint was trained with the run's "
                f"own value. On --resume you can set {', '.join(RESUMABLE_FIELDS)} and the "
                f"{', '.join(RESUMABLE_SECTIONS)} sections; start a new run to change anything else."
            )


if __name__ == "__main__":
    # A training process owns its W&B service. One inherited from a parent process (WANDB_SERVICE) would outlive a
    # killed run with the run still registered, and refuse to resume it ("run ID ... is in use").
    os.environ.pop("WANDB_SERVICE", None)
    sys.exit(main())
