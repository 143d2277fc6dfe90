"""Pipeline families: how each kind of diffusers pipeline is conditioned, guided and called.

A :class:`PipelineFamily` says which pipeline classes it covers, whether they take class labels or prompts, how a
list of prompts is encoded with the pipeline's own ``encode_prompt`` into the keyword arguments its ``__call__``
accepts (``prompt_embeds``, masks, pooled embeddings), how it applies guidance, and the layout of guidance halves in
the transformer's batch (``cfg_layout``, for the cache engine). A new pipeline is supported with
:func:`register_family`::

    register_family(PipelineFamily(
        name="my-t2i", pipelines=("MyPipeline",), conditioning="prompt", guidance="batched_cfg",
        cfg_layout="uncond_cond", encode=lambda pipe, texts, length: {"prompt_embeds": pipe.encode_prompt(texts)[0]},
    ))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Encode = Callable[[Any, list[str], int], dict[str, torch.Tensor]]
"""``encode(pipe, texts, max_sequence_length)``: one row per text of each positive ``__call__`` argument."""

CONDITIONINGS = ("class_labels", "prompt")
GUIDANCE_STYLES = ("batched_cfg", "embedded", "separate_passes")
CFG_LAYOUTS = ("none", "cond_uncond", "uncond_cond")


@dataclass(frozen=True)
class PipelineFamily:
    """How one kind of pipeline is called.

    Attributes:
        name: Short name, e.g. ``"pixart-sigma"``.
        pipelines: Names of the pipeline classes it covers (a subclass of one is covered too).
        conditioning: ``"class_labels"`` (``class_labels=[...]``) or ``"prompt"`` (encoded prompt embeddings).
        guidance: ``"batched_cfg"``: conditional and unconditional halves in one transformer batch;
            ``"embedded"``: guidance-distilled, the scale enters as an embedding and the batch is not doubled (FLUX;
            its ``true_cfg_scale > 1`` adds separate negative passes); ``"separate_passes"``: conditional and
            unconditional passes one after the other, in ``transformer.cache_context`` (Wan).
        cfg_layout: Rows of the transformer's batch under guidance: ``"cond_uncond"``, ``"uncond_cond"`` or
            ``"none"`` (one row per sample); the engine pairs the halves of a sample.
        encode: Encodes prompts (``conditioning="prompt"`` only), see :data:`Encode`.
        negative_prompt: Whether guidance needs negative-prompt embeddings (``negative_`` + each argument name).
        output: ``"images"`` (``output.images``, ``(B, C, H, W)``) or ``"frames"`` (``output.frames``,
            ``(B, F, C, H, W)``).
        call_defaults: Arguments added to every call unless the configuration sets them.
    """

    name: str
    pipelines: tuple[str, ...]
    conditioning: str
    guidance: str
    cfg_layout: str
    encode: Encode | None = None
    negative_prompt: bool = True
    output: str = "images"
    call_defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}: use one of {list(CONDITIONINGS)}.")
        if self.guidance not in GUIDANCE_STYLES:
            raise ValueError(f"guidance={self.guidance!r}: use one of {list(GUIDANCE_STYLES)}.")
        if self.cfg_layout not in CFG_LAYOUTS:
            raise ValueError(f"cfg_layout={self.cfg_layout!r}: use one of {list(CFG_LAYOUTS)}.")
        if self.conditioning == "prompt" and self.encode is None:
            raise ValueError(f"family {self.name!r} takes prompts, so it needs an encode function.")
        if self.output not in ("images", "frames"):
            raise ValueError(f"output={self.output!r}: use 'images' or 'frames'.")

    @property
    def takes_prompts(self) -> bool:
        """Whether the family is conditioned on text."""
        return self.conditioning == "prompt"

    def uses_negative(self, guidance_scale: float, call_kwargs: dict[str, Any]) -> bool:
        """Whether a call with these settings runs an unconditional (negative) branch."""
        if not self.takes_prompts or not self.negative_prompt:
            return False
        if self.guidance == "embedded":
            return float(call_kwargs.get("true_cfg_scale", 1.0)) > 1.0
        return guidance_scale > 1.0

    def layout(self, guidance_scale: float) -> str:
        """The engine's ``cfg_layout`` for a call at ``guidance_scale`` (``"none"`` when the batch is not doubled)."""
        if self.guidance != "batched_cfg" or guidance_scale <= 1.0:
            return "none"
        return self.cfg_layout


