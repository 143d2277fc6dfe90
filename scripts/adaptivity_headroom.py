"""How much a per-sample schedule could gain over a shared one, and how much of it the learned policy takes.

For each budget, on ``--samples`` held-out samples (classes and seeds outside every training, validation and
benchmark split), it measures against the uncached output of the same seed:

- ``shared``: the static schedule :class:`reporting.schedule_search.ScheduleSearch` finds on all the samples together;
- ``oracle``: the schedule the same search finds for each sample on its own (it sees that sample's uncached output,
  so it bounds what any causal policy can reach with these moves);
- ``learned``: the learned policy, deciding per sample;
- ``replay``: the majority schedule of the learned policy's own actions on these samples, played for all of them
  (:func:`policies.schedule.schedule_from_actions`): what the policy is worth as a static table.

It prints and writes (``--out``) per-sample PSNR and, per method, the mean, the 10th percentile and the minimum,
the FLOP speedup, and the share of step × group cells where the learned policy's samples disagree.

    python scripts/adaptivity_headroom.py [--model mini-dit-digits] [--samples 8] [--budgets 0.33 0.25 0.2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import runtime
from envs.pipelines import generate, prepare_pipeline
from policies import ActionRecorder, StaticSchedulePolicy, load_policy
from reporting.schedule_search import ScheduleSearch
from runtime.budget import is_budget
from zoo.metrics import capped_psnr

PSNR_CAP = 60.0
METHODS = ("shared", "oracle", "learned", "replay")


def _flops_speedup(search: ScheduleSearch, policy: Any, budget: float | None) -> tuple[float, torch.Tensor]:
    """Runs ``policy`` through the engine on the search samples: ``(FLOP speedup, images)``."""
    with runtime.cached(search.pipe, policy, search.engine_options, budget=budget) as engine:
        with torch.inference_mode():
            images = generate(search.pipe, search.conditions, search.seeds, search.steps, search.guidance)
        speedup = float(engine.summary()["flops_speedup"])
    return speedup, images


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "p10": float(np.percentile(values, 10)),
        "min": float(np.min(values)),
    }


def measure_budget(arguments: dict[str, Any], budget: float) -> dict[str, Any]:
    """All four methods at one budget (runs in a worker process)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    policy = load_policy(arguments["policy"])
    options = policy.trained_options
    pipe = prepare_pipeline(arguments["model"], arguments["scheduler"])
    search = ScheduleSearch(
        pipe,
        arguments["conditions"],
        arguments["seeds"],
        arguments["steps"],
        arguments["guidance"],
        options,
        psnr_cap=PSNR_CAP,
    )
    n = len(search.seeds)
    everyone = list(range(n))

    recorder = ActionRecorder(policy)
    learned_speedup, learned_images = _flops_speedup(search, recorder, budget)
    learned = capped_psnr(learned_images, search.reference, PSNR_CAP).double().numpy()
    disagree = recorder.disagreement()
    replay_table = recorder.static_replay().numpy()
    replay_speedup, _ = _flops_speedup(search, StaticSchedulePolicy(replay_table, engine_options=options), None)
    replay = search.evaluate_per_sample([replay_table] * n, everyone)

    shared_result = search.search(budget, sweeps=arguments["sweeps"])
    shared = search.evaluate_per_sample([shared_result.schedule] * n, everyone)
    static = StaticSchedulePolicy(shared_result.schedule, engine_options=options)
    shared_speedup, _ = _flops_speedup(search, static, None)
    oracle_results = search.search_per_sample(budget, sweeps=arguments["sweeps"])
    oracle = np.array([r.psnr for r in oracle_results])  # same cells per group as shared: same FLOPs

    per_sample = {"shared": shared, "oracle": oracle, "learned": learned, "replay": replay}
    speedups = {"shared": shared_speedup, "oracle": shared_speedup, "learned": learned_speedup}
    speedups["replay"] = replay_speedup
    return {
        "budget": budget,
        "seconds": time.perf_counter() - started,
        "learned_disagreement": disagree,
        "methods": {
            name: {"flops_speedup": speedups[name], **_stats(values), "per_sample": [float(v) for v in values]}
            for name, values in per_sample.items()
        },
        "oracle_schedules": [r.schedule.tolist() for r in oracle_results],
        "shared_schedule": shared_result.schedule.tolist(),
    }


def report(results: list[dict[str, Any]], arguments: dict[str, Any]) -> str:
    """Markdown tables of the results."""
    classes = sorted(set(arguments["conditions"]))
    lines = [
        f"Model `{arguments['model']}`, {len(arguments['seeds'])} samples (classes {classes}, "
        f"seeds {arguments['seeds'][0]}–{arguments['seeds'][-1]}), {arguments['steps']} steps, guidance "
        f"{arguments['guidance']:g}, search sweeps {arguments['sweeps']}; PSNR against uncached, capped at "
        f"{PSNR_CAP:g} dB.",
        "",
        "| budget | method | FLOP speedup | mean PSNR | 10th pct | min |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for name in METHODS:
            m = result["methods"][name]
            lines.append(
                f"| {result['budget']:g} | {name} | {m['flops_speedup']:.2f}× | {m['mean']:.2f} | {m['p10']:.2f} "
                f"| {m['min']:.2f} |"
            )
    lines += ["", "| budget | oracle − shared | learned − replay | learned − shared | cells where samples disagree |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for result in results:
        m = result["methods"]
        lines.append(
            f"| {result['budget']:g} | {m['oracle']['mean'] - m['shared']['mean']:+.2f} dB "
            f"| {m['learned']['mean'] - m['replay']['mean']:+.2f} dB "
            f"| {m['learned']['mean'] - m['shared']['mean']:+.2f} dB | {result['learned_disagreement']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--policy", help="exported policy (default: assets/policies/<model>.safetensors)")
    parser.add_argument("--scheduler", default="default")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--classes", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--first-seed", type=int, default=3_000_000, help="outside every split of the configs")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.33, 0.25, 0.2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/adaptivity/headroom"))
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if not all(is_budget(b) for b in args.budgets):
        parser.error("--budgets must lie in (0, 1]")
    root = Path(__file__).resolve().parents[1]
    policy = args.policy or str(root / "assets" / "policies" / f"{args.model}.safetensors")
    if not Path(policy).is_file():
        parser.error(f"--policy {policy}: no such file")
    arguments = {
        "model": args.model,
        "policy": policy,
        "scheduler": args.scheduler,
        "conditions": [args.classes[i % len(args.classes)] for i in range(args.samples)],
        "seeds": [args.first_seed + i for i in range(args.samples)],
        "steps": args.steps,
        "guidance": args.guidance,
        "sweeps": args.sweeps,
    }
    started = time.perf_counter()
    if args.workers <= 1:
        results = [measure_budget(arguments, b) for b in args.budgets]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            futures = [pool.submit(measure_budget, arguments, b) for b in args.budgets]
            results = [f.result() for f in futures]
    text = report(results, arguments)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = Path(policy).resolve()
    recorded = {**arguments, "policy": str(shown.relative_to(root)) if shown.is_relative_to(root) else shown.name}
    summary = {"arguments": recorded, "seconds": time.perf_counter() - started, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    (args.out / "results.md").write_text(text)
    print(f"wrote {args.out}/results.json and results.md in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
