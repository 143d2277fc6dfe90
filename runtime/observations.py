"""The observation a policy sees: one builder for the training environment and for inference alike.

A policy names the features it reads (``Policy.feature_names``, recorded in an exported policy's manifest); the
engine builds those columns, in that order. Without names it builds :data:`DEFAULT_FEATURES`. Every feature, its
meaning and its range is in :data:`FEATURES` (listed at the end of this docstring), per logical sample; a per-group
feature has one column per block group ``g``, named ``<name>_<g>``. :func:`features_markdown` renders the table for
the documentation (``docs/how-it-works.md``, written by ``scripts/write_docs.py``).

Features and the change signals are computed when a policy first reads them, inside its ``act`` call: policies
that need only the step, the time and ``since_compute`` (FORA, TaylorSeer, Δ-DiT) cost no tensor work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .actions import NUM_ACTIONS, Action
from .devices import HOST, to_host
from .forecast import device_relative_l1, relative_l1
from .state import GenerationState

CHANGE_CAP = 4.0
SINCE_COMPUTE_SCALE = 16.0
_RESIDUALS_NEEDED = torch.tensor(
    [{Action.COMPUTE: 0, Action.REUSE: 1, Action.FORECAST: 2}[a] for a in Action], device=HOST
)
_MOST_RESIDUALS_NEEDED = int(_RESIDUALS_NEEDED.max())


RELATIVE_L1 = (
    "Relative L1 change of `a` from `b` is `mean|a - b| / mean|b|`, computed on the sample's conditional row."
)
"""How the change features compare two tensors (``forecast.relative_l1``)."""


@dataclass(frozen=True)
class Feature:
    """One observation feature.

    Attributes:
        name: Its name; a ``per_group`` feature has one column per group, named ``<name>_<g>``.
        per_group: Whether it has a column per block group.
        low / high: The range its values lie in.
        meaning: What it measures (for group ``g`` when ``per_group``).
    """

    name: str
    per_group: bool
    low: float
    high: float
    meaning: str


FEATURES: dict[str, Feature] = {
    feature.name: feature
    for feature in (
        Feature("time", False, 0.0, 1.0, "diffusion time of this step (timestep / 1000, or sigma), 1 = pure noise"),
        Feature(
            "input_change",
            False,
            0.0,
            CHANGE_CAP,
            "relative L1 change of the first block's input since the sample's last step that computed any group (0 "
            "at the first step)",
        ),
        Feature(
            "probe_change",
            False,
            0.0,
            CHANGE_CAP,
            "relative L1 change of the probe blocks' residual since that same step (0 with no probe blocks)",
        ),
        Feature(
            "compute_spent",
            False,
            0.0,
            1.0,
            "FLOPs the sample has used in the finished steps, as a fraction of uncached (1 at the first step)",
        ),
        Feature("budget", False, 0.0, 1.0, "target compute fraction the policy is asked to meet (1 when none is set)"),
        Feature(
            "step_size",
            False,
            0.0,
            1.0,
            "diffusion time from the previous step to this one (0 at the first step): tells the step count and the "
            "scheduler's spacing apart",
        ),
        Feature(
            "since_compute",
            True,
            0.0,
            1.0,
            f"steps since group g last computed, divided by {SINCE_COMPUTE_SCALE:g}, capped at 1",
        ),
        Feature(
            "forecast_gap",
            True,
            -CHANGE_CAP,
            CHANGE_CAP,
            "how much the probe residual changed since g last computed, minus how much g's first-order forecast says "
            "g changed (0 for a reuse); positive when the cache likely lags behind the model",
        ),
        Feature(
            "solver_order",
            False,
            0.0,
            1.0,
            "order of the scheduler's solver, divided by 3: its config's `solver_order` (2 for DPM-Solver++ 2M), 1 "
            "for one-step schedulers such as DDIM and Euler; tells schedulers with the same time steps apart",
        ),
        Feature("time_since_compute", True, 0.0, 1.0, "diffusion time since group g last computed (0 before it has)"),
        Feature(
            "residual_change",
            True,
            0.0,
            CHANGE_CAP,
            "relative L1 change between g's two newest computed residuals of this sample: how fast the group's "
            "output moves for it (0 with fewer than two)",
        ),
        Feature(
            "forecast_error",
            True,
            0.0,
            CHANGE_CAP,
            "relative L1 error, against the residual g computed last, of the first-order forecast g would have used "
            "instead (0 until g has computed three times): how far this sample drifts off its forecast",
        ),
    )
}
"""Every feature the engine can build, by name."""

if __doc__ is not None:  # the module docstring lists the features from the table above (absent under ``python -OO``)
    __doc__ += "\nFeatures, per logical sample:\n\n" + "\n".join(
        f"- ``{f.name}{'_g' if f.per_group else ''}`` in [{f.low:g}, {f.high:g}]: {f.meaning}"
        for f in FEATURES.values()
    )

DEFAULT_FEATURES = ("time", "input_change", "probe_change", "compute_spent", "budget", "since_compute", "forecast_gap")
"""The features built for a policy that names none."""

SETTING_FEATURES = (
    "time",
    "compute_spent",
    "budget",
    "step_size",
    "solver_order",
    "since_compute",
    "time_since_compute",
)
"""Features that tell the step, the budget, the step count and the scheduler apart, the same for every sample of a
setting: what a policy needs to serve any step count and scheduler."""

ADAPTIVE_FEATURES = (*DEFAULT_FEATURES, "step_size", "time_since_compute", "residual_change", "forecast_error")
"""The default features plus those that tell one sample's trajectory, step count and scheduler from another's."""

SCHEDULER_FEATURES = frozenset({"solver_order"})
"""Features read from the pipeline's scheduler, which the engine must be given (``enable_cache(pipe, ...)``)."""

