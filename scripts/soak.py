"""Soak test (a script, not a CI test): memory over many env episodes, and hooks left after enable/disable cycles.

    python scripts/soak.py [--model mini-dit-digits] [--episodes 1000] [--cycles 1000] [--steps 50]

Prints the resident memory growth between episode 20 (after warm-up) and the last episode (target ≤ 50 MB), and
after ``--cycles`` enable/disable cycles the number of modules still carrying hooks and of engines still alive
(target 0 and 0).
"""

from __future__ import annotations

import argparse
import gc
import time
import weakref

import numpy as np
import torch

import runtime
from envs import CacheScheduleEnv
from envs.pipelines import generate, prepare_pipeline
from policies import FORA
from runtime.diffusers_internals import HOOK_REGISTRY_ATTRIBUTE

WARMUP_EPISODES = 20


def resident_mb() -> float:
    """Resident set size of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def soak_episodes(model: str, episodes: int, steps: int) -> tuple[float, float]:
    """Random-action episodes on the training split; returns RSS after warm-up and at the end (MB)."""
    env = CacheScheduleEnv({"model": model, "num_inference_steps": steps})
    rng = np.random.default_rng(0)
    baseline = 0.0
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, done, _, _ = env.step(rng.integers(0, 3, size=env.action_space.shape))
        if episode + 1 == WARMUP_EPISODES:
            gc.collect()
            baseline = resident_mb()
        if (episode + 1) % 100 == 0:
            print(f"  episode {episode + 1}: {resident_mb():.1f} MB")
    env.close()
    gc.collect()
    return baseline, resident_mb()


def soak_enable_disable(model: str, cycles: int) -> tuple[int, int]:
    """Enable, generate two steps, disable, ``cycles`` times; returns (modules with hooks, engines alive)."""
    pipe = prepare_pipeline(model)
    engines: list[weakref.ref] = []
    for _ in range(cycles):
        engine = runtime.enable_cache(pipe.transformer, FORA(2))
        with torch.inference_mode():
            generate(pipe, [1, 2], [0, 1], 2, 2.0)
        engines.append(weakref.ref(engine))
        runtime.disable_cache(pipe.transformer)
        del engine
    gc.collect()
    registries = (getattr(module, HOOK_REGISTRY_ATTRIBUTE, None) for module in pipe.transformer.modules())
    hooked = sum(1 for registry in registries if registry is not None and registry.hooks)
    alive = sum(1 for ref in engines if ref() is not None)
    return hooked, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    started = time.perf_counter()
    print(f"{args.episodes} episodes of {args.steps} steps on {args.model}:")
    baseline, final = soak_episodes(args.model, args.episodes, args.steps)
    print(
        f"resident memory after {WARMUP_EPISODES} episodes {baseline:.1f} MB, after {args.episodes} {final:.1f} MB: "
        f"growth {final - baseline:+.1f} MB"
    )
    hooked, alive = soak_enable_disable(args.model, args.cycles)
    print(f"after {args.cycles} enable/disable cycles: {hooked} modules with hooks, {alive} engines alive")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
