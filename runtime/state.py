"""Per-generation cache state, one per cache context (e.g. ``"cond"`` / ``"uncond"`` passes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .devices import HOST, to_device
from .diffusers_internals import BaseState, StateManager
from .forecast import Residual, ResidualHistory, l1_scale, relative_l1
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

    def computed(
        self, rows: torch.Tensor, residual: Residual, time: float, batch_rows: int, probe: torch.Tensor | None
    ) -> None:
        """Records that ``rows`` computed the group at ``time``: keeps their residual, restarts their count of steps
        since a compute, and keeps the probe residual ``probe`` of this step as theirs at the compute.

        Args:
            rows: Host index of the rows that computed.
            residual: Their residual (group output minus group input), one tensor per stream.
            time: The step's diffusion time.
            batch_rows: Rows of the whole batch (``rows`` may be all of them).
            probe: The step's probe residual of every row, or ``None`` without probe blocks.
        """
        self.history.push(rows, residual, time)
        everyone = rows.numel() == batch_rows
        if everyone:
            self.since_compute.zero_()
        else:
            self.since_compute[rows] = 0
        if probe is not None:
            if everyone:
                self.probe_at_compute = probe
            else:
                base = self.probe_at_compute if self.probe_at_compute is not None else probe
                device_rows = to_device(rows, base)
                self.probe_at_compute = base.index_copy(0, device_rows, probe.index_select(0, device_rows))
        self.group_input = None


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

    def is_new_generation(self, time: float, rows: int, shape: tuple[int, ...]) -> bool:
        """Whether a pass at ``time`` on ``rows`` rows of ``shape`` starts a new generation: none is under way, the
        batch changed, or the time did not decrease."""
        return self.step_index == 0 or rows != self.rows or time >= self.time - 1e-9 or shape != self.shape

    def is_side_pass(self, time: float, rows: int) -> bool:
        """Whether a pass at ``time`` on ``rows`` rows is an extra pass of the current step on part of its batch (the
        same time, fewer rows), e.g. SD3's skip-layer guidance pass, rather than a new generation."""
        return self.step_index > 0 and rows < self.rows and abs(time - self.time) <= 1e-9

    def start(
        self,
        time: float,
        rows: int,
        layout: CfgLayout,
        num_groups: int,
        history_depth: int,
        shape: tuple[int, ...] = (),
        track_accumulation: bool = False,
    ) -> None:
        """Begins a new generation at its first step.

        Args:
            time: Diffusion time of the first step.
            rows: Batch rows.
            layout: How the rows pair into samples.
            num_groups: Block groups.
            history_depth: Residuals each group keeps.
            shape: Hidden-state shape without the batch.
            track_accumulation: Keep ``accumulated_input_change``.
        """
        self.reset()
        self.time_scale = 1000.0 if time > 1.0 + 1e-6 else 1.0
        self.rows = rows
        self.shape = shape
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
        if track_accumulation:
            self.accumulated_input_change = torch.zeros(rows, dtype=torch.float64, device=HOST)

    def next_step(self, time: float) -> None:
        """Moves to the step at ``time`` (the first one right after :meth:`start`): the first block's input becomes the
        previous one, and what belongs to the step (probe residual, decision) is cleared."""
        if self.step_index > 0:
            self.since_compute += 1
        self.previous_first_input = self.first_input
        self.first_input = None
        self.probe_residual = None
        self.decision = None
        self.step_index += 1
        self.previous_time = self.time
        self.time = time

    def accumulate_input_change(self) -> None:
        """Adds the first block's relative input change since the previous step to ``accumulated_input_change`` (if
        kept)."""
        if self.accumulated_input_change is not None and self.previous_first_input is not None:
            self.accumulated_input_change += relative_l1(self.first_input, self.previous_first_input)

    def update_references(self, computing: torch.Tensor | bool) -> None:
        """Rows that compute any group now make this step the reference of their change features.

        Args:
            computing: ``(rows,)`` whether each row computes a group, or one bool for every row.
        """
        if isinstance(computing, bool):
            anyone = every = computing
        else:
            anyone = bool(computing.any())
            every = anyone and bool(computing.all())
        if self.first_input is None or not anyone:
            return
        if every:
            if self.accumulated_input_change is not None:
                self.accumulated_input_change.zero_()
            self.set_references(self.first_input, self.probe_residual)
            return
        if self.accumulated_input_change is not None:
            self.accumulated_input_change[computing] = 0.0
        rows = to_device(torch.nonzero(computing).flatten(), self.first_input)
        base = self.reference_input if self.reference_input is not None else torch.zeros_like(self.first_input)
        reference_probe = self.reference_probe
        if self.probe_residual is not None:
            probe = self.reference_probe if self.reference_probe is not None else self.probe_residual
            reference_probe = probe.index_copy(0, rows, self.probe_residual.index_select(0, rows))
        self.set_references(base.index_copy(0, rows, self.first_input.index_select(0, rows)), reference_probe)

    def drop_span_sums(self, group: int) -> None:
        """Frees the summed residuals of every run of groups that includes ``group`` (stale once it computes)."""
        for first, last in list(self.span_sums):
            if first <= group <= last:
                del self.span_sums[(first, last)]

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
