"""Engine contract over the four tiny pipeline families (DiT, PixArt, SD3, Flux), see ``docs/engine-api.md``.

Every pipeline is called unmodified; the engine is attached to ``pipe.transformer`` and removed again.
"""

import math

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

from runtime.diffusers_internals import TransformerBlockRegistry

STEPS = 4
SEED = 0
PROBE_BLOCKS = 1
FORA_INTERVAL = 2

SUPPORTED_BLOCK_NAMES = tuple(
    cls.__name__
    for cls in (BasicTransformerBlock, JointTransformerBlock, FluxTransformerBlock, FluxSingleTransformerBlock)
)
"""Block classes of the four families; an unsupported-model error should name at least one of them."""


def _leftover_hooks(model: torch.nn.Module) -> dict[str, list[str]]:
    """Names of the diffusers hooks still registered on ``model`` or any of its submodules, by submodule name."""
    leftovers = {}
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            leftovers[name or "<root>"] = list(registry.hooks)
    return leftovers


def test_runs_unhooked(tiny_pipeline, uncached_output):
    images = tiny_pipeline.run(STEPS, SEED)

    assert images.shape == tiny_pipeline.output_shape(batch_size=1)
    assert torch.isfinite(images).all()
    # A second, freshly built pipeline gives the same bits: the comparisons below rely on it.
    assert torch.equal(images, uncached_output(tiny_pipeline.family, STEPS, SEED))


def test_always_compute_is_bit_identical_and_disable_restores_the_model(tiny_pipeline, uncached_output):
    import runtime
    from policies import AlwaysCompute

    expected = uncached_output(tiny_pipeline.family, STEPS, SEED)
    transformer = tiny_pipeline.transformer

    engine = runtime.enable_cache(transformer, AlwaysCompute(), probe_blocks=PROBE_BLOCKS)
    try:
        cached = tiny_pipeline.run(STEPS, SEED)
        summary = engine.summary()
    finally:
        runtime.disable_cache(transformer)

    assert torch.equal(cached, expected)
    assert summary["computed_fraction"] == pytest.approx(1.0)

    assert _leftover_hooks(transformer) == {}
    for block in tiny_pipeline.blocks:
        assert _leftover_hooks(block) == {}
    assert torch.equal(tiny_pipeline.run(STEPS, SEED), expected)


def test_fora_computed_fraction_matches_formula(tiny_pipeline, uncached_output):
    import runtime
    from policies import FORA

    transformer = tiny_pipeline.transformer
    engine = runtime.enable_cache(transformer, FORA(interval=FORA_INTERVAL), probe_blocks=PROBE_BLOCKS)
    try:
        images = tiny_pipeline.run(STEPS, SEED)
        summary = engine.summary()
    finally:
        runtime.disable_cache(transformer)

    num_blocks = tiny_pipeline.num_blocks
    computed_steps = math.ceil(STEPS / FORA_INTERVAL)
    expected_fraction = (PROBE_BLOCKS + (num_blocks - PROBE_BLOCKS) * computed_steps / STEPS) / num_blocks
    assert summary["computed_fraction"] == pytest.approx(expected_fraction)
    assert summary["flops_speedup"] > 1.0

    assert images.shape == tiny_pipeline.output_shape(batch_size=1)
    assert torch.isfinite(images).all()
    assert not torch.equal(images, uncached_output(tiny_pipeline.family, STEPS, SEED))
    assert _leftover_hooks(transformer) == {}


@pytest.mark.parametrize("model_fixture", ["no_block_model", "unregistered_block_model"])
def test_unsupported_model_raises_naming_supported_blocks(model_fixture, request):
    import runtime
    from policies import AlwaysCompute

    model = request.getfixturevalue(model_fixture)
    for block in getattr(model, "transformer_blocks", []):
        with pytest.raises(ValueError):
            TransformerBlockRegistry.get(type(block))

    with pytest.raises(ValueError) as excinfo:
        runtime.enable_cache(model, AlwaysCompute(), cfg_layout="none")

    message = str(excinfo.value)
    assert any(name in message for name in SUPPORTED_BLOCK_NAMES), message
    assert _leftover_hooks(model) == {}


def test_groups_skipping_together_apply_one_summed_residual(tiny_pipeline, monkeypatch):
    """FORA skips every group at once: one combination of summed residuals gives the per-group result."""
    import runtime
    from policies import FORA

    transformer = tiny_pipeline.transformer

    def generate() -> tuple[torch.Tensor, dict]:
        engine = runtime.enable_cache(transformer, FORA(interval=FORA_INTERVAL), probe_blocks=PROBE_BLOCKS)
        try:
            return tiny_pipeline.run(STEPS, SEED), engine.summary()
        finally:
            runtime.disable_cache(transformer)

    merged, merged_summary = generate()
    monkeypatch.setattr(runtime.residuals.ResidualCache, "_apply_span", lambda *args: None)
    separate, separate_summary = generate()

    assert merged_summary["merged_groups"] > 0 and separate_summary["merged_groups"] == 0
    assert merged_summary["reuses"] == separate_summary["reuses"] > 0
    torch.testing.assert_close(merged, separate, rtol=1e-5, atol=1e-5)


