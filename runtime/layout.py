"""How the rows of a transformer batch map to the samples a policy decides for (classifier-free guidance)."""

from __future__ import annotations

from enum import Enum

import torch

from .devices import HOST


class CfgLayout(str, Enum):
    """Order of batch-concatenated classifier-free-guidance halves.

    Both halves of one sample always share one decision (guidance mixes them, so they must see the same cached
    features); the layout says which half is the conditional one, whose statistics feed the observation.

    Attributes:
        NONE: Every row is its own sample (no batched CFG, or CFG as separate passes in ``cache_context``).
        COND_UNCOND: Rows ``[cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]`` (diffusers' ``DiTPipeline``).
        UNCOND_COND: Rows ``[uncond..., cond...]`` (PixArt, Stable Diffusion 3, most text-to-image pipelines).
    """

    NONE = "none"
    COND_UNCOND = "cond_uncond"
    UNCOND_COND = "uncond_cond"


# The batched-CFG convention of the pipelines that use each transformer class; anything else defaults to NONE.
DEFAULT_CFG_LAYOUTS: dict[str, CfgLayout] = {
    "DiTTransformer2DModel": CfgLayout.COND_UNCOND,
    "PixArtTransformer2DModel": CfgLayout.UNCOND_COND,
    "SD3Transformer2DModel": CfgLayout.UNCOND_COND,
    "FluxTransformer2DModel": CfgLayout.NONE,
}


def layout_class_name(transformer: torch.nn.Module) -> str:
    """The name of the transformer's class, or of the nearest base class with a known CFG convention (a subclass
    of ``DiTTransformer2DModel`` batches guidance as DiT does)."""
    for cls in type(transformer).__mro__:
        if cls.__name__ in DEFAULT_CFG_LAYOUTS:
            return cls.__name__
    return type(transformer).__name__


def resolve_cfg_layout(value: str | CfgLayout, transformer: torch.nn.Module) -> CfgLayout | None:
    """Returns the layout for ``value``, or ``None`` for ``"auto"`` (decided per batch, see :func:`batch_layout`).

    Raises:
        ValueError: For an unknown layout name.
    """
    if value == "auto":
        return None
    try:
        return CfgLayout(value)
    except ValueError:
        names = ", ".join(repr(v.value) for v in CfgLayout)
        raise ValueError(f"cfg_layout={value!r} is not a layout: use 'auto', {names}.") from None


def batch_layout(configured: CfgLayout | None, transformer_class: str, hidden: torch.Tensor) -> CfgLayout:
    """The layout for a batch: the configured one, or with ``"auto"`` the class default where the batch holds halves.

    Pipelines batch guidance by repeating the latents (``torch.cat([latents] * 2)``), so at the first step of a
    generation both halves of the transformer's input are equal. With ``"auto"``, a batch whose halves differ (the
    pipeline runs without guidance) or an odd batch is taken as :attr:`CfgLayout.NONE`: every row its own sample.

    Args:
        configured: The layout given to the engine, ``None`` for ``"auto"``.
        transformer_class: Class name of the transformer (for the ``"auto"`` default).
        hidden: The transformer's ``hidden_states`` at the first step of the generation.

    Raises:
        ValueError: If a paired layout was configured explicitly for an odd batch.
    """
    rows = hidden.shape[0]
    layout = configured if configured is not None else DEFAULT_CFG_LAYOUTS.get(transformer_class, CfgLayout.NONE)
    if layout is CfgLayout.NONE:
        return layout
    if rows % 2:
        if configured is None:
            return CfgLayout.NONE
        raise ValueError(
            f"cfg_layout={layout.value!r} pairs conditional and unconditional halves, but the transformer got a "
            f"batch of {rows} rows. Pass cfg_layout='none' when the pipeline does not batch guidance halves."
        )
    if configured is None and not torch.equal(hidden[: rows // 2], hidden[rows // 2 :]):
        return CfgLayout.NONE
    return layout


def samples_in(layout: CfgLayout, rows: int) -> int:
    """Number of logical samples in a batch of ``rows``."""
    return rows if layout is CfgLayout.NONE else rows // 2


def sample_of_row(layout: CfgLayout, rows: int) -> torch.Tensor:
    """``(rows,)`` index of the sample each row belongs to."""
    return torch.arange(rows, device=HOST) % samples_in(layout, rows)


def signal_rows(layout: CfgLayout, rows: int) -> slice:
    """The rows whose statistics represent the samples (their conditional halves), in sample order.

    A slice, so that indexing a batch tensor with it gives a view rather than a copy.
    """
    samples = samples_in(layout, rows)
    offset = samples if layout is CfgLayout.UNCOND_COND else 0
    return slice(offset, offset + samples)
