"""Train a cache policy: ``python train_agent.py`` (defaults: the shipped mini-dit-digits, configs/default.yaml).

Examples:
    python train_agent.py
    python train_agent.py --config configs/default.yaml --set agent.total_timesteps=50000 --set env.groups=4
    python train_agent.py --resume runs/mini-dit-digits-20260101-120000
    python train_agent.py --wandb-mode disabled --out runs/try
    python train_agent.py --model PixArt-alpha/PixArt-Sigma-XL-2-1024-MS --prompts prompts.txt --device cuda \
        --dtype bfloat16
    python train_agent.py --workers 8 --ray-address auto --device cuda --set agent.num_envs=32   # 8 GPUs, 4 envs each

--model, --prompts, --device and --dtype set env.model, env.prompts, env.device and env.dtype (as --set would);
--workers and --ray-address set ray.workers and ray.address (Ray workers, see docs/distributed.md).
With --model, the denoising steps and guidance scale are the pipeline's defaults unless the config file or --set
names them; on the default config, whose schedulers, step range and warm-start anchors are the shipped model's, the
run then samples with the pipeline's own scheduler at that one setting (unless --set names them). One --prompts file
is split into training, validation and test prompts by the SHA-256 of each prompt's text: 10% (at least one) test,
10% (at least one) validation, the rest training; give the splits yourself with
--set env.prompts="{train: a.txt, eval: b.txt, test: c.txt}".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from agents.checkpoints import read_state
from agents.config import ConfigError, load_config, parse_setting
from agents.training import CHECKPOINTS, CONFIG_FILE, Trainer
from envs.config import DTYPES
from envs.pipelines import call_defaults, check_conditioning
from reporting.outputs import output_folder_problem
from reporting.tracking import MODES as WANDB_MODES

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
RESUMABLE_FIELDS = ("agent.total_timesteps", "ray.workers", "ray.address")
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
        choices=WANDB_MODES,
        help="W&B mode (default: WANDB_MODE, else online when logged in, otherwise offline)",
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<model>-<date>-<time>)")
    parser.add_argument("--model", help="shipped name, pipeline folder or hub id (env.model)")
    parser.add_argument("--prompts", type=Path, help="prompt file of a text model: .txt one a line, or a YAML list")
    parser.add_argument("--device", help="where the pipeline runs: cpu (default), cuda, cuda:1, ... (env.device)")
    parser.add_argument("--dtype", help="weights' dtype: float32 (default), bfloat16 or float16 (env.dtype)")
    parser.add_argument(
        "--workers", type=int, help="Ray workers, one pipeline each (ray.workers; default 1: this process, no Ray)"
    )
    parser.add_argument("--ray-address", help="Ray cluster to join: auto or ray://host:port (ray.address)")
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace, config_path: Path) -> list[str]:
    """``--set`` overrides of the ``--model``, ``--prompts``, ``--device`` and ``--dtype`` flags.

    With ``--model``, the scheduler, steps and guidance scale default to the pipeline's own unless a ``--set`` or a
    config file other than the default one (which is the shipped model's) gives them.

    Raises:
        ConfigError: For a prompt file that does not exist or an unknown dtype.
    """
    overrides = []
    if args.model is not None:
        overrides.append(f"env.model={json.dumps(args.model)}")
        named = {override.split("=", 1)[0].strip() for override in args.set}
        written = {}
        if config_path.resolve() != DEFAULT_CONFIG.resolve() and config_path.is_file():
            written = (yaml.safe_load(config_path.read_text()) or {}).get("env") or {}
        for key, value in {"scheduler": "default", **call_defaults(args.model)}.items():
            if f"env.{key}" in named or key in written:
                continue
            overrides.append(f"env.{key}={json.dumps(value)}")
            if key == "num_inference_steps" and "agent.n_steps" not in named:
                overrides.append(f"agent.n_steps={int(value)}")  # whole episodes per rollout
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise ConfigError(f"--prompts {args.prompts}: no such file; give a .txt file with one prompt a line.")
        overrides.append(f"env.prompts={json.dumps(str(args.prompts.resolve()))}")
    if args.device is not None:
        overrides.append(f"env.device={json.dumps(args.device)}")
    if args.dtype is not None:
        if args.dtype not in DTYPES:
            raise ConfigError(f"--dtype {args.dtype}: use one of {', '.join(DTYPES)}.")
        overrides.append(f"env.dtype={json.dumps(args.dtype)}")
    return overrides


def fit_default_recipe(config_path: Path, overrides: list[str]) -> tuple[list[str], list[str]]:
    """Fits the default config's setting-specific fields to the environment that ``--set`` or ``--model`` chose.

    The default config is the shipped model's recipe: its teacher anchors (``warm_start.settings`` /
    ``sweeps_at``) and validation step counts (``eval.steps``) name schedulers and step counts of that model. When
    the overrides change the environment's schedulers or step range, the anchors and step counts outside it are
    dropped (none left: the single-setting warm start and validation at both ends of the range). Fields the overrides
    name themselves, and config files other than the default one, are left as written.

    Args:
        config_path: The ``--config`` file.
        overrides: The ``--set`` overrides, flags included.

    Returns:
        Extra overrides, and one notice per field they change.
    """
    if config_path.resolve() != DEFAULT_CONFIG.resolve():
        return [], []
    named = {override.split("=", 1)[0].strip() for override in overrides}
    recipe = yaml.safe_load(config_path.read_text()) or {}
    anchors = (recipe.get("warm_start") or {}).get("settings")
    sweeps_at = (recipe.get("warm_start") or {}).get("sweeps_at") or {}
    eval_steps = (recipe.get("eval") or {}).get("steps")
    cleared = ["warm_start.sweeps_at={}", "eval.steps=null"]
    if "warm_start.settings" not in named:
        cleared.append("warm_start.settings=null")
    probe = load_config(config_path, [*overrides, *cleared])
    env = probe.env
    low, high = env.steps_range
    fitted: list[str] = []
    notices: list[str] = []
    settings = probe.warm_start.settings
    single_setting = {"warm_start.scheduler", "warm_start.num_inference_steps"} & named
    if anchors and "warm_start.settings" not in named:
        fitting = [parse_setting(label) for label in anchors]
        settings = [a.label for a in fitting if env.covers(a.scheduler, a.steps) and not single_setting]
        if settings != anchors:
            fitted.append(f"warm_start.settings={json.dumps(settings or None)}")
            notices.append(
                f"the default config's teacher anchors {anchors} outside the environment you chose (schedulers "
                f"{list(env.scheduler_names)}, {low} to {high} steps) are dropped: "
                + (f"warm_start.settings={settings}." if settings else "the warm start searches one setting.")
            )
    if "warm_start.sweeps_at" not in named and set(sweeps_at) - set(settings or []):
        kept_sweeps = {label: sweeps for label, sweeps in sweeps_at.items() if label in (settings or [])}
        fitted.append(f"warm_start.sweeps_at={json.dumps(kept_sweeps)}")
    if eval_steps and "eval.steps" not in named:
        kept_steps = [steps for steps in eval_steps if low <= steps <= high]
        if kept_steps != eval_steps:
            fitted.append(f"eval.steps={json.dumps(kept_steps or None)}")
            notices.append(
                f"the default config's validation step counts {eval_steps} outside {low} to {high} steps are "
                "dropped: " + (f"eval.steps={kept_steps}." if kept_steps else f"validation runs at {low} and {high}.")
            )
    return fitted, notices


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
            if any(value is not None for value in (args.model, args.prompts, args.device, args.dtype)):
                raise ConfigError(
                    "--model, --prompts, --device and --dtype cannot change on --resume: the run keeps its own "
                    "(see its config.yaml); start a new run to change them."
                )
            if read_state(args.resume / CHECKPOINTS) is None:
                raise ConfigError(
                    f"--resume {args.resume}: no complete checkpoint yet (the first one is written after the warm "
                    "start); start the run again without --resume, with another --out."
                )
            config = load_config(config_path, [*args.set, *worker_overrides(args)])
            run_dir = args.resume
        else:
            overrides = [*args.set, *flag_overrides(args, args.config), *worker_overrides(args)]
            fitted, notices = fit_default_recipe(args.config, overrides)
            for notice in notices:
                print(f"note: {notice}", file=sys.stderr)
            config = load_config(args.config, [*overrides, *fitted])
            config.ray.env_shards = config.ray.shards  # recorded: a resumed run keeps its shards, whatever its workers
            run_dir = (
                args.out or Path("runs") / f"{config.env.model.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            if (run_dir / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"--out {run_dir} already holds a training run; continue it with --resume {run_dir}, or choose "
                    "another --out (nothing was changed)."
                )
            check_conditioning(config.env)
            problem = output_folder_problem(run_dir)
            if problem is not None:
                raise ConfigError(f"--out {run_dir}: {problem}; give a folder for the run (nothing was changed).")
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    workers = None
    if config.ray.distributed:
        try:
            from distributed import RayWorkers
        except ImportError as error:
            print(f"--workers / ray.workers > 1 needs Ray: pip install -e '.[ray]' ({error}).", file=sys.stderr)
            return 2
        workers = RayWorkers(config)
    try:
        result = Trainer(
            config, run_dir, wandb_mode=args.wandb_mode, resume=args.resume is not None, workers=workers
        ).run()
    finally:
        if workers is not None:
            workers.close()
    print(f"\ntrained {result.num_timesteps} steps; run folder: {result.run_dir}")
    if result.policy_path is None:
        print("no policy was exported (no evaluation ran)")
        return 1
    print(f"policy: {result.policy_path}")
    print(f"static schedule: {result.schedule_path}")
    print("validation (held-out conditions and seeds; it picked the exported checkpoint):")
    for point in result.points:
        budget = "policy" if point.budget is None else f"budget {point.budget:.2f}"
        if point.scheduler is not None:
            budget = f"{point.scheduler} {point.num_inference_steps} steps, {budget}"
        accuracy = "" if point.class_acc is None else f", class accuracy {100 * point.class_acc:.0f}%"
        print(
            f"  {budget}: {point.flops_speedup:.2f}x FLOPs, {point.wall_speedup:.2f}x wall, "
            f"PSNR {point.psnr:.1f} dB, SSIM {point.ssim:.3f}{accuracy}"
        )
    print(f'use it: policies.enable_cache(pipe, "{result.policy_path}", budget=0.3)')
    return 0


def worker_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides of ``--workers`` and ``--ray-address`` (they may change on ``--resume``)."""
    overrides = []
    if args.workers is not None:
        overrides.append(f"ray.workers={int(args.workers)}")
    if args.ray_address is not None:
        overrides.append(f"ray.address={json.dumps(args.ray_address)}")
    return overrides


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
