"""Per-generation cache state, one per cache context (e.g. ``"cond"`` / ``"uncond"`` passes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .devices import HOST, to_device
from .diffusers_internals import BaseState, StateManager
from .forecast import ResidualHistory, l1_scale
from .layout import CfgLayout, sample_of_row, samples_in, signal_rows

DEFAULT_CONTEXT = "default"


@dataclass
class StepDecision:
    """What each group does for each row at the current step.

    Attributes:
        row_actions: ``(rows, groups)`` actions, after impossible actions were mapped.
        computes: ``(rows, groups)`` whether the row computes the group (fallbacks included); ``None`` while every
            row takes the ``shared`` actions.
        compute_rows: Per group, sorted index of the rows that compute it (fallbacks included).
        reuse_rows: Per group, index of the rows that reuse its residual.
        forecast_rows: Per group, index of the rows that forecast its residual.
        shared: The action of each group when every row takes the same, else ``None``.
        passes_through: Per group, whether an earlier group already applied its cached residual (as part of a
            span, see ``CacheEngine.apply_cached``), so that its input passes through unchanged.

    Actions and row indices are host tensors (the engine's bookkeeping reads them); :meth:`compute_rows_on` gives
    the index on the hidden states' device.
    """

    row_actions: torch.Tensor
    computes: torch.Tensor | None
    compute_rows: list[torch.Tensor]
    reuse_rows: list[torch.Tensor]
    forecast_rows: list[torch.Tensor]
    shared: list[int] | None = None
    passes_through: list[bool] = field(default_factory=list)
    _device_compute_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def compute_rows_on(self, group: int, like: torch.Tensor) -> torch.Tensor:
        """``compute_rows[group]`` on ``like``'s device, copied there once per step (every block of the group
        gathers and scatters with it); copied again if the engine replaced the index (a fallback)."""
        rows = self.compute_rows[group]
        kept = self._device_compute_rows.get(group)
        if kept is None or kept[0] is not rows or kept[1].device != like.device:
            kept = self._device_compute_rows[group] = (rows, to_device(rows, like))
        return kept[1]


@dataclass
class SpanSum:
    """The residuals of a run of consecutive groups that computed at the same steps, summed slot by slot.

    When such groups skip together, the sum of their reuses or forecasts is the reuse or forecast of these sums: one
    combination instead of one per group (the same up to float rounding).

    Attributes:
        points: Times of the summed slots, newest first (the groups' shared times when the sums were made).
        sums: Per slot, the summed residual streams (a stream no group has is ``None``).
        bounds: Per slot, the sum of the groups' magnitude bounds (see ``ResidualHistory.slot_bound``).
    """

    points: list[float]
    sums: list[tuple[torch.Tensor | None, ...]]
    bounds: list[float]


@dataclass
class GroupState:
    """Cache state of one block group.

    Attributes:
        history: The newest computed residuals, per row.
        since_compute: ``(rows,)`` steps since the group last computed (0 right after a compute); a column of
            the generation's ``since_compute`` table.
        probe_at_compute: Probe residual at the group's last compute, per row (``None`` before any).
        forecast_error: ``(rows,)`` relative L1 error of the first-order forecast the group would have used at its
            last compute, against what it computed (kept only for policies that read ``forecast_error``).
        group_input: The group's input at the current step, kept by its first block for its last block.
    """

    history: ResidualHistory
    since_compute: torch.Tensor
    probe_at_compute: torch.Tensor | None = None
    forecast_error: torch.Tensor | None = None
    group_input: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class GenerationState(BaseState):
    """Everything the engine remembers within one generation of one cache context.

    Activations (inputs, residuals, references) are on the hidden states' device and in their dtype; the ``(rows,)``
    and ``(rows, groups)`` tables, the FLOPs and the times are on the host (see ``runtime.devices``).

    Attributes:
        step_index: Denoising steps seen in this generation (the current one included), 0 before any.
        time: Diffusion time the transformer received at the current step.
        previous_time: Diffusion time of the previous step (0 at the first).
        time_scale: What the time is divided by to lie in [0, 1] (1000 for timesteps, 1 for sigmas).
        solver_order: Order of the pipeline's scheduler at the start of the generation
            (``runtime.observations.solver_order``; 1 when the engine was given none).
        rows: Batch rows; ``shape``: hidden-state shape without the batch; ``layout``: how rows pair into samples.
        row_samples: ``(rows,)`` sample index of each row.

        first_input: First block's input at the current step.
        previous_first_input: First block's input at the previous step.
        probe_residual: Output of the probe blocks minus their input at the current step.
        reference_input / reference_probe: First-block input and probe residual at each row's last step that
            computed any group.
        accumulated_input_change: ``(rows,)`` sum of step-to-step relative changes of the first block's input
            since that step (TeaCache's statistic, without its per-model polynomial), kept only for policies that
            list it in ``required_signals``.
        spent_flops: ``(rows,)`` FLOPs executed over the finished steps of this generation.
        full_flops: FLOPs per row an uncached run would have executed over those steps (the same for every row).
        last_step_fraction: ``(rows,)`` FLOPs of the last finished step as a fraction of an uncached step.
        since_compute / residual_counts: ``(rows, groups)`` steps since each group last computed, and residuals
            each group holds, per row (the groups' ``since_compute`` and ``history.counts`` are their columns).
        reference_scales: ``mean|reference|`` per signal row of ``reference_input`` / ``reference_probe``, kept
            once computed until the references change (see :meth:`set_references`).
        groups: Per-group state.
        span_sums: Summed residuals of runs of consecutive groups that skip together, by ``(first, last)`` group;
            dropped when one of the run's groups computes again.
        decision: This step's decision, once made.

    """

    step_index: int = 0
    time: float = 0.0
    previous_time: float = 0.0
    time_scale: float = 1.0
    solver_order: int = 1
    rows: int = 0
    shape: tuple[int, ...] = ()
    layout: CfgLayout = CfgLayout.NONE
    row_samples: torch.Tensor | None = None
    first_input: torch.Tensor | None = None
    previous_first_input: torch.Tensor | None = None
    probe_residual: torch.Tensor | None = None
    reference_input: torch.Tensor | None = None
    reference_probe: torch.Tensor | None = None
    accumulated_input_change: torch.Tensor | None = None
    spent_flops: torch.Tensor | None = None
    full_flops: float = 0.0
    last_step_fraction: torch.Tensor | None = None
    since_compute: torch.Tensor | None = None
    residual_counts: torch.Tensor | None = None
    reference_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: list[GroupState] = field(default_factory=list)
    span_sums: dict[tuple[int, int], SpanSum] = field(default_factory=dict)
    decision: StepDecision | None = None

    def start(self, time: float, rows: int, layout: CfgLayout, num_groups: int, history_depth: int) -> None:
        """Begins a new generation at its first step."""
        self.reset()
        self.time_scale = 1000.0 if time > 1.0 + 1e-6 else 1.0
        self.rows = rows
        self.layout = layout
        self.row_samples = sample_of_row(layout, rows)
        self.spent_flops = torch.zeros(rows, dtype=torch.float64, device=HOST)
        self.full_flops = 0.0
        self.since_compute = torch.zeros(rows, num_groups, dtype=torch.int64, device=HOST)
        self.residual_counts = torch.zeros(rows, num_groups, dtype=torch.int64, device=HOST)
        self.groups = [
            GroupState(
                ResidualHistory(history_depth, rows, counts=self.residual_counts[:, g]), self.since_compute[:, g]
            )
            for g in range(num_groups)
        ]

    def set_references(self, reference_input: torch.Tensor | None, reference_probe: torch.Tensor | None) -> None:
        """Makes these the reference for the change features.

        The kept scales of the old references are replaced: those a policy has been reading are computed now, while
        the new references are still in cache, rather than at the next step.
        """
        in_use = list(self.reference_scales)
        self.reference_input, self.reference_probe = reference_input, reference_probe
        self.reference_scales.clear()
        for name in in_use:
            if self._reference(name) is not None:
                self.reference_scale(name)

    def reference_scale(self, name: str) -> torch.Tensor:
        """:func:`~runtime.forecast.l1_scale` of the signal rows of reference ``name`` (``"input"`` or ``"probe"``).

        Kept until the references change: they change only at steps that compute.
        """
        if name not in self.reference_scales:
            self.reference_scales[name] = l1_scale(self._reference(name)[self.signal_rows])
        return self.reference_scales[name]

    def _reference(self, name: str) -> torch.Tensor | None:
        return {"input": self.reference_input, "probe": self.reference_probe}[name]

    def reset(self) -> None:
        """Forgets the generation (cached residuals included)."""
        self.__init__()

    @property
    def samples(self) -> int:
        """Logical samples in the batch."""
        return samples_in(self.layout, self.rows)

    @property
    def signal_rows(self) -> slice:
        """The rows whose statistics represent the samples, in sample order."""
        return signal_rows(self.layout, self.rows)


class ContextStateManager(StateManager):
    """diffusers' ``StateManager`` that also works outside ``cache_context`` (a single default context).

    Transformers without ``CacheMixin`` (DiT, PixArt, SD3) are never given a context; Flux and Wan pipelines
    run conditional and unconditional passes inside ``cache_context("cond")`` / ``("uncond")``, which keeps
    their states apart.
    """

    def get_state(self) -> GenerationState:
        context = self._context
        name = DEFAULT_CONTEXT if context is None else getattr(context, "name", context)
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]

    def states(self) -> dict[str, GenerationState]:
        """All contexts' states by context name."""
        return dict(self._state_cache)

    def reset(self, *args, **kwargs) -> None:
        for state in self._state_cache.values():
            state.reset()
        self._state_cache.clear()
