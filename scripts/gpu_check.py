"""GPU check: the cache engine on CUDA in bfloat16, on a DiT-XL/2-sized transformer and a tiny Flux.

Random weights, built from config (no downloads). On the DiT (28 blocks, 16 heads x 72 = 1152 wide, 256 tokens, in a
``DiTPipeline`` with a tiny VAE and DDIM; a batch of 8 with classifier-free guidance, so 16 rows, 50 steps) and on a
tiny ``FluxPipeline`` (dual- and single-stream blocks, ``cache_context``), it checks:

* AlwaysCompute is bit-exact to the unhooked pipeline, and the stored residuals are in the model's dtype and device;
* FORA(3)'s computed fraction equals ``(P + (N - P) * ceil(S / 3) / S) / N``; TaylorSeer's output is finite;
* the engine's FLOP counts do not depend on the dtype (DiT: the cost model equals the float32 model's);
* host syncs per step the engine adds to the pipeline's own (CUDA's sync debug mode);
* wall / FLOP speedup of FORA(3), TaylorSeer(4) and the shipped learned policy at budgets 0.33 and 0.25 (DiT), with
  ``torch.cuda.synchronize`` around every timed call: warm-up, then rounds of uncached and cached generations
  interleaved (each cached run against the mean of the uncached runs just before and after it), medians over rounds;
* the ``torch.compile`` path: each block's forward compiled before the engine is attached (the engine's hooks stay
  eager), FORA(3) timed against the compiled uncached pipeline; and the graph breaks ``torch._dynamo.explain`` finds
  when the whole transformer is compiled with the engine attached.

The shipped policy (``assets/policies/mini-dit-digits.safetensors``) was trained for the digits zoo model: on this
model it only shows the engine's overhead with a learned, per-sample policy, not its quality.

    python scripts/gpu_check.py [--device cuda] [--dtype bfloat16] [--out gpu-check.json]
    python scripts/gpu_check.py --device cpu --dtype float32 --small      # a smoke test, seconds

It prints a JSON summary and writes it to ``--out`` after each part, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import runtime  # noqa: E402
from policies import FORA, AlwaysCompute, TaylorSeer, load_policy  # noqa: E402
from zoo.metrics import psnr  # noqa: E402

SHIPPED_POLICY = REPO / "assets" / "policies" / "mini-dit-digits.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FULL = {"layers": 28, "heads": 16, "head_dim": 72, "sample_size": 32, "batch": 8, "steps": 50, "repeats": 5}
SMALL = {"layers": 5, "heads": 2, "head_dim": 8, "sample_size": 8, "batch": 1, "steps": 4, "repeats": 1}
FLUX_STEPS = {"full": 28, "small": 3}
WALL_OVER_FLOP_TARGET = 0.9
FORA_INTERVAL = 3
EXPLAIN_DEPTHS = (2, 4)
POLICY_BUDGETS = (0.33, 0.25)
Generate = Callable[..., torch.Tensor]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(generate: Generate, device: torch.device) -> tuple[torch.Tensor, float]:
    """One generation between two device synchronisations: ``(images, seconds)``."""
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        images = generate()
    synchronize(device)
    return images, time.perf_counter() - started


def tiny_vae(latent_channels: int, shift_factor: float | None = None, scaling_factor: float = 0.18215) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    ).eval()


def build_dit(sizes: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    """A random DiT pipeline: DiT-XL/2's transformer (or ``--small``'s), a one-level VAE, DDIM."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    with device:  # initialise the weights where they will run
        transformer = DiTTransformer2DModel(
            num_attention_heads=sizes["heads"],
            attention_head_dim=sizes["head_dim"],
            in_channels=4,
            out_channels=8,
            num_layers=sizes["layers"],
            sample_size=sizes["sample_size"],
            patch_size=2,
            num_embeds_ada_norm=1000,
        ).eval()
        vae = tiny_vae(latent_channels=4)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_generator(pipe: Any, batch: int, steps: int) -> Generate:
    def generate(samples: int = batch, num_steps: int = steps) -> torch.Tensor:
        return pipe(
            class_labels=[(31 * i) % 1000 for i in range(samples)],
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=num_steps,
            output_type="pt",
        ).images

    return generate


