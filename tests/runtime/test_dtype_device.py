"""The engine follows the transformer's dtype: bfloat16, float16 and float64 runs of the tiny pipeline families.

Cached residuals and forecasts are kept in the hidden states' dtype; FLOP counts, bookkeeping and decisions do not
depend on it. (Devices other than the CPU are checked by ``scripts/gpu_check.py``.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import runtime
from policies import FORA, ActionRecorder, AlwaysCompute, TaylorSeer, load_policy
from tests.conftest import make_tiny_pipeline
from zoo.metrics import psnr

STEPS = 4
SEED = 0
TEXT_LENGTH = 6
REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = REPO / "assets" / "policies" / "mini-dit-digits.safetensors"
LEARNED_STEPS = 20  # the shortest run the shipped policy was trained for
PSNR_SLACK_DB = 1.0
LEARNED_SLACK_DB = 3.0
"""The shipped policy's slack: its schedules forecast over gaps of up to three steps from residuals stored in
bfloat16, and a first-order forecast scales the rounding of the two it extrapolates from by about the gap (measured:
2.0 dB below :func:`combined_psnr` at 20 steps, budget 0.33, with the same decisions as in float32)."""
"""How much lower a bfloat16 cached run's PSNR (against float32 uncached) may be than :func:`combined_psnr`."""


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """One torch thread, as the benchmark runs: on a shared CPU, a second thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def combined_psnr(*psnrs: float) -> float:
    """The PSNR of independent errors of these PSNRs added together (their mean squared errors add)."""
    return -10.0 * math.log10(sum(10.0 ** (-value / 10.0) for value in psnrs))


def assert_quality(cached: torch.Tensor, reference: torch.Tensor, caching_psnr: float, rounding_psnr: float) -> None:
    """A half-precision cached run is about as close to the float32 uncached one as its two errors allow: caching's
    (``caching_psnr``, measured in float32) and half precision's (``rounding_psnr``, measured uncached)."""
    value = float(psnr(cached.float(), reference).mean())
    assert value >= combined_psnr(caching_psnr, rounding_psnr) - PSNR_SLACK_DB, (value, caching_psnr, rounding_psnr)


