"""Generate with a cache policy in an unmodified pipeline; print speedup and quality against uncached; save a grid.

Examples:
    python generate.py --model mini-dit-digits --budget 0.3 --out grid.png
    python generate.py --model mini-dit-digits --policy runs/my-run/policy.safetensors --budget 0.25
    python generate.py --model mini-flow-digits --classes 0,1,2,3 --seeds 2
    python generate.py --model facebook/DiT-XL-2-256 --policy taylorseer:4 --classes 207,360 --out dit.png
    python generate.py --model PixArt-alpha/PixArt-Sigma-XL-2-1024-MS --policy runs/pixart/policy.safetensors \
        --prompt "a red fox in the snow" --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import yaml
from matplotlib.figure import Figure

from envs.conditions import condition_label, read_prompts
from envs.config import SCHEDULER_NAMES, ConfigError
from envs.pipelines import DTYPES, Sampler, prepare_pipeline
from policies import FORA, DeltaDiT, FirstBlockThreshold, Policy, PolicyFormatError, TaylorSeer, load_policy
from reporting.evaluation import evaluate_policy, timed_generation, trained_scheduler_notice, trained_steps_notice
from reporting.plots import image_grid
from runtime.budget import is_budget

POLICIES = Path(__file__).resolve().parent / "assets" / "policies"
CLASSIC_EXAMPLES = ("fora:3", "taylorseer:4", "taylorseer:4:2", "first-block:0.1", "delta-dit:3")


def parse_list(text: str, flag: str, kind: type = int) -> list:
    """Parses ``"1,2,3"``; a bad item is an error naming the flag."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: give comma-separated values, e.g. 0,1,2") from None


CLASSIC_POLICIES = {
    "fora": (FORA, (int,)),
    "taylorseer": (TaylorSeer, (int, int)),
    "first-block": (FirstBlockThreshold, (float,)),
    "delta-dit": (DeltaDiT, (int,)),
}


def classic_policy(spec: str) -> Policy:
    """``fora:3``, ``taylorseer:4`` or ``taylorseer:4:2`` (interval, order), ``first-block:0.1``, ``delta-dit:3``.

    Raises:
        ValueError: If the name is unknown or the values do not fit the policy.
    """
    name, *values = spec.split(":")
    if name not in CLASSIC_POLICIES:
        raise ValueError(f"unknown classic policy {name!r}; use one of {', '.join(CLASSIC_POLICIES)}")
    cls, kinds = CLASSIC_POLICIES[name]
    if len(values) > len(kinds):
        raise ValueError(f"{name} takes at most {len(kinds)} value(s), got {spec!r}")
    parsed = []
    for kind, value in zip(kinds, values, strict=False):
        try:
            parsed.append(kind(value))
        except ValueError:
            raise ValueError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None
    return cls(*parsed)


def resolve_policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Policy, str]:
    """The policy to run and how to name it: a classic one by name, an exported file, or the model's shipped one."""
    spec = args.policy or ""
    if spec.split(":")[0] in CLASSIC_POLICIES:
        try:
            return classic_policy(spec), spec
        except ValueError as error:
            parser.error(f"--policy {spec}: {str(error).rstrip('.')}.")
    path = Path(spec) if spec else POLICIES / f"{Path(args.model).name}.safetensors"
    if not spec and not path.is_file():
        names = (file.name.removesuffix(".safetensors") for file in POLICIES.glob("*.safetensors"))
        shipped = sorted(name for name in names if not name.endswith(".schedule"))
        parser.error(
            f"no policy ships for --model {args.model} (shipped: {', '.join(shipped)}); pass an exported one "
            f"(`python train_agent.py` writes it) or a classic one ({', '.join(CLASSIC_EXAMPLES)}) as --policy."
        )
    if not path.is_file():
        parser.error(f"--policy {path}: no such file; train one with `python train_agent.py` or pass --policy.")
    try:
        return load_policy(path), path.name
    except PolicyFormatError as error:
        parser.error(f"--policy {path}: {error}")


