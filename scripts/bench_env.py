"""Environment throughput against the bare denoising loop at equal compute, in one process.

Runs the batched vector environment with always-COMPUTE actions (so the transformer does exactly the work of the
bare pipeline) and the unmodified pipeline on the same conditions and seeds, interleaved, and prints env steps
per second (one step = one denoising step of one sample) as a fraction of the bare loop's.

    python scripts/bench_env.py [--model mini-dit-digits] [--num-envs 16] [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import CacheScheduleVecEnv
from envs.pipelines import prepare_pipeline
from reporting.evaluation import timed_generation


def env_episode_seconds(venv: CacheScheduleVecEnv, conditions: list[int], seeds: list[int]) -> float:
    """Time of one batched episode with always-compute actions (references already cached)."""
    venv.set_options([{"condition": c, "seed": s} for c, s in zip(conditions, seeds, strict=True)])
    actions = np.zeros((venv.num_envs, venv.engine.num_groups), dtype=np.int64)
    started = time.perf_counter()
    venv.reset()
    done = False
    while not done:
        _, _, dones, _ = venv.step(actions)
        done = bool(dones.all())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    conditions = [i % 7 for i in range(args.num_envs)]
    seeds = list(range(args.num_envs))
    config = {"model": args.model, "num_inference_steps": args.steps, "guidance_scale": args.guidance}
    venv = CacheScheduleVecEnv(args.num_envs, {**config, "budget_conditioned": False}, seed=0)
    bare = prepare_pipeline(args.model)
    env_episode_seconds(venv, conditions, seeds)  # computes the references and measures FLOPs once
    timed_generation(bare, conditions, seeds, 2, args.guidance)  # warm-up

    pairs = []  # (ratio, bare rate, env rate), one per interleaved pair
    samples_steps = args.num_envs * args.steps
    for _ in range(args.repeats):
        _, bare_seconds = timed_generation(bare, conditions, seeds, args.steps, args.guidance)
        env_seconds = env_episode_seconds(venv, conditions, seeds)
        pairs.append((bare_seconds / env_seconds, samples_steps / bare_seconds, samples_steps / env_seconds))
    venv.close()
    ratio, bare_rate, env_rate = sorted(pairs)[len(pairs) // 2]
    print(f"{args.model}: {args.num_envs} samples x {args.steps} steps, guidance {args.guidance}")
    print(f"median of {args.repeats} interleaved pairs:")
    print(f"bare denoising loop: {bare_rate:.0f} sample-steps/s")
    print(f"environment (always COMPUTE): {env_rate:.0f} env steps/s")
    print(f"environment throughput / bare loop: {ratio:.3f}")


if __name__ == "__main__":
    main()
