"""Finding a transformer's blocks, grouping them by relative depth, and slicing block inputs by sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .devices import to_device
from .diffusers_internals import (
    _ALL_TRANSFORMER_BLOCK_IDENTIFIERS,
    TransformerBlockMetadata,
    TransformerBlockRegistry,
    unwrap_module,
)


@dataclass(frozen=True)
class HookedBlock:
    """One transformer block the engine hooks.

    Attributes:
        name: Qualified name inside the transformer, e.g. ``"transformer_blocks.3"``.
        module: The block itself.
        metadata: diffusers' description of where hidden states sit in the block's inputs and outputs.
    """

    name: str
    module: torch.nn.Module
    metadata: TransformerBlockMetadata


def supported_block_classes() -> list[str]:
    """Names of the block classes diffusers' ``TransformerBlockRegistry`` knows, sorted."""
    TransformerBlockRegistry._register()
    return sorted(cls.__name__ for cls in TransformerBlockRegistry._registry)


def _support_hint() -> str:
    return (
        f"Supported block classes: {', '.join(supported_block_classes())}. A custom block class can be added with "
        "diffusers.hooks._helpers.TransformerBlockRegistry.register(BlockClass, TransformerBlockMetadata(...))."
    )


def find_blocks(transformer: torch.nn.Module) -> list[HookedBlock]:
    """Lists the transformer's blocks in execution order.

    Block lists are the ``torch.nn.ModuleList`` children whose names diffusers' own caches recognise
    (``transformer_blocks``, ``single_transformer_blocks``, ``blocks``, ``layers``, ...), in definition order.

    Args:
        transformer: A diffusers transformer (or any module with such block lists).

    Returns:
        The blocks, each with diffusers' metadata for its class.

    Raises:
        ValueError: If there is no recognised block list, it is empty, or a block's class is not registered.
    """
    model = unwrap_module(transformer)
    blocks: list[HookedBlock] = []
    for list_name, child in model.named_children():
        if list_name not in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS or not isinstance(child, torch.nn.ModuleList):
            continue
        for index, block in enumerate(child):
            block_cls = unwrap_module(block).__class__
            try:
                metadata = TransformerBlockRegistry.get(block_cls)
            except ValueError:
                raise ValueError(
                    f"{type(model).__name__}.{list_name}.{index} is a {block_cls.__name__}, which diffusers' "
                    f"TransformerBlockRegistry does not know, so the engine cannot tell where its hidden states are. "
                    + _support_hint()
                ) from None
            blocks.append(HookedBlock(f"{list_name}.{index}", block, metadata))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks to cache: no ModuleList child named one of "
            f"{sorted(_ALL_TRANSFORMER_BLOCK_IDENTIFIERS)} holds any block, so caching would hook nothing. "
            + _support_hint()
        )
    return blocks


def split_groups(num_blocks: int, probe_blocks: int, groups: int | Sequence[float]) -> list[list[int]]:
    """Splits the non-probe blocks into contiguous groups by relative depth.

    Args:
        num_blocks: Number of hooked blocks.
        probe_blocks: Number of always-computed blocks at the front, not in any group.
        groups: Either the number of equal-depth groups, or the increasing depth fractions in (0, 1) at which
            groups end, e.g. ``[0.25, 0.5, 0.75]`` for quarters (the last group always ends at depth 1).

    Returns:
        For each group, the indices of its blocks.

    Raises:
        ValueError: If the groups do not fit the depth (an empty group, or fractions out of order or range).
    """
    if probe_blocks < 0 or probe_blocks >= num_blocks:
        raise ValueError(
            f"probe_blocks={probe_blocks} does not fit a transformer with {num_blocks} blocks: "
            f"use 0 to {num_blocks - 1}."
        )
    cacheable = num_blocks - probe_blocks
    if isinstance(groups, int):
        if groups < 1 or groups > cacheable:
            raise ValueError(
                f"groups={groups} does not fit {cacheable} cacheable blocks ({num_blocks} blocks, {probe_blocks} "
                f"probe): use 1 to {cacheable} groups."
            )
        bounds = [round(cacheable * (i + 1) / groups) for i in range(groups)]
    else:
        fractions = [float(f) for f in groups]
        if any(not 0.0 < f < 1.0 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError(f"groups={list(groups)}: depth fractions must be strictly increasing, inside (0, 1).")
        bounds = [round(cacheable * f) for f in fractions] + [cacheable]
    starts = [0, *bounds[:-1]]
    result = [list(range(probe_blocks + s, probe_blocks + e)) for s, e in zip(starts, bounds, strict=True)]
    if any(not group for group in result):
        raise ValueError(
            f"groups={groups} leaves a group without blocks on a transformer with {cacheable} cacheable blocks: "
            "use fewer groups."
        )
    return result


def _argument_name(metadata: TransformerBlockMetadata, name: str) -> str:
    """The forward argument of block input ``name`` (``"hidden"`` or ``"encoder"``)."""
    return metadata.hidden_states_argument_name if name == "hidden" else metadata.encoder_hidden_states_argument_name


def get_block_input(metadata: TransformerBlockMetadata, name: str, args: tuple, kwargs: dict) -> Any:
    """Returns a block input by argument name, from positional or keyword arguments."""
    return metadata._get_parameter_from_args_kwargs(_argument_name(metadata, name), args, kwargs)


def with_block_input(
    metadata: TransformerBlockMetadata, name: str, value: Any, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """Returns ``args, kwargs`` with the block input ``name`` (``"hidden"`` or ``"encoder"``) replaced by ``value``."""
    argument = _argument_name(metadata, name)
    if argument in kwargs:
        return args, {**kwargs, argument: value}
    metadata._get_parameter_from_args_kwargs(argument, args, kwargs)  # fills the positional index cache
    index = metadata._cached_parameter_indices[argument]
    return (*args[:index], value, *args[index + 1 :]), kwargs


def split_block_output(metadata: TransformerBlockMetadata, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns ``(hidden_states, encoder_hidden_states or None)`` from a block's output."""
    if isinstance(output, torch.Tensor):
        return output, None
    hidden = output[metadata.return_hidden_states_index]
    encoder = None
    if metadata.return_encoder_hidden_states_index is not None:
        encoder = output[metadata.return_encoder_hidden_states_index]
    return hidden, encoder


def make_block_output(
    metadata: TransformerBlockMetadata, hidden: torch.Tensor, encoder: torch.Tensor | None, tuple_length: int | None
) -> torch.Tensor | tuple:
    """Builds a block's output in the layout its forward returns.

    Args:
        metadata: The block class's metadata.
        hidden: Hidden states.
        encoder: Encoder hidden states, or ``None``.
        tuple_length: Length of the tuple the block returns, or ``None`` if it returns a bare tensor.
    """
    if tuple_length is None:
        return hidden
    output: list[torch.Tensor | None] = [None] * tuple_length
    output[metadata.return_hidden_states_index] = hidden
    if metadata.return_encoder_hidden_states_index is not None:
        output[metadata.return_encoder_hidden_states_index] = encoder
    return tuple(output)


def select_rows(args: tuple, kwargs: dict, rows: torch.Tensor, batch: int) -> tuple[tuple, dict]:
    """Keeps only ``rows`` of every top-level tensor argument whose first dimension is the batch.

    Tensors nested in tuples or dicts (rotary embeddings, attention kwargs) are per-token, not per-sample, and
    pass through unchanged. ``rows`` should be on the arguments' device; an argument elsewhere gets a copy of it.
    """

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
            return value.index_select(0, to_device(rows, value))
        return value

    return tuple(pick(a) for a in args), {k: pick(v) for k, v in kwargs.items()}
