"""Command line of ``benchmark.py``: flags over ``configs/benchmark.yaml``, the run, the files, W&B."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from envs.config import DTYPES, SCHEDULER_NAMES, ConfigError, EnvConfig
from envs.pipelines import make_sampler
from policies import PolicyFormatError, load_policy
from reporting.evaluation import trained_scheduler_notice, trained_steps_notice
from reporting.outputs import output_folder_problem
from reporting.tracking import MODES as WANDB_MODES
from runtime.allocator import keep_freed_memory

from .config import (
    REPO_ROOT,
    BenchmarkConfig,
    default_policy_path,
    load_config,
    parse_budgets,
    parse_classes,
    parse_seeds,
)
from .grid import build_methods
from .oracle import build_upper_bounds
from .report import TABLE_COLUMNS, headline_wall_ratio, write_results
from .runner import make_settings, measure_all, run_benchmark

ADAPTIVITY_KEYS = (
    "minus_replay",
    "minus_replay_p10",
    "minus_best",
    "minus_best_p10",
    "disagreement",
    "learned_wall_ratio",
    "replay_wall_ratio",
    "wall_ratio_vs_replay",
    "oracle_psnr",
    "oracle_learned_psnr",
)
"""Figures of the adaptivity summary (``results["adaptivity"]``) logged to the W&B run summary."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``benchmark.py``."""
    parser = argparse.ArgumentParser(
        prog="benchmark.py",
        description=(
            "Sweep CachePilot's learned policy, the engine's hand-designed caches and diffusers' caches over their "
            "knobs on one model; write results.json, results.md and pareto.png."
        ),
    )
    parser.add_argument("--config", default=None, help="benchmark YAML (default: configs/benchmark.yaml)")
    parser.add_argument(
        "--model",
        default=None,
        help="shipped model name, pipeline folder or hub id (default: the config's); steps and guidance then default "
        "to the pipeline's own unless --steps / --guidance are given",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="exported learned policy (.safetensors); default assets/policies/<model>.safetensors if it exists",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: the config's, 50; with --model the pipeline's)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help=f"scheduler: one of {', '.join(SCHEDULER_NAMES)} (default: the config's, the model's own)",
    )
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the config's)")
    parser.add_argument(
        "--seeds",
        default=None,
        help="seed range A-B, both included (default 1000000-1000035; 1000000-1000011 with --quick)",
    )
    parser.add_argument("--classes", default=None, help="comma-separated classes (default 7,8,9: never trained on)")
    parser.add_argument(
        "--prompts",
        default=None,
        help="prompt file (.txt one a line, or a YAML list) of a text-to-image or video model; the benchmark draws "
        "its test split (split as train_agent.py --prompts splits it)",
    )
    parser.add_argument("--device", default=None, help="where the pipeline runs: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, help="weights' dtype: float32 (default), bfloat16 or float16")
    parser.add_argument("--budgets", default=None, help="learned policy's budgets, e.g. 0.2,0.25,0.33,0.5")
    parser.add_argument("--quick", action="store_true", help="fewer seeds, knobs and repeats (every method kept)")
    parser.add_argument(
        "--no-oracle", action="store_true", help="leave out the per-sample oracle rows (minutes of search per budget)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default outputs/benchmark/<model>[-<scheduler>][-<steps>][-quick], with the flags given)",
    )
    parser.add_argument(
        "--wandb-mode", choices=WANDB_MODES, default=None, help="W&B mode (default: online if logged in, else offline)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timing rounds; the wall speedup is their median (default: the config's, 3, or 2 with --quick)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray workers measuring the methods, one pipeline each (default 1: this process, no Ray; needs the ray "
        "extra, see docs/distributed.md)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join: auto (one started with `ray start`) or ray://host:port",
    )
    return parser


def overrides_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Config fields set by flags; a bad value stops with an error naming the flag."""
    overrides: dict[str, Any] = {}
    learned: dict[str, Any] = {}
    try:
        if args.model is not None:
            # The config's steps and guidance belong to its model: another model uses its pipeline's defaults.
            overrides.update(model=args.model, steps=None, guidance=None)
        if args.steps is not None:
            if args.steps < 2:
                raise ConfigError(f"--steps={args.steps}: use at least 2 denoising steps.")
            overrides["steps"] = args.steps
        if args.scheduler is not None:
            if args.scheduler not in SCHEDULER_NAMES:
                raise ConfigError(f"--scheduler {args.scheduler}: use one of {', '.join(SCHEDULER_NAMES)}.")
            overrides["scheduler"] = args.scheduler
        if args.guidance is not None:
            if not (math.isfinite(args.guidance) and args.guidance >= 0):
                raise ConfigError(f"--guidance={args.guidance}: a guidance scale is a finite number >= 0.")
            overrides["guidance"] = args.guidance
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads={args.threads}: use at least 1.")
            overrides["threads"] = args.threads
        if args.repeats is not None:
            if args.repeats < 1:
                raise ConfigError(f"--repeats={args.repeats}: time at least one round.")
            overrides["repeats"] = args.repeats
        if args.seeds is not None:
            parse_seeds(args.seeds, "--seeds")
            overrides["seeds"] = args.seeds
        if args.classes is not None:
            overrides["classes"] = parse_classes(args.classes, "--classes")
        if args.prompts is not None:
            if args.classes is not None:
                raise ConfigError("--prompts and --classes: give prompts for a text model or classes for a class one.")
            overrides["prompts"] = args.prompts
        if args.device is not None:
            overrides["device"] = args.device
        if args.dtype is not None:
            if args.dtype not in DTYPES:
                raise ConfigError(f"--dtype {args.dtype}: use one of {', '.join(DTYPES)}.")
            overrides["dtype"] = args.dtype
        if args.budgets is not None:
            learned["budgets"] = parse_budgets(args.budgets, "--budgets")
        if args.policy is not None:
            learned["policy"] = args.policy
        if args.no_oracle:
            overrides["oracle"] = {"samples": 0}
    except ConfigError as error:
        parser.error(str(error))
    if learned:
        overrides["methods"] = {"learned": learned}
    return overrides


def resolve_policy(config: BenchmarkConfig) -> tuple[Path | None, str | None]:
    """The learned policy file to benchmark, or ``None`` with a notice saying why its rows are skipped.

    Raises:
        FileNotFoundError: If a policy was named explicitly (flag or config) and does not exist.
    """
    if config.methods.learned.policy is not None:
        path = Path(config.methods.learned.policy)
        if not path.is_file():
            raise FileNotFoundError(f"--policy {path}: no such file; give an exported .safetensors policy.")
        return path, None
    path = default_policy_path(config.model)
    if path.is_file():
        return path, None
    shown = _shown_path(path)
    return None, (
        f"No learned policy: {shown} does not exist, so the learned rows are skipped "
        "(export one there, or pass --policy PATH)."
    )


def _shown_path(path: Path) -> str:
    """``path`` relative to the project when it lies inside it (results then read the same on every machine)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def data_notices(config: BenchmarkConfig) -> list[str]:
    """Warnings when classes go undrawn, or the benchmark's classes or seeds overlap the training defaults."""
    train = EnvConfig()
    notices = []
    if config.prompts is not None:
        return notices  # the test prompts never overlap the training ones (the config checks it)
    dropped = [c for c in config.classes if c not in config.conditions]
    if dropped:
        notices.append(
            f"{len(config.seed_list)} seed(s) for {len(config.classes)} classes: the classes take the seeds in turn, "
            f"so classes {dropped} are not drawn."
        )
    shared = sorted(set(config.classes) & set(train.train_classes))
    if shared:
        notices.append(f"Classes {shared} are training classes: these rows do not measure held-out conditions.")
    start, stop = train.train_seeds
    seeds = config.seed_list
    if any(start <= s < stop for s in seeds):
        notices.append(f"Some seeds lie in the training seed range [{start}, {stop}).")
    return notices


def load_model(model: str, scheduler: str, dtype: str = "float32") -> Any:
    """Loads the pipeline to benchmark, with its progress bar off (on the CPU: the caller moves it)."""
    from envs.pipelines import prepare_pipeline

    return prepare_pipeline(model, scheduler, dtype=dtype)


def log_to_wandb(
    results: dict[str, Any], paths: dict[str, Path], mode: str | None, project: str, out_dir: Path
) -> None:
    """Logs the results table, ``pareto.png`` and ``results.json`` (as an artifact) to a W&B run."""
    import wandb

    from reporting.tracking import start_run

    run = start_run(project=project, config=results["config"], mode=mode, out_dir=out_dir, job_type="benchmark")
    try:
        table = wandb.Table(
            columns=list(TABLE_COLUMNS), data=[[row.get(c) for c in TABLE_COLUMNS] for row in results["rows"]]
        )
        run.log({"benchmark/results": table, "benchmark/pareto": wandb.Image(str(paths["png"]))})
        for entry in results["summary"]:
            target = f"{entry['target_speedup']:g}x"
            for key in ("delta_psnr", "learned_psnr", "best_psnr"):
                if entry[key] is not None:
                    run.summary[f"benchmark/{key}@{target}"] = entry[key]
            ratio = headline_wall_ratio(entry)
            if ratio is not None:
                run.summary[f"benchmark/learned_wall_ratio@{target}"] = ratio
        for entry in results.get("adaptivity") or []:
            target = f"{entry['target_speedup']:g}x"
            for key in ADAPTIVITY_KEYS:
                if entry[key] is not None:
                    run.summary[f"benchmark/adaptivity/{key}@{target}"] = entry[key]
        safe_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in results["model"])
        artifact = wandb.Artifact(f"benchmark-{safe_name}", type="benchmark")
        artifact.add_file(str(paths["json"]))
        run.log_artifact(artifact)
    finally:
        run.finish()


