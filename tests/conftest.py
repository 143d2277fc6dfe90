"""Shared test fixtures: tiny, offline, deterministic diffusers pipelines and models.

Every pipeline is built from a config with ``torch.manual_seed(0)`` (no downloads, see :mod:`tests.tiny_pipelines`)
and is called unmodified, with prompt embeddings passed directly so that no text encoder or tokenizer is needed. On an
idle CPU one 4-step call takes well under 0.1 s. Pipelines with tiny text encoders and tokenizers, called with prompts,
are :func:`tests.tiny_pipelines.build_text_pipeline`'s.

Families and how their pipelines run the transformer:

* ``"dit"``: ``DiTPipeline`` with class labels; batched classifier-free guidance ``[cond, uncond]`` (null class 1000).
* ``"pixart"``: ``PixArtAlphaPipeline``; batched classifier-free guidance ``[uncond, cond]``.
* ``"sd3"``: ``StableDiffusion3Pipeline``; batched classifier-free guidance ``[uncond, cond]``.
* ``"flux"``: ``FluxPipeline`` with a guidance-distilled transformer (guidance embedding); one pass per step inside
  ``transformer.cache_context("cond")``, no batched guidance.

Fixtures:

* ``tiny_pipeline``: a :class:`TinyPipeline`, parametrised over :data:`FAMILIES` (ids ``dit``, ``pixart``, ...).
* ``tiny_pipeline_factory``: :func:`make_tiny_pipeline`, to build one family (optionally with more blocks) on demand.
* ``uncached_output``: session-cached reference images of the pristine pipelines, keyed by family, steps, seed and
  batch size.
* ``unregistered_block_model``: a model whose ``transformer_blocks`` hold a block class diffusers does not know.
* ``no_block_model``: a model with no block list that diffusers would recognise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from diffusers import DiffusionPipeline, DiTPipeline, FluxPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline

from tests.tiny_pipelines import (
    _DIT_LATENT_SIZE,
    _FLUX_IMAGE_SIZE,
    _FLUX_JOINT_DIM,
    _FLUX_POOLED_DIM,
    _PIXART_CAPTION_CHANNELS,
    _PIXART_IMAGE_SIZE,
    _SD3_IMAGE_SIZE,
    _SD3_JOINT_DIM,
    _SD3_POOLED_DIM,
    build_dit_pipeline,
    build_flux_pipeline,
    build_pixart_pipeline,
    build_sd3_pipeline,
)

FAMILIES: tuple[str, ...] = ("dit", "pixart", "sd3", "flux")
"""The model families every engine contract test runs over."""

# Sizes of the runners' conditioning.
_TEXT_LENGTH = 6
_EMBEDDING_SEED_OFFSET = 10_000


def _embedding_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(_EMBEDDING_SEED_OFFSET + seed)


def _run_dit(pipe: DiTPipeline, num_inference_steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """Class labels picked by the seed; guidance 4, so the transformer sees ``[cond, uncond]``."""
    return pipe(
        class_labels=[(seed * 97 + 31 * i) % 1000 for i in range(batch_size)],
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=num_inference_steps,
        output_type="pt",
    ).images


def _run_pixart(pipe: PixArtAlphaPipeline, num_inference_steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """Random T5-like embeddings and full masks; guidance 4.5, so the transformer sees ``[uncond, cond]``."""
    embeddings = _embedding_generator(seed)
    shape = (batch_size, _TEXT_LENGTH, _PIXART_CAPTION_CHANNELS)
    mask = torch.ones(batch_size, _TEXT_LENGTH, dtype=torch.long)
    return pipe(
        negative_prompt=None,  # the default "" would have to be tokenised
        prompt_embeds=torch.randn(shape, generator=embeddings),
        prompt_attention_mask=mask,
        negative_prompt_embeds=torch.randn(shape, generator=embeddings),
        negative_prompt_attention_mask=mask.clone(),
        guidance_scale=4.5,
        height=_PIXART_IMAGE_SIZE,
        width=_PIXART_IMAGE_SIZE,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        use_resolution_binning=False,
        output_type="pt",
    ).images


def _run_sd3(pipe: StableDiffusion3Pipeline, num_inference_steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """Random joint and pooled embeddings; guidance 5, so the transformer sees ``[uncond, cond]``."""
    embeddings = _embedding_generator(seed)
    shape = (batch_size, _TEXT_LENGTH, _SD3_JOINT_DIM)
    return pipe(
        prompt_embeds=torch.randn(shape, generator=embeddings),
        negative_prompt_embeds=torch.randn(shape, generator=embeddings),
        pooled_prompt_embeds=torch.randn(batch_size, _SD3_POOLED_DIM, generator=embeddings),
        negative_pooled_prompt_embeds=torch.randn(batch_size, _SD3_POOLED_DIM, generator=embeddings),
        guidance_scale=5.0,
        height=_SD3_IMAGE_SIZE,
        width=_SD3_IMAGE_SIZE,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    ).images


def _run_flux(pipe: FluxPipeline, num_inference_steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """Random embeddings; the default distilled guidance 3.5, so one transformer pass per step, no CFG batch."""
    embeddings = _embedding_generator(seed)
    return pipe(
        prompt_embeds=torch.randn(batch_size, _TEXT_LENGTH, _FLUX_JOINT_DIM, generator=embeddings),
        pooled_prompt_embeds=torch.randn(batch_size, _FLUX_POOLED_DIM, generator=embeddings),
        height=_FLUX_IMAGE_SIZE,
        width=_FLUX_IMAGE_SIZE,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    ).images


@dataclass(frozen=True)
class _FamilySpec:
    """How to build and run one family.

    Attributes:
        build: Builds the pipeline.
        run: Calls the pipeline: ``run(pipe, num_inference_steps, seed, batch_size)`` returns images.
        block_lists: Names of the transformer's block lists, in execution order.
        image_size: Height and width of the returned images.
        cfg_layout: Layout of the transformer's batch: ``"cond_uncond"``, ``"uncond_cond"`` or ``"none"``.
    """

    build: Callable[..., DiffusionPipeline]
    run: Callable[[DiffusionPipeline, int, int, int], torch.Tensor]
    block_lists: tuple[str, ...]
    image_size: int
    cfg_layout: str


_FAMILY_SPECS: dict[str, _FamilySpec] = {
    "dit": _FamilySpec(build_dit_pipeline, _run_dit, ("transformer_blocks",), _DIT_LATENT_SIZE, "cond_uncond"),
    "pixart": _FamilySpec(
        build_pixart_pipeline, _run_pixart, ("transformer_blocks",), _PIXART_IMAGE_SIZE, "uncond_cond"
    ),
    "sd3": _FamilySpec(build_sd3_pipeline, _run_sd3, ("transformer_blocks",), _SD3_IMAGE_SIZE, "uncond_cond"),
    "flux": _FamilySpec(
        build_flux_pipeline,
        _run_flux,
        ("transformer_blocks", "single_transformer_blocks"),
        _FLUX_IMAGE_SIZE,
        "none",
    ),
}


def build_pipeline(family: str, **sizes: int) -> DiffusionPipeline:
    """Builds the tiny pipeline of one family.

    Args:
        family: One of :data:`FAMILIES`.
        **sizes: Block counts passed to the family's builder, e.g. ``num_layers=8`` (and ``num_single_layers`` for
            Flux); the defaults give 4 blocks per transformer.

    Returns:
        The pipeline.
    """
    return _spec(family).build(**sizes)


def run_pipeline(
    family: str, pipe: DiffusionPipeline, num_inference_steps: int, seed: int, batch_size: int = 1
) -> torch.Tensor:
    """Calls a tiny pipeline, unmodified, with embeddings and initial noise drawn from ``seed``.

    DiT, PixArt and SD3 use guidance > 1, so their transformer sees a doubled batch (see :class:`TinyPipeline`'s
    ``cfg_layout``); Flux runs one pass per step inside ``transformer.cache_context("cond")``. The tiny VAE decodes
    the latents and the pipeline's own post-processing gives images in [0, 1].

    Args:
        family: One of :data:`FAMILIES`.
        pipe: A pipeline from :func:`build_pipeline` of the same family.
        num_inference_steps: Denoising steps.
        seed: Seed of the initial noise and of the conditioning.
        batch_size: Images to generate.

    Returns:
        Images, shape ``(batch_size, 3, H, W)``, values in [0, 1].
    """
    return _spec(family).run(pipe, num_inference_steps, seed, batch_size)


def _spec(family: str) -> _FamilySpec:
    if family not in _FAMILY_SPECS:
        raise ValueError(f"Unknown model family {family!r}; choose one of {list(_FAMILY_SPECS)}.")
    return _FAMILY_SPECS[family]


@dataclass
class TinyPipeline:
    """A tiny pipeline of one family, with what the tests need to know about it.

    Attributes:
        family: One of :data:`FAMILIES`.
        pipe: The unmodified diffusers pipeline.
    """

    family: str
    pipe: DiffusionPipeline

    @property
    def transformer(self) -> torch.nn.Module:
        """The pipeline's denoising transformer."""
        return self.pipe.transformer

    @property
    def block_lists(self) -> tuple[str, ...]:
        """Names of the transformer's block lists, e.g. ``("transformer_blocks", "single_transformer_blocks")``."""
        return _spec(self.family).block_lists

    @property
    def blocks(self) -> list[torch.nn.Module]:
        """Every transformer block, in execution order, over all block lists."""
        return [block for name in self.block_lists for block in getattr(self.transformer, name)]

    @property
    def num_blocks(self) -> int:
        """Total number of blocks in all block lists."""
        return len(self.blocks)

    @property
    def cfg_layout(self) -> str:
        """Layout of the transformer's batch under the runner's guidance settings."""
        return _spec(self.family).cfg_layout

    def output_shape(self, batch_size: int = 1) -> tuple[int, int, int, int]:
        """Shape ``(batch_size, 3, H, W)`` of :meth:`run`'s output."""
        size = _spec(self.family).image_size
        return (batch_size, 3, size, size)

    def run(self, num_inference_steps: int = 4, seed: int = 0, batch_size: int = 1) -> torch.Tensor:
        """Calls the pipeline and returns its images, see :func:`run_pipeline`."""
        return run_pipeline(self.family, self.pipe, num_inference_steps, seed, batch_size)


