"""Engine overhead on a mid-size DiT on CPU: FORA(N) against AlwaysCompute in one process.

Prints the wall-clock speedup divided by the FLOP speedup (1.0 = every FLOP saved is time saved) and the
policy's decision time as a share of a denoising step. Freed memory is kept in the process, as the benchmark does
(``runtime.keep_freed_memory``); ``--allocator-defaults`` keeps glibc's defaults instead.

    python scripts/bench_overhead.py [--interval 3] [--steps 50] [--repeats 5] [--allocator-defaults]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DiTTransformer2DModel

import runtime
from policies import FORA, AlwaysCompute
from runtime.allocator import keep_freed_memory


def build_model(width: int, depth: int, sample_size: int) -> DiTTransformer2DModel:
    """A randomly initialised DiT (FLOPs and timing do not depend on the weights)."""
    torch.manual_seed(0)
    heads = width // 64
    return DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=64,
        in_channels=4,
        num_layers=depth,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ).eval()


def denoise(model: torch.nn.Module, latents: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Runs ``steps`` transformer calls as a sampler would (decreasing timesteps); returns seconds."""
    timesteps = torch.linspace(999, 0, steps).long()
    started = time.perf_counter()
    x = latents
    for t in timesteps:
        out = model(x, timestep=t.expand(x.shape[0]), class_labels=labels).sample
        x = x - 0.001 * out
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--sample-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2, help="logical samples; the batch doubles for CFG")
    parser.add_argument("--allocator-defaults", action="store_true", help="keep glibc's malloc settings")
    args = parser.parse_args()
    kept = False if args.allocator_defaults else keep_freed_memory()

    model = build_model(args.width, args.depth, args.sample_size)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2 * args.batch, 4, args.sample_size, args.sample_size, generator=generator)
    labels = torch.cat([torch.arange(args.batch), torch.full((args.batch,), 1000)])

    ratios, uncached_times, cached_times = [], [], []
    decision_share = flops_speedup = 0.0
    with torch.inference_mode():
        denoise(model, latents, labels, 3)  # warm-up
        for _ in range(args.repeats):
            engine = runtime.enable_cache(model, AlwaysCompute())
            denoise(model, latents, labels, 2)  # measure FLOPs outside the timed run
            runtime.disable_cache(model)
            uncached = denoise(model, latents, labels, args.steps)
            engine = runtime.enable_cache(model, FORA(args.interval))
            denoise(model, latents, labels, 2)
            engine.reset()
            cached = denoise(model, latents, labels, args.steps)
            summary = engine.summary()
            runtime.disable_cache(model)
            flops_speedup = summary["flops_speedup"]
            ratios.append((uncached / cached) / flops_speedup)
            uncached_times.append(uncached)
            cached_times.append(cached)
            decision_share = summary["decision_seconds"] / (cached / args.steps) / args.steps
    print(
        f"model: DiT width {args.width}, depth {args.depth}, {args.sample_size}x{args.sample_size} latents, "
        f"batch {args.batch} x2 (CFG), {args.steps} steps, {torch.get_num_threads()} threads, "
        f"freed memory {'kept' if kept else 'returned (allocator defaults)'}"
    )
    print(
        f"uncached {statistics.median(uncached_times):.2f} s, FORA(N={args.interval}) "
        f"{statistics.median(cached_times):.2f} s"
    )
    print(f"flops_speedup {flops_speedup:.3f}")
    print(f"wall_speedup / flops_speedup (median of {args.repeats}): {statistics.median(ratios):.3f}")
    print(f"policy decision time per step: {100 * decision_share:.3f}% of a step")


if __name__ == "__main__":
    main()
