"""How much a policy's wall ÷ FLOP speedup varies from one process to the next, and what the policy itself costs.

Starts ``--processes`` fresh Python processes for each allocator setting (glibc's defaults, then
``runtime.allocator.keep_freed_memory``). Each times ``--repeats`` interleaved (uncached, cached) pairs for the
learned policy and for a replay of its recorded decisions (the same actions, without building observations or
running the network), and prints the median wall ÷ FLOP speedup of each.

    python scripts/wall_spread.py [--model mini-dit-digits] [--budget 0.33] [--processes 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import runtime
from envs.pipelines import generate, prepare_pipeline
from policies import load_policy
from runtime.allocator import keep_freed_memory

SAMPLES = 36
STEPS = 50
GUIDANCE = 2.0


class _Recorder:
    """Acts like ``policy`` and keeps its actions, one tensor per step."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.actions: list[torch.Tensor] = []

    def act(self, observation: runtime.Observation) -> torch.Tensor:
        actions = self.policy.act(observation)
        self.actions.append(actions.clone())
        return actions


class _Replay:
    """Returns recorded actions by step index; reads nothing from the observation."""

    def __init__(self, actions: list[torch.Tensor]) -> None:
        self.actions = actions

    def act(self, observation: runtime.Observation) -> torch.Tensor:
        return self.actions[observation.step_index][: observation.num_samples]


def measure(model: str, budget: float, repeats: int, keep: bool) -> dict[str, float]:
    """One process's median wall ÷ FLOP speedup of the policy and of its replay."""
    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    pipe = prepare_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    conditions = [7 + i % 3 for i in range(SAMPLES)]
    seeds = list(range(1_000_000, 1_000_000 + SAMPLES))
    policy = load_policy(Path("assets/policies") / f"{model}.safetensors")
    options = policy.trained_options

    def run(samples: int = SAMPLES, steps: int = STEPS) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            generate(pipe, conditions[:samples], seeds[:samples], steps, GUIDANCE)
        return time.perf_counter() - started

    recorder = _Recorder(policy)
    with runtime.cached(pipe, recorder, options, budget=budget):
        run()
    candidates = {"policy": policy, "replay": _Replay(recorder.actions[-STEPS:])}
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, candidate in candidates.items():
            uncached = run()
            engine = runtime.enable_cache(pipe, candidate, options, budget=budget)
            run(samples=1, steps=2)  # the engine measures its costs on its first pass, untimed
            engine.reset()
            cached = run()
            ratios[name].append(uncached / cached / engine.summary()["flops_speedup"])
            runtime.disable_cache(pipe.transformer)
    return {name: statistics.median(values) for name, values in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--budget", type=float, default=0.33)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.budget, args.repeats, args.child == "kept")))
        return
    print(f"{args.model}, budget {args.budget}: wall / FLOP speedup, median of {args.repeats} pairs per process")
    for setting, label in (("default", "glibc defaults"), ("kept", "keep_freed_memory")):
        for _ in range(args.processes):
            command = [sys.executable, __file__, "--child", setting, "--model", args.model]
            command += ["--budget", str(args.budget), "--repeats", str(args.repeats)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            print(f"  {label:<18} policy {result['policy']:.3f}   replayed decisions {result['replay']:.3f}")


if __name__ == "__main__":
    main()