def make_tiny_pipeline(family: str, **sizes: int) -> TinyPipeline:
    """Builds a fresh :class:`TinyPipeline` of one family.

    Args:
        family: One of :data:`FAMILIES`.
        **sizes: Block counts, see :func:`build_pipeline`.

    Returns:
        The tiny pipeline.
    """
    return TinyPipeline(family=family, pipe=build_pipeline(family, **sizes))


@pytest.fixture(params=FAMILIES)
def tiny_pipeline(request: pytest.FixtureRequest) -> TinyPipeline:
    """A freshly built tiny pipeline, once per family in :data:`FAMILIES`."""
    return make_tiny_pipeline(request.param)


@pytest.fixture
def tiny_pipeline_factory() -> Callable[..., TinyPipeline]:
    """:func:`make_tiny_pipeline`, for tests that pick their family themselves."""
    return make_tiny_pipeline


@pytest.fixture(scope="session")
def uncached_output() -> Callable[..., torch.Tensor]:
    """Reference outputs of the pristine (never hooked) default-size pipelines, computed once per session.

    Returns:
        ``uncached_output(family, num_inference_steps=4, seed=0, batch_size=1)``: the images :meth:`TinyPipeline.run`
        gives with the same arguments on a freshly built pipeline of that family. Each call returns a new copy.
    """
    pipelines: dict[str, TinyPipeline] = {}
    outputs: dict[tuple[str, int, int, int], torch.Tensor] = {}

    def get(family: str, num_inference_steps: int = 4, seed: int = 0, batch_size: int = 1) -> torch.Tensor:
        key = (family, num_inference_steps, seed, batch_size)
        if key not in outputs:
            if family not in pipelines:
                pipelines[family] = make_tiny_pipeline(family)
            outputs[key] = pipelines[family].run(num_inference_steps, seed, batch_size)
        return outputs[key].clone()

    return get


