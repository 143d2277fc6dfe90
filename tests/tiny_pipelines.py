"""Tiny, offline, deterministic diffusers pipelines built from configs (no downloads).

Two kinds:

* Embedding-only pipelines (``build_dit_pipeline``, ``build_pixart_pipeline``, ``build_sd3_pipeline``,
  ``build_flux_pipeline``): no text encoders or tokenizers; called with class labels (DiT) or prompt embeddings.
* Text pipelines (:func:`build_text_pipeline` over :data:`TEXT_FAMILIES`): the same transformers (plus Wan's video
  transformer) with tiny T5 / UMT5 / CLIP text encoders and tokenizers from :mod:`tests.tiny_text_encoders`, called
  with prompts. :func:`text_call_kwargs` gives the arguments that keep a call tiny (sizes, sequence length) and
  offline-deterministic; :func:`save_text_pipeline` writes a folder that ``DiffusionPipeline.from_pretrained`` loads
  back offline with identical outputs.

Every component is built right after seeding torch, so a pipeline's weights depend only on its family and sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from tests.tiny_text_encoders import build_clip_encoder, build_clip_tokenizer, build_t5_encoder, build_t5_tokenizer

# Sizes shared by the builders and the callers.
_DIT_LATENT_SIZE = 8
_PIXART_IMAGE_SIZE = 8
_PIXART_CAPTION_CHANNELS = 32
_SD3_IMAGE_SIZE = 8
_SD3_JOINT_DIM = 32
_SD3_POOLED_DIM = 64
_FLUX_IMAGE_SIZE = 16
_FLUX_JOINT_DIM = 32
_FLUX_POOLED_DIM = 32
_WAN_IMAGE_SIZE = 32
_WAN_NUM_FRAMES = 5
_WAN_TEXT_DIM = 32
_MAX_SEQUENCE_LENGTH = 16

# Seeds of the text encoders, apart from the transformer's and the VAE's (0).
_CLIP_SEED, _CLIP_2_SEED, _T5_SEED = 1, 2, 3


def _tiny_vae(
    latent_channels: int, shift_factor: float | None = None, scaling_factor: float = 0.18215
) -> AutoencoderKL:
    """Builds a one-level VAE (no down-sampling, so the image is as large as the latent).

    Args:
        latent_channels: Channels of the latent space; must match the transformer's input.
        shift_factor: Latent shift used by the flow-matching pipelines (SD3, Flux), or None.
        scaling_factor: Latent scale.

    Returns:
        The VAE in eval mode, with weights drawn from ``torch.manual_seed(0)``.
    """
    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=32,
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


def _flow_vae() -> AutoencoderKL:
    """The VAE of the flow-matching image pipelines (SD3, Flux): shift and scale set, as they need."""
    return _tiny_vae(latent_channels=4, shift_factor=0.0609, scaling_factor=1.5035)


def build_dit_pipeline(num_layers: int = 4) -> DiTPipeline:
    """Builds a DiT pipeline with a class-conditioned transformer (1000 classes plus the null class).

    Args:
        num_layers: Number of transformer blocks.

    Returns:
        The pipeline, progress bar disabled.
    """
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=_DIT_LATENT_SIZE,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()
    pipe = DiTPipeline(transformer=transformer, vae=_tiny_vae(latent_channels=4), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixart_transformer(num_layers: int) -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        sample_size=_PIXART_IMAGE_SIZE,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=_PIXART_CAPTION_CHANNELS,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()


def _sd3_transformer(num_layers: int) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=_SD3_IMAGE_SIZE,
        patch_size=1,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=_SD3_JOINT_DIM,
        pooled_projection_dim=_SD3_POOLED_DIM,
        out_channels=4,
    ).eval()


def _flux_transformer(num_layers: int, num_single_layers: int) -> FluxTransformer2DModel:
    """A guidance-distilled Flux transformer, like FLUX.1-dev (a guidance embedding)."""
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_FLUX_JOINT_DIM,
        pooled_projection_dim=_FLUX_POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    ).eval()


def _flux_vae() -> AutoencoderKL:
    # Flux packs 2x2 latent patches, so the VAE has in_channels / 4 latent channels.
    return _tiny_vae(latent_channels=1, shift_factor=0.0609, scaling_factor=1.5035)


def build_pixart_pipeline(num_layers: int = 4) -> PixArtAlphaPipeline:
    """Builds a PixArt-Alpha pipeline with no text encoder or tokenizer.

    Args:
        num_layers: Number of transformer blocks.

    Returns:
        The pipeline, progress bar disabled.
    """
    pipe = PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=_pixart_transformer(num_layers),
        vae=_tiny_vae(latent_channels=4),
        scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd3_pipeline(num_layers: int = 4) -> StableDiffusion3Pipeline:
    """Builds a Stable Diffusion 3 pipeline with no text encoders or tokenizers.

    Args:
        num_layers: Number of joint transformer blocks (the last one updates only the image stream).

    Returns:
        The pipeline, progress bar disabled.
    """
    pipe = StableDiffusion3Pipeline(
        transformer=_sd3_transformer(num_layers),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux_pipeline(num_layers: int = 2, num_single_layers: int = 2) -> FluxPipeline:
    """Builds a Flux pipeline whose transformer is guidance-distilled like FLUX.1-dev (a guidance embedding).

    Args:
        num_layers: Number of double-stream blocks (``transformer_blocks``).
        num_single_layers: Number of single-stream blocks (``single_transformer_blocks``).

    Returns:
        The pipeline, progress bar disabled.
    """
    pipe = FluxPipeline(
        transformer=_flux_transformer(num_layers, num_single_layers),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5_components(d_model: int, umt5: bool = False) -> tuple[torch.nn.Module, Any]:
    tokenizer = build_t5_tokenizer()
    return build_t5_encoder(len(tokenizer), d_model, seed=_T5_SEED, umt5=umt5), tokenizer


def _build_pixart_alpha(num_layers: int = 4) -> PixArtAlphaPipeline:
    text_encoder, tokenizer = _t5_components(_PIXART_CAPTION_CHANNELS)
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=_pixart_transformer(num_layers),
        vae=_tiny_vae(latent_channels=4),
        scheduler=DDIMScheduler(),
    )


def _build_pixart_sigma(num_layers: int = 4) -> PixArtSigmaPipeline:
    text_encoder, tokenizer = _t5_components(_PIXART_CAPTION_CHANNELS)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=_pixart_transformer(num_layers),
        vae=_tiny_vae(latent_channels=4),
        scheduler=DPMSolverMultistepScheduler(),
    )


def _build_sd3(num_layers: int = 4) -> StableDiffusion3Pipeline:
    # Two CLIP encoders whose hidden states, concatenated (16 + 16), fill the T5 width; pooled: 32 + 32.
    tokenizer = build_clip_tokenizer()
    clip_width, clip_projection = _SD3_JOINT_DIM // 2, _SD3_POOLED_DIM // 2
    text_encoder_3, tokenizer_3 = _t5_components(_SD3_JOINT_DIM)
    return StableDiffusion3Pipeline(
        transformer=_sd3_transformer(num_layers),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(),
        text_encoder=build_clip_encoder(len(tokenizer), clip_width, _CLIP_SEED, projection_dim=clip_projection),
        tokenizer=tokenizer,
        text_encoder_2=build_clip_encoder(len(tokenizer), clip_width, _CLIP_2_SEED, projection_dim=clip_projection),
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(num_layers: int = 2, num_single_layers: int = 2) -> FluxPipeline:
    tokenizer = build_clip_tokenizer()
    text_encoder_2, tokenizer_2 = _t5_components(_FLUX_JOINT_DIM)
    return FluxPipeline(
        transformer=_flux_transformer(num_layers, num_single_layers),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(),
        text_encoder=build_clip_encoder(len(tokenizer), _FLUX_POOLED_DIM, _CLIP_SEED),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def _build_wan(num_layers: int = 4) -> WanPipeline:
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=_WAN_TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    torch.manual_seed(0)
    # 8x spatial and 4x temporal compression, 16 latent channels, as Wan 2.1's VAE.
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    text_encoder, tokenizer = _t5_components(_WAN_TEXT_DIM, umt5=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


TEXT_FAMILIES: tuple[str, ...] = ("pixart-alpha", "pixart-sigma", "sd3", "flux", "wan")
"""The families :func:`build_text_pipeline` builds, with text encoders and tokenizers."""

_TEXT_BUILDERS: dict[str, Callable[..., DiffusionPipeline]] = {
    "pixart-alpha": _build_pixart_alpha,
    "pixart-sigma": _build_pixart_sigma,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "wan": _build_wan,
}

_PIXART_CALL = {
    "height": _PIXART_IMAGE_SIZE,
    "width": _PIXART_IMAGE_SIZE,
    "guidance_scale": 4.5,
    "use_resolution_binning": False,  # binning would resize to the aspect-ratio table's 256 px or more
    "clean_caption": False,  # the default True depends on whether bs4 and ftfy happen to be installed
}
_TEXT_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "pixart-alpha": _PIXART_CALL,
    "pixart-sigma": _PIXART_CALL,
    "sd3": {"height": _SD3_IMAGE_SIZE, "width": _SD3_IMAGE_SIZE, "guidance_scale": 5.0},
    # Guidance-distilled: guidance_scale feeds the guidance embedding, one pass per step (true_cfg_scale off).
    "flux": {"height": _FLUX_IMAGE_SIZE, "width": _FLUX_IMAGE_SIZE, "guidance_scale": 3.5},
    "wan": {
        "height": _WAN_IMAGE_SIZE,
        "width": _WAN_IMAGE_SIZE,
        "num_frames": _WAN_NUM_FRAMES,
        "guidance_scale": 5.0,
    },
}


def _check_text_family(family: str) -> None:
    if family not in _TEXT_BUILDERS:
        raise ValueError(f"Unknown text pipeline family {family!r}; choose one of {list(TEXT_FAMILIES)}.")


def text_call_kwargs(family: str) -> dict[str, Any]:
    """The pipeline-call arguments that keep a tiny text pipeline tiny and deterministic.

    Output size (the pipelines' defaults are hundreds of pixels; Wan's 81 frames), the family's guidance scale, a
    short ``max_sequence_length`` for T5 (the defaults pad to 120-512 tokens; they work, only slower) and, for PixArt,
    ``use_resolution_binning=False`` and ``clean_caption=False``.

    Args:
        family: One of :data:`TEXT_FAMILIES`.

    Returns:
        A fresh dict of keyword arguments for ``pipe(...)``, to combine with ``prompt``, ``num_inference_steps``,
        ``generator`` and ``output_type``.
    """
    _check_text_family(family)
    return {**_TEXT_CALL_KWARGS[family], "max_sequence_length": _MAX_SEQUENCE_LENGTH}


def build_text_pipeline(family: str, **sizes: int) -> DiffusionPipeline:
    """Builds the tiny pipeline of one family with its text encoders and tokenizers.

    Transformers: PixArt (both), SD3 and Wan have 4 blocks, Flux 2 double- and 2 single-stream blocks; PixArt's, SD3's
    and Flux's transformer and VAE have the same weights as the embedding-only pipelines'. Schedulers: DDIM
    (PixArt-Alpha), DPM-Solver++ (PixArt-Sigma), flow-matching Euler (SD3, Flux), UniPC with flow sigmas (Wan).

    Args:
        family: One of :data:`TEXT_FAMILIES`.
        **sizes: Block counts, e.g. ``num_layers=8`` (and ``num_single_layers`` for Flux).

    Returns:
        The pipeline in float32 on the CPU, progress bar disabled.

    Raises:
        ValueError: For a family not in :data:`TEXT_FAMILIES`.
    """
    _check_text_family(family)
    pipe = _TEXT_BUILDERS[family](**sizes)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_text_pipeline(family: str, folder: str | Path, **sizes: int) -> Path:
    """Builds a text pipeline and saves it with ``save_pretrained`` (safetensors, tokenizers included).

    ``DiffusionPipeline.from_pretrained(folder)`` loads it back offline as the family's pipeline class, with outputs
    identical to the in-memory pipeline's.

    Args:
        family: One of :data:`TEXT_FAMILIES`.
        folder: Where to save; created if missing.
        **sizes: Block counts, see :func:`build_text_pipeline`.

    Returns:
        The folder.
    """
    folder = Path(folder)
    build_text_pipeline(family, **sizes).save_pretrained(folder)
    return folder