def _run(tiny, dtype: torch.dtype, steps: int = STEPS, seed: int = SEED) -> torch.Tensor:
    """Calls a tiny pipeline converted to ``dtype``; text-conditioned families get embeddings in that dtype."""
    if tiny.family not in ("sd3", "flux"):
        return tiny.run(steps, seed)
    config = tiny.transformer.config
    generator = torch.Generator().manual_seed(10_000 + seed)
    size = tiny.output_shape()[-1]

    def embeddings(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    kwargs = {
        "prompt_embeds": embeddings(1, TEXT_LENGTH, config.joint_attention_dim),
        "pooled_prompt_embeds": embeddings(1, config.pooled_projection_dim),
    }
    if tiny.family == "sd3":
        kwargs["negative_prompt_embeds"] = embeddings(1, TEXT_LENGTH, config.joint_attention_dim)
        kwargs["negative_pooled_prompt_embeds"] = embeddings(1, config.pooled_projection_dim)
        kwargs["guidance_scale"] = 5.0
    return tiny.pipe(
        **kwargs,
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images


def _tiny(family: str, dtype: torch.dtype):
    tiny = make_tiny_pipeline(family)
    tiny.pipe.to(dtype=dtype)
    return tiny


def record_stored_dtypes(engine: runtime.CacheEngine) -> set[torch.dtype]:
    """The dtypes of every residual the engine stores from now on (Flux's pipeline resets the states at its end)."""
    stored: set[torch.dtype] = set()
    store = engine.store_residual

    def recording(state, group_index, *args, **kwargs):
        store(state, group_index, *args, **kwargs)
        stored.update(s.dtype for slot in state.groups[group_index].history.slots for s in slot if s is not None)

    engine.store_residual = recording
    return stored


def _cached_run(tiny, policy, dtype: torch.dtype, **options) -> tuple[torch.Tensor, dict, set, runtime.CacheEngine]:
    """Images, summary (without its timing) and the dtypes of every stored residual, of one cached generation."""
    engine = runtime.enable_cache(tiny.transformer, policy, **options)
    stored = record_stored_dtypes(engine)
    try:
        images = _run(tiny, dtype)
        summary = engine.summary()
    finally:
        runtime.disable_cache(tiny.transformer)
    del summary["decision_seconds"]
    return images, summary, stored, engine


@pytest.mark.parametrize("family", ["dit", "pixart", "sd3", "flux"])
def test_always_compute_is_bit_identical_to_unhooked_in_bfloat16(family: str) -> None:
    tiny = _tiny(family, torch.bfloat16)
    expected = _run(tiny, torch.bfloat16)
    images, summary, stored, _ = _cached_run(tiny, AlwaysCompute(), torch.bfloat16)
    assert expected.dtype == torch.bfloat16
    assert torch.equal(images, expected)
    assert summary["computed_fraction"] == 1.0
    assert stored == {torch.bfloat16}


def test_always_compute_is_bit_identical_to_unhooked_in_float16() -> None:
    tiny = _tiny("dit", torch.float16)
    expected = _run(tiny, torch.float16)
    images, _, stored, _ = _cached_run(tiny, AlwaysCompute(), torch.float16)
    assert torch.equal(images, expected) and stored == {torch.float16}


@pytest.mark.parametrize("family", ["dit", "pixart", "sd3", "flux"])
def test_fora_and_taylorseer_run_in_bfloat16_with_float32_flop_counts(family: str) -> None:
    reference = _run(_tiny(family, torch.float32), torch.float32).float()
    rounding_psnr = float(psnr(_run(_tiny(family, torch.bfloat16), torch.bfloat16).float(), reference).mean())
    for policy in (FORA(interval=2), TaylorSeer(interval=2, order=2)):
        full, full_summary, full_stored, full_engine = _cached_run(_tiny(family, torch.float32), policy, torch.float32)
        half, half_summary, half_stored, half_engine = _cached_run(
            _tiny(family, torch.bfloat16), policy, torch.bfloat16
        )

        assert (full_stored, half_stored) == ({torch.float32}, {torch.bfloat16})
        assert half.dtype == torch.bfloat16 and bool(torch.isfinite(half).all())
        # the same decisions, the same FLOPs: costs are counted by shapes, not dtypes
        assert half_summary == full_summary
        assert torch.equal(half_engine.costs.block_flops, full_engine.costs.block_flops)
        assert half_engine.costs.always_flops == full_engine.costs.always_flops
        assert half_summary["flops_speedup"] > 1.0 and half_summary["reuses"] + half_summary["forecasts"] > 0
        assert_quality(half, reference, float(psnr(full.float(), reference).mean()), rounding_psnr)


def test_residuals_follow_a_float64_transformer() -> None:
    """Nothing hidden-state-sized is made in a fixed dtype: a float64 model gets float64 residuals and forecasts."""
    full, full_summary, _, _ = _cached_run(_tiny("dit", torch.float32), TaylorSeer(interval=2, order=2), torch.float32)
    wide, wide_summary, stored, engine = _cached_run(
        _tiny("dit", torch.float64), TaylorSeer(interval=2, order=2), torch.float64
    )
    assert stored == {torch.float64} and wide.dtype == torch.float64
    assert bool(torch.isfinite(wide).all()) and wide_summary["forecasts"] > 0
    assert wide_summary == full_summary


def test_per_sample_decisions_keep_the_hidden_dtype() -> None:
    """Rows that compute a group apart from the others (gather / scatter, partial pushes) stay in bfloat16."""
    from tests.runtime.toy_models import ScriptedPolicy, tiny_dit

    def staggered(step: int, sample: int, group: int) -> runtime.Action:
        if step == 0 or (step + sample) % 2 == 0:
            return runtime.Action.COMPUTE
        return runtime.Action.FORECAST if step > 2 else runtime.Action.REUSE

    def denoise(model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(SEED)).to(dtype).repeat(2, 1, 1, 1)
        labels = torch.tensor([1, 2, 1000, 1000])
        outputs = []
        with torch.no_grad():
            for t in torch.linspace(950, 50, 6).long():
                out = model(latents, timestep=t.expand(4), class_labels=labels).sample
                latents = latents - 0.05 * out
                outputs.append(out.float())
        return torch.stack(outputs)

    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_dit().to(dtype)
        engine = runtime.enable_cache(model, ScriptedPolicy(staggered), groups=2)
        stored = record_stored_dtypes(engine)
        outputs[dtype] = denoise(model, dtype)
        runtime.disable_cache(model)
        summary = engine.summary()
        assert stored == {dtype}
        assert summary["forecasts"] > 0 and summary["reuses"] > 0 and summary["fallbacks"] == 0
    torch.testing.assert_close(outputs[torch.bfloat16], outputs[torch.float32], rtol=0.05, atol=0.05)


def test_shipped_learned_policy_runs_the_zoo_model_in_bfloat16() -> None:
    import zoo

    policy = load_policy(SHIPPED_POLICY)
    results, decisions = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = zoo.load_pipeline("mini-dit-digits").to(dtype)
        pipe.set_progress_bar_config(disable=True)

        def generate(pipe=pipe) -> torch.Tensor:
            generator = torch.Generator().manual_seed(SEED)
            return pipe([1, 7], num_inference_steps=LEARNED_STEPS, generator=generator, output_type="pt").images

        uncached = generate()
        recorder = ActionRecorder(policy)
        engine = runtime.enable_cache(pipe, recorder, budget=0.33)
        stored = record_stored_dtypes(engine)
        try:
            cached = generate()
        finally:
            runtime.disable_cache(pipe)
        results[dtype] = (uncached, cached, engine)
        decisions[dtype] = torch.stack(recorder.actions)
        assert pipe.transformer.dtype == dtype and stored == {dtype}
        assert bool(torch.isfinite(cached).all())
        assert engine.summary()["flops_speedup"] > 1.0

    (reference, full, full_engine), (half_uncached, half, half_engine) = results.values()
    assert torch.equal(half_engine.costs.block_flops, full_engine.costs.block_flops)
    assert half_engine.costs.always_flops == full_engine.costs.always_flops
    assert torch.equal(decisions[torch.bfloat16], decisions[torch.float32])  # its observations do not drift
    caching_psnr = float(psnr(full, reference).mean())
    rounding_psnr = float(psnr(half_uncached, reference).mean())
    value = float(psnr(half.float(), reference).mean())
    assert value >= combined_psnr(caching_psnr, rounding_psnr) - LEARNED_SLACK_DB, (value, caching_psnr, rounding_psnr)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shared_times", [True, False])
def test_half_precision_forecasts_are_rounded_once(dtype: torch.dtype, shared_times: bool) -> None:
    """An order-3 forecast (weights 4, -6, 4, -1: large terms that cancel) accumulates in float32, so it lies within
    one rounding of the exact extrapolation of the stored values; rounding after every term would not."""
    from runtime.forecast import ResidualHistory

    generator = torch.Generator().manual_seed(SEED)
    slots = [(1.0 + 0.1 * torch.randn(2, 64, 8, generator=generator)).to(dtype) for _ in range(4)]
    base = torch.randn(2, 64, 8, generator=generator).to(dtype)
    times = [400.0, 300.0, 200.0, 100.0]  # oldest first; the forecast is at 0, one step past the newest
    history = ResidualHistory(depth=4, batch=2)
    everyone = torch.arange(2)
    for slot, t in zip(slots[:3], times[:3], strict=True):
        history.push(everyone, (slot,), t)
    if shared_times:
        history.push(everyone, (slots[3],), times[3])
    else:  # the rows push the newest slot apart: per-row slot times and tensor weights
        for row in everyone:
            history.push(row[None], (slots[3][row][None],), times[3])
    weights = history.forecast_weights(everyone, 0.0, 3)
    assert isinstance(weights, torch.Tensor) != shared_times
    forecast = history.combine(everyone, weights, base=(base,))[0]

    newest, second, third, oldest = (slot.double() for slot in reversed(slots))
    exact = base.double() + 4 * newest - 6 * second + 4 * third - oldest
    assert forecast.dtype == dtype
    one_rounding = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
    assert bool(((forecast.double() - exact).abs() <= one_rounding).all())


def test_gpu_check_script_runs_small_on_the_cpu(tmp_path: Path) -> None:
    """``scripts/gpu_check.py --small`` on the CPU: every part runs and its correctness checks pass."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu-check.json"
    report = gpu_check.main(["--device", "cpu", "--dtype", "float32", "--small", "--skip-explain", "--out", str(out)])

    assert json.loads(out.read_text())["targets"] == report["targets"]
    for family in ("dit", "flux"):
        checks = report[family]
        assert checks["always_compute_bit_exact"] and checks["fora_fraction_matches"], checks
        assert checks["taylorseer_finite"] and checks["stored_residuals"] == ["float32@cpu"]
    assert report["dit"]["flop_counts_match_float32"]
    rows = {row["method"]: row for row in report["dit"]["speed"]}
    assert list(rows) == ["FORA(3)", "TaylorSeer(4)", "learned, budget 0.33", "learned, budget 0.25"]
    assert all(row["flops_speedup"] > 1.0 and row["wall_speedup"] > 0 for row in rows.values())
    assert rows["learned, budget 0.25"]["flops_speedup"] >= rows["learned, budget 0.33"]["flops_speedup"]
    compiled = report["compile"]
    assert compiled["blocks_compiled"]["runs"], compiled
    assert compiled["blocks_compiled"]["computed_fraction"] == report["dit"]["fora_computed_fraction"]
    assert compiled["whole_transformer"] == {"skipped": "--skip-explain"}