class UnregisteredBlock(torch.nn.Module):
    """A residual block whose class diffusers' ``TransformerBlockRegistry`` does not know.

    Args:
        dim: Hidden size.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Adds ``proj(norm(hidden_states))`` to ``hidden_states``."""
        return hidden_states + self.proj(self.norm(hidden_states))


class UnregisteredBlockModel(torch.nn.Module):
    """A model shaped like a diffusers transformer (a ``transformer_blocks`` list) but built of unknown blocks.

    Args:
        dim: Hidden size.
        num_layers: Number of blocks.
    """

    def __init__(self, dim: int = 8, num_layers: int = 4) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(dim, dim)
        self.transformer_blocks = torch.nn.ModuleList([UnregisteredBlock(dim) for _ in range(num_layers)])
        self.proj_out = torch.nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """Runs every block on ``hidden_states`` of shape ``(batch, tokens, dim)``."""
        hidden_states = self.proj_in(hidden_states)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states)
        return self.proj_out(hidden_states)


class NoBlockModel(torch.nn.Module):
    """A model with no block list that any cache could recognise: a plain stack of linear layers.

    Args:
        dim: Hidden size.
        num_layers: Number of layers.
    """

    def __init__(self, dim: int = 8, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(num_layers)])

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """Runs every layer on ``hidden_states``."""
        for layer in self.layers:
            hidden_states = hidden_states + torch.nn.functional.gelu(layer(hidden_states))
        return hidden_states


@pytest.fixture
def unregistered_block_model() -> UnregisteredBlockModel:
    """A small model whose ``transformer_blocks`` are of a class unknown to diffusers' block registry."""
    torch.manual_seed(0)
    return UnregisteredBlockModel().eval()


@pytest.fixture
def no_block_model() -> NoBlockModel:
    """A small model without any recognised transformer block list."""
    torch.manual_seed(0)
    return NoBlockModel().eval()


from tests.digits_fixtures import tiny_digits_dir  # noqa: E402, F401 (a shared fixture)
