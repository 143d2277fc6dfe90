"""The tiny text-to-image and video pipelines of ``tests.tiny_pipelines``: offline, deterministic, reloadable, and
unchanged under the cache engine with a policy that always computes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline

from tests.tiny_pipelines import (
    TEXT_FAMILIES,
    build_flux_pipeline,
    build_pixart_pipeline,
    build_sd3_pipeline,
    build_text_pipeline,
    save_text_pipeline,
    text_call_kwargs,
)
from tests.tiny_text_encoders import PROMPT_WORDS, build_clip_encoder, build_clip_tokenizer, build_t5_tokenizer

PROMPTS = ["a red digit", "a blue digit"]
SEEDS = (0, 1)
STEPS = 2


def generate(pipe: DiffusionPipeline, family: str, **overrides: Any) -> torch.Tensor:
    """Calls a tiny text pipeline on :data:`PROMPTS` (or ``overrides``' conditioning) with one seed per sample.

    Returns:
        Images ``(2, 3, H, W)``, or for Wan frames ``(2, F, 3, H, W)``.
    """
    arguments = {"prompt": PROMPTS, **text_call_kwargs(family), **overrides}
    output = pipe(
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(seed) for seed in SEEDS],
        output_type="pt",
        **arguments,
    )
    return output.frames if family == "wan" else output.images


def expected_shape(family: str) -> tuple[int, ...]:
    kwargs = text_call_kwargs(family)
    image = (3, kwargs["height"], kwargs["width"])
    return (len(PROMPTS), kwargs["num_frames"], *image) if family == "wan" else (len(PROMPTS), *image)


def prompt_embedding_kwargs(pipe: DiffusionPipeline, family: str) -> dict[str, Any]:
    """Encodes :data:`PROMPTS` with the pipeline's own ``encode_prompt`` and returns the call's embedding arguments.

    Each family's ``encode_prompt`` has its own signature and return tuple; its defaults (``max_sequence_length``,
    ``clean_caption``) differ from ``__call__``'s, so the call's values are passed explicitly. ``encode_prompt`` does
    not disable autograd itself.
    """
    with torch.no_grad():
        return _encode(pipe, family, text_call_kwargs(family)["max_sequence_length"])


def _encode(pipe: DiffusionPipeline, family: str, length: int) -> dict[str, Any]:
    if family.startswith("pixart"):
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            PROMPTS,
            do_classifier_free_guidance=True,
            negative_prompt="",
            clean_caption=False,
            max_sequence_length=length,
        )
        return {
            "negative_prompt": None,  # PixArt refuses its default "" next to negative_prompt_embeds
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": negative,
            "negative_prompt_attention_mask": negative_mask,
        }
    if family == "sd3":
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=length
        )
        return {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    if family == "flux":
        embeds, pooled, _text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    embeds, negative = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True, max_sequence_length=length)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


@pytest.fixture(scope="module")
def reference() -> Callable[[str], tuple[DiffusionPipeline, torch.Tensor]]:
    """``reference(family)``: the family's pipeline, built once per module, and its output on :data:`PROMPTS`."""
    cache: dict[str, tuple[DiffusionPipeline, torch.Tensor]] = {}

    def get(family: str) -> tuple[DiffusionPipeline, torch.Tensor]:
        if family not in cache:
            pipe = build_text_pipeline(family)
            cache[family] = (pipe, generate(pipe, family))
        pipe, output = cache[family]
        return pipe, output.clone()

    return get


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_runs_from_prompts_and_reloads_from_its_folder_with_identical_output(family, reference, tmp_path):
    pipe, output = reference(family)
    assert output.shape == expected_shape(family)
    assert torch.isfinite(output).all()
    assert output.std() > 0

    folder = save_text_pipeline(family, tmp_path / family)
    reloaded = DiffusionPipeline.from_pretrained(folder)
    reloaded.set_progress_bar_config(disable=True)

    assert type(reloaded) is type(pipe)
    for name, component in pipe.components.items():
        if name.startswith("tokenizer") and component is not None:
            assert type(reloaded.components[name]) is type(component)
            assert reloaded.components[name](PROMPTS).input_ids == component(PROMPTS).input_ids
    assert torch.equal(generate(reloaded, family), output)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_different_prompts_give_different_outputs(family, reference):
    pipe, output = reference(family)
    swapped = generate(pipe, family, prompt=PROMPTS[::-1])  # each seed now gets the other prompt
    for index in range(len(PROMPTS)):
        assert not torch.equal(swapped[index], output[index])


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_encode_prompt_embeddings_reproduce_the_prompt_call(family, reference):
    pipe, output = reference(family)
    embeddings = prompt_embedding_kwargs(pipe, family)
    assert not torch.equal(embeddings["prompt_embeds"][0], embeddings["prompt_embeds"][1])
    assert torch.equal(generate(pipe, family, prompt=None, **embeddings), output)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_always_compute_engine_is_bit_identical(family, reference):
    import runtime
    from policies import AlwaysCompute

    pipe, output = reference(family)
    engine = runtime.enable_cache(pipe.transformer, AlwaysCompute())
    try:
        cached = generate(pipe, family)
        summary = engine.summary()
    finally:
        runtime.disable_cache(pipe.transformer)

    assert torch.equal(cached, output)
    assert summary["computed_fraction"] == pytest.approx(1.0)
    # Wan runs guidance as separate passes in cache_context("cond") / ("uncond"), each a generation of its own to the
    # engine; PixArt and SD3 batch guidance in one pass, distilled Flux has none.
    assert summary["generations"] == (2 if family == "wan" else 1)
    assert torch.equal(generate(pipe, family), output)