def build_flux(device: torch.device, dtype: torch.dtype) -> Any:
    """The tests' tiny guidance-distilled Flux pipeline (2 double-stream and 2 single-stream blocks)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    with device:
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=[4, 4, 8],
        ).eval()
        vae = tiny_vae(latent_channels=1, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    ).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_generator(pipe: Any, steps: int) -> Generate:
    device, dtype = pipe.transformer.device, pipe.transformer.dtype

    def generate(samples: int = 1, num_steps: int = steps) -> torch.Tensor:
        embeddings = torch.Generator().manual_seed(10_000)
        return pipe(
            prompt_embeds=torch.randn(samples, 6, 32, generator=embeddings).to(device, dtype),
            pooled_prompt_embeds=torch.randn(samples, 32, generator=embeddings).to(device, dtype),
            height=16,
            width=16,
            num_inference_steps=num_steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    return generate


def record_stored(engine: runtime.CacheEngine) -> set[str]:
    """``"dtype@device"`` of every residual the engine stores from now on."""
    stored: set[str] = set()
    store = engine.store_residual

    def recording(state: Any, group_index: int, *args: Any, **kwargs: Any) -> None:
        store(state, group_index, *args, **kwargs)
        for slot in state.groups[group_index].history.slots:
            stored.update(f"{s.dtype}@{s.device}".replace("torch.", "") for s in slot if s is not None)

    engine.store_residual = recording
    return stored


def cached(pipe: Any, generate: Generate, policy: Any, **options: Any) -> tuple[torch.Tensor, dict, set[str], Any]:
    """One cached generation: images, the engine's summary, the stored residuals' dtypes and devices, its costs."""
    with runtime.cached(pipe, policy, **options) as engine, torch.inference_mode():
        stored = record_stored(engine)
        images = generate()
    return images, engine.summary(), stored, engine.costs


def correctness(pipe: Any, generate: Generate, steps: int) -> dict[str, Any]:
    """AlwaysCompute bit-exact, FORA's computed fraction, a finite TaylorSeer run, where residuals are stored."""
    with torch.inference_mode():
        reference = generate()
    always, _, stored, costs = cached(pipe, generate, AlwaysCompute())
    fora, fora_summary, _, _ = cached(pipe, generate, FORA(FORA_INTERVAL))
    taylor, taylor_summary, _, _ = cached(pipe, generate, TaylorSeer(interval=4))
    blocks = len(runtime.find_blocks(pipe.transformer))
    expected = (1 + (blocks - 1) * math.ceil(steps / FORA_INTERVAL) / steps) / blocks  # one probe block
    return {
        "always_compute_bit_exact": bool(torch.equal(always, reference)),
        "stored_residuals": sorted(stored),
        "fora_computed_fraction": fora_summary["computed_fraction"],
        "fora_expected_fraction": expected,
        "fora_fraction_matches": abs(fora_summary["computed_fraction"] - expected) < 1e-9,
        "fora_psnr": float(psnr(fora.float(), reference.float()).mean()),
        "taylorseer_finite": bool(torch.isfinite(taylor).all()),
        "taylorseer_forecasts": taylor_summary["forecasts"],
        "always_flops_share": costs.always_flops / costs.full_flops,
    }


def flop_counts_match_float32(pipe: Any, make_generate: Callable[[Any], Generate]) -> bool:
    """Whether the engine's cost model of ``pipe`` equals that of a float32 copy (FLOPs are counted by shape)."""
    import copy

    if pipe.transformer.dtype == torch.float32:
        return True
    costs = {}
    for name, model in (("wide", copy.deepcopy(pipe).to(dtype=torch.float32)), ("given", pipe)):
        *_, costs[name] = cached(model, make_generate(model), FORA(FORA_INTERVAL))
    wide, given = costs["wide"], costs["given"]
    return bool(torch.equal(given.block_flops, wide.block_flops) and given.always_flops == wide.always_flops)


def syncs_per_step(pipe: Any, generate: Generate, steps: int, methods: dict[str, Callable[[], Any]]) -> dict:
    """Host syncs per denoising step CUDA's sync debug mode reports: uncached, and added by each method."""

    def count(run: Callable[[], Any]) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    with torch.inference_mode():
        base = count(generate)
    added = {}
    for name, make_policy in methods.items():
        with runtime.cached(pipe, make_policy(), **method_options(name)) as engine:
            with torch.inference_mode():
                generate(samples=1, num_steps=1)  # costs measured, untimed
                engine.reset()
                added[name] = (count(generate) - base) / steps
    return {"uncached": base / steps, "added_by_engine": added}


def method_options(name: str) -> dict[str, Any]:
    for budget in POLICY_BUDGETS:
        if name.endswith(f"budget {budget:g}"):
            return {"budget": budget}
    return {}


