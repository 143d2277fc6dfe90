"""The observation a policy sees: one builder for the training environment and for inference alike.

Features, per logical sample, in this order (``G`` = number of block groups):

========================  =================================================================================  ========
name                      meaning                                                                            range
========================  =================================================================================  ========
``time``                  diffusion time of this step (timestep / 1000, or sigma), 1 = pure noise            [0, 1]
``input_change``          relative L1 change of the first block's input since the sample's last step that    [0, 4]
                          computed any group (0 at the first step)
``probe_change``          relative L1 change of the probe blocks' residual since that same step (0 with no   [0, 4]
                          probe blocks)
``compute_spent``         FLOPs the sample has used in the finished steps, as a fraction of uncached          [0, 1]
                          (1 at the first step)
``budget``                target compute fraction the policy is asked to meet (1 when none is set)           [0, 1]
``since_compute_g``       for each group g: steps since it last computed, divided by 16, capped at 1          [0, 1]
``forecast_gap_g``        for each group g: how much the probe residual changed since g last computed,        [-4, 4]
                          minus how much g's first-order forecast says g changed (0 for a reuse);
                          positive when the cache likely lags behind the model
========================  =================================================================================  ========

Relative L1 change of ``a`` from ``b`` is ``mean|a - b| / mean|b|``, computed on the sample's conditional row.

Features and the change signals are computed when a policy first reads them, inside its ``act`` call: policies
that need only the step, the time and ``since_compute`` (FORA, TaylorSeer, Δ-DiT) cost no tensor work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .actions import NUM_ACTIONS, Action
from .devices import HOST, to_host
from .forecast import device_relative_l1, relative_l1
from .state import GenerationState

GLOBAL_FEATURES = ("time", "input_change", "probe_change", "compute_spent", "budget")
GROUP_FEATURES = ("since_compute", "forecast_gap")
CHANGE_CAP = 4.0
SINCE_COMPUTE_SCALE = 16.0
_RESIDUALS_NEEDED = torch.tensor(
    [{Action.COMPUTE: 0, Action.REUSE: 1, Action.FORECAST: 2}[a] for a in Action], device=HOST
)
_MOST_RESIDUALS_NEEDED = int(_RESIDUALS_NEEDED.max())


@functools.cache
def feature_names(num_groups: int) -> tuple[str, ...]:
    """Names of the observation features for a policy over ``num_groups`` groups, in vector order."""
    per_group = tuple(f"{name}_{g}" for name in GROUP_FEATURES for g in range(num_groups))
    return GLOBAL_FEATURES + per_group


class _Lazy:
    """Values computed on first read, while the engine waits for the decision; unreadable after it."""

    def __init__(self, thunks: dict[str, Callable[[], Any]]) -> None:
        self._thunks = thunks
        self._values: dict[str, Any] = {}
        self._sealed = False

    def get(self, name: str) -> Any:
        if name not in self._values:
            if self._sealed:
                raise RuntimeError(
                    f"Observation value {name!r} was not read during the policy's act() call, and the engine has "
                    "moved on since. "
                    "Read what you need (e.g. observation.features) inside act()."
                )
            self._values[name] = self._thunks[name]()
        return self._values[name]

    def seal(self) -> None:
        self._sealed = True


class Signals(Mapping):
    """Raw statistics classic policies read by name (computed on first read)."""

    def __init__(self, lazy: _Lazy, names: tuple[str, ...]) -> None:
        self._lazy = lazy
        self._names = names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(f"no signal {name!r}; available: {list(self._names)}")
        return self._lazy.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Observation:
    """What a policy is given at one denoising step, for a batch of samples.

    Attributes:
        action_mask: ``(samples, groups, 3)`` which actions are possible (``REUSE`` needs one computed step,
            ``FORECAST`` two; the first step allows only ``COMPUTE``).
        every_action_possible: ``True`` when ``action_mask`` is known to be all ``True`` (a policy may skip
            masking); ``False`` says nothing.
        step_index: 0-based denoising step within the generation.
        time: The ``time`` feature (normalised diffusion time).
        names: Feature names.
        signals: Raw statistics classic policies use: ``since_compute`` ``(samples, groups)`` int steps,
            ``input_change``, ``probe_change`` and, for policies that list it in ``required_signals``,
            ``accumulated_input_change`` ``(samples,)``.
    """

    def __init__(
        self,
        *,
        action_mask: torch.Tensor,
        step_index: int,
        time: float,
        names: tuple[str, ...],
        thunks: dict[str, Callable[[], Any]],
        every_action_possible: bool = False,
    ) -> None:
        self.action_mask = action_mask
        self.every_action_possible = every_action_possible
        self.step_index = step_index
        self.time = time
        self.names = names
        self._lazy = _Lazy(thunks)
        self.signals = Signals(self._lazy, tuple(k for k in thunks if k != "features"))

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        action_mask: torch.Tensor,
        *,
        step_index: int = 0,
        time: float = 1.0,
        names: tuple[str, ...] = (),
        signals: dict[str, torch.Tensor] | None = None,
    ) -> Observation:
        """An observation from ready values (for tests, replays and offline evaluation of a policy)."""
        thunks: dict[str, Callable[[], Any]] = {"features": lambda: features}
        thunks.update({name: (lambda value=value: value) for name, value in (signals or {}).items()})
        return cls(action_mask=action_mask, step_index=step_index, time=time, names=names, thunks=thunks)

    @property
    def features(self) -> torch.Tensor:
        """``(samples, F)`` float32 vector, laid out as :func:`feature_names` says."""
        return self._lazy.get("features")

    @property
    def num_samples(self) -> int:
        """Samples in the batch."""
        return self.action_mask.shape[0]

    @property
    def num_groups(self) -> int:
        """Block groups an action is chosen for."""
        return self.action_mask.shape[1]

    def seal(self) -> None:
        """Called by the engine after ``act``: values not read by then can no longer be computed."""
        self._lazy.seal()


def build_observation(state: GenerationState, budget: float | torch.Tensor | None) -> Observation:
    """Builds the observation of the current step from the generation state (after the probe blocks ran).

    Args:
        state: The context's state.
        budget: Target compute fraction for all samples, ``(samples,)`` per-sample fractions, or ``None``.

    Returns:
        The observation, one row per logical sample.
    """
    rows = state.signal_rows
    samples = state.samples
    num_groups = len(state.groups)
    first_step = state.step_index <= 1 or state.reference_input is None
    every_action_possible = bool(state.groups) and all(
        group.history.full and group.history.depth >= _MOST_RESIDUALS_NEEDED for group in state.groups
    )
    if every_action_possible:
        mask = torch.ones(samples, num_groups, NUM_ACTIONS, dtype=torch.bool, device=HOST)
    else:
        mask = state.residual_counts[rows].unsqueeze(-1) >= _RESIDUALS_NEEDED
    since = state.since_compute[rows]  # a view: values are read only inside act(), before the table changes
    time = min(max(state.time / state.time_scale, 0.0), 1.0)

    def change(name: str, current: torch.Tensor | None, reference: torch.Tensor | None) -> torch.Tensor:
        if first_step or current is None or reference is None:
            return torch.zeros(samples, dtype=torch.float64, device=HOST)
        return relative_l1(current[rows], reference[rows], scale=state.reference_scale(name))

    def input_change() -> torch.Tensor:
        return change("input", state.first_input, state.reference_input)

    def probe_change() -> torch.Tensor:
        return change("probe", state.probe_residual, state.reference_probe)

    thunks: dict[str, Callable[[], Any]] = {
        "since_compute": since.clone,  # a copy the policy may keep
        "input_change": input_change,
        "probe_change": probe_change,
    }
    if state.accumulated_input_change is not None:
        thunks["accumulated_input_change"] = state.accumulated_input_change[rows].clone

    def features() -> torch.Tensor:
        # The values every sample shares in one row, repeated; then the per-sample columns written in place.
        spent = 1.0 if state.step_index <= 1 else 0.0  # 1 before any finished step
        shared_budget = 0.0 if isinstance(budget, torch.Tensor) else 1.0 if budget is None else float(budget)
        shared = [time, 0.0, 0.0, spent, shared_budget] + [0.0] * (len(GROUP_FEATURES) * num_groups)
        vector = torch.tensor(shared, dtype=torch.float64, device=HOST).expand(samples, -1).clone()
        torch.clamp(observation.signals["input_change"], 0, CHANGE_CAP, out=vector[:, 1])
        if state.probe_residual is not None:
            torch.clamp(observation.signals["probe_change"], 0, CHANGE_CAP, out=vector[:, 2])
        if state.step_index > 1:
            torch.div(state.spent_flops[rows], max(state.full_flops, 1e-12), out=vector[:, 3]).clamp_(0, 1)
        if isinstance(budget, torch.Tensor):
            _write_budgets(vector[:, 4], budget)
        since_columns = vector[:, len(GLOBAL_FEATURES) : len(GLOBAL_FEATURES) + num_groups]
        torch.div(since, SINCE_COMPUTE_SCALE, out=since_columns).clamp_(max=1.0)
        if state.probe_residual is not None:
            vector[:, len(GLOBAL_FEATURES) + num_groups :] = _forecast_gaps(state, rows, samples)
        return vector.to(torch.float32)

    thunks["features"] = features
    observation = Observation(
        action_mask=mask,
        step_index=state.step_index - 1,
        time=time,
        names=feature_names(num_groups),
        thunks=thunks,
        every_action_possible=every_action_possible,
    )
    return observation


def _forecast_gaps(state: GenerationState, rows: slice, samples: int) -> torch.Tensor:
    """``(samples, groups)``: per group, the probe change since its last compute minus the change its first-order
    forecast extrapolates.

    The forecast's change is ``|t - t0| / |t0 - t1| * relL1(R0, R1)`` (exact for order 1): a ratio of scalars kept
    when the residuals were stored, so no tensor is forecast just to build the observation. The probe changes of all
    groups come back from the device in one copy.
    """
    gaps = torch.zeros(samples, len(state.groups), dtype=torch.float64, device=HOST)
    if state.probe_residual is None:
        return gaps
    probe = state.probe_residual[rows]
    measured = [
        g
        for g, group in enumerate(state.groups)
        if group.probe_at_compute is not None and bool((group.history.counts[rows] >= 1).any())
    ]
    if not measured:
        return gaps
    moved = torch.stack([device_relative_l1(probe, state.groups[g].probe_at_compute[rows]) for g in measured], dim=1)
    for column, probe_moved in zip(measured, to_host(moved).unbind(1), strict=True):
        history = state.groups[column].history
        counts = history.counts[rows]
        predicted_moved = torch.zeros_like(probe_moved)
        if len(history.slot_times) >= 2:
            newest, older = history.slot_times[0][rows], history.slot_times[1][rows]
            span = (newest - older).abs().clamp_min(1e-12)
            predicted_moved = (state.time - newest).abs() / span * history.last_change[rows]
            predicted_moved = torch.where(counts >= 2, predicted_moved, torch.zeros_like(predicted_moved))
        gaps[:, column] = torch.where(counts >= 1, probe_moved - predicted_moved, 0.0)
    return gaps.clamp_(-CHANGE_CAP, CHANGE_CAP)


def _write_budgets(column: torch.Tensor, budgets: torch.Tensor) -> None:
    """Fills the ``budget`` feature column with per-sample fractions (one shared fraction is in the repeated row)."""
    if budgets.numel() != column.numel():
        raise ValueError(f"{budgets.numel()} per-sample budgets were set for a batch of {column.numel()} samples.")
    column.copy_(budgets.reshape(-1))
