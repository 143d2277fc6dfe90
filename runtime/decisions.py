"""Decisions: asking the policy for a step's actions (after the probe blocks ran) and fixing them per batch row.

A policy returns one action per sample and group. Actions it cannot take yet (a REUSE before any residual is
cached, a FORECAST before enough are) are mapped to the nearest possible one (:func:`safe_actions`); with shared
decisions the samples' majority is taken for the whole batch (:func:`shared_actions`). The result, per row, is a
:class:`~runtime.state.StepDecision` that the block hooks read.
"""

from __future__ import annotations

import time as wallclock
import warnings
from typing import Any, Protocol, runtime_checkable

import torch

from .accounting import EngineStats
from .actions import NUM_ACTIONS, Action
from .devices import HOST
from .observations import Observation, build_observation, check_feature_names
from .state import GenerationState, StepDecision


@runtime_checkable
class PolicyLike(Protocol):
    """What the engine needs of a policy: ``act`` maps an observation to ``(samples, groups)`` actions.

    It also reads these attributes when a policy has them: ``trained_options`` (an :class:`~runtime.EngineOptions`),
    ``forecast_order``, ``num_groups``, ``feature_names``, ``required_signals``, ``masks_actions`` and
    ``budget_range`` (see ``policies.Policy``).
    """

    def act(self, observation: Observation) -> torch.Tensor: ...


def check_policy(policy: Any, num_groups: int, probe_blocks: int, feature_names: tuple[str, ...]) -> None:
    """Checks that the engine can run ``policy`` with these groups, probe blocks and observation features.

    Raises:
        TypeError: If ``policy`` has no ``act`` method.
        ValueError: Naming what to change, if the policy was built for other groups, reads the probe without probe
            blocks, or was trained on features the engine cannot build.
    """
    if not callable(getattr(policy, "act", None)):
        raise TypeError(f"{type(policy).__name__} has no act(observation) method; it is not a policy.")
    expected_groups = getattr(policy, "num_groups", None)
    if expected_groups is not None and expected_groups != num_groups:
        raise ValueError(
            f"The policy chooses actions for {expected_groups} groups but the engine has {num_groups}: "
            f"pass groups={expected_groups}."
        )
    if "probe_change" in getattr(policy, "required_signals", ()) and probe_blocks == 0:
        raise ValueError(
            f"{type(policy).__name__} reads probe_change, the change of the probe blocks' residual, but "
            "probe_blocks=0 runs no probe block: pass probe_blocks >= 1."
        )
    try:
        check_feature_names(feature_names, num_groups)
    except ValueError as error:
        raise ValueError(
            f"The policy was trained on observation features {list(feature_names)}, which this engine "
            f"cannot build: {error}"
        ) from None


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


class RowIndex:
    """Host index tensors of a whole batch, made once and reused: every row, no row, and per shared action table."""

    def __init__(self) -> None:
        self._all_rows = torch.arange(0, device=HOST)
        self._no_rows = torch.zeros(0, dtype=torch.int64, device=HOST)
        self._shared: dict[tuple[int, tuple[int, ...]], list[list[torch.Tensor]]] = {}

    def every_row(self, rows: int, selected: bool = True) -> torch.Tensor:
        """The index of all ``rows`` rows, or the empty index."""
        if self._all_rows.numel() != rows:
            self._all_rows = torch.arange(rows, device=HOST)
        return self._all_rows if selected else self._no_rows

    def shared(self, rows: int, shared: list[int]) -> list[list[torch.Tensor]]:
        """Per action, per group: the index of all ``rows`` rows where the group takes that action, else empty."""
        key = (rows, tuple(shared))
        index = self._shared.get(key)
        if index is None:
            index = [[self.every_row(rows, action == kind) for action in shared] for kind in Action]
            self._shared[key] = index
        return index


class Decider:
    """Asks a policy for each step's actions and turns them into the step's per-row :class:`StepDecision`.

    Args:
        policy: The policy.
        num_groups: Block groups.
        feature_names: Observation features to build for it.
        shared_decisions: Take the samples' majority action per group for the whole batch.
        stats: The engine's counters (decisions, their time, the actions histogram).
        rows: Index tensors shared with the rest of the engine.
    """

    def __init__(
        self,
        policy: PolicyLike,
        num_groups: int,
        feature_names: tuple[str, ...],
        shared_decisions: bool,
        stats: EngineStats,
        rows: RowIndex,
    ) -> None:
        self.policy = policy
        self.num_groups = num_groups
        self.feature_names = feature_names
        self.shared_decisions = shared_decisions
        self.stats = stats
        self.rows = rows
        self._policy_masks_actions = bool(getattr(policy, "masks_actions", False))

    def decide(self, state: GenerationState, budget: float | torch.Tensor | None, uncached: bool) -> None:
        """Fixes ``state.decision`` for the current step and makes it the reference of the rows that compute.

        Args:
            state: The context's state, after the probe blocks ran.
            budget: The compute budget shown to the policy.
            uncached: Compute everything without asking the policy.
        """
        state.accumulate_input_change()
        if uncached:
            sample_actions = torch.full(
                (state.samples, self.num_groups), int(Action.COMPUTE), dtype=torch.int64, device=HOST
            )
        else:
            observation = build_observation(state, budget, self.feature_names)
            started = wallclock.perf_counter()
            actions = self.policy.act(observation)
            self.stats.decision_seconds += wallclock.perf_counter() - started
            self.stats.decisions += 1
            observation.seal()
            sample_actions = self._checked_actions(actions, observation)
            if self.shared_decisions:
                sample_actions = shared_actions(sample_actions, observation.action_mask)
        table = sample_actions.tolist()
        shared: list[int] | None = table[0]
        if table.count(shared) == len(table):  # one action per group for the whole batch: no per-row index
            for action in shared:
                self.stats.action_counts[action] += len(table)
            row_actions = sample_actions[0].expand(state.rows, -1)
            index = [list(rows) for rows in self.rows.shared(state.rows, shared)]
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
        state.update_references(computing)
        state.decision = StepDecision(
            row_actions=row_actions,
            computes=computes,
            compute_rows=index[Action.COMPUTE],
            reuse_rows=index[Action.REUSE],
            forecast_rows=index[Action.FORECAST],
            shared=shared,
            passes_through=[False] * self.num_groups,
        )

    def _checked_actions(self, actions: Any, observation: Observation) -> torch.Tensor:
        """The policy's actions as a ``(samples, groups)`` host int64 tensor, impossible ones mapped.

        Raises:
            ValueError: If they have the wrong shape or values outside the actions.
        """
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