def speed(pipe: Any, generate: Generate, device: torch.device, repeats: int, methods: dict[str, Callable]) -> list:
    """Wall and FLOP speedups of each method: interleaved ``U M U M ... U`` rounds, medians over rounds."""
    timed(generate, device)  # warm-up (kernels, allocator)
    reference, _ = timed(generate, device)
    engines: dict[str, Any] = {}
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    plain_seconds: list[float] = []
    first_images: dict[str, torch.Tensor] = {}

    def run_method(name: str) -> float:
        with runtime.cached(pipe, methods[name](), **method_options(name)) as engine:
            with torch.inference_mode():
                generate(samples=1, num_steps=1)  # the engine measures its costs on its first pass: untimed
            engine.reset()
            images, spent = timed(generate, device)
        engines[name] = engine
        first_images.setdefault(name, images)
        return spent

    for name in methods:  # warm-up of each method
        run_method(name)
    first_images.clear()
    for round_index in range(repeats):
        order = list(methods) if round_index % 2 == 0 else list(reversed(methods))
        _, before = timed(generate, device)
        plain_seconds.append(before)
        for name in order:
            spent = run_method(name)
            _, after = timed(generate, device)
            plain_seconds.append(after)
            ratios[name].append((before + after) / 2 / spent)
            seconds[name].append(spent)
            before = after
    rows = []
    for name in methods:
        summary = engines[name].summary()
        wall = statistics.median(ratios[name])
        rows.append(
            {
                "method": name,
                "flops_speedup": summary["flops_speedup"],
                "wall_speedup": wall,
                "wall_over_flop": wall / summary["flops_speedup"],
                "wall_speedups": ratios[name],
                "seconds": statistics.median(seconds[name]),
                "uncached_seconds": statistics.median(plain_seconds),
                "computed_fraction": summary["computed_fraction"],
                "decision_seconds": summary["decision_seconds"],
                "fallbacks": summary["fallbacks"],
                "psnr_vs_uncached": float(psnr(first_images[name].float(), reference.float()).mean()),
            }
        )
    return rows


def compile_check(
    pipe: Any, generate: Generate, device: torch.device, repeats: int, backend: str, eager_flops_speedup: float
) -> dict[str, Any]:
    """The engine with compiled blocks (each block's forward compiled before the engine hooks it), FORA timed against
    the compiled uncached pipeline. Its wall / FLOP ratio is also given against the eager run's FLOP speedup, in case
    FlopCounterMode counts compiled blocks differently (the decisions are the same)."""
    import torch._dynamo

    result: dict[str, Any] = {"backend": backend}
    transformer = pipe.transformer
    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    with torch.inference_mode():
        eager_reference = generate()
    originals = {}
    try:  # each block's forward compiled, then hooked: the engine's work between blocks stays eager
        for hooked in runtime.find_blocks(transformer):
            originals[hooked.module] = hooked.module.forward
            hooked.module.forward = torch.compile(hooked.module.forward, backend=backend)
        started = time.perf_counter()
        compiled_reference, _ = timed(generate, device)  # compiles
        result["compile_seconds"] = time.perf_counter() - started
        rows = speed(pipe, generate, device, repeats, {f"FORA({FORA_INTERVAL})": lambda: FORA(FORA_INTERVAL)})
        result["blocks_compiled"] = {
            "runs": True,
            "uncached_psnr_vs_eager": float(psnr(compiled_reference.float(), eager_reference.float()).mean()),
            **rows[0],
            "eager_flops_speedup": eager_flops_speedup,
            "wall_over_eager_flop": rows[0]["wall_speedup"] / eager_flops_speedup,
        }
    except Exception as error:  # a report, not a crash: the compile path is one part of the check
        result["blocks_compiled"] = {"runs": False, "error": f"{type(error).__name__}: {error}"[:500]}
    finally:
        for module, forward in originals.items():
            module.forward = forward
    result["dynamo_counters"] = {
        "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
        "unique_graphs": torch._dynamo.utils.counters["stats"].get("unique_graphs", 0),
    }
    return result


