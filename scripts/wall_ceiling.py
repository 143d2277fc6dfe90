"""How close wall-clock speedup can come to FLOP speedup on a pipeline: the share of time outside the blocks.

A cache skips transformer blocks; everything else a denoising step does (the scheduler, guidance, the embeddings
and final layer) runs at every step. FLOP speedup ``s`` counts the whole transformer, whose parts outside the blocks
hold a share ``a`` of its FLOPs, so a cache at speedup ``s`` runs ``b = (1/s - a) / (1 - a)`` of the block FLOPs.
If a share ``f`` of the uncached time lies outside the blocks, the cached run takes at least ``f + (1 - f) * b`` of
it, so wall ÷ FLOP speedup is at most ``1 / (s * (f + (1 - f) * b))`` for a cache with no overhead of its own.
This script times the blocks the engine would hook, inside the unmodified pipeline, counts ``a`` with
``FlopCounterMode`` (through the engine's cost model), and prints ``f`` and that ceiling at a few speedups.

Then it runs the model's exported policy at ``--budgets`` (interleaved with uncached runs) and splits a cached
generation's time into the blocks that computed, the engine's own work (decisions: observation and policy;
applying cached residuals; storing new ones; step bookkeeping) and the rest, so the gap between the measured wall ÷
FLOP speedup and the ceiling can be read off.

    python scripts/wall_ceiling.py [--model mini-dit-digits] [--samples 36] [--steps 50] [--threads 1]
                                   [--budgets 0.33 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import runtime
from bench.config import default_policy_path
from envs.pipelines import generate, prepare_pipeline
from policies import AlwaysCompute, load_policy
from runtime.allocator import keep_freed_memory
from runtime.blocks import find_blocks

ENGINE_PARTS = {
    "decide": "decisions",
    "apply_cached": "applying cached residuals",
    "store_residual": "storing residuals",
    "begin_step": "step bookkeeping",
    "end_step": "step bookkeeping",
}


def add_timer(owner: Any, name: str, spent: dict[str, float], key: str) -> None:
    """Replaces ``owner.name`` by a wrapper that adds the time of each call to ``spent[key]``."""
    function = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        output = function(*args, **kwargs)
        spent[key] += time.perf_counter() - started
        return output

    setattr(owner, name, timed)


def time_blocks(pipe: Any) -> dict[str, float]:
    """Wraps each hookable block's forward to add its time to the returned counter."""
    spent = {"blocks": 0.0}
    for hooked in find_blocks(pipe.transformer):
        add_timer(hooked.module, "forward", spent, "blocks")
    return spent


def time_engine(engine: runtime.CacheEngine) -> dict[str, float]:
    """Wraps the engine's per-step and per-group methods to add their time to the returned counters."""
    spent = dict.fromkeys(ENGINE_PARTS.values(), 0.0)
    for name, part in ENGINE_PARTS.items():
        add_timer(engine, name, spent, part)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--samples", type=int, default=36)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark uses 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.33, 0.25], help="policy budgets to split up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the benchmark does

    pipe = prepare_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    conditions = [7 + i % 3 for i in range(args.samples)]
    seeds = list(range(1_000_000, 1_000_000 + args.samples))
    spent = time_blocks(pipe)
    shares = []
    for repeat in range(args.repeats + 1):
        spent["blocks"] = 0.0
        started = time.perf_counter()
        with torch.inference_mode():
            generate(pipe, conditions, seeds, args.steps, args.guidance)
        total = time.perf_counter() - started
        if repeat > 0:  # the first run warms up
            shares.append(1.0 - spent["blocks"] / total)
    share = statistics.median(shares)
    always = always_flops_share(pipe)
    print(f"{args.model}: {args.samples} samples x {args.steps} steps, {args.threads} thread(s)")
    print(f"time outside the transformer blocks: {100 * share:.1f}% of an uncached generation ({len(shares)} runs)")
    print(f"FLOPs outside the blocks: {100 * always:.2f}% of the transformer's")
    for speedup in (2, 3, 4, 5, 6):
        print(f"  wall / FLOP speedup ceiling at {speedup}x FLOPs: {ceiling_at(speedup, share, always):.3f}")
    policy_path = default_policy_path(args.model)
    if args.budgets and policy_path.exists():
        split_cached_time(pipe, spent, load_policy(policy_path), args, conditions, seeds, share, always)