MAX_SOLVER_ORDER = 3


def solver_order(scheduler: Any) -> int:
    """The order of a diffusers scheduler's solver: its config's ``solver_order`` (DPM-Solver, UniPC, DEIS), else 1."""
    order = getattr(getattr(scheduler, "config", None), "solver_order", None)
    return int(order) if isinstance(order, int) and not isinstance(order, bool) and order >= 1 else 1

GLOBAL_FEATURES = tuple(name for name in DEFAULT_FEATURES if not FEATURES[name].per_group)
GROUP_FEATURES = tuple(name for name in DEFAULT_FEATURES if FEATURES[name].per_group)


_FEATURE_SETS = (("default", DEFAULT_FEATURES), ("setting", SETTING_FEATURES), ("adaptive", ADAPTIVE_FEATURES))


def features_markdown() -> str:
    """:data:`FEATURES` as a Markdown table: name, meaning, range and the feature sets that include it."""

    def bound(value: float) -> str:
        return f"{value:g}"

    lines = ["| feature | meaning | range | in |", "|---|---|---|---|"]
    for feature in FEATURES.values():
        name = f"`{feature.name}_g`" if feature.per_group else f"`{feature.name}`"
        sets = ", ".join(label for label, names in _FEATURE_SETS if feature.name in names)
        lines.append(f"| {name} | {feature.meaning} | [{bound(feature.low)}, {bound(feature.high)}] | {sets} |")
    lines += [
        "",
        "`_g`: one column per block group `g`. *default*: `DEFAULT_FEATURES`, built for a policy that names none; "
        "*setting*: `SETTING_FEATURES`, what the shipped policies read (the step, the budget, the step count and the "
        "scheduler); *adaptive*: `ADAPTIVE_FEATURES`, the default ones plus per-sample signals of each sample's own "
        "trajectory.",
        "",
        RELATIVE_L1,
    ]
    return "\n".join(lines)


@functools.cache
def feature_names(num_groups: int, features: Sequence[str] = DEFAULT_FEATURES) -> tuple[str, ...]:
    """Column names of ``features`` for a policy over ``num_groups`` groups, in vector order.

    The features shared by all groups come first, in the order given, then each per-group feature's columns, group
    by group.

    Raises:
        ValueError: If a name is not one of :data:`FEATURES`.
    """
    unknown = [name for name in features if name not in FEATURES]
    if unknown:
        raise ValueError(f"Unknown observation feature(s) {unknown}; the engine builds {list(FEATURES)}.")
    shared = tuple(name for name in features if not FEATURES[name].per_group)
    per_group = tuple(f"{name}_{g}" for name in features if FEATURES[name].per_group for g in range(num_groups))
    return shared + per_group


def feature_of(column: str) -> tuple[Feature, int | None]:
    """The feature a column name belongs to, and its group (``None`` for a feature shared by all groups).

    Raises:
        ValueError: If the name is no feature's column.
    """
    if column in FEATURES and not FEATURES[column].per_group:
        return FEATURES[column], None
    name, _, group = column.rpartition("_")
    if name in FEATURES and FEATURES[name].per_group and group.isdigit():
        return FEATURES[name], int(group)
    raise ValueError(
        f"{column!r} is no observation feature: use one of {[n for n, f in FEATURES.items() if not f.per_group]} "
        f"or <name>_<group> for {[n for n, f in FEATURES.items() if f.per_group]}."
    )


def check_feature_names(names: Sequence[str], num_groups: int) -> None:
    """Checks that the engine can build ``names`` for ``num_groups`` groups.

    Raises:
        ValueError: Naming the first column that is no feature, or that names a group the engine does not have.
    """
    for column in names:
        _, group = feature_of(column)
        if group is not None and group >= num_groups:
            raise ValueError(
                f"Observation feature {column!r} names group {group}, but the engine has {num_groups} groups."
            )


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