def explain_depth(sizes: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    """``torch._dynamo.explain`` of one step of a DiT of these sizes with FORA attached (after a first, eager pass
    that measured the engine's costs)."""
    import torch._dynamo

    pipe = build_dit(sizes, device, dtype)
    transformer = pipe.transformer
    calls: list[tuple[tuple, dict]] = []

    def keep_first(module: Any, args: tuple, kwargs: dict) -> None:
        if not calls:
            calls.append((args, kwargs))

    capture = transformer.register_forward_pre_hook(keep_first, with_kwargs=True)
    try:
        with runtime.cached(transformer, FORA(FORA_INTERVAL), groups=min(4, sizes["layers"] - 1)) as engine:
            with torch.inference_mode():
                dit_generator(pipe, 1, 2)()
                capture.remove()
                engine.reset()
                torch._dynamo.reset()
                return torch._dynamo.explain(transformer)(*calls[0][0], **calls[0][1])
    finally:
        capture.remove()


def explain_graph_breaks(sizes: dict[str, int], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Graphs and graph breaks ``torch._dynamo.explain`` finds in the whole transformer compiled with the engine
    attached (FORA), on copies of the DiT config 2 and 4 blocks deep, extrapolated to the full depth: tracing all
    blocks of the full model would take minutes and break the same way in each."""
    result: dict[str, Any] = {"depths": {}}
    reasons: set[str] = set()
    for depth in EXPLAIN_DEPTHS:
        explained = explain_depth({**sizes, "layers": depth}, device, dtype)
        result["depths"][depth] = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count}
        reasons.update(str(reason.reason).splitlines()[0] for reason in explained.break_reasons)
    result["break_reasons"] = sorted(reasons)[:8]
    low, high = (result["depths"][depth]["graph_breaks"] for depth in EXPLAIN_DEPTHS)
    per_block = (high - low) / (EXPLAIN_DEPTHS[1] - EXPLAIN_DEPTHS[0])
    result["graph_breaks_per_block"] = per_block
    result["graph_breaks_at_full_depth"] = low + per_block * (sizes["layers"] - EXPLAIN_DEPTHS[0])
    return result


def speed_methods() -> dict[str, Callable[[], Any]]:
    methods: dict[str, Callable[[], Any]] = {
        f"FORA({FORA_INTERVAL})": lambda: FORA(FORA_INTERVAL),
        "TaylorSeer(4)": lambda: TaylorSeer(interval=4),
    }
    for budget in POLICY_BUDGETS:
        methods[f"learned, budget {budget:g}"] = lambda: load_policy(SHIPPED_POLICY)
    return methods


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--small", action="store_true", help="a reduced DiT and fewer steps (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--repeats", type=int, help="timing rounds (default 5, 1 with --small)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor, eager with --small)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-explain", action="store_true", help="skip counting the whole model's graph breaks")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds after which optional parts skip")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 1 on the CPU, as benchmarked)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu (with --small).")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = SMALL if args.small else FULL
    repeats = args.repeats or sizes["repeats"]
    backend = args.compile_backend or ("eager" if args.small else "inductor")
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype,
        "small": args.small,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "learned_policy_note": "the shipped mini-dit-digits policy is untrained for these models: it shows the "
        "engine's overhead with a learned per-sample policy, not its quality",
    }

    def save(part: str, value: Any) -> None:
        report[part] = value
        report["elapsed_seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    pipe = build_dit(sizes, device, dtype)
    generate = dit_generator(pipe, sizes["batch"], sizes["steps"])
    dit: dict[str, Any] = {"sizes": sizes, "rows": 2 * sizes["batch"]}
    dit.update(correctness(pipe, generate, sizes["steps"]))
    dit["flop_counts_match_float32"] = flop_counts_match_float32(pipe, lambda model: dit_generator(model, 1, 2))
    save("dit", dit)
    if device.type == "cuda":
        dit["syncs_per_step"] = syncs_per_step(pipe, generate, sizes["steps"], speed_methods())
    dit["speed"] = speed(pipe, generate, device, repeats, speed_methods())
    save("dit", dit)

    flux_steps = FLUX_STEPS["small" if args.small else "full"]
    flux_pipe = build_flux(device, dtype)
    save("flux", correctness(flux_pipe, flux_generator(flux_pipe, flux_steps), flux_steps))
    del flux_pipe

    if args.skip_compile:
        save("compile", {"skipped": "--skip-compile"})
    elif time.perf_counter() - started > args.time_limit:
        save("compile", {"skipped": f"over --time-limit {args.time_limit:g} s before it started"})
    else:
        fora_flops = next(row["flops_speedup"] for row in dit["speed"] if row["method"].startswith("FORA"))
        save("compile", compile_check(pipe, generate, device, repeats, backend, fora_flops))
        if args.skip_explain:
            report["compile"]["whole_transformer"] = {"skipped": "--skip-explain"}
        elif time.perf_counter() - started > args.time_limit:
            report["compile"]["whole_transformer"] = {"skipped": f"over --time-limit {args.time_limit:g} s"}
        else:
            try:
                report["compile"]["whole_transformer"] = explain_graph_breaks(sizes, device, dtype)
            except Exception as error:  # a report, not a crash
                report["compile"]["whole_transformer"] = {"error": f"{type(error).__name__}: {error}"[:500]}
        save("compile", report["compile"])

    learned = [row for row in dit["speed"] if row["method"].startswith("learned")]
    fora = [row for row in dit["speed"] if row["method"].startswith("FORA")]
    save(
        "targets",
        {
            "wall_over_flop_at_least": WALL_OVER_FLOP_TARGET,
            "fora_met": all(row["wall_over_flop"] >= WALL_OVER_FLOP_TARGET for row in fora),
            "learned_met": all(row["wall_over_flop"] >= WALL_OVER_FLOP_TARGET for row in learned),
        },
    )
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