def ceiling_at(speedup: float, share: float, always: float) -> float:
    """Wall ÷ FLOP speedup of a cache with no cost of its own at ``speedup`` (see the module docstring)."""
    blocks = (1.0 / speedup - always) / (1.0 - always)
    return 1.0 / (speedup * (share + (1.0 - share) * blocks))


def split_cached_time(
    pipe: Any,
    spent: dict[str, float],
    policy: Any,
    args: argparse.Namespace,
    conditions: list[int],
    seeds: list[int],
    share: float,
    always: float,
) -> None:
    """Times the policy's cached generations against uncached ones and prints where the cached time goes."""

    def timed_generation() -> tuple[float, float]:
        spent["blocks"] = 0.0
        started = time.perf_counter()
        with torch.inference_mode():
            generate(pipe, conditions, seeds, args.steps, args.guidance)
        return time.perf_counter() - started, spent["blocks"]

    print(f"exported policy, the median of {args.repeats} interleaved (uncached, cached) pairs per budget:")
    for budget in args.budgets:
        pairs = []
        for _ in range(args.repeats):
            uncached, uncached_blocks = timed_generation()
            engine = runtime.enable_cache(pipe, policy, policy.trained_options, budget=budget)
            parts = time_engine(engine)
            with torch.inference_mode():
                generate(pipe, conditions[:1], seeds[:1], 2, args.guidance)  # the engine measures its costs first
            engine.reset()
            parts.update(dict.fromkeys(parts, 0.0))
            cached, cached_blocks = timed_generation()
            summary = engine.summary()
            runtime.disable_cache(pipe.transformer)
            pairs.append(
                {
                    "ratio": uncached / cached / summary["flops_speedup"],
                    "speedup": summary["flops_speedup"],
                    "uncached": uncached,
                    "cached": cached,
                    "blocks": cached_blocks,
                    "paced_blocks": uncached_blocks * summary["computed_fraction"],
                    "uncached_rest": uncached - uncached_blocks,
                    "engine": dict(parts),
                }
            )
        pair = sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]
        engine_time = sum(pair["engine"].values())
        ceiling = ceiling_at(pair["speedup"], share, always)
        print(
            f"  budget {budget}: {pair['speedup']:.2f}x FLOPs, wall / FLOP {pair['ratio']:.3f} (ceiling {ceiling:.3f})"
        )
        print(f"    uncached {1e3 * pair['uncached']:.0f} ms; cached {1e3 * pair['cached']:.0f} ms:")
        print(f"    computed blocks {1e3 * pair['blocks']:.1f} ms (uncached pace {1e3 * pair['paced_blocks']:.1f})")
        details = ", ".join(f"{name} {1e3 * value:.1f}" for name, value in pair["engine"].items())
        print(f"    engine {1e3 * engine_time:.1f} ms ({details})")
        rest = pair["cached"] - pair["blocks"] - engine_time
        print(f"    everything else {1e3 * rest:.1f} ms (uncached {1e3 * pair['uncached_rest']:.1f})")


def always_flops_share(pipe: Any) -> float:
    """Share of the transformer's FLOPs outside the hooked blocks (embeddings, final layer), per the engine."""
    with runtime.cached(pipe.transformer, AlwaysCompute(), probe_blocks=0) as engine, torch.inference_mode():
        generate(pipe, [0], [0], 1, 2.0)
        return engine.costs.always_flops / engine.costs.full_flops


if __name__ == "__main__":
    main()