def check_output(path: Path, parser: argparse.ArgumentParser) -> None:
    """Stops before any generation if the grid could not be written to ``path``."""
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        parser.error(f"--out {path}: give an image file name ending in one of .{', .'.join(sorted(formats))}.")
    if path.is_dir():
        parser.error(f"--out {path} is a folder; give an image file name, e.g. {path / 'grid.png'}.")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        parser.error(f"--out {path}: {blocking} is a file, not a folder.")


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and writes the grid."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="mini-dit-digits", help="shipped name, local folder or hub id")
    parser.add_argument(
        "--policy",
        help="exported policy (default: assets/policies/<model>.safetensors), or a classic one: "
        + ", ".join(CLASSIC_EXAMPLES),
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.3,
        help="target compute fraction in (0, 1], the speed knob of a learned policy (default: %(default)s)",
    )
    parser.add_argument("--classes", help="class labels to draw (default: 0,1,...,9) for a class-conditional model")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for more) for a text model")
    parser.add_argument("--prompts", type=Path, help="a prompt file (.txt one a line, or a YAML list)")
    parser.add_argument("--negative-prompt", help="negative prompt under guidance (default: the empty prompt)")
    parser.add_argument("--device", default="cpu", help="where the pipeline runs: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", help="weights' dtype: float32 (default), bfloat16, float16")
    parser.add_argument(
        "--pipeline-kwargs",
        default="{}",
        metavar="YAML",
        help='extra pipeline call arguments as a YAML mapping, e.g. "{height: 512, width: 512}"',
    )
    parser.add_argument("--seeds", type=int, default=1, help="samples per class or prompt (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=1_000_000, help="seed of the first sample")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's: 50 DiT, 28 flow)")
    parser.add_argument(
        "--scheduler",
        default="default",
        help=f"scheduler: {', '.join(SCHEDULER_NAMES)} (default: the model's own)",
    )
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    parser.add_argument(
        "--out", type=Path, default=Path("grid.png"), help="image grid to write (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    if not is_budget(args.budget):
        parser.error(f"--budget {args.budget}: a compute fraction must lie in (0, 1].")
    if args.dtype not in DTYPES:
        parser.error(f"--dtype {args.dtype}: use one of {', '.join(DTYPES)}.")
    if args.scheduler not in SCHEDULER_NAMES:
        parser.error(f"--scheduler {args.scheduler}: use one of {', '.join(SCHEDULER_NAMES)}.")
    call_kwargs = yaml.safe_load(args.pipeline_kwargs)
    if not isinstance(call_kwargs, dict):
        parser.error(f"--pipeline-kwargs {args.pipeline_kwargs!r}: give a YAML mapping, e.g. '{{height: 512}}'.")
    prompts = list(args.prompt)
    if args.prompts is not None:
        try:
            prompts += read_prompts(str(args.prompts), "--prompts")
        except ConfigError as error:
            parser.error(str(error))
    if prompts and args.classes is not None:
        parser.error("--classes and --prompt: give prompts for a text model or classes for a class-conditional one.")
    classes = parse_list(args.classes or "0,1,2,3,4,5,6,7,8,9", "--classes")
    if not classes:
        parser.error("--classes: give at least one class label, e.g. 0,1,2.")
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be at least 1.")
    check_output(args.out, parser)
    policy, policy_name = resolve_policy(args, parser)
    learned = bool(getattr(policy, "budget_conditioned", False))
    try:
        pipe = prepare_pipeline(args.model, args.scheduler, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, ValueError, OSError) as error:  # unknown model, or no weights and no network
        parser.exit(1, f"{parser.prog}: error: --model {args.model}: {str(error).splitlines()[0]}\n")
    try:
        sampler = Sampler(pipe, call_kwargs=call_kwargs, negative_prompt=args.negative_prompt)
    except ValueError as error:  # no family covers the pipeline
        parser.error(f"--model {args.model}: {error}")
    if sampler.family.takes_prompts:
        if not prompts:
            parser.error(
                f'--prompt: {args.model} ({sampler.family.name}) is conditioned on text; give --prompt "..." '
                "(repeat for more) or --prompts FILE" + (", not --classes." if args.classes is not None else ".")
            )
        chosen: list = prompts
    else:
        if prompts:
            parser.error(f"--prompt: {args.model} ({sampler.family.name}) takes class labels; give --classes.")
        chosen = classes
    conditions = [c for c in chosen for _ in range(args.seeds)]
    seeds = [args.first_seed + i for i in range(len(conditions))]
    num_classes = getattr(pipe, "num_classes", None)
    if num_classes is not None and not all(0 <= c < num_classes for c in classes):
        parser.error(f"--classes {','.join(map(str, classes))}: {args.model} draws classes 0..{num_classes - 1}.")
    steps = args.steps or sampler.default("num_inference_steps")
    guidance = args.guidance if args.guidance is not None else sampler.default("guidance_scale")

    for notice in (trained_steps_notice(policy, steps), trained_scheduler_notice(policy, sampler.scheduler)):
        if notice is not None:
            print(f"notice: {notice}")
    reference = timed_generation(sampler, conditions, seeds, steps, guidance)
    (point,) = evaluate_policy(
        sampler,
        policy,
        conditions=conditions,
        seeds=seeds,
        steps=steps,
        guidance=guidance,
        budgets=[args.budget if learned else None],
        reference=reference,
        repeats=3,
    )
    accuracy = "" if point.class_acc is None else f", class accuracy {100 * point.class_acc:.0f}%"
    knob = f" at budget {args.budget}" if learned else ""
    print(f"{args.model}, {type(pipe.scheduler).__name__} {steps} steps, policy {policy_name}{knob}:")
    print(f"  {point.flops_speedup:.2f}x fewer FLOPs, {point.wall_speedup:.2f}x faster (wall clock, median of 3)")
    print(f"  against uncached: PSNR {point.psnr:.1f} dB, SSIM {point.ssim:.3f}{accuracy}")
    grid = image_grid(
        [reference[0], point.images],
        ["uncached", f"cached\n{point.flops_speedup:.1f}x"],
        [condition_label(c, 16) for c in conditions],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(args.out, grid)
    print(f"grid: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
