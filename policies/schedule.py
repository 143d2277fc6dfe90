"""A fixed per-step schedule: the same actions for every sample, chosen by step index only.

A compiled transformer (``torch.compile``) then sees one fixed sequence of cache decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from runtime import NUM_ACTIONS, Action, EngineOptions, Observation
from runtime.config import TRAINED_OPTIONS

from .base import Policy, trained_options


class StaticSchedulePolicy(Policy):
    """A fixed ``(steps, groups)`` action table, played by step index for every sample.

    Steps beyond the table repeat its last row. Impossible actions are mapped by the engine as usual.

    Args:
        schedule: ``(steps, groups)`` integer actions (values of :class:`runtime.Action`).
        engine_options: ``groups``, ``probe_blocks`` and ``forecast_order``, checked by
            :func:`~policies.base.trained_options`; by default ``num_groups`` equal groups, one probe block, order 1.
        manifest: Provenance, as for :class:`LearnedPolicy`.

    Raises:
        ValueError: If the table is not 2-D, is empty, or holds values other than 0, 1 and 2.
    """

    def __init__(
        self,
        schedule: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
        *,
        engine_options: EngineOptions | Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        table = torch.as_tensor(np.asarray(schedule))
        if table.ndim != 2 or table.numel() == 0:
            raise ValueError(f"A schedule is a non-empty (steps, groups) table; got shape {tuple(table.shape)}.")
        if table.is_floating_point() or table.dtype == torch.bool or table.is_complex():
            raise ValueError(f"A schedule holds integer actions; got dtype {table.dtype}.")
        if bool(((table < 0) | (table >= NUM_ACTIONS)).any()):
            raise ValueError(f"A schedule's actions must lie in 0..{NUM_ACTIONS - 1} (COMPUTE, REUSE, FORECAST).")
        self.schedule = table.to(torch.int64).clone()
        self.num_groups = int(table.shape[1])
        self.feature_names = None
        self.trained_options = trained_options(engine_options, self.num_groups)
        self.forecast_order = self.trained_options.forecast_order
        self.manifest = dict(manifest or {})

    @property
    def num_steps(self) -> int:
        """Rows of the table."""
        return int(self.schedule.shape[0])

    def act(self, observation: Observation) -> torch.Tensor:
        """The table's row for this step (the last row beyond its end), for every sample."""
        if observation.num_groups != self.num_groups:
            raise ValueError(f"The observation has {observation.num_groups} groups; the schedule {self.num_groups}.")
        step = min(max(int(observation.step_index), 0), self.num_steps - 1)
        return self.schedule[step].expand(observation.num_samples, self.num_groups).clone()

    def __repr__(self) -> str:
        return f"StaticSchedulePolicy(steps={self.num_steps}, groups={self.num_groups}, {self.engine_options})"


def replay_options(policy: Any, options: EngineOptions | None) -> EngineOptions | None:
    """The engine options of a static replay of ``policy`` run with ``options``: those ``options`` sets, the rest the
    policy's ``trained_options``; ``None`` when neither sets any (a :class:`StaticSchedulePolicy`'s defaults)."""
    merged = (options or EngineOptions()).with_defaults(getattr(policy, "trained_options", None))
    return merged if any(getattr(merged, name) is not None for name in TRAINED_OPTIONS) else None


def schedule_from_actions(actions_per_step: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Turns the actions a policy took into a static schedule: per step and group, the most frequent action.

    Ties go to the cheaper-to-trust action (COMPUTE before REUSE before FORECAST).

    Args:
        actions_per_step: For each step, ``(samples, groups)`` actions (any number of samples per step).

    Returns:
        ``(steps, groups)`` int64 schedule.

    Raises:
        ValueError: If there are no steps, a step has no samples, or the steps disagree on the number of groups.
    """
    if len(actions_per_step) == 0:
        raise ValueError("schedule_from_actions needs the actions of at least one step.")
    rows = []
    for step, actions in enumerate(actions_per_step):
        table = torch.as_tensor(np.asarray(actions)).to(torch.int64)
        if table.ndim != 2 or table.shape[0] == 0:
            raise ValueError(f"Step {step}: actions of shape {tuple(table.shape)}; expected (samples >= 1, groups).")
        if rows and table.shape[1] != rows[0].shape[0]:
            raise ValueError(f"Step {step} has {table.shape[1]} groups; step 0 has {rows[0].shape[0]}.")
        if bool(((table < 0) | (table >= NUM_ACTIONS)).any()):
            raise ValueError(f"Step {step}: actions must lie in 0..{NUM_ACTIONS - 1}.")
        counts = torch.stack([(table == int(action)).sum(0) for action in Action], dim=1)
        rows.append(counts.argmax(dim=1))  # argmax returns the first maximum: the lowest action wins ties
    return torch.stack(rows)