def test_flux_true_cfg_runs_a_separate_uncond_pass_and_always_compute_is_bit_identical(reference):
    import runtime
    from policies import AlwaysCompute

    pipe, distilled = reference("flux")
    true_cfg = {"true_cfg_scale": 2.0, "negative_prompt": "bad quality"}
    expected = generate(pipe, "flux", **true_cfg)
    assert not torch.equal(expected, distilled)

    engine = runtime.enable_cache(pipe.transformer, AlwaysCompute())
    try:
        cached = generate(pipe, "flux", **true_cfg)
        summary = engine.summary()
    finally:
        runtime.disable_cache(pipe.transformer)
    assert torch.equal(cached, expected)
    assert summary["generations"] == 2  # cache_context("cond") and ("uncond")


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(ValueError, match="pixart-sigma"):
        build_text_pipeline("sdxl")
    with pytest.raises(ValueError, match="wan"):
        text_call_kwargs("sdxl")


def test_t5_tokenizer_keeps_prompt_words_whole_and_ends_with_eos():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer(" ".join(PROMPT_WORDS)).input_ids
    assert len(ids) == len(PROMPT_WORDS) + 1 and ids[-1] == tokenizer.eos_token_id == 1
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id not in ids
    padded = tokenizer(PROMPTS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    assert padded.attention_mask.sum(dim=1).tolist() == [4, 4]
    assert tokenizer("Zebra 7").input_ids != tokenizer("zebra 7").input_ids  # cased, like T5


def test_clip_tokenizer_pools_at_the_first_eos_and_covers_every_byte():
    tokenizer = build_clip_tokenizer()
    encoder = build_clip_encoder(len(tokenizer), hidden_size=16, seed=0)
    assert tokenizer.bos_token_id == encoder.config.bos_token_id
    assert tokenizer.eos_token_id == encoder.config.eos_token_id
    ids = tokenizer(" ".join(PROMPT_WORDS)).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(PROMPT_WORDS) + 2
    # Text outside the word list falls back to bytes: no token in the middle is <|endoftext|>, where CLIP pools.
    inner = tokenizer("Zürich, 7 ÄÖ ✓").input_ids[1:-1]
    assert inner and tokenizer.eos_token_id not in inner
    batch = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    assert batch.input_ids.shape == (len(PROMPTS), encoder.config.max_position_embeddings)


@pytest.mark.parametrize(
    ("family", "build_embedding_only"),
    [("pixart-alpha", build_pixart_pipeline), ("sd3", build_sd3_pipeline), ("flux", build_flux_pipeline)],
)
def test_text_pipelines_share_the_embedding_only_pipelines_transformer_and_vae(family, build_embedding_only):
    text_pipe, embedding_pipe = build_text_pipeline(family), build_embedding_only()
    for name in ("transformer", "vae"):
        expected = getattr(embedding_pipe, name).state_dict()
        actual = getattr(text_pipe, name).state_dict()
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_sampler_encodes_a_negative_prompt_given_among_the_call_arguments(reference):
    """FLUX's true CFG with ``negative_prompt`` in the call arguments: the sampler passes its embeddings instead
    (diffusers refuses both) and generates what the pipeline generates from the strings; two different negative
    prompts are refused."""
    from envs.pipelines import Sampler

    pipe, _ = reference("flux")
    call = text_call_kwargs("flux")
    guidance = call.pop("guidance_scale")
    true_cfg = {"true_cfg_scale": 2.0, "negative_prompt": "bad quality"}
    sampler = Sampler(pipe, call_kwargs={**call, **true_cfg})
    assert sampler.negative_prompt == "bad quality" and "negative_prompt" not in sampler.call_kwargs
    images = sampler(PROMPTS, list(SEEDS), STEPS, guidance)
    torch.testing.assert_close(images, generate(pipe, "flux", **true_cfg), rtol=0, atol=1e-5)
    other = Sampler(pipe, call_kwargs={**call, **true_cfg, "negative_prompt": "a"})
    assert not torch.allclose(images, other(PROMPTS, list(SEEDS), STEPS, guidance), atol=1e-3)
    with pytest.raises(ValueError, match="negative prompt given twice"):
        Sampler(pipe, call_kwargs={**call, **true_cfg}, negative_prompt="blurry")
