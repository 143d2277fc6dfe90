"""The two diffusers hooks of the engine: one on the transformer (steps), one on each block (actions)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from .blocks import (
    HookedBlock,
    get_block_input,
    make_block_output,
    select_rows,
    split_block_output,
    with_block_input,
)
from .diffusers_internals import ModelHook

if TYPE_CHECKING:
    from .engine import CacheEngine

ROOT_HOOK = "cachepilot_root"
BLOCK_HOOK = "cachepilot_block"


class RootHook(ModelHook):
    """Finds step and generation boundaries from the ``timestep`` the transformer receives.

    A new generation starts when the time does not decrease, the batch changes, or after ``engine.reset()``.
    The first step of a generation measures FLOPs once per input shape.
    """

    _is_stateful = True

    def __init__(self, engine: CacheEngine) -> None:
        super().__init__()
        self.engine = engine
        self.state_manager = engine.state_manager
        self._parameters: list[str] = []

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._parameters = list(inspect.signature(module.forward).parameters)
        for required in ("hidden_states", "timestep"):
            if required not in self._parameters:
                raise ValueError(
                    f"{type(module).__name__}.forward has no '{required}' argument; the engine reads the batch from "
                    "'hidden_states' and the diffusion time from 'timestep'."
                )
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hidden = self._argument("hidden_states", args, kwargs)
        timestep = self._argument("timestep", args, kwargs)
        if timestep is None:
            raise ValueError("The transformer was called without a timestep; the engine needs it to find steps.")
        # The step's time is the largest entry: per-token timesteps (e.g. Wan image-to-video) hold 0 for tokens of
        # a clean conditioning frame, which would read as a new generation at every step.
        time = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        state = self.state_manager.get_state()
        if self.engine.is_side_pass(state, time, hidden):
            return self.engine.run_side_pass(lambda: self.fn_ref.original_forward(*args, **kwargs), hidden.shape[0])
        input_shapes = tuple(  # every batched input: a longer prompt costs more FLOPs, as a larger image does
            tuple(value.shape[1:])
            for value in (*args, *kwargs.values())
            if isinstance(value, torch.Tensor) and value.ndim > 1
        )
        meter = self.engine.begin_step(state, time, hidden, input_shapes)
        if meter is None:
            output = self.fn_ref.original_forward(*args, **kwargs)
        else:
            with meter.counter:
                output = self.fn_ref.original_forward(*args, **kwargs)
        self.engine.end_step(state, hidden, meter)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module

    def _argument(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        index = self._parameters.index(name)
        return args[index] if index < len(args) else None


class BlockHook(ModelHook):
    """Executes the current step's action for this block's group, per batch row.

    Probe blocks always compute. In a group, the first block applies REUSE/FORECAST to the rows that skip the
    group (their output is final for the whole group) and every block computes only the rows that compute the
    group (gathered into a sub-batch, then scattered back). The last block stores the group's new residual.
    """

    def __init__(self, engine: CacheEngine, index: int, block: HookedBlock, group: int | None) -> None:
        super().__init__()
        self.engine = engine
        self.index = index
        self.block = block
        self.group = group
        self.is_head = group is not None and engine.groups[group][0] == index
        self.is_tail = group is not None and engine.groups[group][-1] == index
        self.tuple_length: int | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        engine = self.engine
        if engine.side_pass_blocks is not None:  # a side pass of the step: computed, the state left alone
            engine.side_pass_blocks.append(self.index)
            return self.fn_ref.original_forward(*args, **kwargs)
        state = engine.state_manager.get_state()
        metadata = self.block.metadata
        hidden = get_block_input(metadata, "hidden", args, kwargs)
        encoder = None
        if metadata.return_encoder_hidden_states_index is not None:
            encoder = get_block_input(metadata, "encoder", args, kwargs)
        if self.index == 0:
            if not hidden.is_contiguous():
                # A patch embedding's transpose(1, 2) view: one copy here instead of a strided pass in every
                # operation that reads the input (change features, residuals, cached outputs, the block itself).
                hidden = hidden.contiguous()
                args, kwargs = with_block_input(metadata, "hidden", hidden, args, kwargs)
            state.first_input = hidden
        rows = hidden.shape[0]

        if self.group is None:
            output = self._compute(args, kwargs, rows)
            if self.index == engine.options.probe_blocks - 1:
                state.probe_residual = split_block_output(metadata, output)[0] - state.first_input
            return output

        group = state.groups[self.group]
        if self.is_head:
            if state.decision is None:
                engine.decide(state)
            group.group_input = (hidden, encoder)
            hidden, encoder = engine.apply_cached(state, self.group, hidden, encoder)
        compute_rows = state.decision.compute_rows[self.group]

        output = None
        if compute_rows.numel() == rows:
            output = self._compute(args, kwargs, rows)
            out_hidden, out_encoder = split_block_output(metadata, output)
        elif compute_rows.numel() == 0:
            out_hidden, out_encoder = hidden, encoder
        else:
            device_rows = state.decision.compute_rows_on(self.group, hidden)
            sub_args, sub_kwargs = select_rows(args, kwargs, device_rows, rows)
            sub_hidden, sub_encoder = split_block_output(metadata, self._compute(sub_args, sub_kwargs, rows))
            out_hidden = hidden.index_copy(0, device_rows, sub_hidden)
            out_encoder = None
            if encoder is not None and sub_encoder is not None:
                out_encoder = encoder.index_copy(0, device_rows, sub_encoder)

        if self.is_tail and compute_rows.numel() > 0:
            engine.store_residual(state, self.group, compute_rows, out_hidden, out_encoder)
        if output is not None:
            return output
        return make_block_output(metadata, out_hidden, out_encoder, self.tuple_length)

    def _compute(self, args: tuple, kwargs: dict, rows: int) -> Any:
        meter = self.engine.meter
        before = meter.total() if meter is not None else 0
        output = self.fn_ref.original_forward(*args, **kwargs)
        if meter is not None:
            self.engine.meter.block_flops[self.index] = float(meter.total() - before)
        if self.tuple_length is None:
            self.tuple_length = None if isinstance(output, torch.Tensor) else len(output)
        return output