def test_skipped_groups_hand_on_dense_tensors(tiny_pipeline):
    """A skipped group's output is dense, even when the transformer hands its first block a transposed view.

    Patch embeddings (DiT, PixArt, SD3) give the first block a ``transpose(1, 2)`` view; a cached output laid out
    like it would make every later operation strided and slow, so the engine makes that input dense once per step.
    With no probe block and FORA, every other step skips the whole stack from that input, and the last block
    receives the cached output.
    """
    import runtime
    from policies import FORA

    transformer = tiny_pipeline.transformer
    blocks = [block.module for block in runtime.blocks.find_blocks(transformer)]
    received: dict[str, list[bool]] = {"first": [], "last": []}

    def recorder(name: str):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            received[name].append(hidden.is_contiguous())

        return record

    handles = [
        blocks[0].register_forward_pre_hook(recorder("first"), with_kwargs=True),
        blocks[-1].register_forward_pre_hook(recorder("last"), with_kwargs=True),
    ]
    runtime.enable_cache(transformer, FORA(interval=FORA_INTERVAL), probe_blocks=0, groups=2)
    try:
        tiny_pipeline.run(STEPS, SEED)
        summary = runtime.get_engine(transformer).summary()
    finally:
        runtime.disable_cache(transformer)
        for handle in handles:
            handle.remove()

    assert summary["reuses"] > 0 and summary["merged_groups"] > 0
    assert len(received["last"]) == STEPS
    assert all(received["last"]), received


def test_costs_are_measured_again_when_the_prompt_length_changes() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    import runtime
    from policies import FORA
    from tests.conftest import _SD3_JOINT_DIM, _SD3_POOLED_DIM, build_sd3_pipeline

    transformer = build_sd3_pipeline().transformer
    size = transformer.config.sample_size

    def denoise(text_length: int) -> None:
        generator = torch.Generator().manual_seed(SEED)
        latents = torch.randn(2, 4, size, size, generator=generator)
        prompt = torch.randn(2, text_length, _SD3_JOINT_DIM, generator=generator)
        pooled = torch.randn(2, _SD3_POOLED_DIM, generator=generator)
        with torch.no_grad():
            for t in torch.linspace(1000, 100, STEPS):
                out = transformer(
                    hidden_states=latents,
                    encoder_hidden_states=prompt,
                    pooled_projections=pooled,
                    timestep=t.expand(2),
                ).sample
                latents = latents - 0.05 * out

    def counted(text_length: int) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            denoise(text_length)
        return counter.get_total_flops()

    uncached = counted(64)
    engine = runtime.enable_cache(transformer, FORA(FORA_INTERVAL))
    denoise(2)  # costs measured at a short prompt
    engine.reset()
    cached = counted(64)
    runtime.disable_cache(transformer)
    assert engine.summary()["flops_speedup"] == pytest.approx(uncached / cached, rel=1e-3)


def test_sd3_skip_layer_guidance_passes_run_uncached_within_the_step() -> None:
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    import runtime
    from policies import FORA, AlwaysCompute
    from tests.conftest import (
        _SD3_IMAGE_SIZE,
        _SD3_JOINT_DIM,
        _SD3_POOLED_DIM,
        _TEXT_LENGTH,
        _embedding_generator,
        build_sd3_pipeline,
    )

    pipe = build_sd3_pipeline(num_layers=6)

    def generate() -> torch.Tensor:
        embeddings = _embedding_generator(SEED)
        shape = (1, _TEXT_LENGTH, _SD3_JOINT_DIM)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pipeline's notes on the tiny config
            return pipe(
                prompt_embeds=torch.randn(shape, generator=embeddings),
                negative_prompt_embeds=torch.randn(shape, generator=embeddings),
                pooled_prompt_embeds=torch.randn(1, _SD3_POOLED_DIM, generator=embeddings),
                negative_pooled_prompt_embeds=torch.randn(1, _SD3_POOLED_DIM, generator=embeddings),
                guidance_scale=5.0,
                height=_SD3_IMAGE_SIZE,
                width=_SD3_IMAGE_SIZE,
                num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(SEED),
                output_type="pt",
                skip_guidance_layers=[3],  # in the middle of a group: the side pass skips the group's first block
                skip_layer_guidance_stop=0.9,
            ).images

    def counted() -> tuple[torch.Tensor, int]:
        counter = FlopCounterMode(display=False)
        with counter:
            images = generate()
        return images, counter.get_total_flops()

    uncached, uncached_flops = counted()
    engine = runtime.enable_cache(pipe.transformer, AlwaysCompute(), probe_blocks=PROBE_BLOCKS)
    assert torch.equal(generate(), uncached)
    runtime.disable_cache(pipe.transformer)
    engine = runtime.enable_cache(pipe.transformer, FORA(interval=FORA_INTERVAL), probe_blocks=PROBE_BLOCKS)
    generate()  # the engine measures its costs
    engine.reset()
    _, cached_flops = counted()
    runtime.disable_cache(pipe.transformer)
    summary = engine.summary()
    assert summary["generations"] == 1 and summary["side_passes"] > 0 and summary["computed_fraction"] < 1.0
    assert summary["flops_speedup"] == pytest.approx(uncached_flops / cached_flops, rel=1e-3)