def build_observation(
    state: GenerationState, budget: float | torch.Tensor | None, names: tuple[str, ...] | None = None
) -> Observation:
    """Builds the observation of the current step from the generation state (after the probe blocks ran).

    Args:
        state: The context's state.
        budget: Target compute fraction for all samples, ``(samples,)`` per-sample fractions, or ``None``.
        names: Feature columns to build, in order (checked by :func:`check_feature_names`); by default those of
            :data:`DEFAULT_FEATURES`.

    Returns:
        The observation, one row per logical sample.
    """
    rows = state.signal_rows
    samples = state.samples
    num_groups = len(state.groups)
    names = feature_names(num_groups) if names is None else names
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

    def column_values(name: str) -> torch.Tensor | float:
        """A feature's value: a float for all samples, ``(samples,)`` or ``(samples, groups)``."""
        if name == "time":
            return time
        if name == "input_change":
            return observation.signals["input_change"].clamp(0, CHANGE_CAP)
        if name == "probe_change":
            if state.probe_residual is None:
                return 0.0
            return observation.signals["probe_change"].clamp(0, CHANGE_CAP)
        if name == "compute_spent":  # 1 before any finished step
            if state.step_index <= 1:
                return 1.0
            return torch.div(state.spent_flops[rows], max(state.full_flops, 1e-12)).clamp_(0, 1)
        if name == "budget":
            if isinstance(budget, torch.Tensor):
                return _checked_budgets(budget, samples)
            return 1.0 if budget is None else float(budget)
        if name == "step_size":
            if state.step_index <= 1:
                return 0.0
            return min(max((state.previous_time - state.time) / state.time_scale, 0.0), 1.0)
        if name == "solver_order":
            return min(state.solver_order, MAX_SOLVER_ORDER) / MAX_SOLVER_ORDER
        if name == "since_compute":
            return torch.div(since, SINCE_COMPUTE_SCALE).clamp_(max=1.0)
        if name == "forecast_gap":
            if state.probe_residual is None:
                return 0.0
            return _forecast_gaps(state, rows, samples)
        if name == "time_since_compute":
            return torch.stack([_time_since_compute(state, g, rows, samples) for g in range(num_groups)], dim=1)
        if name == "residual_change":
            changes = [group.history.last_change[rows] for group in state.groups]
            return torch.stack(changes, dim=1).clamp_(0, CHANGE_CAP)
        if name == "forecast_error":
            errors = [_forecast_error(group, rows, samples) for group in state.groups]
            return torch.stack(errors, dim=1).clamp_(0, CHANGE_CAP)
        raise ValueError(f"Unknown observation feature {name!r}.")

    def features() -> torch.Tensor:
        vector = torch.empty(samples, len(names), dtype=torch.float64, device=HOST)
        for name, columns, groups in _column_layout(names):
            value = column_values(name)
            if isinstance(value, torch.Tensor) and groups is not None:
                value = value[:, groups]
            elif isinstance(value, torch.Tensor):
                value = value.unsqueeze(1)
            vector[:, columns] = value
        return vector.to(torch.float32)

    thunks["features"] = features
    observation = Observation(
        action_mask=mask,
        step_index=state.step_index - 1,
        time=time,
        names=names,
        thunks=thunks,
        every_action_possible=every_action_possible,
    )
    return observation


@functools.cache
def _column_layout(names: tuple[str, ...]) -> tuple[tuple[str, slice | list[int], list[int] | None], ...]:
    """Runs of columns of one feature: ``(feature, columns, groups)``; ``groups`` is ``None`` for a shared one."""
    runs: list[tuple[str, list[int], list[int] | None]] = []
    for column, name in enumerate(names):
        feature, group = feature_of(name)
        if runs and runs[-1][0] == feature.name and group is not None and runs[-1][2] is not None:
            runs[-1][1].append(column)
            runs[-1][2].append(group)
        else:
            runs.append((feature.name, [column], None if group is None else [group]))
    layout = []
    for name, columns, groups in runs:
        contiguous = columns == list(range(columns[0], columns[-1] + 1))
        layout.append((name, slice(columns[0], columns[-1] + 1) if contiguous else columns, groups))
    return tuple(layout)


def _time_since_compute(state: GenerationState, group_index: int, rows: slice, samples: int) -> torch.Tensor:
    """Diffusion time since the group's last compute, per sample (0 before it has computed)."""
    history = state.groups[group_index].history
    if not history.slot_times:
        return torch.zeros(samples, dtype=torch.float64, device=HOST)
    elapsed = ((history.slot_times[0][rows] - state.time) / state.time_scale).clamp_(0.0, 1.0)
    return torch.where(history.counts[rows] >= 1, elapsed, torch.zeros_like(elapsed))


def _forecast_error(group: Any, rows: slice, samples: int) -> torch.Tensor:
    """The group's first-order forecast error measured at its last compute, per sample (0 before one)."""
    if group.forecast_error is None:
        return torch.zeros(samples, dtype=torch.float64, device=HOST)
    return group.forecast_error[rows]


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


def _checked_budgets(budgets: torch.Tensor, samples: int) -> torch.Tensor:
    """Per-sample budgets as a ``(samples,)`` float64 column."""
    if budgets.numel() != samples:
        raise ValueError(f"{budgets.numel()} per-sample budgets were set for a batch of {samples} samples.")
    return budgets.reshape(-1).to(torch.float64)
