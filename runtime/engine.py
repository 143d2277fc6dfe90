"""The cache engine: the object both hooks talk to, holding one transformer's cache state and the parts that act on it.

At every denoising step the root hook (:mod:`runtime.hooks`) opens and closes the step (:meth:`CacheEngine.begin_step`,
:meth:`CacheEngine.end_step`; FLOPs in :mod:`runtime.accounting`). The first block of each group asks for the step's
decision once (:meth:`CacheEngine.decide`; :mod:`runtime.decisions`) and gives the rows that skip the group their
cached or forecast output (:meth:`CacheEngine.apply_cached`; :mod:`runtime.residuals`); the group's last block stores
the new residual of the rows that computed it (:meth:`CacheEngine.store_residual`). Everything remembered within a
generation lives in a :class:`~runtime.state.GenerationState`, one per cache context.

Create an engine with :func:`runtime.enable_cache` or :func:`runtime.cached` (:mod:`runtime.api`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .accounting import EngineStats, FlopAccount
from .blocks import find_blocks, split_groups
from .config import EngineOptions
from .costs import CostMeter, CostModel
from .decisions import Decider, PolicyLike, RowIndex, check_policy, warn_outside_trained_budgets
from .devices import HOST
from .diffusers_internals import unwrap_module
from .layout import batch_layout, layout_class_name, resolve_cfg_layout
from .observations import SCHEDULER_FEATURES, feature_names, solver_order
from .residuals import ResidualCache
from .state import DEFAULT_CONTEXT, ContextStateManager, GenerationState

DEFAULT_GROUPS = 4
"""Block groups when none are given (fewer on shallow models)."""

DEFAULT_PROBE_BLOCKS = 1
"""Probe blocks when none are given."""


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


class CacheEngine:
    """Runs a policy's cache decisions inside any diffusers transformer, through ``diffusers.hooks``.

    Create it with :func:`runtime.enable_cache`; remove it with :func:`runtime.disable_cache`.

    Args:
        transformer: The transformer to accelerate.
        policy: Anything with ``act(observation) -> (samples, groups)`` actions (see ``policies``).
        options: Engine options; those left ``None`` get the engine's defaults here.

    Attributes:
        options: The options it runs with, every one set.
        blocks: The hooked blocks, in order.
        groups: The blocks of each group.
        order: Taylor order of FORECAST.
        stats: Counters since the engine was enabled or last reset (see :meth:`summary`).
        flops: The transformer's measured costs and what each step spent.
        decider: Asks the policy and fixes each step's decision.
        residuals: Applies and stores the groups' residuals.
    """

    def __init__(self, transformer: torch.nn.Module, policy: PolicyLike, options: EngineOptions) -> None:
        self.transformer = transformer
        self.policy = policy
        self.blocks = find_blocks(transformer)
        probe_blocks = DEFAULT_PROBE_BLOCKS if options.probe_blocks is None else options.probe_blocks
        groups = options.groups
        if groups is None:
            groups = max(1, min(DEFAULT_GROUPS, len(self.blocks) - probe_blocks))
        self.groups = split_groups(len(self.blocks), probe_blocks, groups)
        self.order = options.forecast_order or int(getattr(policy, "forecast_order", 1) or 1)
        self.options = options.replace(groups=groups, probe_blocks=probe_blocks, forecast_order=self.order)
        self.cfg_layout = resolve_cfg_layout(options.cfg_layout, transformer)
        self.transformer_class = layout_class_name(unwrap_module(transformer))
        self.state_manager = ContextStateManager(GenerationState)
        self.stats = EngineStats(group_computed=[0] * len(self.groups))
        self.flops = FlopAccount(self.groups, probe_blocks, len(self.blocks), self.stats)
        names = getattr(policy, "feature_names", None)
        self._feature_names = feature_names(self.num_groups) if names is None else tuple(names)
        check_policy(policy, self.num_groups, probe_blocks, self._feature_names)
        rows = RowIndex()
        shared = options.shared_decisions
        self.decider = Decider(policy, self.num_groups, self._feature_names, shared, self.stats, rows)
        track_forecast_error = any(name.startswith("forecast_error_") for name in self._feature_names)
        self.residuals = ResidualCache(self.num_groups, self.order, self.stats, rows, track_forecast_error)
        self._track_accumulation = "accumulated_input_change" in getattr(policy, "required_signals", ())
        self._sample_budgets: torch.Tensor | None = None
        self._uncached = False
        self.side_pass_blocks: list[int] | None = None  # while a side pass runs: the blocks it ran
        self._scheduler_source: Any = None

    @property
    def num_groups(self) -> int:
        """Block groups a policy chooses actions for."""
        return len(self.groups)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the observation features this engine builds: the policy's, else the default ones."""
        return self._feature_names

    @property
    def costs(self) -> CostModel | None:
        """Per-row FLOPs of the transformer at the input shape last measured (``None`` before the first pass)."""
        return self.flops.costs

    @property
    def meter(self) -> CostMeter | None:
        """The meter of the pass being measured, or ``None``."""
        return self.flops.meter

    @property
    def budget(self) -> float | torch.Tensor | None:
        """Target compute fraction shown to the policy: one for all samples, per sample, or ``None``."""
        return self._sample_budgets if self._sample_budgets is not None else self.options.budget

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
        self.options = self.options.replace(budget=budget)
        self._sample_budgets = None
        if budget is not None:
            warn_outside_trained_budgets(self.policy, budget, budget)

    @property
    def reads_scheduler(self) -> bool:
        """Whether the policy reads features of the pipeline's scheduler (e.g. ``solver_order``)."""
        return any(name in SCHEDULER_FEATURES for name in self._feature_names)

    def set_scheduler(self, scheduler: Any) -> None:
        """Tells the engine the pipeline's scheduler, read at the start of every generation.

        Args:
            scheduler: A diffusers scheduler, or the pipeline itself (anything with a ``scheduler`` attribute),
                whose current scheduler is then read at every generation, so that swapping ``pipe.scheduler``
                needs no call here.
        """
        self._scheduler_source = scheduler

    @property
    def scheduler(self) -> Any:
        """The scheduler the engine reads at the next generation (``None`` when it was given none)."""
        source = self._scheduler_source
        return getattr(source, "scheduler", source) if source is not None else None

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
        self.stats.reset()

    def forget_generation(self) -> None:
        """Forgets the current generation (e.g. one abandoned midway): the next call starts a new one. Statistics
        are kept."""
        self.state_manager.reset()

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
        return self.stats.summary(self.groups, self.options.probe_blocks, len(self.blocks))

    # -- step boundaries (called by RootHook) ---------------------------------------------------------------

    def is_side_pass(self, state: GenerationState, time: float, hidden: torch.Tensor) -> bool:
        """Whether a call is an extra pass of the current step on part of its batch, e.g. SD3's skip-layer guidance
        pass (the conditional half again, some layers skipped), rather than the start of a new generation: the same
        time as the step's pass, fewer rows."""
        return self.flops.costs is not None and state.is_side_pass(time, hidden.shape[0])

    def run_side_pass(self, forward: Callable[[], Any], rows: int) -> Any:
        """Runs a side pass uncached, leaving the generation's state alone; its FLOPs count as computed."""
        self.side_pass_blocks = []
        try:
            output = forward()
        finally:
            ran, self.side_pass_blocks = self.side_pass_blocks, None
        self.flops.charge_side_pass(ran, rows)
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
        rows, shape = hidden.shape[0], tuple(hidden.shape[1:])
        new_generation = state.is_new_generation(time, rows, shape)
        if new_generation:
            layout = batch_layout(self.cfg_layout, self.transformer_class, hidden)
            state.start(time, rows, layout, self.num_groups, self.order + 1, shape, self._track_accumulation)
            state.solver_order = solver_order(self.scheduler)
            self.stats.generations += 1
        state.next_step(time)
        return self.flops.start_pass(input_shapes, rows, new_generation)

    @outside_compiled_graphs
    def end_step(self, state: GenerationState, hidden: torch.Tensor, meter: CostMeter | None) -> None:
        """Closes a step: turns what each row computed into FLOPs and statistics."""
        if meter is not None:
            self.flops.finish_pass(meter)
        self.flops.charge_step(state)

    # -- decisions and cache actions (called by BlockHook) ----------------------------------------------------

    @outside_compiled_graphs
    def decide(self, state: GenerationState) -> None:
        """Asks the policy for this step's actions (after the probe blocks ran) and fixes them per row."""
        meter = self.flops.meter  # in a measured pass, the decision's FLOPs are the policy's, not the transformer's
        counted_before = meter.total() if meter is not None else 0
        self.decider.decide(state, self.budget, self._uncached)
        if meter is not None:
            meter.engine_flops += meter.total() - counted_before

    @outside_compiled_graphs
    def apply_cached(
        self, state: GenerationState, group_index: int, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gives the group's REUSE and FORECAST rows their output; see :meth:`ResidualCache.apply`."""
        return self.residuals.apply(state, group_index, hidden, encoder)

    @outside_compiled_graphs
    def store_residual(
        self,
        state: GenerationState,
        group_index: int,
        rows: torch.Tensor,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
    ) -> None:
        """Keeps the group's freshly computed residual of ``rows``; see :meth:`ResidualCache.store`."""
        self.residuals.store(state, group_index, rows, hidden, encoder)