def main(argv: Sequence[str] | None = None, distribute: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Parses flags, runs the benchmark, writes the three files, prints the summary and logs to W&B.

    Args:
        argv: The flags (default: the command line's).
        distribute: With ``--workers N > 1`` or ``--ray-address``: ``distribute(config, workers, address)`` returns
            ``(measure, close)``, a ``measure`` for :func:`~bench.runner.run_benchmark` and what releases its
            workers (``benchmark.py`` passes the ``distributed`` package's).

    Returns:
        The results written to ``results.json``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: use 1 (this process) or more Ray workers.")
    remote = args.workers > 1 or args.ray_address is not None
    if remote and distribute is None:
        parser.error(
            "--workers / --ray-address: run benchmark.py, which measures on Ray workers (docs/distributed.md)."
        )
    overrides = overrides_from_args(args, parser)
    try:
        config = load_config(args.config, quick=args.quick, overrides=overrides)
    except ConfigError as error:
        parser.error(f"config: {error}")
    except FileNotFoundError as error:
        parser.error(str(error))
    try:
        policy_path, notice = resolve_policy(config)
        policy = load_policy(policy_path) if policy_path is not None else None  # a bad file stops here, not later
    except (FileNotFoundError, PolicyFormatError) as error:
        parser.error(str(error))
    notes = data_notices(config)
    if notice:
        notes.append(notice)
    for note in notes:
        print(f"notice: {note}")
    model_name = Path(str(config.model)).name
    setting = "".join(f"-{value}" for value in (args.scheduler, args.steps) if value is not None)
    out_dir = Path(args.out or f"outputs/benchmark/{model_name}{setting}{'-quick' if args.quick else ''}")

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    kept = config.keep_freed_memory and keep_freed_memory()
    if config.keep_freed_memory and not kept:
        print("notice: keep_freed_memory is on but this C library has no mallopt; timings use its defaults")
    try:
        pipe = make_sampler(config, load_model(config.model, config.scheduler, dtype=config.dtype))
    except ConfigError as error:  # prompts for a class model, none for a text model
        parser.error(str(error))
    except (FileNotFoundError, ValueError) as error:  # unknown model, or a shipped one not trained yet
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    if args.classes is not None and pipe.family.takes_prompts:
        parser.error(f"--classes: {config.model} is conditioned on text; give --prompts FILE instead.")
    num_classes = getattr(pipe.pipe, "num_classes", None) if config.prompts is None else None
    if num_classes is not None and not all(0 <= c < num_classes for c in config.classes):
        shown = ",".join(str(c) for c in config.classes)
        parser.error(f"--classes {shown}: {config.model} draws classes 0..{num_classes - 1}.")
    problem = output_folder_problem(out_dir)
    if problem is not None:
        parser.error(f"--out {out_dir}: {problem}; give a folder the results can be written to.")
    steps = make_settings(pipe, config).steps
    for training_notice in (trained_steps_notice(policy, steps), trained_scheduler_notice(policy, pipe.scheduler)):
        if training_notice is not None:
            print(f"notice: {training_notice}")
            notes.append(training_notice)
    methods = build_methods(config, policy)
    measure, close = distribute(config, args.workers, args.ray_address) if remote else (measure_all, None)
    try:
        results = run_benchmark(
            pipe,
            config,
            methods,
            model_name=str(config.model),
            progress=not args.no_progress,
            notes=notes,
            upper_bounds=build_upper_bounds(config, policy),
            measure=measure,
        )
    finally:
        if close is not None:
            close()
    results["workers"] = args.workers
    benchmarked = policy_path is not None and bool(config.methods.learned.budgets)  # no budgets: no learned rows
    results["policy"] = _shown_path(policy_path) if benchmarked else None
    results["freed_memory_kept"] = kept
    paths = write_results(results, out_dir)
    for entry in [*results["summary"], *results["adaptivity"]]:
        print(entry["line"])
    print(
        f"{len(results['rows'])} rows in {results['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}"
    )
    if args.wandb_mode != "disabled":
        log_to_wandb(results, paths, args.wandb_mode, config.wandb_project, out_dir)
    return results
