"""How close wall-clock speedup can come to FLOP speedup on a pipeline: the share of time outside the blocks.

A cache skips transformer blocks; everything else a denoising step does (the scheduler, guidance, the embeddings
and final layer) runs at every step. FLOP speedup ``s`` counts the whole transformer, whose parts outside the blocks
hold a share ``a`` of its FLOPs, so a cache at speedup ``s`` runs ``b = (1/s - a) / (1 - a)`` of the block FLOPs.
If a share ``f`` of the uncached time lies outside the blocks, the cached run takes at least ``f + (1 - f) * b`` of
it, so wall ÷ FLOP speedup is at most ``1 / (s * (f + (1 - f) * b))`` for a cache with no overhead of its own.
This script times the blocks the engine would hook, inside the unmodified pipeline, counts ``a`` with
``FlopCounterMode`` (through the engine's cost model), and prints ``f`` and that ceiling at a few speedups.

    python scripts/wall_ceiling.py [--model mini-dit-digits] [--samples 36] [--steps 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import runtime
from envs.pipelines import generate, prepare_pipeline
from policies import AlwaysCompute
from runtime.blocks import find_blocks


def time_blocks(pipe: Any) -> dict[str, float]:
    """Wraps each hookable block's forward to add its time to the returned counter."""
    spent = {"blocks": 0.0}
    for hooked in find_blocks(pipe.transformer):
        forward = hooked.module.forward

        def timed(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            started = time.perf_counter()
            output = _forward(*args, **kwargs)
            spent["blocks"] += time.perf_counter() - started
            return output

        hooked.module.forward = timed
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--samples", type=int, default=36)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark uses 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

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
        blocks = (1.0 / speedup - always) / (1.0 - always)
        ceiling = 1.0 / (speedup * (share + (1.0 - share) * blocks))
        print(f"  wall / FLOP speedup ceiling at {speedup}x FLOPs: {ceiling:.3f}")


def always_flops_share(pipe: Any) -> float:
    """Share of the transformer's FLOPs outside the hooked blocks (embeddings, final layer), per the engine."""
    engine = runtime.enable_cache(pipe.transformer, AlwaysCompute(), probe_blocks=0)
    try:
        with torch.inference_mode():
            generate(pipe, [0], [0], 1, 2.0)
        return engine.costs.always_flops / engine.costs.full_flops
    finally:
        runtime.disable_cache(pipe.transformer)


if __name__ == "__main__":
    main()
