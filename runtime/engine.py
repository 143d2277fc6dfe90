"""The cache engine: compute / reuse / forecast per denoising step, per block group and per sample."""

from __future__ import annotations

import contextlib
import functools
import math
import time as wallclock
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from diffusers.hooks.hooks import HookRegistry
from diffusers.utils.torch_utils import unwrap_module

from .actions import NUM_ACTIONS, Action
from .blocks import find_blocks, split_groups
from .config import CacheConfig
from .costs import CostMeter, CostModel
from .devices import HOST, accumulation_dtype, to_device
from .forecast import (
    Residual,
    finite_row_mask,
    read_slot_bounds,
    relative_l1,
    scalar_lagrange_weights,
    weighted_sum,
    within_range,
)
from .hooks import BLOCK_HOOK, ROOT_HOOK, BlockHook, RootHook
from .layout import batch_layout, layout_class_name, resolve_cfg_layout
from .observations import Observation, build_observation, check_feature_names, feature_names
from .state import DEFAULT_CONTEXT, ContextStateManager, GenerationState, SpanSum, StepDecision

DEFAULT_GROUPS = 4


def outside_compiled_graphs(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``method`` eagerly, outside the graph, when ``torch.compile`` traces a call to it.

    The engine's bookkeeping reads tensor values and mutates its state; traced, such code can be specialised to the
    values seen while compiling. Outside compilation ``method`` is called directly, which costs less per call than
    ``torch.compiler.disable``'s wrapper.
    """
    eager = torch.compiler.disable(method)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return eager(*args, **kwargs)
        return method(*args, **kwargs)

    return call


@runtime_checkable
class PolicyLike(Protocol):
    """What the engine needs of a policy: ``act`` maps an observation to ``(samples, groups)`` actions."""

    def act(self, observation: Observation) -> torch.Tensor: ...


@dataclass
class EngineStats:
    """Counters since the engine was enabled or last reset (rows: batch rows, so CFG halves count twice)."""

    steps: int = 0
    generations: int = 0
    row_steps: int = 0
    probe_computed: int = 0
    group_computed: list[int] = field(default_factory=list)
    spent_flops: float = 0.0
    full_flops: float = 0.0
    reuses: int = 0
    forecasts: int = 0
    fallbacks: int = 0
    merged_groups: int = 0
    decisions: int = 0
    decision_seconds: float = 0.0
    action_counts: list[int] = field(default_factory=lambda: [0] * NUM_ACTIONS)
    side_passes: int = 0


class CacheEngine:
    """Runs a policy's cache decisions inside any diffusers transformer, through ``diffusers.hooks``.

    Create it with :func:`enable_cache`; remove it with :func:`disable_cache`.

    Args:
        transformer: The transformer to accelerate.
        policy: Anything with ``act(observation) -> (samples, groups)`` actions (see ``policies``).
        config: Engine options.
    """

    def __init__(self, transformer: torch.nn.Module, policy: PolicyLike, config: CacheConfig) -> None:
        self.transformer = transformer
        self.policy = policy
        self.config = config
        self.blocks = find_blocks(transformer)
        groups = config.groups
        if groups is None:
            groups = max(1, min(DEFAULT_GROUPS, len(self.blocks) - config.probe_blocks))
        self.groups = split_groups(len(self.blocks), config.probe_blocks, groups)
        self.order = config.forecast_order or int(getattr(policy, "forecast_order", 1) or 1)
        self.cfg_layout = resolve_cfg_layout(config.cfg_layout, transformer)
        self.transformer_class = layout_class_name(unwrap_module(transformer))
        self.state_manager = ContextStateManager(GenerationState)
        self.costs: CostModel | None = None
        self.meter: CostMeter | None = None
        self.stats = self._new_stats()
        self.group_flops = torch.zeros(len(self.groups), dtype=torch.float64, device=HOST)
        self._fixed_flops = 0.0  # per row and step: everything outside the groups (always computed)
        self._step_flops: dict[tuple[int, ...], float] = {}  # per row, by the groups a shared step computes
        self._all_rows = torch.arange(0, device=HOST)
        self._no_rows = torch.zeros(0, dtype=torch.int64, device=HOST)
        self._track_accumulation = "accumulated_input_change" in getattr(policy, "required_signals", ())
        names = getattr(policy, "feature_names", None)
        self._feature_names = feature_names(self.num_groups) if names is None else tuple(names)
        self._track_forecast_error = any(name.startswith("forecast_error_") for name in self._feature_names)
        self._policy_masks_actions = bool(getattr(policy, "masks_actions", False))
        self._shared_index: dict[tuple[int, tuple[int, ...]], list[list[torch.Tensor]]] = {}
        self._sample_budgets: torch.Tensor | None = None
        self._uncached = False
        self.side_pass_blocks: list[int] | None = None  # while a side pass runs: the blocks it ran
        self._check_policy()

    @property
    def num_groups(self) -> int:
        """Block groups a policy chooses actions for."""
        return len(self.groups)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the observation features this engine builds: the policy's, else the default ones."""
        return self._feature_names

    @property
    def budget(self) -> float | torch.Tensor | None:
        """Target compute fraction shown to the policy: one for all samples, per sample, or ``None``."""
        return self._sample_budgets if self._sample_budgets is not None else self.config.budget

    def set_budget(self, budget: float | torch.Tensor | None) -> None:
        """Changes the target compute fraction (the speed knob) between or during generations.

        Args:
            budget: A fraction in (0, 1] for every sample, a ``(samples,)`` tensor of per-sample fractions, or
                ``None`` for no target.
        """
        if isinstance(budget, torch.Tensor):
            values = budget.detach().to(device=HOST, dtype=torch.float64).flatten()
            if not bool(((values > 0) & (values <= 1)).all()):  # (NaN fails both comparisons)
                raise ValueError(f"budget={values.tolist()}: every compute fraction must lie in (0, 1].")
            self._sample_budgets = values
            warn_outside_trained_budgets(self.policy, values.min().item(), values.max().item())
            return
        self.config = CacheConfig(**{**self.config.to_dict(), "budget": budget})
        self._sample_budgets = None
        if budget is not None:
            warn_outside_trained_budgets(self.policy, budget, budget)

    def current_state(self, context: str | None = None) -> GenerationState | None:
        """The generation state of a cache context (the default one outside ``cache_context``), if any."""
        return self.state_manager.states().get(context or DEFAULT_CONTEXT)

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Within this context every block computes and the policy is not asked (bit-identical to no cache)."""
        previous, self._uncached = self._uncached, True
        try:
            yield
        finally:
            self._uncached = previous

    def reset(self) -> None:
        """Forgets all cached residuals and statistics; the next call starts a new generation."""
        self.forget_generation()
        self.stats = self._new_stats()

    def forget_generation(self) -> None:
        """Forgets the current generation (e.g. one abandoned midway): the next call starts a new one. Statistics
        are kept."""
        self.state_manager.reset()

    def _new_stats(self) -> EngineStats:
        return EngineStats(group_computed=[0] * len(self.groups))

    # -- step boundaries (called by RootHook) ---------------------------------------------------------------

    def is_side_pass(self, state: GenerationState, time: float, hidden: torch.Tensor) -> bool:
        """Whether a call is an extra pass of the current step on part of its batch, e.g. SD3's skip-layer guidance
        pass (the conditional half again, some layers skipped), rather than the start of a new generation: the same
        time as the step's pass, fewer rows."""
        return (
            self.costs is not None
            and state.step_index > 0
            and hidden.shape[0] < state.rows
            and abs(time - state.time) <= 1e-9
        )

    def run_side_pass(self, forward: Callable[[], Any], rows: int) -> Any:
        """Runs a side pass uncached, leaving the generation's state alone; its FLOPs count as computed."""
        self.side_pass_blocks = []
        try:
            output = forward()
        finally:
            ran, self.side_pass_blocks = self.side_pass_blocks, None
        flops = (self.costs.always_flops + float(self.costs.block_flops[ran].sum())) * rows
        self.stats.spent_flops += flops
        self.stats.full_flops += flops  # the uncached pipeline runs the same pass
        self.stats.side_passes += 1
        return output

    @outside_compiled_graphs
    def begin_step(
        self, state: GenerationState, time: float, hidden: torch.Tensor, input_shapes: tuple
    ) -> CostMeter | None:
        """Starts a denoising step; returns a cost meter when this pass must be measured.

        Args:
            state: The context's state.
            time: The step's diffusion time.
            hidden: The transformer's ``hidden_states``.
            input_shapes: Shapes (without the batch dimension) of every batched input, ``hidden`` and e.g. the text
                embeddings, whose length changes the costs too.
        """
        rows = hidden.shape[0]
        shape = tuple(hidden.shape[1:])
        new_generation = (
            state.step_index == 0 or rows != state.rows or time >= state.time - 1e-9 or shape != state.shape
        )
        if new_generation:
            layout = batch_layout(self.cfg_layout, self.transformer_class, hidden)
            state.start(time, rows, layout, self.num_groups, self.order + 1)
            state.shape = shape
            if self._track_accumulation:
                state.accumulated_input_change = torch.zeros(rows, dtype=torch.float64, device=HOST)
            self.stats.generations += 1
        else:
            state.since_compute += 1
        state.previous_first_input = state.first_input
        state.first_input = None
        state.probe_residual = None
        state.decision = None
        state.step_index += 1
        state.previous_time = state.time
        state.time = time
        if self.costs is None or self.costs.shape != input_shapes:
            if not new_generation:
                raise RuntimeError("Input shapes changed within a generation; the engine measures costs per shape.")
            self.meter = CostMeter(shape=input_shapes, rows=rows)
            return self.meter
        return None

    @outside_compiled_graphs
    def end_step(self, state: GenerationState, hidden: torch.Tensor, meter: CostMeter | None) -> None:
        """Closes a step: turns what each row computed into FLOPs and statistics."""
        if meter is not None:
            self.costs = meter.finish(len(self.blocks))
            self.group_flops = torch.stack([self.costs.block_flops[g].sum() for g in self.groups])
            self._step_flops = {}
            probe_flops = float(self.costs.block_flops[: self.config.probe_blocks].sum())
            self._fixed_flops = self.costs.always_flops + probe_flops
            self.meter = None
        stats, decision = self.stats, state.decision
        full_flops = self.costs.full_flops
        if decision.shared is not None:  # every row did the same: one number for all
            computed_groups = tuple(g for g, action in enumerate(decision.shared) if action == Action.COMPUTE)
            step_flops = self._step_flops.get(computed_groups)
            if step_flops is None:
                step_flops = self._fixed_flops + float(self.group_flops[list(computed_groups)].sum())
                self._step_flops[computed_groups] = step_flops
            for g in computed_groups:
                stats.group_computed[g] += state.rows
            stats.spent_flops += step_flops * state.rows
            state.spent_flops += step_flops
            fraction = step_flops / full_flops if full_flops > 0 else math.nan  # (a model of no FLOPs: 0 / 0)
            state.last_step_fraction = torch.full((state.rows,), fraction, dtype=torch.float64, device=HOST)
        else:
            computed = decision.computes  # fallbacks included
            spent = self._fixed_flops + computed.double() @ self.group_flops
            for g, count in enumerate(computed.sum(dim=0).tolist()):
                stats.group_computed[g] += count
            stats.spent_flops += float(spent.sum())
            state.spent_flops += spent
            state.last_step_fraction = spent / full_flops
        state.full_flops += full_flops
        stats.probe_computed += state.rows
        stats.row_steps += state.rows
        stats.full_flops += full_flops * state.rows
        stats.steps += 1

    # -- decisions -------------------------------------------------------------------------------------------

    @outside_compiled_graphs
    def decide(self, state: GenerationState) -> None:
        """Asks the policy for this step's actions (after the probe blocks ran) and fixes them per row."""
        meter = self.meter  # in a measured pass, the decision's FLOPs are the policy's, not the transformer's
        counted_before = meter.total() if meter is not None else 0
        self._decide(state)
        if meter is not None:
            meter.engine_flops += meter.total() - counted_before

    def _decide(self, state: GenerationState) -> None:
        if state.accumulated_input_change is not None and state.previous_first_input is not None:
            state.accumulated_input_change += relative_l1(state.first_input, state.previous_first_input)
        if self._uncached:
            sample_actions = torch.full(
                (state.samples, self.num_groups), int(Action.COMPUTE), dtype=torch.int64, device=HOST
            )
        else:
            observation = build_observation(state, self.budget, self._feature_names)
            started = wallclock.perf_counter()
            actions = self.policy.act(observation)
            self.stats.decision_seconds += wallclock.perf_counter() - started
            self.stats.decisions += 1
            observation.seal()
            sample_actions = self._checked_actions(actions, observation)
            if self.config.shared_decisions:
                sample_actions = shared_actions(sample_actions, observation.action_mask)
        table = sample_actions.tolist()
        shared: list[int] | None = table[0]
        if table.count(shared) == len(table):  # one action per group for the whole batch: no per-row index
            for action in shared:
                self.stats.action_counts[action] += len(table)
            row_actions = sample_actions[0].expand(state.rows, -1)
            index = [list(rows) for rows in self._shared_rows(state.rows, shared)]
            computing: torch.Tensor | bool = Action.COMPUTE in shared
            computes = None  # made from row_actions if a fallback breaks the sharing
        else:
            shared = None
            for action, count in enumerate(torch.bincount(sample_actions.flatten(), minlength=NUM_ACTIONS).tolist()):
                self.stats.action_counts[action] += count
            row_actions = sample_actions[state.row_samples]
            index = [[torch.nonzero(column == kind).flatten() for column in row_actions.T] for kind in Action]
            computes = row_actions == Action.COMPUTE
            computing = computes.any(dim=1)
        self._update_references(state, computing)
        state.decision = StepDecision(
            row_actions=row_actions,
            computes=computes,
            compute_rows=index[Action.COMPUTE],
            reuse_rows=index[Action.REUSE],
            forecast_rows=index[Action.FORECAST],
            shared=shared,
            passes_through=[False] * self.num_groups,
        )

    def _shared_rows(self, rows: int, shared: list[int]) -> list[list[torch.Tensor]]:
        """Per action, per group: the index of all ``rows`` rows where the group takes that action, else empty."""
        key = (rows, tuple(shared))
        index = self._shared_index.get(key)
        if index is None:
            index = [[self._every_row(rows, action == kind) for action in shared] for kind in Action]
            self._shared_index[key] = index
        return index

    def _every_row(self, rows: int, selected: bool) -> torch.Tensor:
        """The index of all ``rows`` rows, or the empty index."""
        if self._all_rows.numel() != rows:
            self._all_rows = torch.arange(rows, device=HOST)
        return self._all_rows if selected else self._no_rows

    def _update_references(self, state: GenerationState, computing: torch.Tensor | bool) -> None:
        """Rows that compute any group now become the reference for the change features.

        Args:
            state: The context's state.
            computing: ``(rows,)`` whether each row computes a group, or one bool for every row.
        """
        if isinstance(computing, bool):
            anyone = every = computing
        else:
            anyone = bool(computing.any())
            every = anyone and bool(computing.all())
        if state.first_input is None or not anyone:
            return
        if every:
            if state.accumulated_input_change is not None:
                state.accumulated_input_change.zero_()
            state.set_references(state.first_input, state.probe_residual)
            return
        if state.accumulated_input_change is not None:
            state.accumulated_input_change[computing] = 0.0
        rows = to_device(torch.nonzero(computing).flatten(), state.first_input)
        base = state.reference_input if state.reference_input is not None else torch.zeros_like(state.first_input)
        reference_probe = state.reference_probe
        if state.probe_residual is not None:
            probe = state.reference_probe if state.reference_probe is not None else state.probe_residual
            reference_probe = probe.index_copy(0, rows, state.probe_residual.index_select(0, rows))
        state.set_references(base.index_copy(0, rows, state.first_input.index_select(0, rows)), reference_probe)

    def _checked_actions(self, actions: Any, observation: Observation) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor) or actions.dtype != torch.int64 or actions.device != HOST:
            actions = torch.as_tensor(actions).to(device=HOST, dtype=torch.int64)
        expected = (observation.num_samples, self.num_groups)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"{type(self.policy).__name__}.act returned actions of shape {tuple(actions.shape)}; the engine needs "
                f"{expected} (samples, groups)."
            )
        if self._policy_masks_actions:
            return actions
        try:  # looking the actions up in the mask fails for any outside 0..NUM_ACTIONS - 1
            return safe_actions(actions, observation.action_mask)
        except RuntimeError:
            raise ValueError(
                f"{type(self.policy).__name__}.act returned actions outside 0..{NUM_ACTIONS - 1}."
            ) from None

    # -- cache actions (called by BlockHook) ----------------------------------------------------------------

    @outside_compiled_graphs
    def apply_cached(
        self, state: GenerationState, group_index: int, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gives REUSE and FORECAST rows their group output (input plus cached residual); the rest pass through.

        Rows whose cached or forecast residual is not finite are moved to COMPUTE and counted as fallbacks, together
        with the other guidance half of their sample (whose decision it shares).
        When every row takes the same action and the following groups skip the same way from the same computed
        steps, this group applies the whole run at once (:meth:`_apply_span`) and the others pass their input
        through.
        """
        decision = state.decision
        if decision.passes_through[group_index]:
            return hidden, encoder
        if decision.shared is not None:
            output = self._apply_span(state, group_index, hidden, encoder)
            if output is not None:
                return output
        history = state.groups[group_index].history
        skips: list[tuple[Action, torch.Tensor, Residual, torch.Tensor | None]] = []
        for kind, rows in (
            (Action.REUSE, decision.reuse_rows[group_index]),
            (Action.FORECAST, decision.forecast_rows[group_index]),
        ):
            if rows.numel() == 0:
                continue
            if kind == Action.REUSE:
                residual = history.latest(rows, copy=False)
                finite = history.latest_finite(rows)  # checked once, when the residual was stored
            else:
                weights = history.forecast_weights(rows, state.time, self.order)
                if rows.numel() == state.rows:  # the group's output in one new tensor per stream
                    output = history.combine(rows, weights, base=(hidden, encoder))
                    if (
                        not isinstance(weights, torch.Tensor) and history.forecast_within_range(weights, hidden.dtype)
                    ) or finite_row_mask(output) is None:
                        hidden = output[0]
                        encoder = output[1] if encoder is not None and output[1] is not None else encoder
                        self.stats.forecasts += rows.numel()
                        continue
                residual = history.combine(rows, weights)
                finite = finite_row_mask(residual)  # also catches an overflowing extrapolation
            skips.append((kind, rows, residual, finite))
        broken = [rows[~finite] for _, rows, _, finite in skips if finite is not None]
        # a sample's guidance halves share its decision: a row that falls back takes its partner row with it
        broken_rows = torch.isin(state.row_samples, state.row_samples[torch.cat(broken)]) if broken else None
        fallback: list[torch.Tensor] = []
        for kind, rows, residual, _ in skips:
            good = rows
            if broken_rows is not None:
                keep = ~broken_rows[rows]
                if not bool(keep.all()):
                    fallback.append(rows[~keep])
                    good = rows[keep]
                    kept = to_device(torch.nonzero(keep).flatten(), residual[0])
                    residual = tuple(None if r is None else r.index_select(0, kept) for r in residual)
            if good.numel() == 0:
                continue
            hidden = _add_rows(hidden, good, residual[0])
            if encoder is not None and residual[1] is not None:
                encoder = _add_rows(encoder, good, residual[1])
            if kind == Action.REUSE:
                self.stats.reuses += good.numel()
            else:
                self.stats.forecasts += good.numel()
        if fallback:
            moved = torch.cat(fallback)
            self.stats.fallbacks += moved.numel()
            decision.compute_rows[group_index] = torch.sort(torch.cat([decision.compute_rows[group_index], moved]))[0]
            if decision.computes is None:
                decision.computes = decision.row_actions == Action.COMPUTE
            decision.computes[moved, group_index] = True
            decision.shared = None  # the rows no longer all do the same
        return hidden, encoder

    def _apply_span(
        self, state: GenerationState, first: int, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Skips ``first`` and the groups after it that take the same action from the same computed steps at once.

        Their summed residuals (kept in ``state.span_sums`` until one of them computes again) are read instead of
        each group's: a skipped step then reads two cached tensors, not two per group.

        Returns:
            The output of the run's last group, or ``None`` when the run is a single group, some of its cached
            residuals are not finite, or the forecast overflows (the groups then apply their own, with fallbacks).
        """
        decision = state.decision
        action = decision.shared[first]
        if action == Action.COMPUTE:
            return None
        order = self.order if action == Action.FORECAST else 0
        points = state.groups[first].history.shared_points(order)
        last = first
        while (
            points is not None
            and last + 1 < self.num_groups
            and decision.shared[last + 1] == action
            and state.groups[last + 1].history.shared_points(order) == points
        ):
            last += 1
        if last == first:
            return None
        span = state.span_sums.get((first, last))
        if span is None or span.points != points:  # (a push to any member drops the span's sums)
            members = [state.groups[g].history for g in range(first, last + 1)]
            read_slot_bounds(members, len(points))  # every member's bounds in one copy from the device
            everyone = self._every_row(state.rows, True)
            # a forecast's output is checked below; a reuse relies on the residuals being finite
            if action == Action.REUSE and any(history.latest_finite(everyone) is not None for history in members):
                return None
            sums = [_sum_streams([history.slots[k] for history in members]) for k in range(len(points))]
            if any(total is None for total in sums):
                return None
            bounds = [sum(history.slot_bound(k) for history in members) for k in range(len(points))]
            span = state.span_sums[(first, last)] = SpanSum(points, sums, bounds)
        weights = scalar_lagrange_weights(points, state.time, order)
        output = tuple(
            None if base is None else weighted_sum([total[stream] for total in span.sums], weights, base=base)
            for stream, base in enumerate((hidden, encoder))
        )
        if (
            action == Action.FORECAST
            and not within_range(weights, span.bounds, hidden.dtype)
            and finite_row_mask(output) is not None
        ):
            return None
        counter = "reuses" if action == Action.REUSE else "forecasts"
        setattr(self.stats, counter, getattr(self.stats, counter) + state.rows * (last - first + 1))
        self.stats.merged_groups += last - first
        for g in range(first + 1, last + 1):
            decision.passes_through[g] = True
        return output[0], output[1]

    @outside_compiled_graphs
    def store_residual(
        self,
        state: GenerationState,
        group_index: int,
        rows: torch.Tensor,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
    ) -> None:
        """Keeps the group's freshly computed residual of ``rows`` (group output minus group input)."""
        group = state.groups[group_index]
        input_hidden, input_encoder = group.group_input
        forecast = _forecast_to_compare(state, group, rows) if self._track_forecast_error else None
        spare = group.history.spare_slot()  # used only when the whole batch computes (see _difference)
        residual_hidden = _difference(hidden, input_hidden, rows, spare[0] if spare else None)
        residual_encoder = None
        if encoder is not None and input_encoder is not None and encoder.shape == input_encoder.shape:
            residual_encoder = _difference(encoder, input_encoder, rows, spare[1] if spare else None)
        if self._track_forecast_error:
            _record_forecast_error(state, group, rows, forecast, residual_hidden)
        group.history.push(rows, (residual_hidden, residual_encoder), state.time)
        for first, last in list(state.span_sums):  # sums over this group are stale now: free them
            if first <= group_index <= last:
                del state.span_sums[(first, last)]
        if rows.numel() == state.rows:
            group.since_compute.zero_()
        else:
            group.since_compute[rows] = 0
        if state.probe_residual is not None:
            if rows.numel() == state.rows:
                group.probe_at_compute = state.probe_residual
            else:
                base = group.probe_at_compute if group.probe_at_compute is not None else state.probe_residual
                device_rows = to_device(rows, base)
                probe = state.probe_residual.index_select(0, device_rows)
                group.probe_at_compute = base.index_copy(0, device_rows, probe)
        group.group_input = None

    # -- reporting -------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Statistics since the engine was enabled or last reset.

        Returns:
            A dict with ``computed_fraction`` (computed block evaluations over all, probe blocks included),
            ``flops_speedup`` (uncached FLOPs of the whole transformer over executed FLOPs), ``per_block``
            (computed fraction of each block), ``reuses``, ``forecasts``, ``fallbacks`` (rows recomputed because
            their cached or forecast residual, or that of their sample's other guidance half, was not finite),
            ``merged_groups`` (group skips applied as part of an earlier group's span, see :meth:`apply_cached`),
            ``steps``, ``generations``, ``decisions``, ``decision_seconds``, the ``actions`` histogram and
            ``side_passes`` (extra uncached passes within a step, see :meth:`is_side_pass`).
        """
        stats = self.stats
        total = max(stats.row_steps, 1)
        per_block = [1.0 if stats.row_steps else 0.0] * self.config.probe_blocks
        for g, members in enumerate(self.groups):
            per_block += [stats.group_computed[g] / total] * len(members)
        computed = stats.probe_computed * self.config.probe_blocks + sum(
            count * len(members) for count, members in zip(stats.group_computed, self.groups, strict=True)
        )
        return {
            "computed_fraction": computed / (total * len(self.blocks)) if stats.row_steps else 1.0,
            "flops_speedup": stats.full_flops / stats.spent_flops if stats.spent_flops > 0 else 1.0,
            "per_block": per_block,
            "reuses": stats.reuses,
            "forecasts": stats.forecasts,
            "fallbacks": stats.fallbacks,
            "merged_groups": stats.merged_groups,
            "steps": stats.steps,
            "generations": stats.generations,
            "decisions": stats.decisions,
            "decision_seconds": stats.decision_seconds,
            "actions": {a.name.lower(): stats.action_counts[a] for a in Action},
            "side_passes": stats.side_passes,
        }

    def _check_policy(self) -> None:
        if not callable(getattr(self.policy, "act", None)):
            raise TypeError(f"{type(self.policy).__name__} has no act(observation) method; it is not a policy.")
        expected_groups = getattr(self.policy, "num_groups", None)
        if expected_groups is not None and expected_groups != self.num_groups:
            raise ValueError(
                f"The policy chooses actions for {expected_groups} groups but the engine has {self.num_groups}: "
                f"pass groups={expected_groups}."
            )
        if "probe_change" in getattr(self.policy, "required_signals", ()) and self.config.probe_blocks == 0:
            raise ValueError(
                f"{type(self.policy).__name__} reads probe_change, the change of the probe blocks' residual, but "
                "probe_blocks=0 runs no probe block: pass probe_blocks >= 1."
            )
        try:
            check_feature_names(self._feature_names, self.num_groups)
        except ValueError as error:
            raise ValueError(
                f"The policy was trained on observation features {list(self._feature_names)}, which this engine "
                f"cannot build: {error}"
            ) from None


def _forecast_to_compare(state: GenerationState, group: Any, rows: torch.Tensor) -> tuple | None:
    """The group's first-order forecast of ``rows`` to this step and which rows have one, before a compute is stored.

    Made before the new residual is written (it may go into the slot the push drops, see ``spare_slot``).
    """
    history = group.history
    if len(history.slots) < 2 or history.slots[0][0] is None:
        return None
    able = _rows(history.counts, rows) >= 2
    if not bool(able.any()):
        return None
    (forecast, *_) = history.combine(rows, history.forecast_weights(rows, state.time, 1))
    return forecast, able


def _record_forecast_error(
    state: GenerationState, group: Any, rows: torch.Tensor, forecast: tuple | None, residual: torch.Tensor
) -> None:
    """Keeps, for ``rows``, how far the group's first-order forecast to this step is from ``residual`` (computed)."""
    if group.forecast_error is None:
        group.forecast_error = torch.zeros(state.rows, dtype=torch.float64, device=HOST)
    if forecast is None:
        return
    predicted, able = forecast
    error = torch.where(able, relative_l1(predicted, residual), 0.0)
    group.forecast_error.index_copy_(0, rows, error)


def _rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` (host ``rows`` on ``tensor``'s device), without a gather when ``rows`` is the whole batch in
    order."""
    return tensor if rows.numel() == tensor.shape[0] else tensor.index_select(0, to_device(rows, tensor))


def _difference(
    output: torch.Tensor, input: torch.Tensor, rows: torch.Tensor, spare: torch.Tensor | None
) -> torch.Tensor:
    """``output[rows] - input[rows]``, written into ``spare`` (a residual about to be dropped) when it fits.

    Reusing that memory saves an allocation per computed group: on CPU, a fresh activation-sized tensor often
    costs page faults.
    """
    if (
        spare is not None
        and rows.numel() == output.shape[0]
        and spare.shape == output.shape
        and spare.dtype == output.dtype == input.dtype
        and spare.is_inference() == torch.is_inference_mode_enabled()
        and not (torch.is_grad_enabled() and (output.requires_grad or input.requires_grad))
    ):
        return torch.sub(output, input, out=spare)
    return _rows(output, rows) - _rows(input, rows)


def _sum_streams(residuals: list[Residual]) -> Residual | None:
    """Stream-wise sum of several groups' residuals (a ``None`` stream adds nothing); ``None`` if shapes differ.

    A sum of half-precision residuals is kept in float32 (see :func:`~runtime.devices.accumulation_dtype`).
    """
    first: list[torch.Tensor | None] = [None] * len(residuals[0])
    total: list[torch.Tensor | None] = [None] * len(residuals[0])
    for residual in residuals:
        for stream, value in enumerate(residual):
            if value is None:
                continue
            if first[stream] is None:
                first[stream] = value
            elif first[stream].shape != value.shape:
                return None
            elif total[stream] is None:
                wide = accumulation_dtype(value.dtype)
                total[stream] = first[stream] + value if wide == value.dtype else first[stream].to(wide).add_(value)
            else:
                total[stream].add_(value)
    # a stream only one group has is that group's residual itself (stored tensors are never modified)
    return tuple(first[s] if total[s] is None else total[s] for s in range(len(total)))


def _add_rows(tensor: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``tensor`` with ``values`` added to ``rows`` (a plain sum when ``rows`` is the whole batch)."""
    values = values.to(tensor.dtype)
    if rows.numel() == tensor.shape[0]:
        return tensor + values
    return tensor.index_add(0, to_device(rows, tensor), values)


def shared_actions(sample_actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """One action per group for the whole batch: the one most samples chose (ties: COMPUTE, FORECAST, REUSE).

    Args:
        sample_actions: ``(samples, groups)`` actions.
        action_mask: ``(samples, groups, 3)`` possible actions.

    Returns:
        ``(samples, groups)`` actions, the same in every row; COMPUTE where the choice is not possible for every
        sample.
    """
    votes = torch.nn.functional.one_hot(sample_actions, NUM_ACTIONS).sum(dim=0)  # (groups, actions)
    tie_break = torch.zeros(NUM_ACTIONS, dtype=votes.dtype, device=votes.device)
    tie_break[Action.COMPUTE], tie_break[Action.FORECAST] = 2, 1
    choice = (votes * NUM_ACTIONS + tie_break).argmax(dim=1)
    possible_for_all = action_mask.all(dim=0).gather(1, choice[:, None]).squeeze(1)
    choice = torch.where(possible_for_all, choice, torch.full_like(choice, int(Action.COMPUTE)))
    return choice.expand(sample_actions.shape[0], -1).clone()


def safe_actions(actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Maps impossible actions to the nearest possible one: FORECAST -> REUSE -> COMPUTE.

    Returns ``actions`` itself when every action is possible, else a new tensor.
    """
    if bool(action_mask.gather(-1, actions.unsqueeze(-1)).all()):
        return actions
    actions = actions.clone()
    can_forecast = action_mask[..., Action.FORECAST]
    can_reuse = action_mask[..., Action.REUSE]
    actions[(actions == Action.FORECAST) & ~can_forecast] = Action.REUSE
    actions[(actions == Action.REUSE) & ~can_reuse] = Action.COMPUTE
    return actions


def enable_cache(
    transformer: torch.nn.Module,
    policy: PolicyLike,
    *,
    groups: int | Sequence[float] | None = None,
    probe_blocks: int | None = None,
    forecast_order: int | None = None,
    cfg_layout: str = "auto",
    budget: float | None = None,
    shared_decisions: bool = False,
) -> CacheEngine:
    """Hooks the cache engine into a diffusers transformer.

    Args:
        transformer: Any transformer whose blocks diffusers' ``TransformerBlockRegistry`` knows (DiT, PixArt,
            SD3, Flux, Wan, ...), e.g. ``pipe.transformer`` of an unmodified pipeline.
        policy: A policy object (``policies.enable_cache`` also takes the path of an exported policy).
        groups: Block groups in relative depth (default 4, fewer on shallow models, or what an exported policy
            was trained with).
        probe_blocks: Always-computed front blocks (default 1, or the exported policy's).
        forecast_order: Taylor order of FORECAST (default: the policy's).
        cfg_layout: Order of batched CFG halves: ``"auto"``, ``"none"``, ``"cond_uncond"``, ``"uncond_cond"``.
        budget: Target compute fraction for budget-conditioned policies (the speed knob).
        shared_decisions: One action per group for the whole batch (the samples' majority) instead of one per
            sample: on models small enough that a block's cost is mostly per call rather than per sample (CPU,
            tiny batches), a group computed for a few samples costs nearly as much time as for all of them.

    Returns:
        The engine; ``engine.summary()`` reports what was computed.

    Raises:
        TypeError: If ``transformer`` is not a module (e.g. the pipeline itself), or ``policy`` is a file path.
        ValueError: If the model has no supported blocks, the options do not fit it, or caching is already on.
    """
    if not isinstance(transformer, torch.nn.Module):
        hint = " (a pipeline: pass pipe.transformer)" if hasattr(transformer, "transformer") else ""
        raise TypeError(f"enable_cache takes the transformer module, got a {type(transformer).__name__}{hint}.")
    if isinstance(policy, (str, Path)):
        raise TypeError(
            f"runtime.enable_cache takes a policy object, got the path {str(policy)!r}: load an exported policy with "
            "policies.enable_cache(transformer, path, ...) or policies.load_policy(path)."
        )
    defaults = getattr(policy, "engine_options", {}) or {}
    config = CacheConfig(
        groups=groups if groups is not None else defaults.get("groups"),
        probe_blocks=probe_blocks if probe_blocks is not None else defaults.get("probe_blocks", 1),
        forecast_order=forecast_order if forecast_order is not None else defaults.get("forecast_order"),
        cfg_layout=cfg_layout,
        budget=budget,
        shared_decisions=shared_decisions,
    )
    if get_engine(transformer) is not None:
        raise ValueError(
            "Caching is already enabled on this transformer: call runtime.disable_cache(transformer) first."
        )
    engine = CacheEngine(transformer, policy, config)
    if budget is not None:
        warn_outside_trained_budgets(policy, budget, budget)
    group_of = {block: g for g, members in enumerate(engine.groups) for block in members}
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    try:  # all hooks or none: a failure (e.g. a forward without a timestep) leaves the model as it was
        for index, block in enumerate(engine.blocks):
            block_registry = HookRegistry.check_if_exists_or_initialize(block.module)
            block_registry.register_hook(BlockHook(engine, index, block, group_of.get(index)), BLOCK_HOOK)
        registry.register_hook(RootHook(engine), ROOT_HOOK)
    except Exception:
        _remove_hooks(transformer, engine)
        raise
    registry.invalidate_child_registries_cache()
    return engine


def warn_outside_trained_budgets(policy: Any, low: float, high: float) -> None:
    """Warns when budgets in ``[low, high]`` leave the range a learned policy was trained on (if it records one)."""
    trained = getattr(policy, "budget_range", None)
    if trained is None:
        return
    if low < trained[0] - 1e-9 or high > trained[1] + 1e-9:
        asked = f"{low:g}" if low == high else f"{low:g}..{high:g}"
        warnings.warn(
            f"budget {asked} lies outside the budgets this policy was trained on ({trained[0]:g}..{trained[1]:g}): "
            "it may miss the budget and the quality it reaches inside that range.",
            UserWarning,
            stacklevel=3,
        )


def get_engine(transformer: torch.nn.Module) -> CacheEngine | None:
    """The engine hooked into ``transformer``, or ``None``."""
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(ROOT_HOOK) if registry is not None else None
    return hook.engine if hook is not None else None


def disable_cache(transformer: torch.nn.Module) -> None:
    """Removes the engine's hooks and cached tensors; the transformer behaves exactly as before.

    The engine object keeps its statistics, so ``engine.summary()`` still reports the generations it cached.

    Raises:
        ValueError: If caching is not enabled on ``transformer``.
    """
    engine = get_engine(transformer)
    if engine is None:
        raise ValueError("Caching is not enabled on this transformer; nothing to disable.")
    engine.state_manager.reset()
    _remove_hooks(transformer, engine)


def _remove_hooks(transformer: torch.nn.Module, engine: CacheEngine) -> None:
    """Removes whichever of the engine's hooks are registered, and registries left empty."""
    for module in [block.module for block in engine.blocks] + [transformer]:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        registry.remove_hook(ROOT_HOOK if module is transformer else BLOCK_HOOK, recurse=False)
        if not registry.hooks:
            del module._diffusers_hook
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()