_FAMILIES: dict[str, PipelineFamily] = {}


def register_family(family: PipelineFamily, replace: bool = False) -> PipelineFamily:
    """Adds a family to the registry (checked before the built-in ones, most recent first).

    Raises:
        ValueError: If a family of that name exists and ``replace`` is false.
    """
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"a pipeline family named {family.name!r} is registered already; pass replace=True.")
    _FAMILIES.pop(family.name, None)
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Removes a family from the registry (a no-op for an unknown name)."""
    _FAMILIES.pop(name, None)


def families() -> list[PipelineFamily]:
    """The registered families, most recently registered first."""
    return list(reversed(_FAMILIES.values()))


def family_of(pipe: Any) -> PipelineFamily:
    """The family of a pipeline, by its class (or the nearest base class a family names).

    Raises:
        ValueError: For a pipeline no family covers, naming the supported ones and how to register a new one.
    """
    return family_of_class(type(pipe))


def family_of_class(pipeline_class: type) -> PipelineFamily:
    """The family of a pipeline class (see :func:`family_of`)."""
    for cls in pipeline_class.__mro__:
        for family in families():
            if cls.__name__ in family.pipelines:
                return family
    supported = ", ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in reversed(families()))
    raise ValueError(
        f"{pipeline_class.__name__} is not a supported pipeline. Supported families: {supported}. To add one, call "
        "envs.families.register_family(PipelineFamily(name=..., pipelines=('YourPipeline',), conditioning=..., "
        "guidance=..., cfg_layout=..., encode=...)) before building the environment (see envs/families.py)."
    )


# -- the built-in families ---------------------------------------------------------------------------------------


def _encode_pixart(pipe: Any, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    embeds, mask, _, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, device=pipe._execution_device, max_sequence_length=length
    )
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _encode_sd3(pipe: Any, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    embeds, _, pooled, _ = pipe.encode_prompt(
        texts,
        None,
        None,
        device=pipe._execution_device,
        do_classifier_free_guidance=False,
        max_sequence_length=length,
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _encode_flux(pipe: Any, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    embeds, pooled, _ = pipe.encode_prompt(texts, None, device=pipe._execution_device, max_sequence_length=length)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _encode_wan(pipe: Any, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    embeds, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, max_sequence_length=length, device=pipe._execution_device
    )
    return {"prompt_embeds": embeds}


BUILTIN_FAMILIES = (
    PipelineFamily("zoo-dit", ("MiniDiTPipeline",), "class_labels", "batched_cfg", "cond_uncond"),
    PipelineFamily("zoo-flow", ("MiniFlowPipeline",), "class_labels", "batched_cfg", "uncond_cond"),
    PipelineFamily("dit", ("DiTPipeline",), "class_labels", "batched_cfg", "cond_uncond"),
    PipelineFamily(
        "pixart-alpha",
        ("PixArtAlphaPipeline",),
        "prompt",
        "batched_cfg",
        "uncond_cond",
        _encode_pixart,
        call_defaults={"negative_prompt": None},  # "" (the default) clashes with negative_prompt_embeds
    ),
    PipelineFamily(
        "pixart-sigma",
        ("PixArtSigmaPipeline",),
        "prompt",
        "batched_cfg",
        "uncond_cond",
        _encode_pixart,
        call_defaults={"negative_prompt": None},  # "" (the default) clashes with negative_prompt_embeds
    ),
    PipelineFamily("sd3", ("StableDiffusion3Pipeline",), "prompt", "batched_cfg", "uncond_cond", _encode_sd3),
    PipelineFamily("flux", ("FluxPipeline",), "prompt", "embedded", "none", _encode_flux),
    PipelineFamily("wan", ("WanPipeline",), "prompt", "separate_passes", "none", _encode_wan, output="frames"),
)

for _family in BUILTIN_FAMILIES:
    register_family(_family)
