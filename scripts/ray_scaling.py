"""Throughput of the schedule search and of environment rollouts with 1 and 2 Ray workers (one CPU core each).

    python scripts/ray_scaling.py [--workers 1 2] [--model mini-dit-digits] [--steps 20] [--out scaling.json]

The same work at every worker count: the search scores the generations of ``--budgets`` budgets' searches on
``--search-samples`` samples (tables scored per second); the rollouts step a ``--num-envs`` environment split into
``--shards`` shards (environment steps, one per sample and denoising step, per second) with seeded random actions,
after one untimed episode that fills the references. Both also run in this process (``local``, one thread) as the
one-process reference. The machine's load average is printed beside the figures: rerun when it is low.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from distributed import RayShards, WorkerPool
from distributed import search_schedules as search_on_workers
from envs import CacheScheduleVecEnv
from envs.config import EnvConfig
from envs.pipelines import make_sampler
from reporting.schedule_search import ScheduleSearch
from runtime import EngineOptions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--model", default="mini-dit-digits", help="shipped name or pipeline folder")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.25, 0.33, 0.5], help="searched budgets")
    parser.add_argument("--search-samples", type=int, default=4, help="samples the search scores tables on")
    parser.add_argument("--num-envs", type=int, default=16, help="samples of the environment")
    parser.add_argument("--shards", type=int, default=2, help="environment shards (the same at every worker count)")
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args()


def measure_search(args: argparse.Namespace, config: EnvConfig, pool: WorkerPool | None) -> dict[str, float]:
    """Tables scored per second over every budget's search (one sweep of whole steps and cells), after the
    references of the search samples are made (here: in the untimed construction; on workers: by an untimed run)."""
    samples = {
        "conditions": [i % 7 for i in range(args.search_samples)],
        "seeds": list(range(args.search_samples)),
        "steps": args.steps,
        "guidance": config.guidance_scale,
        "engine_options": EngineOptions(groups=config.groups, probe_blocks=0, forecast_order=1),
    }
    if pool is None:
        search = ScheduleSearch(make_sampler(config, scheduler="default"), **samples)
        started = time.perf_counter()
        found = [search.search(budget, sweeps=1) for budget in args.budgets]
    else:
        started = time.perf_counter()
        found = search_on_workers(pool, args.budgets, sweeps=1, **samples)
    seconds = time.perf_counter() - started
    tables = sum(result.evaluations for result in found)
    return {"seconds": seconds, "tables": tables, "tables_per_second": tables / seconds}


def measure_rollouts(args: argparse.Namespace, config: EnvConfig, pool: WorkerPool | None) -> dict[str, float]:
    """Environment steps per second over ``--episodes`` episodes after an untimed one."""
    shards: Any = args.shards if pool is None else RayShards(pool, config, args.shards)
    venv = CacheScheduleVecEnv(args.num_envs, config, seed=0, shards=shards)
    rng = np.random.default_rng(0)
    venv.reset()

    def episode() -> None:
        for _ in range(args.steps):
            venv.step_async(rng.integers(0, 3, size=(venv.num_envs, config.groups)))
            venv.step_wait()

    episode()  # references of every (class, seed) drawn below, engine costs, the workers' first generations
    started = time.perf_counter()
    for _ in range(args.episodes):
        episode()
    seconds = time.perf_counter() - started
    venv.close()
    steps = args.episodes * args.steps * args.num_envs
    return {"seconds": seconds, "env_steps": steps, "env_steps_per_second": steps / seconds}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # the one-process run uses what each worker uses: one core
    config = EnvConfig(
        model=args.model,
        num_inference_steps=args.steps,
        groups=4,
        train_classes=[0, 1],
        train_seeds=[0, 4],  # 8 draws: the untimed episode generates their references
    )
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    figures: dict[str, Any] = {"load_before": load, "cores": os.cpu_count(), "args": vars(args) | {"out": None}}
    figures["local"] = {"search": measure_search(args, config, None), "rollouts": measure_rollouts(args, config, None)}
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    try:
        for count in args.workers:
            pool = WorkerPool(functools.partial(make_sampler, config, scheduler="default"), count)
            try:
                measure_search(args, config, pool)  # untimed: the workers' references and first generations
                figures[f"ray_{count}"] = {
                    "search": measure_search(args, config, pool),
                    "rollouts": measure_rollouts(args, config, pool),
                }
            finally:
                pool.close()
    finally:
        ray.shutdown()
    figures["load_after"] = os.getloadavg()
    print("\n| run | search tables/s | rollout env steps/s |\n| --- | ---: | ---: |")
    for name in ["local", *(f"ray_{count}" for count in args.workers)]:
        search, rollouts = figures[name]["search"], figures[name]["rollouts"]
        print(f"| {name} | {search['tables_per_second']:.2f} | {rollouts['env_steps_per_second']:.1f} |")
    first, last = f"ray_{args.workers[0]}", f"ray_{args.workers[-1]}"
    for kind, key in (("search", "tables_per_second"), ("rollouts", "env_steps_per_second")):
        ratio = figures[last][kind][key] / figures[first][kind][key]
        figures[f"{kind}_speedup"] = ratio
        print(f"{kind}: {args.workers[-1]} workers / {args.workers[0]}: {ratio:.2f}x")
    print(f"load average after: {figures['load_after'][0]:.2f} {figures['load_after'][1]:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
